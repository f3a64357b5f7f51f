/*
 * counter - the simplest stateful workload.
 *
 * State: a 64-bit counter and a malloc-grown log of 32-bit values.
 * Every export is deterministic: the same sequence of calls gives the same
 * results and the same linear memory on any host.
 *
 * Exports:
 *   int64 incr(int64 by)            add `by` (wrapping), return the new value
 *   int64 get()                     current value
 *   int64 add_and_get_log(int32 x)  append x to the log, return the log length
 *                                   (-1 if the log could not grow)
 *   int32 log_checksum()            low 32 bits of FNV-1a-64 over the log's
 *                                   entries as little-endian int32 bytes
 */
#include "wm.h"

static uint64_t value;
static int32_t *log_items;
static int32_t log_len, log_cap;

WM_EXPORT(incr) int64_t incr(int64_t by) {
    value += (uint64_t)by;   /* unsigned: wrap-around is defined */
    return (int64_t)value;
}

WM_EXPORT(get) int64_t get(void) {
    return (int64_t)value;
}

WM_EXPORT(add_and_get_log) int64_t add_and_get_log(int32_t x) {
    if (log_len == log_cap) {
        int32_t cap = log_cap ? log_cap * 2 : 16;
        int32_t *grown = realloc(log_items, (size_t)cap * sizeof *grown);
        if (!grown)
            return -1;
        log_items = grown;
        log_cap = cap;
    }
    log_items[log_len++] = x;
    return log_len;
}

WM_EXPORT(log_checksum) int32_t log_checksum(void) {
    /* wasm is little-endian, so the array's bytes are the LE encoding. */
    uint64_t h = wm_fnv64(WM_FNV64_INIT, log_items, (size_t)log_len * sizeof *log_items);
    return (int32_t)(uint32_t)h;
}
