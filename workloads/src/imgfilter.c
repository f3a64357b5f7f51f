/*
 * imgfilter - image-pipeline state: RGBA images that filters change in place.
 *
 * Images live in a handle table (handles are small positive integers, so a
 * bad handle from the host is rejected instead of being dereferenced).
 * Pixels are 8-bit RGBA, row-major, no padding: w * h * 4 bytes.
 * A global frame counter counts the filter passes run so far.
 *
 * Exports (besides wm_alloc / wm_free):
 *   int32 img_new(int32 w, int32 h)  new all-zero image; handle, or 0 on
 *                                    bad size / no memory
 *   int32 img_data(int32 img)        pointer to the pixels (0 if bad handle);
 *                                    the host reads and writes them in place
 *   void  img_blur(int32 img, int32 radius)
 *         box blur of all four channels, (2r+1)-wide window, edges clamped,
 *         horizontal pass then vertical pass, rounded integer means
 *   void  img_gray(int32 img)        R=G=B=(77R+150G+29B+128)>>8, alpha kept
 *   int64 img_checksum(int32 img)    FNV-1a-64 over u32le(w) u32le(h) pixels
 *                                    (0 if bad handle)
 *   void  img_free(int32 img)        release an image; its handle may be reused
 *   int32 img_frames()               filter passes run so far (blur, gray)
 */
#include <string.h>
#include "wm.h"

struct image {
    int32_t w, h;
    uint8_t *px;
};

static struct image **images;   /* images[handle - 1] */
static int32_t nimages;
static int32_t frames;

static struct image *get_image(int32_t handle) {
    if (handle < 1 || handle > nimages)
        return NULL;
    return images[handle - 1];
}

WM_EXPORT(img_new) int32_t img_new(int32_t w, int32_t h) {
    if (w <= 0 || h <= 0 || (int64_t)w * h > INT32_MAX / 4)
        return 0;
    int32_t slot = 0;
    while (slot < nimages && images[slot])
        slot++;
    if (slot == nimages) {
        struct image **grown = realloc(images, (size_t)(nimages + 1) * sizeof *grown);
        if (!grown)
            return 0;
        images = grown;
        images[nimages++] = NULL;
    }
    struct image *img = malloc(sizeof *img);
    uint8_t *px = calloc((size_t)w * h, 4);
    if (!img || !px) {
        free(img);
        free(px);
        return 0;
    }
    img->w = w;
    img->h = h;
    img->px = px;
    images[slot] = img;
    return slot + 1;
}

WM_EXPORT(img_data) int32_t img_data(int32_t handle) {
    struct image *img = get_image(handle);
    return img ? (int32_t)(uintptr_t)img->px : 0;
}

WM_EXPORT(img_free) void img_free(int32_t handle) {
    struct image *img = get_image(handle);
    if (!img)
        return;
    free(img->px);
    free(img);
    images[handle - 1] = NULL;
}

static int32_t clamp(int32_t v, int32_t lo, int32_t hi) {
    return v < lo ? lo : v > hi ? hi : v;
}

/* Sliding-window box blur of one channel along a line of n samples spaced
 * `step` bytes apart. src and dst must not overlap. */
static void blur_line(const uint8_t *src, uint8_t *dst, int32_t n, int32_t step, int32_t r) {
    uint32_t win = 2 * (uint32_t)r + 1, sum = 0;
    for (int32_t k = -r; k <= r; k++)
        sum += src[clamp(k, 0, n - 1) * step];
    for (int32_t i = 0; i < n; i++) {
        dst[i * step] = (uint8_t)((sum + win / 2) / win);
        sum += src[clamp(i + r + 1, 0, n - 1) * step];
        sum -= src[clamp(i - r, 0, n - 1) * step];
    }
}

WM_EXPORT(img_blur) void img_blur(int32_t handle, int32_t radius) {
    struct image *img = get_image(handle);
    if (!img || radius <= 0)
        return;
    int32_t w = img->w, h = img->h, stride = w * 4;
    radius = clamp(radius, 1, w > h ? w : h);
    uint8_t *tmp = malloc((size_t)stride * h);
    if (!tmp)
        return;
    for (int32_t y = 0; y < h; y++)          /* rows: px -> tmp */
        for (int32_t c = 0; c < 4; c++)
            blur_line(img->px + y * stride + c, tmp + y * stride + c, w, 4, radius);
    for (int32_t x = 0; x < w; x++)          /* columns: tmp -> px */
        for (int32_t c = 0; c < 4; c++)
            blur_line(tmp + x * 4 + c, img->px + x * 4 + c, h, stride, radius);
    free(tmp);
    frames++;
}

WM_EXPORT(img_gray) void img_gray(int32_t handle) {
    struct image *img = get_image(handle);
    if (!img)
        return;
    uint8_t *p = img->px, *end = p + (size_t)img->w * img->h * 4;
    for (; p < end; p += 4) {
        uint8_t y = (uint8_t)((77 * p[0] + 150 * p[1] + 29 * p[2] + 128) >> 8);
        p[0] = p[1] = p[2] = y;
    }
    frames++;
}

WM_EXPORT(img_checksum) int64_t img_checksum(int32_t handle) {
    struct image *img = get_image(handle);
    if (!img)
        return 0;
    uint64_t h = wm_fnv64(WM_FNV64_INIT, &img->w, 4);
    h = wm_fnv64(h, &img->h, 4);
    h = wm_fnv64(h, img->px, (size_t)img->w * img->h * 4);
    return (int64_t)h;
}

WM_EXPORT(img_frames) int32_t img_frames(void) {
    return frames;
}
