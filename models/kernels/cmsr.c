/* CMSR (models/cmsr.py) on the CPU: the points a level renders, the level merge (each point either
 * a rendered value or the bilinear sample of the coarser level) and the final resampling (at given
 * points, or onto a separable target grid written as the output image's planes), each in one pass
 * over the points instead of several full-size tensor passes.
 *
 * Compiled into the same library as render16.c (models/fast_render.py binds the prototypes of
 * both files); no allocation, no global state, no threads: the caller splits rows over threads.
 * Error codes are those of render16.c.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define LMF_OK 0
#define LMF_E_INDEX 2   /* an index (LR row, rank of a rendered point) out of range */
#define LMF_E_ARG 3     /* another argument out of range (sizes, strides) */

/* Bilinear samples with border padding (align_corners=False) computed as PyTorch's vectorised
 * CPU grid_sample computes them (AVX2/AVX-512 builds), operation by operation: unnormalise as
 * fma(c + 1, size/2, -0.5), clip to [0, size - 1], floor, the four area weights, the four
 * products accumulated by a chain of FMAs, a neighbour outside the image reading 0. No other
 * contraction, so the result is grid_sample's to the bit there (on other builds it differs in
 * the last bits; tests/test_cmsr_speed_paths.py compares them). */
#if defined(__GNUC__) && !defined(__clang__)
#define LMF_NO_FMA __attribute__((optimize("fp-contract=off")))
#else
#define LMF_NO_FMA
#endif
#if defined(__clang__)
#pragma clang fp contract(off)
#endif

static inline LMF_NO_FMA float source_index(float c, int64_t size)
{
    const float half = (float)size / 2, top = (float)(size - 1);
    const float c1 = c + 1.0f;
    float s = fmaf(c1, half, -0.5f);
    s = s > 0.0f ? s : 0.0f;
    return s < top ? s : top;
}

#define LB 16  /* points per block: each step below is a loop over the block's lanes (vectorised) */

typedef float v4 __attribute__((vector_size(4 * sizeof(float))));

/* Images are stored pixel by pixel, 4 floats a pixel (r, g, b, 0): a neighbour is one 16-byte
 * load and its three channels one vector operation (2.7x faster than three planes here). */

/* o[l] = the four pixels of img at i00..i11 (float offsets) weighted nw, ne, sw, se: the first
 * product, then a chain of FMAs (grid_sample's order). */
static inline LMF_NO_FMA void blend_block(const float *img, const int32_t i00[LB], const int32_t i01[LB],
                                          const int32_t i10[LB], const int32_t i11[LB], const float nw[LB],
                                          const float ne[LB], const float sw[LB], const float se[LB], v4 o[LB])
{
    for (int l = 0; l < LB; ++l) {
        v4 a, b, c, d;
        memcpy(&a, img + i00[l], sizeof a);
        memcpy(&b, img + i01[l], sizeof b);
        memcpy(&c, img + i10[l], sizeof c);
        memcpy(&d, img + i11[l], sizeof d);
        v4 acc = a * nw[l];
        for (int k = 0; k < 4; ++k) acc[k] = fmaf(b[k], ne[l], acc[k]);
        for (int k = 0; k < 4; ++k) acc[k] = fmaf(c[k], sw[l], acc[k]);
        for (int k = 0; k < 4; ++k) acc[k] = fmaf(d[k], se[l], acc[k]);
        o[l] = acc;
    }
}

/* The bilinear samples of img (ih x iw pixels) at the LB points (x[l], y[l]) in grid_sample's
 * [-1, 1] units -> o[l] (every lane: fixed trip counts vectorise; callers fill unused lanes with
 * valid points and ignore them). A neighbour outside the image is read clamped: its weight is
 * then exactly 0 (the point is clipped to the last row/column), so the sum is the one with the
 * neighbour read as 0. */
static inline LMF_NO_FMA void bilinear_block(const float *img, int64_t ih, int64_t iw,
                                             const float x[LB], const float y[LB], v4 o[LB])
{
    float nw[LB], ne[LB], sw[LB], se[LB];
    int32_t i00[LB], i01[LB], i10[LB], i11[LB];
    for (int l = 0; l < LB; ++l) {
        const float ix = source_index(x[l], iw), iy = source_index(y[l], ih);
        const int32_t c0 = (int32_t)ix, r0 = (int32_t)iy;  /* ix, iy >= 0: truncation is floor */
        const float wgt = ix - (float)c0, e = 1.0f - wgt, n = iy - (float)r0, s = 1.0f - n;
        nw[l] = s * e; ne[l] = s * wgt; sw[l] = n * e; se[l] = n * wgt;
        const int32_t dc = c0 + 1 < iw ? 4 : 0, dr = r0 + 1 < ih ? 4 * (int32_t)iw : 0;
        i00[l] = 4 * (r0 * (int32_t)iw + c0);
        i01[l] = i00[l] + dc;
        i10[l] = i00[l] + dr;
        i11[l] = i10[l] + dc;
    }
    blend_block(img, i00, i01, i10, i11, nw, ne, sw, se, o);
}

