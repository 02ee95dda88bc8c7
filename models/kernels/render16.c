/* Fused CPU kernel for the LMF render MLP at hidden width 16 (every LMF config uses 16).
 *
 * One call renders n rows: for each row, layer 0 maps its input x to 16 channels, every
 * hidden layer l computes relu((W_l h) * a_l + c_l) with (a_l, c_l) read from the row's
 * LR-cell table, and the output layer maps 16 channels to out_dim (<= 16) channels.
 *
 * Why a kernel: in eager PyTorch each 16-wide layer is a separate gather, matmul and
 * multiply-add pass over memory, so the render is bound by memory traffic. Here a row's
 * activations stay in registers through all layers; one 16-float vector per row is exactly
 * one AVX-512 register (two AVX2 / four NEON registers: GCC/Clang vector extensions keep the
 * source portable). Rows are processed in blocks of R so that R independent FMA chains hide
 * the FMA latency.
 *
 * Entry points: lmf_render16 renders independent rows; lmf_query16 (LM-LIIF, LM-CiaoSR) and
 * lmf_lte16 (LM-LTE) also do the query engine's look-up and blend the K neighbour renders of each
 * query with the local-ensemble weights, so that nothing per neighbour goes through memory.
 *
 * No allocation, no global state, no threads: the caller splits the work across threads.
 *
 * Every entry point returns 0, or an error code (LMF_E_*) before touching any output when an
 * argument is out of range: the Python binding (models/fast_render.py) reads the prototypes
 * below, so a parameter's name and type are declared here only, and turns a code into an
 * exception. Cell indices are checked against n_cells, the number of rows of the tables.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define HD 16
#define R 8

#define LMF_OK 0
#define LMF_E_WIDTH 1   /* input width not supported */
#define LMF_E_INDEX 2   /* a cell index (or the h x w grid) outside the n_cells rows of the tables */
#define LMF_E_ARG 3     /* another argument out of range (V, sizes) */

typedef float v16 __attribute__((vector_size(HD * sizeof(float))));
typedef int32_t i16v __attribute__((vector_size(HD * sizeof(int32_t))));

static inline v16 load(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }

static inline v16 relu(v16 v) {
    const v16 zero = {0};
    i16v keep = v > zero;
    return (v16)((i16v)v & keep);
}

/* Render rows [0, m) of a block (m <= R). Inlined with m = R for full blocks so that the
 * compiler unrolls the row loops and keeps acc[] in registers. */
static inline __attribute__((always_inline)) void
mlp(int m, int64_t in_x, const float *x, int64_t x_stride, const int64_t *index,
    int64_t depth, const float *tables,
    int64_t layer_stride, int64_t cell_stride, const float *w0t, const float *wht,
    const float *woutt, const float *bout, v16 *res)
{
    float h[R][HD] __attribute__((aligned(64)));
    v16 acc[R];
    for (int r = 0; r < m; ++r) {
        v16 a = {0};
        const float *xr = x + r * x_stride;
        for (int64_t k = 0; k < in_x; ++k) a += load(w0t + k * HD) * xr[k];
        acc[r] = a;
    }
    for (int64_t l = 0; l < depth; ++l) {
        if (l > 0) {
            const float *wt = wht + (l - 1) * HD * HD;
            for (int r = 0; r < m; ++r) acc[r] = (v16){0};
            for (int k = 0; k < HD; ++k) {
                v16 wk = load(wt + k * HD);
                for (int r = 0; r < m; ++r) acc[r] += wk * h[r][k];
            }
        }
        for (int r = 0; r < m; ++r) {
            const float *t = tables + l * layer_stride + index[r] * cell_stride;
            v16 v = relu(acc[r] * load(t) + load(t + HD));
            memcpy(h[r], &v, sizeof v);
        }
    }
    for (int r = 0; r < m; ++r) res[r] = load(bout);
    for (int k = 0; k < HD; ++k) {
        v16 wk = load(woutt + k * HD);
        for (int r = 0; r < m; ++r) res[r] += wk * h[r][k];
    }
}

static inline __attribute__((always_inline)) void
store(int m, const v16 *res, int64_t out_dim, float *out)
{
    for (int r = 0; r < m; ++r) {
        float o[HD] __attribute__((aligned(64)));
        memcpy(o, &res[r], sizeof o);
        memcpy(out + r * out_dim, o, out_dim * sizeof(float));
    }
}

