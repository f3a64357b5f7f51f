/*
 * trap - misbehaving exports, for testing how the host contains a guest.
 *
 * Exports (besides wm_alloc / wm_free):
 *   int32 boom()         executes `unreachable`: always traps
 *   int32 spin(int32 n)  n >= 0: counts to n and returns n;
 *                        n < 0: loops forever (the host must interrupt it,
 *                        e.g. with fuel or epoch interruption)
 *   int32 hog(int32 mb)  mallocs mb MiB and keeps it; 1 on success, 0 on
 *                        failure (including mb outside 0..4095)
 *   int32 hog_mb()       MiB successfully hogged so far
 *   int64 grind()        counts in memory until the host interrupts it: how
 *                        far it gets depends on timing, so its effect is
 *                        deliberately nondeterministic (replay cannot repeat it)
 *   int64 ground()       how far grind() got, in total
 */
#include "wm.h"

static int32_t hogged_mb;
static void *hogged;   /* hogged blocks, chained through their first word */

WM_EXPORT(boom) int32_t boom(void) {
    __builtin_trap();
}

WM_EXPORT(spin) int32_t spin(int32_t n) {
    volatile int32_t i = 0;   /* volatile: the loops must really run */
    if (n < 0)
        for (;;)
            i++;
    while (i < n)
        i++;
    return i;
}

static volatile int64_t ground_total;

WM_EXPORT(grind) int64_t grind(void) {
    for (;;)
        ground_total++;
}

WM_EXPORT(ground) int64_t ground(void) {
    return ground_total;
}

WM_EXPORT(hog) int32_t hog(int32_t mb) {
    if (mb < 0 || mb >= 4096)
        return 0;
    /* Never freed: that is the point. Keeping the block reachable also stops
     * the compiler from deleting an allocation nobody uses. */
    void **p = malloc(mb ? (size_t)mb << 20 : sizeof *p);
    if (!p)
        return 0;
    *p = hogged;
    hogged = p;
    hogged_mb += mb;
    return 1;
}

WM_EXPORT(hog_mb) int32_t hog_mb(void) {
    return hogged_mb;
}
