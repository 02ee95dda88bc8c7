"""CMSR's fused CPU path (models/fast_render.py: cmsr_points, cmsr_merge, cmsr_sample,
cmsr_sample_planes) against the PyTorch reference path it replaces (full-size mask + nonzero,
grid_sample + index_put, query.sample_bilinear, then denormalise and clamp), and CMSR's image
entry point (target size in, image out) against its decode at make_coord's grid.

The kernels compute grid_sample's bilinear samples operation by operation as PyTorch's
vectorised CPU kernel does (AVX2/AVX-512 builds): there the results must be the same bits; on
other builds the last bits may differ, and the comparison is to float rounding.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import cmsr as C
from models import fast_render
from models import query as Q
from utils.coords import axis_coords, make_coord

pytestmark = pytest.mark.skipif(fast_render.library() is None, reason="fused CPU kernel unavailable")

VECTORISED = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def _image(px: torch.Tensor) -> torch.Tensor:
    """The kernels' layout (h, w, 4) -> (1, 3, h, w) (a view)."""
    return px[..., :3].permute(2, 0, 1).unsqueeze(0)


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    if VECTORISED:
        assert torch.equal(a, b), (a - b).abs().max().item()
    else:
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


SIZES = [(1, 1, 5, 7), (1, 5, 3, 17), (7, 9, 30, 41), (50, 31, 75, 46), (12, 16, 30, 40), (125, 185, 1000, 1480)]