static inline __attribute__((always_inline)) void
block(int m, int64_t in_dim, const float *x, const int64_t *index, int64_t depth,
      const float *tables, int64_t layer_stride, int64_t cell_stride,
      const float *w0t, const float *wht, int64_t out_dim, const float *woutt,
      const float *bout, float *out)
{
    v16 res[R];
    mlp(m, in_dim, x, in_dim, index, depth, tables, layer_stride, cell_stride,
        w0t, wht, woutt, bout, res);
    store(m, res, out_dim, out);
}

/* x: (n, in_dim); index: (n,) LR-cell row of each input row, in [0, n_cells); tables: layer l,
 * cell c starts at tables + l * layer_stride + c * cell_stride and holds [a_l (16) | c_l (16)];
 * w0t: (in_dim, 16) = W_0^T; wht: (depth - 1, 16, 16) = W_l^T; woutt: (16, 16) = W_out^T
 * zero-padded to 16 columns; bout: 16 (zero-padded); out: (n, out_dim). */
int lmf_render16(int64_t n, int64_t in_dim, const float *x, const int64_t *index, int64_t n_cells,
                 int64_t depth, const float *tables, int64_t layer_stride, int64_t cell_stride,
                 const float *w0t, const float *wht, int64_t out_dim, const float *woutt,
                 const float *bout, float *out)
{
    if (n < 0 || depth < 1 || out_dim < 1 || out_dim > HD) return LMF_E_ARG;
    for (int64_t j = 0; j < n; ++j)
        if (index[j] < 0 || index[j] >= n_cells) return LMF_E_INDEX;
    int64_t i = 0;
    for (; i + R <= n; i += R)
        block(R, in_dim, x + i * in_dim, index + i, depth, tables, layer_stride, cell_stride,
              w0t, wht, out_dim, woutt, bout, out + i * out_dim);
    if (i < n)
        block((int)(n - i), in_dim, x + i * in_dim, index + i, depth, tables, layer_stride,
              cell_stride, w0t, wht, out_dim, woutt, bout, out + i * out_dim);
    return LMF_OK;
}

/* Arguments common to the look-up kernels: V shifts per axis, an h x w grid within the tables. */
static inline int check_lookup(int64_t q, int64_t V, int64_t h, int64_t w, int64_t n_cells,
                               int64_t depth, int64_t out_dim)
{
    if (q < 0 || (V != 1 && V != 2) || depth < 1 || out_dim < 1 || out_dim > HD) return LMF_E_ARG;
    if (h < 1 || w < 1 || h > n_cells / w) return LMF_E_INDEX;
    return LMF_OK;
}

/* Nearest cell along one axis: the number of thresholds t[1..n-1] <= x (t from
 * query.axis_thresholds, which reproduces the reference's grid_sample look-up bit for bit). */
static inline int64_t axis_cell(float x, const float *t, int64_t n)
{
    if (!(x == x)) return 0;                               /* NaN */
    int64_t j = (int64_t)((x + 1.0f) * 0.5f * (float)n);  /* a guess, then exact steps */
    if (j < 0) j = 0;
    if (j > n - 1) j = n - 1;
    while (j < n - 1 && t[j + 1] <= x) ++j;
    while (j > 0 && t[j] > x) --j;
    return j;
}

/* The look-up geometry of one image: V shifts per axis (2 with the local ensemble, else 1), the
 * h x w grid, thresholds th_r/th_c and cell centres cen_r/cen_c per axis, the shifts
 * shift_r/shift_c and the clamp of shifted coordinates. */
struct grid {
    int64_t V, h, w;
    const float *th_r, *th_c, *cen_r, *cen_c, *shift_r, *shift_c;
    float clamp;
};

/* Look-up of the m queries of a block (coordinates coord + r * coord_sq), exactly as
 * query.locate computes it: per neighbour k = 0..V*V-1 and query r, the cell index, the
 * relative coordinate and the ensemble weight. */
