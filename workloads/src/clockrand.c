/*
 * clockrand - a deliberately nondeterministic workload.
 *
 * It reads the WASI clocks and the WASI random source and mixes what it gets
 * into its state, so two runs never agree unless the host records and replays
 * those imports. It also prints to stdout (WASI fd_write).
 *
 * Exports (besides wm_alloc / wm_free):
 *   int64 sample()      read CLOCK_REALTIME, CLOCK_MONOTONIC, time() and 8
 *                       bytes from getentropy, mix them into the state and
 *                       return the new state (0 is never returned)
 *   int64 state()       current state (0 before the first sample)
 *   int32 samples()     number of sample() calls so far
 *   int32 say(int32 n)  print one line
 *                       "clockrand say <n> samples=<k> state=<16 hex digits>"
 *                       to stdout, flush it, and return the bytes written
 *                       (-1 on error)
 */
#define _DEFAULT_SOURCE  /* clock_gettime, getentropy */
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include "wm.h"

static uint64_t st;
static int32_t nsamples;

static uint64_t ns(clockid_t clock) {
    struct timespec ts;
    if (clock_gettime(clock, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

WM_EXPORT(sample) int64_t sample(void) {
    uint64_t entropy = 0;
    if (getentropy(&entropy, sizeof entropy) != 0)
        entropy = 0;
    uint64_t x = st;
    x = wm_mix64(x ^ ns(CLOCK_REALTIME));
    x = wm_mix64(x ^ ns(CLOCK_MONOTONIC));
    x = wm_mix64(x ^ (uint64_t)time(NULL));
    x = wm_mix64(x ^ entropy);
    st = x ? x : 1;
    nsamples++;
    return (int64_t)st;
}

WM_EXPORT(state) int64_t state(void) {
    return (int64_t)st;
}

WM_EXPORT(samples) int32_t samples(void) {
    return nsamples;
}

WM_EXPORT(say) int32_t say(int32_t n) {
    int written = printf("clockrand say %d samples=%d state=%016llx\n",
                         (int)n, (int)nsamples, (unsigned long long)st);
    if (fflush(stdout) != 0)
        return -1;
    return written;
}
