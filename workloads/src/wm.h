/*
 * wm.h - conventions shared by every wasm-migrate example workload.
 *
 * Every workload is a wasm32-wasi *reactor*: the host instantiates it, calls
 * `_initialize` once, then calls exports; all state lives in linear memory
 * (plus the internal `__stack_pointer` global, which is back at its initial
 * value whenever no call is running).
 *
 * Byte-passing convention (project-wide): the host asks the guest for a
 * buffer with `wm_alloc(len)`, writes bytes at the returned pointer, passes
 * (ptr, len) to an export, then releases the buffer with `wm_free(ptr)`.
 * Exports that return bytes return a pointer to a length-prefixed buffer:
 * a u32 little-endian length followed by that many bytes.
 */
#ifndef WM_H
#define WM_H

#include <stdint.h>
#include <stdlib.h>

/* Export a function from the module under its own name. */
#define WM_EXPORT(name) __attribute__((export_name(#name)))

/* Returns a buffer of len bytes for the host to fill, or 0 on failure. */
WM_EXPORT(wm_alloc) int32_t wm_alloc(int32_t len) {
    if (len < 0)
        return 0;
    return (int32_t)(uintptr_t)malloc(len ? (size_t)len : 1);
}

/* Releases a buffer obtained from wm_alloc (0 is ignored). */
WM_EXPORT(wm_free) void wm_free(int32_t ptr) {
    free((void *)(uintptr_t)ptr);
}

/* 64-bit FNV-1a, continued from h (start with WM_FNV64_INIT). */
#define WM_FNV64_INIT 0xcbf29ce484222325ULL
static inline uint64_t wm_fnv64(uint64_t h, const void *data, size_t len) {
    const uint8_t *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* splitmix64 finaliser: a cheap bijective 64-bit mixer. */
static inline uint64_t wm_mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

#endif