/* The final CMSR resampling: n points coord (row, col) in [-1, 1] (row stride coord_sq) sampled
 * from img (ih x iw pixels of 4 floats) -> out (n, 3). */
int lmf_cmsr_sample(int64_t n, const float *coord, int64_t coord_sq, int64_t ih, int64_t iw,
                    const float *img, float *out)
{
    if (n < 0 || ih < 1 || iw < 1 || 4 * ih * iw > INT32_MAX) return LMF_E_ARG;
    for (int64_t i0 = 0; i0 < n; i0 += LB) {
        const int m = (int)(n - i0 < LB ? n - i0 : LB);
        float x[LB] = {0}, y[LB] = {0};
        v4 o[LB];
        for (int l = 0; l < m; ++l) {
            const float *c = coord + (i0 + l) * coord_sq;
            y[l] = c[0];
            x[l] = c[1];
        }
        bilinear_block(img, ih, iw, x, y, o);
        for (int l = 0; l < m; ++l) {
            float *dst = out + 3 * (i0 + l);
            dst[0] = o[l][0]; dst[1] = o[l][1]; dst[2] = o[l][2];
        }
    }
    return LMF_OK;
}

/* One CMSR level, rows [0, n_rows) of a qw-wide level grid: a point whose entry of ``mask``
 * (the mask row lr_row[r] of mask_w >= qw floats, nonzero = rendered) is set takes the next row of
 * pred (N, 3), starting at pred row first[r]; any other point is the bilinear sample of prev
 * (ph x pw pixels of 4 floats) at the level grid's point (gx, gy planes, row-major, qw per row).
 * out: qw pixels of 4 floats per row. An inconsistent first/mask (more marked points than pred
 * rows) is LMF_E_INDEX, found while writing. */
int lmf_cmsr_merge(int64_t n_rows, int64_t qw, const float *gx, const float *gy,
                   const int64_t *lr_row, int64_t mask_rows, int64_t mask_w, const float *mask,
                   const int64_t *first, int64_t n_pred, const float *pred, int64_t ph, int64_t pw,
                   const float *prev, float *out)
{
    if (n_rows < 0 || qw < 0 || mask_w < qw || ph < 1 || pw < 1 || 4 * ph * pw > INT32_MAX) return LMF_E_ARG;
    for (int64_t r = 0; r < n_rows; ++r)
        if (lr_row[r] < 0 || lr_row[r] >= mask_rows || first[r] < 0 || first[r] > n_pred) return LMF_E_INDEX;
    for (int64_t r = 0; r < n_rows; ++r) {
        const float *msk = mask + lr_row[r] * mask_w;
        int64_t k = first[r];
        for (int64_t c0 = 0; c0 < qw; c0 += LB) {
            const int m = (int)(qw - c0 < LB ? qw - c0 : LB);
            const int64_t i0 = r * qw + c0;
            v4 o[LB];
            int marked = 0;
            for (int l = 0; l < m; ++l) marked += msk[c0 + l] != 0.0f;
            if (marked < m) {  /* a block of rendered points only needs no samples */
                float x[LB] = {0}, y[LB] = {0};
                memcpy(x, gx + i0, m * sizeof(float));
                memcpy(y, gy + i0, m * sizeof(float));
                bilinear_block(prev, ph, pw, x, y, o);
            }
            for (int l = 0; l < m; ++l) {
                if (msk[c0 + l] != 0.0f) {
                    if (k >= n_pred) return LMF_E_INDEX;
                    const v4 v = {pred[3 * k], pred[3 * k + 1], pred[3 * k + 2], 0.0f};
                    o[l] = v;
                    ++k;
                }
            }
            memcpy(out + 4 * i0, o, m * sizeof(v4));
        }
    }
    return LMF_OK;
}

/* The rendered points of a CMSR level, rows [0, n_rows) (mask, lr_row, first as in
 * lmf_cmsr_merge): their (row, col) coordinates (y, x of the level grid planes gx, gy) written
 * to pts (N, 2) in row-major order, level row r's first at pts row first[r]. */
int lmf_cmsr_points(int64_t n_rows, int64_t qw, const float *gx, const float *gy,
                    const int64_t *lr_row, int64_t mask_rows, int64_t mask_w, const float *mask,
                    const int64_t *first, int64_t n_pts, float *pts)
{
    if (n_rows < 0 || qw < 0 || mask_w < qw) return LMF_E_ARG;
    for (int64_t r = 0; r < n_rows; ++r)
        if (lr_row[r] < 0 || lr_row[r] >= mask_rows || first[r] < 0 || first[r] > n_pts) return LMF_E_INDEX;
    for (int64_t r = 0; r < n_rows; ++r) {
        const float *msk = mask + lr_row[r] * mask_w;
        int64_t k = first[r];
        for (int64_t c = 0; c < qw; ++c) {
            if (msk[c] != 0.0f) {
                if (k >= n_pts) return LMF_E_INDEX;
                pts[2 * k] = gy[r * qw + c];
                pts[2 * k + 1] = gx[r * qw + c];
                ++k;
            }
        }
    }
    return LMF_OK;
}

