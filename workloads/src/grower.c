/*
 * grower - a workload whose linear memory keeps growing.
 *
 * Each grow_mb call mallocs a new chunk, so the allocator has to run
 * memory.grow, and fills it with a deterministic pattern: 32-bit word number
 * n (counted across all chunks since start) holds n * 2654435761 mod 2^32.
 * Chunks are kept for the lifetime of the instance.
 *
 * Exports (besides wm_alloc / wm_free):
 *   int32 grow_mb(int32 mb)   allocate and fill mb MiB (1..1024); returns
 *                             pages() afterwards, or -1 on bad size / no memory
 *   int64 grower_checksum()   over every word allocated so far, in order:
 *                             h = 0xcbf29ce484222325; h = (h ^ w) * 0x100000001b3
 *   int32 pages()             current memory size in 64 KiB wasm pages
 *   int32 grower_mb()         MiB allocated so far
 */
#include "wm.h"

#define MIB (1u << 20)

struct chunk {
    uint32_t *words;
    uint32_t nwords;
};

static struct chunk *chunks;
static int32_t nchunks;
static uint32_t next_word;     /* pattern index of the next word to fill */
static int32_t total_mb;

WM_EXPORT(pages) int32_t pages(void) {
    return (int32_t)__builtin_wasm_memory_size(0);
}

WM_EXPORT(grow_mb) int32_t grow_mb(int32_t mb) {
    if (mb < 1 || mb > 1024)
        return -1;
    struct chunk *grown = realloc(chunks, (size_t)(nchunks + 1) * sizeof *grown);
    if (!grown)
        return -1;
    chunks = grown;

    uint32_t words = (uint32_t)mb * (MIB / 4);
    uint32_t *w = malloc((size_t)words * 4);
    if (!w)
        return -1;
    for (uint32_t i = 0; i < words; i++)
        w[i] = (next_word + i) * 2654435761u;
    next_word += words;
    chunks[nchunks++] = (struct chunk){w, words};
    total_mb += mb;
    return pages();
}

WM_EXPORT(grower_checksum) int64_t grower_checksum(void) {
    uint64_t h = WM_FNV64_INIT;
    for (int32_t c = 0; c < nchunks; c++)
        for (uint32_t i = 0; i < chunks[c].nwords; i++)
            h = (h ^ chunks[c].words[i]) * 0x100000001b3ULL;
    return (int64_t)h;
}

WM_EXPORT(grower_mb) int32_t grower_mb(void) {
    return total_mb;
}