@pytest.mark.parametrize("ih, iw, qh, qw", SIZES)
def test_sample_is_sample_bilinear(ih, iw, qh, qw):
    g = torch.Generator().manual_seed(ih * 1000 + iw)
    img = torch.randn(1, 3, ih, iw, generator=g)
    grid = make_coord((qh, qw)).unsqueeze(0)
    scattered = torch.rand(1, 3001, 2, generator=g) * 2.4 - 1.2  # outside [-1, 1] too: the border band
    edges = torch.tensor([[[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [0.0, 0.0], [1.0, -1.0]]])
    for coord in (grid, scattered, edges):
        _same(fast_render.cmsr_sample(fast_render.cmsr_pixels(img), coord), Q.sample_bilinear(img, coord))


def test_sample_reads_strided_coordinates():
    img = torch.randn(1, 3, 9, 11)
    both = torch.rand(1, 500, 4) * 2 - 1
    coord = both[..., 1:3]  # rows 4 floats apart
    _same(fast_render.cmsr_sample(fast_render.cmsr_pixels(img), coord), Q.sample_bilinear(img, coord.contiguous()))


def _selection(h: int, w: int, qh: int, qw: int, p: float, seed: int):
    cells = torch.rand(h, w, generator=torch.Generator().manual_seed(seed)) < p
    return cells, C.level_points(cells, qh, qw)


@pytest.mark.parametrize("h, w, qh, qw, p", [(12, 16, 30, 40, 0.3), (7, 9, 17, 22, 0.0), (7, 9, 17, 22, 1.0),
                                             (13, 19, 19, 28, 0.5), (125, 185, 250, 370, 0.2)])
def test_level_points_are_the_full_size_selection(h, w, qh, qw, p):
    cells, sel = _selection(h, w, qh, qw, p, qh)
    full = cells[C.level_cells(h, qh)][:, C.level_cells(w, qw)]
    idx = torch.nonzero(full.view(-1)).view(-1)
    assert sel.count == idx.numel()
    assert torch.equal(sel.index(), idx)
    ranks = torch.cumsum(full.sum(1), 0) - full.sum(1)
    assert torch.equal(sel.first, ranks)
    grid = C.level_grid(h, w, qh, qw)
    pts = fast_render.cmsr_points(grid, sel.lr_row, sel.mask, sel.first, sel.count)
    planes = grid.view(2, -1)
    assert torch.equal(pts, torch.stack([planes[1, idx], planes[0, idx]], dim=-1).unsqueeze(0))


@pytest.mark.parametrize("h, w, ph, pw, qh, qw, p", [(12, 16, 24, 32, 30, 40, 0.3), (7, 9, 7, 9, 17, 22, 0.5),
                                                     (7, 9, 10, 13, 17, 22, 0.0), (1, 1, 1, 1, 3, 3, 1.0),
                                                     (125, 185, 187, 277, 250, 370, 0.2)])
def test_merge_is_grid_sample_with_the_rendered_points_written_over(h, w, ph, pw, qh, qw, p):
    cells, sel = _selection(h, w, qh, qw, p, qw)
    prev = torch.randn(1, 3, ph, pw, generator=torch.Generator().manual_seed(1))
    pred = torch.randn(sel.count, 3, generator=torch.Generator().manual_seed(2))
    grid = C.level_grid(h, w, qh, qw)
    ref = F.grid_sample(prev, grid.permute(0, 2, 3, 1), mode="bilinear", padding_mode="border", align_corners=False)
    ref.view(1, 3, -1)[:, :, sel.index()] = pred.t()
    out = fast_render.cmsr_merge(fast_render.cmsr_pixels(prev), grid, sel.lr_row, sel.mask, sel.first, pred)
    assert not out[..., 3].any()  # the pad channel stays 0
    _same(_image(out), ref)


def test_merge_refuses_an_inconsistent_selection():
    cells, sel = _selection(12, 16, 30, 40, 0.5, 3)
    grid = C.level_grid(12, 16, 30, 40)
    prev = fast_render.cmsr_pixels(torch.randn(1, 3, 12, 16))
    with pytest.raises(IndexError):  # fewer rendered rows than the mask marks
        fast_render.cmsr_merge(prev, grid, sel.lr_row, sel.mask, sel.first, torch.zeros(sel.count - 1, 3))
    with pytest.raises(IndexError):
        fast_render.cmsr_points(grid, sel.lr_row + 100, sel.mask, sel.first, sel.count)


def _tie_model():
    from test_cmsr_levels import _tie_table_model

    return _tie_table_model()


@pytest.mark.parametrize("scale", [8, 7.3])
def test_decode_fused_is_the_reference_path(monkeypatch, scale):
    """A whole CMSR decode (levels at decode scales 1, 2.5 and the target; at x7.3 the finest level
    is not the target grid, so the final resampling runs) with CMSR's kernels and without (the
    render itself on the same path both times)."""
    model, inp, _, _ = _tie_model()
    h, w = inp.shape[-2:]
    H, W = round(scale * h), round(scale * w)
    coord = make_coord((H, W)).unsqueeze(0)
    cell = torch.tensor([[2 / H, 2 / W]]).expand(1, H * W, 2)
    stats: dict = {}
    with torch.no_grad():
        fused = C.render(model, inp, coord, cell, stats=stats)
        monkeypatch.setattr(C, "_fused", lambda img: False)
        ref = C.render(model, inp, coord, cell)
    assert 0 < stats["cmsr_skipped_fraction"] < 1
    _same(fused, ref)


def _planes_reference(img: torch.Tensor, H: int, W: int, mul: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    """What models.inference did before CMSR wrote the image itself: sample make_coord's grid,
    then scale, shift and clamp the (H*W, 3) result, then lay it out as planes."""
    rgb = Q.sample_bilinear(img, make_coord((H, W)).unsqueeze(0))[0]
    return (rgb * mul + add).clamp_(0, 1).view(H, W, 3).permute(2, 0, 1)


@pytest.mark.parametrize("ih, iw, H, W", [(1, 1, 3, 5), (5, 3, 17, 1), (7, 9, 30, 41), (50, 31, 75, 46),
                                          (125, 185, 1000, 1480), (9, 13, 9, 13)])
def test_sample_planes_is_the_sampled_grid_scaled_and_clamped(ih, iw, H, W):
    g = torch.Generator().manual_seed(ih * 100 + W)
    img = torch.randn(1, 3, ih, iw, generator=g)  # values clamp at both ends
    for mul, add in ((torch.full((3,), 0.5), torch.full((3,), 0.5)),
                     (torch.tensor([0.229, 0.224, 0.225]), torch.tensor([0.485, 0.456, 0.406]))):
        out = torch.full((3, H, W), float("nan"))
        fast_render.cmsr_sample_planes(fast_render.cmsr_pixels(img), axis_coords(H), axis_coords(W), mul, add, out)
        _same(out, _planes_reference(img, H, W, mul, add))


def test_sample_planes_keeps_nan_and_refuses_a_wrong_output():
    img = torch.zeros(1, 3, 4, 4)
    img[0, 1, 2, 2] = float("nan")
    out = torch.empty(3, 8, 8)
    half = torch.full((3,), 0.5)
    fast_render.cmsr_sample_planes(fast_render.cmsr_pixels(img), axis_coords(8), axis_coords(8), half, half, out)
    assert torch.isnan(out[1]).any() and not torch.isnan(out[0]).any()  # clamp keeps a NaN, as torch's does
    with pytest.raises(ValueError, match="contiguous"):
        fast_render.cmsr_sample_planes(fast_render.cmsr_pixels(img), axis_coords(8), axis_coords(8), half, half,
                                       torch.empty(8, 8, 3).permute(2, 0, 1))


@pytest.mark.parametrize("scale", [8, 7.3])
@pytest.mark.parametrize("fused", [True, False])
def test_decode_image_is_decode_then_denormalised(monkeypatch, scale, fused):
    """The image entry point (target size, no coordinates) against decode at make_coord's grid
    followed by models.inference's denormalise and clamp, on both paths; at x8 the finest level
    is the target grid (no resampling), at x7.3 it is resampled."""
    from models.inference import denormalise

    model, inp, _, _ = _tie_model()
    h, w = inp.shape[-2:]
    H, W = round(scale * h), round(scale * w)
    if not fused:
        monkeypatch.setattr(C, "_fused", lambda img: False)
    cell = torch.tensor([[[2 / H, 2 / W]]])
    with torch.no_grad():
        lat = model.prepare(inp, cell)
        stats: dict = {}
        image = model.cmsr.decode_image(model, lat, (H, W), 4096, stats)
        ref = model.cmsr.decode(model, lat, make_coord((H, W)).unsqueeze(0), 4096)
    ref = denormalise(ref).clamp_(0, 1).view(1, H, W, 3).permute(0, 3, 1, 2)
    assert image.shape == (1, 3, H, W) and image.is_contiguous()
    assert 0 < stats["cmsr_skipped_fraction"] < 1
    assert torch.equal(image, ref)


def test_the_weights_check_sees_an_in_place_change():
    """check_model skips the digest for the weights it last matched, unless they changed."""
    from utils.checkpoint import state_dict_digest
    from utils.errors import UserError

    model, _, _, _ = _tie_model()
    cm = C.CMSR(C.Scale2Mod({8: {1: 0.0, 8: 1.0}}, checkpoint=state_dict_digest(model.state_dict())))
    cm.check_model(model)
    cm.check_model(model)  # the same tensors, unchanged
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    with pytest.raises(UserError, match="other weights"):
        cm.check_model(model)
