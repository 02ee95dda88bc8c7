"""Triton kernels of :mod:`models.triton_render` (imported only when ``triton`` is installed and
a kernel is first needed; ``TRITON_INTERPRET`` is read when this module is imported).

One kernel, ``query_kernel``, for the LMF decoders whose render MLP is 16 wide: each program takes
BLOCK queries of one image, looks up their K nearest LR cells, builds each neighbour's MLP input
(LM-LIIF: relative coordinate and cell; LM-LTE: the Fourier features of the cell's [coef | freq]
row), runs the modulated MLP with 16-wide activations held in registers and blends the K results.
"""
import triton
import triton.language as tl


@triton.jit
def axis_cell(x, th_ptr, n):
    # nearest of n cells along an axis = number of thresholds t[1..n-1] <= x: a guess from
    # the cell width, then exact steps (the guess is off by at most one cell)
    j = ((x + 1.0) * 0.5 * (n * 1.0)).to(tl.int32)  # n * 1.0: n may be a constexpr 1
    j = tl.minimum(tl.maximum(j, 0), n - 1)
    for _ in tl.static_range(2):
        up = tl.load(th_ptr + tl.minimum(j + 1, n - 1))
        j = tl.where((j < n - 1) & (up <= x), j + 1, j)
    for _ in tl.static_range(2):
        down = tl.load(th_ptr + j)  # t[0] = -inf: never steps below 0
        j = tl.where((j > 0) & (down > x), j - 1, j)
    return tl.where(x == x, j, 0)  # NaN -> cell 0, as the CPU kernel


@triton.jit
def neighbour(c, shift, clamp, th_ptr, cen_ptr, n):
    s = tl.minimum(tl.maximum(c + shift, -clamp), clamp)
    j = axis_cell(s, th_ptr, n)
    rel = (c - tl.load(cen_ptr + j)) * (n * 1.0)
    return j, rel


@triton.jit
def mlp_tail(acc, rowp, mask2, tab_sl, wht_ptr, woutt_ptr, bout_ptr, depth):
    # layer 0's pre-activation acc (BLOCK, 16) -> modulated hidden layers -> output (BLOCK, 16)
    cols = tl.arange(0, 16)
    sq = cols[:, None] * 16 + cols[None, :]
    a = tl.load(rowp, mask=mask2, other=0.0).to(tl.float32)
    c = tl.load(rowp + 16, mask=mask2, other=0.0).to(tl.float32)
    hid = tl.maximum(acc * a + c, 0.0)
    for l in range(1, depth):
        acc = tl.dot(hid, tl.load(wht_ptr + (l - 1) * 256 + sq), input_precision="ieee")
        lp = rowp + l * tab_sl  # tab_sl is int64 (see query_kernel)
        a = tl.load(lp, mask=mask2, other=0.0).to(tl.float32)
        c = tl.load(lp + 16, mask=mask2, other=0.0).to(tl.float32)
        hid = tl.maximum(acc * a + c, 0.0)
    out = tl.dot(hid, tl.load(woutt_ptr + sq), input_precision="ieee")
    return out + tl.load(bout_ptr + cols)[None, :]


@triton.jit
def liif_render(idx, x0, x1, x2, x3, mask2, tab_ptr, tab_sl, tab_sc, w0t_ptr, wht_ptr, woutt_ptr,
                bout_ptr, depth, USE_CELL: tl.constexpr):
    cols = tl.arange(0, 16)
    acc = x0[:, None] * tl.load(w0t_ptr + cols)[None, :]
    acc += x1[:, None] * tl.load(w0t_ptr + 16 + cols)[None, :]
    if USE_CELL:
        acc += x2[:, None] * tl.load(w0t_ptr + 32 + cols)[None, :]
        acc += x3[:, None] * tl.load(w0t_ptr + 48 + cols)[None, :]
    rowp = tab_ptr + idx.to(tl.int64)[:, None] * tab_sc + cols[None, :]
    return mlp_tail(acc, rowp, mask2, tab_sl, wht_ptr, woutt_ptr, bout_ptr, depth)


