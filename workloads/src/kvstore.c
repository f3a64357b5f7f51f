/*
 * kvstore - a hash-map key-value store on malloc/realloc/free.
 *
 * Keys and values are arbitrary byte strings passed with the wm_alloc /
 * wm_free convention (see wm.h). The map uses separate chaining; each entry
 * is one allocation holding its key and value bytes, and the bucket array
 * doubles (rehashing every entry) when the load factor passes 3/4.
 *
 * Exports (besides wm_alloc / wm_free):
 *   int32 kv_put(int32 kptr, int32 klen, int32 vptr, int32 vlen)
 *         store a copy; 1 = new key, 0 = replaced, -1 = bad args / no memory
 *   int32 kv_get(int32 kptr, int32 klen)
 *         pointer to a result buffer [u32 LE length][value bytes], or 0 if the
 *         key is missing; the buffer belongs to the store and stays valid
 *         until the next kv_get
 *   int32 kv_del(int32 kptr, int32 klen)   1 = deleted, 0 = missing
 *   int32 kv_count()                       number of pairs
 *   int64 kv_checksum()
 *         order-independent digest: the wrapping sum over all pairs of
 *         mix64(fnv1a64(u32le(klen) || key || value)); 0 when empty
 */
#include <string.h>
#include "wm.h"

struct entry {
    struct entry *next;
    uint32_t hash;
    uint32_t klen, vlen;
    uint8_t bytes[];      /* klen key bytes, then vlen value bytes */
};

static struct entry **buckets;
static uint32_t nbuckets;  /* a power of two, or 0 before the first put */
static int32_t count;

static uint8_t *result;    /* kv_get's result buffer, reused and grown */
static size_t result_cap;

static uint32_t key_hash(const uint8_t *key, uint32_t klen) {
    return (uint32_t)wm_mix64(wm_fnv64(WM_FNV64_INIT, key, klen));
}

/* Returns the link that points at the entry for key (or at NULL if absent). */
static struct entry **find(const uint8_t *key, uint32_t klen, uint32_t hash) {
    struct entry **link = &buckets[hash & (nbuckets - 1)];
    for (; *link; link = &(*link)->next) {
        struct entry *e = *link;
        if (e->hash == hash && e->klen == klen && memcmp(e->bytes, key, klen) == 0)
            break;
    }
    return link;
}

static int resize(uint32_t n) {
    struct entry **fresh = calloc(n, sizeof *fresh);
    if (!fresh)
        return -1;
    for (uint32_t i = 0; i < nbuckets; i++) {
        struct entry *e = buckets[i];
        while (e) {
            struct entry *next = e->next;
            e->next = fresh[e->hash & (n - 1)];
            fresh[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    free(buckets);
    buckets = fresh;
    nbuckets = n;
    return 0;
}

WM_EXPORT(kv_put) int32_t kv_put(int32_t kptr, int32_t klen, int32_t vptr, int32_t vlen) {
    if (klen < 0 || vlen < 0 || klen > INT32_MAX - vlen)
        return -1;
    if ((nbuckets == 0 && resize(16) < 0) ||
        ((uint32_t)count + 1 > nbuckets / 4 * 3 && resize(nbuckets * 2) < 0))
        return -1;

    const uint8_t *key = (const uint8_t *)(uintptr_t)kptr;
    uint32_t hash = key_hash(key, (uint32_t)klen);
    struct entry **link = find(key, (uint32_t)klen, hash);
    struct entry *old = *link;
    /* realloc keeps the key bytes when replacing an existing value */
    struct entry *e = realloc(old, sizeof *e + (size_t)klen + (size_t)vlen);
    if (!e)
        return -1;
    if (!old) {
        e->next = NULL;
        e->hash = hash;
        e->klen = (uint32_t)klen;
        memcpy(e->bytes, key, (size_t)klen);
        count++;
    }
    e->vlen = (uint32_t)vlen;
    memcpy(e->bytes + klen, (const void *)(uintptr_t)vptr, (size_t)vlen);
    *link = e;
    return old ? 0 : 1;
}

WM_EXPORT(kv_get) int32_t kv_get(int32_t kptr, int32_t klen) {
    if (klen < 0 || nbuckets == 0)
        return 0;
    const uint8_t *key = (const uint8_t *)(uintptr_t)kptr;
    struct entry *e = *find(key, (uint32_t)klen, key_hash(key, (uint32_t)klen));
    if (!e)
        return 0;
    size_t need = 4 + (size_t)e->vlen;
    if (need > result_cap) {
        uint8_t *grown = realloc(result, need);
        if (!grown)
            return 0;
        result = grown;
        result_cap = need;
    }
    memcpy(result, &e->vlen, 4);  /* wasm is little-endian */
    memcpy(result + 4, e->bytes + e->klen, e->vlen);
    return (int32_t)(uintptr_t)result;
}

WM_EXPORT(kv_del) int32_t kv_del(int32_t kptr, int32_t klen) {
    if (klen < 0 || nbuckets == 0)
        return 0;
    const uint8_t *key = (const uint8_t *)(uintptr_t)kptr;
    struct entry **link = find(key, (uint32_t)klen, key_hash(key, (uint32_t)klen));
    struct entry *e = *link;
    if (!e)
        return 0;
    *link = e->next;
    free(e);
    count--;
    return 1;
}

WM_EXPORT(kv_count) int32_t kv_count(void) {
    return count;
}

WM_EXPORT(kv_checksum) int64_t kv_checksum(void) {
    uint64_t sum = 0;
    for (uint32_t i = 0; i < nbuckets; i++) {
        for (struct entry *e = buckets[i]; e; e = e->next) {
            uint64_t h = wm_fnv64(WM_FNV64_INIT, &e->klen, 4);
            h = wm_fnv64(h, e->bytes, (size_t)e->klen + e->vlen);
            sum += wm_mix64(h);
        }
    }
    return (int64_t)sum;
}