/* The set-up of bilinear_block along one axis for n coordinates c in [-1, 1] (grid_sample's units)
 * on an axis of size pixels: the first neighbour i0[k], the offset to the second one step[k]
 * (1, or 0 on the last pixel, whose second neighbour then has weight 0), its weight hi[k] (the
 * fraction) and the first one's lo[k] = 1 - hi[k]. A separable grid's samples are then the
 * products of its row's and its column's set-ups, the same bits as per point. */
int lmf_cmsr_axis(int64_t n, const float *c, int64_t size, int64_t *i0, int64_t *step, float *lo, float *hi)
{
    if (n < 0 || size < 1) return LMF_E_ARG;
    for (int64_t k = 0; k < n; ++k) {
        const float s = source_index(c[k], size);
        const int64_t f = (int64_t)s;  /* s >= 0: truncation is floor */
        i0[k] = f;
        step[k] = f + 1 < size ? 1 : 0;
        hi[k] = s - (float)f;
        lo[k] = 1.0f - hi[k];
    }
    return LMF_OK;
}

static LMF_NO_FMA int sample_planes_rows(int64_t n_rows, int64_t W, const int64_t *r0, const int64_t *r_step,
                                         const float *r_lo, const float *r_hi, const int64_t *c0,
                                         const int64_t *c_step, const float *c_lo, const float *c_hi,
                                         int64_t iw, const float *img, const float *mul, const float *add,
                                         int64_t plane, float *out)
{
    for (int64_t r = 0; r < n_rows; ++r) {
        const float s = r_lo[r], n = r_hi[r];
        const int32_t base = 4 * (int32_t)(r0[r] * iw), dr = 4 * (int32_t)(r_step[r] * iw);
        float *row = out + r * W;
        for (int64_t j0 = 0; j0 < W; j0 += LB) {
            const int m = (int)(W - j0 < LB ? W - j0 : LB);
            float nw[LB], ne[LB], sw[LB], se[LB];
            int32_t i00[LB], i01[LB], i10[LB], i11[LB];
            v4 o[LB];
            for (int l = 0; l < LB; ++l) {
                const int64_t j = j0 + (l < m ? l : 0);  /* unused lanes repeat a valid point */
                const float e = c_lo[j], wgt = c_hi[j];
                nw[l] = s * e; ne[l] = s * wgt; sw[l] = n * e; se[l] = n * wgt;
                i00[l] = base + 4 * (int32_t)c0[j];
                i01[l] = i00[l] + 4 * (int32_t)c_step[j];
                i10[l] = i00[l] + dr;
                i11[l] = i01[l] + dr;
            }
            blend_block(img, i00, i01, i10, i11, nw, ne, sw, se, o);
            for (int k = 0; k < 3; ++k) {
                float *dst = row + k * plane + j0;
                for (int l = 0; l < m; ++l) {
                    float v = o[l][k] * mul[k];
                    v = v + add[k];
                    v = v < 0.0f ? 0.0f : v;
                    dst[l] = v > 1.0f ? 1.0f : v;
                }
            }
        }
    }
    return LMF_OK;
}

/* The final CMSR resampling onto a separable target grid, written as planes: rows [0, n_rows) of
 * a W-wide output, row r's axis set-up (lmf_cmsr_axis) at r0/r_step/r_lo/r_hi[r], column c's at
 * c0/c_step/c_lo/c_hi[c]; img: ih x iw pixels of 4 floats. Channel k of a sample v is written as
 * min(max(v * mul[k] + add[k], 0), 1) (two roundings, a NaN kept) to out[k * plane + r * W + c]. */
int lmf_cmsr_sample_planes(int64_t n_rows, int64_t W, const int64_t *r0, const int64_t *r_step,
                           const float *r_lo, const float *r_hi, const int64_t *c0, const int64_t *c_step,
                           const float *c_lo, const float *c_hi, int64_t ih, int64_t iw, const float *img,
                           const float *mul, const float *add, int64_t plane, float *out)
{
    if (n_rows < 0 || W < 0 || ih < 1 || iw < 1 || 4 * ih * iw > INT32_MAX || plane < W) return LMF_E_ARG;
    for (int64_t r = 0; r < n_rows; ++r)
        if (r0[r] < 0 || r0[r] >= ih || r_step[r] < 0 || r0[r] + r_step[r] >= ih) return LMF_E_INDEX;
    for (int64_t c = 0; c < W; ++c)
        if (c0[c] < 0 || c0[c] >= iw || c_step[c] < 0 || c0[c] + c_step[c] >= iw) return LMF_E_INDEX;
    return sample_planes_rows(n_rows, W, r0, r_step, r_lo, r_hi, c0, c_step, c_lo, c_hi, iw, img, mul, add,
                              plane, out);
}