@triton.jit
def lte_render(idx, rr, rc, ph, mask2, code_ptr, code_sc, m2, tab_ptr, tab_sl, tab_sc, w0t_ptr,
               wht_ptr, woutt_ptr, bout_ptr, depth, MP: tl.constexpr):
    # input j < m: coef_j cos(pi phi_j); m + j: coef_{m+j} sin(pi phi_j), with
    # phi_j = freq_2j * rr + freq_2j+1 * rc + phase_j read from the cell's [coef | freq] row
    m = m2 // 2
    jm = tl.arange(0, MP)
    mj = mask2 & (jm[None, :] < m)
    base = code_ptr + idx.to(tl.int64)[:, None] * code_sc
    f0 = tl.load(base + m2 + 2 * jm[None, :], mask=mj, other=0.0)
    f1 = tl.load(base + m2 + 2 * jm[None, :] + 1, mask=mj, other=0.0)
    phi = f0 * rr[:, None] + f1 * rc[:, None] + ph
    # cos/sin(pi phi) as PyTorch evaluates them in float32: pi*phi rounded to float32,
    # reduced by pi/2 (two-part constant), polynomials on [-pi/4, pi/4]
    a = 3.14159265358979323846 * phi
    k = tl.floor(a * 0.636619772367581343 + 0.5)
    t = a - k * 1.57079637050628662109375
    t = t - k * -4.37113900018624283e-8
    t2 = t * t
    sn = t * (1.0 + t2 * (-1.0 / 6 + t2 * (1.0 / 120 + t2 * (-1.0 / 5040 + t2 * (1.0 / 362880)))))
    cs = 1.0 + t2 * (-0.5 + t2 * (1.0 / 24 + t2 * (-1.0 / 720 + t2 * (1.0 / 40320 + t2 * (-1.0 / 3628800)))))
    qd = k.to(tl.int32) & 3
    s0 = tl.where((qd & 1) != 0, cs, sn)
    c0 = tl.where((qd & 1) != 0, sn, cs)
    sin_v = tl.where((qd & 2) != 0, -s0, s0)
    cos_v = tl.where(((qd + 1) & 2) != 0, -c0, c0)
    xc = tl.load(base + jm[None, :], mask=mj, other=0.0) * cos_v
    xs = tl.load(base + m + jm[None, :], mask=mj, other=0.0) * sin_v
    cols = tl.arange(0, 16)
    wc = tl.load(w0t_ptr + jm[:, None] * 16 + cols[None, :], mask=jm[:, None] < m, other=0.0)
    ws = tl.load(w0t_ptr + (m + jm[:, None]) * 16 + cols[None, :], mask=jm[:, None] < m, other=0.0)
    acc = tl.dot(xc, wc, input_precision="ieee") + tl.dot(xs, ws, input_precision="ieee")
    rowp = tab_ptr + idx.to(tl.int64)[:, None] * tab_sc + cols[None, :]
    return mlp_tail(acc, rowp, mask2, tab_sl, wht_ptr, woutt_ptr, bout_ptr, depth)


# Integers that change with the image or the level size (sizes, batch and layer strides) are not
# specialised on (Triton otherwise compiles a kernel per combination of "is 1" / "divisible by 16"
# of each: a new compilation for new sizes); nor is the alignment of the per-query inputs, which
# callers pass as views at any offset. The model's own constants (depth, widths) still are.
SIZE_ARGS = ("coord_sb", "coord_sq", "cell_sb", "cell_sq", "phase_sb", "phase_sq", "code_sb", "tab_sl", "tab_sb",
             "out_sb", "q", "h", "w")
VIEW_ARGS = ("coord_ptr", "cell_ptr", "phase_ptr", "code_ptr")