static inline __attribute__((always_inline)) void
locate_block(const struct grid *g, int m, const float *coord, int64_t coord_sq,
             int64_t index[4][R], float weight[4][R], float rel[4][R][2])
{
    const int64_t V = g->V, K = V * V, h = g->h, w = g->w;
    for (int r = 0; r < m; ++r) {
        const float *c = coord + r * coord_sq;
        int64_t ri[2], ci[2];
        float rr[2], rc[2];
        for (int64_t v = 0; v < V; ++v) {
            float sy = c[0] + g->shift_r[v], sx = c[1] + g->shift_c[v];
            sy = sy < -g->clamp ? -g->clamp : (sy > g->clamp ? g->clamp : sy);
            sx = sx < -g->clamp ? -g->clamp : (sx > g->clamp ? g->clamp : sx);
            ri[v] = axis_cell(sy, g->th_r, h);
            ci[v] = axis_cell(sx, g->th_c, w);
            rr[v] = (c[0] - g->cen_r[ri[v]]) * (float)h;
            rc[v] = (c[1] - g->cen_c[ci[v]]) * (float)w;
        }
        float area[4], total = 0.0f;
        for (int64_t k = 0; k < K; ++k) {
            const int64_t vr = k / V, vc = k % V;
            index[k][r] = ri[vr] * w + ci[vc];
            rel[k][r][0] = rr[vr];
            rel[k][r][1] = rc[vc];
            float a = rr[vr] * rc[vc];
            area[k] = (a < 0 ? -a : a) + 1e-9f;
        }
        for (int64_t k = 0; k < K; ++k) total += area[k];
        /* each prediction is weighted by the area of the diagonally opposite neighbour */
        for (int64_t k = 0; k < K; ++k) weight[k][r] = K == 1 ? 1.0f : area[K - 1 - k] / total;
    }
}

/* Blend the K renders of m queries whose inputs are x[k][r][0:in_x]. */
static inline __attribute__((always_inline)) void
render_blend(int m, int64_t K, int64_t in_x, const float *x, int64_t x_sk, int64_t x_sr,
             int64_t index[4][R], float weight[4][R], int64_t depth, const float *tables,
             int64_t layer_stride, int64_t cell_stride, const float *w0t, const float *wht,
             int64_t out_dim, const float *woutt, const float *bout, float *out)
{
    v16 res[R], sum[R];
    for (int r = 0; r < m; ++r) sum[r] = (v16){0};
    for (int64_t k = 0; k < K; ++k) {
        if (m == R)
            mlp(R, in_x, x + k * x_sk, x_sr, index[k], depth, tables, layer_stride,
                cell_stride, w0t, wht, woutt, bout, res);
        else
            mlp(m, in_x, x + k * x_sk, x_sr, index[k], depth, tables, layer_stride,
                cell_stride, w0t, wht, woutt, bout, res);
        for (int r = 0; r < m; ++r) sum[r] += res[r] * weight[k][r];
    }
    store(m, sum, out_dim, out);
}

/* Everything the query engine does per query, fused with the render and the blend, for the
 * queries of one image: local-ensemble look-up (V = 2 shifts per axis, or V = 1), relative
 * coordinate, optional relative cell, area weights, K = V*V modulated MLP passes, blend.
 *
 * coord/cell: (q, 2) (row, col) with row strides coord_sq/cell_sq (cell_sq may be 0);
 * use_cell: append cell * (h, w) to the MLP input; th_r/th_c, cen_r/cen_c: thresholds and cell
 * centres per axis; shift_r/shift_c: V shifts per axis; clamp: the look-up clamp; the rest as in
 * lmf_render16 (tables of this image, h * w <= n_cells; the look-up only yields cells of the
 * h x w grid). out: (q, out_dim). */
int lmf_query16(int64_t q, const float *coord, int64_t coord_sq, const float *cell,
                int64_t cell_sq, int64_t use_cell, int64_t V, int64_t h, int64_t w,
                const float *th_r, const float *th_c, const float *cen_r, const float *cen_c,
                const float *shift_r, const float *shift_c, float clamp, int64_t n_cells, int64_t depth,
                const float *tables, int64_t layer_stride, int64_t cell_stride,
                const float *w0t, const float *wht, int64_t out_dim, const float *woutt,
                const float *bout, float *out)
{
    const int rc = check_lookup(q, V, h, w, n_cells, depth, out_dim);
    if (rc != LMF_OK) return rc;
    const int64_t K = V * V, in_x = use_cell ? 4 : 2;
    const struct grid g = {V, h, w, th_r, th_c, cen_r, cen_c, shift_r, shift_c, clamp};
    for (int64_t i0 = 0; i0 < q; i0 += R) {
        const int m = (int)(q - i0 < R ? q - i0 : R);
        float x[4][R][4], weight[4][R], rel[4][R][2];
        int64_t index[4][R];
        locate_block(&g, m, coord + i0 * coord_sq, coord_sq, index, weight, rel);
        for (int r = 0; r < m; ++r) {
            const float *ce = cell + (i0 + r) * cell_sq;
            for (int64_t k = 0; k < K; ++k) {
                x[k][r][0] = rel[k][r][0];
                x[k][r][1] = rel[k][r][1];
                if (use_cell) {
                    x[k][r][2] = ce[0] * (float)h;
                    x[k][r][3] = ce[1] * (float)w;
                }
            }
        }
        render_blend(m, K, in_x, &x[0][0][0], R * 4, 4, index, weight, depth, tables,
                     layer_stride, cell_stride, w0t, wht, out_dim, woutt, bout, out + i0 * out_dim);
    }
    return LMF_OK;
}

