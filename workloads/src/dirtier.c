/*
 * dirtier - a synthetic workload for migration benchmarks.
 *
 * dt_init allocates a 4 KiB-aligned region and gives every 4 KiB page in it
 * a write (so all of it is committed), with contents resembling typical
 * program memory. A hash of the page index picks the page's kind:
 *   - 60%: zero page (written with zeros),
 *   - 30%: "structured": the first 20% of the page holds small ints,
 *          pointer-like values into the region and ASCII text; the rest is 0,
 *   - 10%: random: the whole page is xorshift output.
 * dt_dirty then writes one word into each of npages distinct pages chosen
 * pseudo-randomly from a seed, so a benchmark controls the dirty rate. Apart
 * from the region, a call writes only this file's few static variables.
 *
 * Exports (besides wm_alloc / wm_free):
 *   int32 dt_init(int32 mib)   (re)create a region of mib MiB (1..2048);
 *                              returns its number of 4 KiB pages, -1 on failure
 *   int32 dt_dirty(int32 npages, int32 seed)
 *         dirty min(npages, pages) distinct pages; each gets the running write
 *         counter (so a rewrite always changes the page); returns the counter
 *   int64 dt_checksum()        over the region as u64 LE words, in order:
 *                              h = 0xcbf29ce484222325; h = (h ^ w) * 0x100000001b3
 *                              (0 if there is no region)
 *   int32 dt_base()            address of the region (0 if none)
 *   int32 dt_pages()           number of 4 KiB pages in the region
 */
#include <string.h>
#include "wm.h"

#define PAGE 4096u

static uint8_t *region;
static uint32_t npages_total;
static uint32_t writes;        /* running counter returned by dt_dirty */

static uint32_t xorshift32(uint32_t *s) {
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

static void fill_structured(uint8_t *page, uint32_t index) {
    static const char text[] = "key=value; user=migrate; state=ok; ";
    uint32_t *w = (uint32_t *)page;
    uint32_t nwords = PAGE / 5 / 4;            /* 20% of the page */
    for (uint32_t i = 0; i < nwords; i++) {
        switch (i % 4) {
        case 0: w[i] = index + i; break;                          /* small int */
        case 1: w[i] = (uint32_t)(uintptr_t)region + (index * 64 + i) % (npages_total * PAGE); break;
        default: memcpy(&w[i], text + (i * 4) % (sizeof text - 4), 4); break;
        }
    }
}

static void fill_random(uint8_t *page, uint32_t index) {
    uint32_t s = index * 2654435761u | 1, *w = (uint32_t *)page;
    for (uint32_t i = 0; i < PAGE / 4; i++)
        w[i] = xorshift32(&s);
}

WM_EXPORT(dt_init) int32_t dt_init(int32_t mib) {
    if (mib < 1 || mib > 2048)
        return -1;
    free(region);
    npages_total = 0;
    writes = 0;
    region = aligned_alloc(PAGE, (size_t)mib << 20);
    if (!region)
        return -1;
    npages_total = (uint32_t)mib << 20 >> 12;
    for (uint32_t p = 0; p < npages_total; p++) {
        uint8_t *page = region + (size_t)p * PAGE;
        uint32_t kind = (uint32_t)(wm_mix64(p) % 10);
        memset(page, 0, PAGE);
        if (kind >= 9)
            fill_random(page, p);
        else if (kind >= 6)
            fill_structured(page, p);
    }
    return (int32_t)npages_total;
}

WM_EXPORT(dt_dirty) int32_t dt_dirty(int32_t npages, int32_t seed) {
    if (!region || npages <= 0)
        return (int32_t)writes;
    uint32_t n = (uint32_t)npages < npages_total ? (uint32_t)npages : npages_total;

    /* Distinct pages without a bitmap: step a full-period LCG modulo 2^k
     * (k smallest with 2^k >= pages; a = 5, c odd) through a bijective
     * scrambler and skip indices past the end ("cycle walking"). */
    uint32_t mask = 1;
    while (mask < npages_total)
        mask <<= 1;
    mask -= 1;
    uint32_t s = (uint32_t)seed ^ 0x9e3779b9u;
    if (s == 0)
        s = 1;
    uint32_t x = xorshift32(&s) & mask, c = xorshift32(&s) | 1, mul = xorshift32(&s) | 1;
    for (uint32_t done = 0; done < n;) {
        x = (5 * x + c) & mask;
        uint32_t page = ((x ^ (x >> 7)) * mul) & mask;   /* bijective on [0, mask] */
        if (page >= npages_total)
            continue;
        uint32_t *w = (uint32_t *)(region + (size_t)page * PAGE);
        w[(page ^ x) % (PAGE / 4)] = ++writes;
        done++;
    }
    return (int32_t)writes;
}

WM_EXPORT(dt_checksum) int64_t dt_checksum(void) {
    if (!region)
        return 0;
    const uint64_t *w = (const uint64_t *)region;
    uint64_t h = WM_FNV64_INIT;
    for (size_t i = 0; i < (size_t)npages_total * (PAGE / 8); i++)
        h = (h ^ w[i]) * 0x100000001b3ULL;
    return (int64_t)h;
}

WM_EXPORT(dt_base) int32_t dt_base(void) {
    return (int32_t)(uintptr_t)region;
}

WM_EXPORT(dt_pages) int32_t dt_pages(void) {
    return (int32_t)npages_total;
}