@triton.jit(do_not_specialize=SIZE_ARGS, do_not_specialize_on_alignment=VIEW_ARGS)
def query_kernel(coord_ptr, coord_sb, coord_sq, cell_ptr, cell_sb, cell_sq, phase_ptr, phase_sb, phase_sq,
                 code_ptr, code_sb, code_sc, m2, consts_ptr, th_r, th_c, cen_r, cen_c,
                 tab_ptr, tab_sl, tab_sb, tab_sc, w0t_ptr, wht_ptr, woutt_ptr, bout_ptr,
                 out_ptr, out_sb, q, h, w, depth, out_dim,
                 V: tl.constexpr, LTE: tl.constexpr, USE_CELL: tl.constexpr, MP: tl.constexpr,
                 BLOCK: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    tab_sl = tab_sl + b * 0  # int64 offsets into the tables, whatever their size
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = rows < q
    cols = tl.arange(0, 16)
    mask2 = mask[:, None] & (cols[None, :] < 16)
    cp = coord_ptr + b * coord_sb + rows.to(tl.int64) * coord_sq
    cy = tl.load(cp, mask=mask, other=0.0)
    cx = tl.load(cp + 1, mask=mask, other=0.0)
    clamp = tl.load(consts_ptr + 4)
    tab = tab_ptr + b * tab_sb
    hf = h * 1.0
    wf = w * 1.0
    x2 = cy * 0.0
    x3 = cy * 0.0
    ph = cy[:, None] * 0.0
    code = code_ptr + b * code_sb
    if USE_CELL:
        ep = cell_ptr + b * cell_sb + rows.to(tl.int64) * cell_sq
        x2 = tl.load(ep, mask=mask, other=0.0) * hf
        x3 = tl.load(ep + 1, mask=mask, other=0.0) * wf
    if LTE:
        jm = tl.arange(0, MP)
        pp = phase_ptr + b * phase_sb + rows.to(tl.int64)[:, None] * phase_sq + jm[None, :]
        ph = tl.load(pp, mask=mask[:, None] & (jm[None, :] < m2 // 2), other=0.0)
    r0, rr0 = neighbour(cy, tl.load(consts_ptr), clamp, th_r, cen_r, h)
    c0, rc0 = neighbour(cx, tl.load(consts_ptr + 2), clamp, th_c, cen_c, w)
    if V == 1:
        if LTE:
            res = lte_render(r0 * w + c0, rr0, rc0, ph, mask2, code, code_sc, m2, tab, tab_sl, tab_sc,
                             w0t_ptr, wht_ptr, woutt_ptr, bout_ptr, depth, MP)
        else:
            res = liif_render(r0 * w + c0, rr0, rc0, x2, x3, mask2, tab, tab_sl, tab_sc, w0t_ptr,
                              wht_ptr, woutt_ptr, bout_ptr, depth, USE_CELL)
    else:
        r1, rr1 = neighbour(cy, tl.load(consts_ptr + 1), clamp, th_r, cen_r, h)
        c1, rc1 = neighbour(cx, tl.load(consts_ptr + 3), clamp, th_c, cen_c, w)
        a00 = tl.abs(rr0 * rc0) + 1e-9
        a01 = tl.abs(rr0 * rc1) + 1e-9
        a10 = tl.abs(rr1 * rc0) + 1e-9
        a11 = tl.abs(rr1 * rc1) + 1e-9
        total = a00 + a01 + a10 + a11
        # each prediction is weighted by the area of the diagonally opposite neighbour
        if LTE:
            res = lte_render(r0 * w + c0, rr0, rc0, ph, mask2, code, code_sc, m2, tab, tab_sl, tab_sc,
                             w0t_ptr, wht_ptr, woutt_ptr, bout_ptr, depth, MP) * (a11 / total)[:, None]
            res += lte_render(r0 * w + c1, rr0, rc1, ph, mask2, code, code_sc, m2, tab, tab_sl, tab_sc,
                              w0t_ptr, wht_ptr, woutt_ptr, bout_ptr, depth, MP) * (a10 / total)[:, None]
            res += lte_render(r1 * w + c0, rr1, rc0, ph, mask2, code, code_sc, m2, tab, tab_sl, tab_sc,
                              w0t_ptr, wht_ptr, woutt_ptr, bout_ptr, depth, MP) * (a01 / total)[:, None]
            res += lte_render(r1 * w + c1, rr1, rc1, ph, mask2, code, code_sc, m2, tab, tab_sl, tab_sc,
                              w0t_ptr, wht_ptr, woutt_ptr, bout_ptr, depth, MP) * (a00 / total)[:, None]
        else:
            res = liif_render(r0 * w + c0, rr0, rc0, x2, x3, mask2, tab, tab_sl, tab_sc, w0t_ptr,
                              wht_ptr, woutt_ptr, bout_ptr, depth, USE_CELL) * (a11 / total)[:, None]
            res += liif_render(r0 * w + c1, rr0, rc1, x2, x3, mask2, tab, tab_sl, tab_sc, w0t_ptr,
                               wht_ptr, woutt_ptr, bout_ptr, depth, USE_CELL) * (a10 / total)[:, None]
            res += liif_render(r1 * w + c0, rr1, rc0, x2, x3, mask2, tab, tab_sl, tab_sc, w0t_ptr,
                               wht_ptr, woutt_ptr, bout_ptr, depth, USE_CELL) * (a01 / total)[:, None]
            res += liif_render(r1 * w + c1, rr1, rc1, x2, x3, mask2, tab, tab_sl, tab_sc, w0t_ptr,
                               wht_ptr, woutt_ptr, bout_ptr, depth, USE_CELL) * (a00 / total)[:, None]
    op = out_ptr + b * out_sb + rows.to(tl.int64)[:, None] * out_dim + cols[None, :]
    tl.store(op, res, mask=mask[:, None] & (cols[None, :] < out_dim))