/* cos(pi p) and sin(pi p) as PyTorch evaluates them on float32: the argument pi*p is rounded
 * to float32 first, then reduced by pi/2 (two-part constant) and evaluated by polynomials on
 * [-pi/4, pi/4] (errors ~1e-9, below float32 rounding). */
static inline void cos_sin_pi(float p, float *c, float *s)
{
    const float a = 3.14159265358979323846f * p;
    const float k = rintf(a * 0.636619772367581343f);
    float t = a - k * 1.57079637050628662109375f;
    t = t - k * -4.37113900018624283e-8f;
    const float t2 = t * t;
    const float sn = t * (1.0f + t2 * (-1.0f / 6 + t2 * (1.0f / 120 + t2 * (-1.0f / 5040 + t2 * (1.0f / 362880)))));
    const float cs = 1.0f + t2 * (-0.5f + t2 * (1.0f / 24 + t2 * (-1.0f / 720 + t2 * (1.0f / 40320
                     + t2 * (-1.0f / 3628800)))));
    const int q = ((int)k) & 3;  /* a = t + q * pi/2 */
    const float s0 = (q & 1) ? cs : sn, c0 = (q & 1) ? sn : cs;
    *s = (q & 2) ? -s0 : s0;
    *c = ((q + 1) & 2) ? -c0 : c0;
}

/* LM-LTE's per-query path in one pass: look-up as lmf_query16; for neighbour k with cell
 * table row [coef (2m) | freq (2m)] (code + index * code_stride) the MLP input is
 * coef * [cos(pi phi), sin(pi phi)], phi_j = freq_2j * rel_row + freq_2j+1 * rel_col + phase_j
 * (phase: m floats per query, row stride phase_sq, 0 to share); code has n_cells rows too.
 * m2 = 2m <= 128 and even, else LMF_E_WIDTH. */
int lmf_lte16(int64_t q, const float *coord, int64_t coord_sq, const float *phase,
              int64_t phase_sq, int64_t m2, int64_t V, int64_t h, int64_t w, const float *th_r,
              const float *th_c, const float *cen_r, const float *cen_c, const float *shift_r,
              const float *shift_c, float clamp, const float *code, int64_t code_stride,
              int64_t n_cells, int64_t depth, const float *tables, int64_t layer_stride,
              int64_t cell_stride, const float *w0t, const float *wht, int64_t out_dim,
              const float *woutt, const float *bout, float *out)
{
    enum { MAXIN = 128 };
    const int64_t m = m2 / 2, K = V * V;
    if (m2 > MAXIN || m2 < 2 || m2 % 2) return LMF_E_WIDTH;
    const int rc = check_lookup(q, V, h, w, n_cells, depth, out_dim);
    if (rc != LMF_OK) return rc;
    const struct grid g = {V, h, w, th_r, th_c, cen_r, cen_c, shift_r, shift_c, clamp};
    for (int64_t i0 = 0; i0 < q; i0 += R) {
        const int mq = (int)(q - i0 < R ? q - i0 : R);
        float x[4][R][MAXIN], weight[4][R], rel[4][R][2];
        int64_t index[4][R];
        locate_block(&g, mq, coord + i0 * coord_sq, coord_sq, index, weight, rel);
        for (int r = 0; r < mq; ++r) {
            const float *ph = phase + (i0 + r) * phase_sq;
            for (int64_t k = 0; k < K; ++k) {
                const float *coef = code + index[k][r] * code_stride, *freq = coef + m2;
                const float *rl = rel[k][r];
                float *xr = x[k][r];
                for (int64_t j = 0; j < m; ++j) {
                    const float phi = freq[2 * j] * rl[0] + freq[2 * j + 1] * rl[1] + ph[j];
                    float cj, sj;
                    cos_sin_pi(phi, &cj, &sj);
                    xr[j] = coef[j] * cj;
                    xr[m + j] = coef[m + j] * sj;
                }
            }
        }
        render_blend(mq, K, m2, &x[0][0][0], R * MAXIN, MAXIN, index, weight, depth, tables,
                     layer_stride, cell_stride, w0t, wht, out_dim, woutt, bout, out + i0 * out_dim);
    }
    return LMF_OK;
}
