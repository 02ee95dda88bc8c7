"""Inference helpers shared by test.py, demo.py and train.py's validation.

The model works in the normalised space ``(x - 0.5) / 0.5`` and never rescales cells itself;
these helpers do both, as the official scripts do: beyond the training range the cell is
enlarged by ``max(s / scale_max, 1)`` per axis (see docs/differences.md).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Sequence

import torch

from utils.coords import axis_coords, make_cell
from utils.profile import phase

from . import cmsr as multiscale
from .cmsr import CMSR
from .decoder import ImplicitDecoder


def _stat(values: Sequence[float], x: torch.Tensor) -> torch.Tensor:
    """Per-channel constants shaped for (B, C, h, w) images or channels-last (..., C) values."""
    t = torch.tensor(list(values), dtype=x.dtype, device=x.device)
    return t.view(1, -1, 1, 1) if x.dim() == 4 else t


def normalise(x: torch.Tensor, sub: Sequence[float] = (0.5,), div: Sequence[float] = (0.5,)) -> torch.Tensor:
    """[0, 1] -> the network's space ``(x - sub) / div`` (images (B, C, h, w) or (..., C))."""
    return (x - _stat(sub, x)) / _stat(div, x)


def denormalise(x: torch.Tensor, sub: Sequence[float] = (0.5,), div: Sequence[float] = (0.5,)) -> torch.Tensor:
    """Inverse of :func:`normalise`."""
    return x * _stat(div, x) + _stat(sub, x)


def clip_cell(cell: torch.Tensor, scale_hw: Sequence[float], scale_max: float = multiscale.TRAINING_SCALE) -> torch.Tensor:
    """Enlarge cells beyond the training range: cell * max(s / scale_max, 1) per axis."""
    f = torch.tensor([max(float(s) / scale_max, 1.0) for s in scale_hw], dtype=cell.dtype, device=cell.device)
    return cell * f


@torch.no_grad()
def predict(model: ImplicitDecoder, inp: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor,
            scale_hw: Sequence[float] | None = None, scale_max: float = multiscale.TRAINING_SCALE, bsize: int | None = None,
            cmsr: CMSR | bool | None = None, stats: dict | None = None,
            inp_norm: tuple = ((0.5,), (0.5,)), gt_norm: tuple = ((0.5,), (0.5,))) -> torch.Tensor:
    """LR ``inp`` (B, 3, h, w) in [0, 1] and queries -> RGB (B, Q, 3) in [0, 1] (clamped)."""
    if scale_hw is not None:
        cell = clip_cell(cell, scale_hw, scale_max)
    pred = multiscale.render(model, normalise(inp, *inp_norm), coord, cell, bsize=bsize, cmsr=cmsr, stats=stats)
    return denormalise(pred, *gt_norm).clamp_(0, 1)


def upsample(model: ImplicitDecoder, img: torch.Tensor, size: tuple[int, int], scale_max: float = multiscale.TRAINING_SCALE,
             bsize: int | None = None, cmsr: CMSR | bool | None = None, stats: dict | None = None,
             progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Upscale ``img`` (B, 3, h, w) in [0, 1] to ``size`` = (H, W) -> (B, 3, H, W) in [0, 1].

    The bands of :func:`upsample_bands` copied into one output tensor (a single band that is the
    whole image, CMSR's, is returned as it is); ``progress(n_rows)`` is called after each band.
    """
    b, H, W = img.shape[0], int(size[0]), int(size[1])
    out = None
    for r0, band in upsample_bands(model, img, size, scale_max, bsize, cmsr, stats):
        if out is None and band.shape[2] == H and band.dtype == img.dtype and band.is_contiguous():
            out = band  # one band is the whole image (CMSR): no copy
        else:
            if out is None:
                out = img.new_empty(b, 3, H, W)
            out[:, :, r0:r0 + band.shape[2]] = band
        if progress is not None:
            progress(band.shape[2])
    assert out is not None
    return out


@torch.no_grad()  # as a decorator: applied around each step of the generator, not leaked to its caller
def upsample_bands(model: ImplicitDecoder, img: torch.Tensor, size: tuple[int, int],
                   scale_max: float = multiscale.TRAINING_SCALE, bsize: int | None = None,
                   cmsr: CMSR | bool | None = None, stats: dict | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Upscale ``img`` (B, 3, h, w) in [0, 1] to ``size`` = (H, W), yielding the output in bands
    of whole rows: (first row, (B, 3, rows, W) in [0, 1]) from top to bottom.

    The encoder and latent stage run once; queries are then rendered in bands of whole rows
    (about ``bsize`` queries each) whose coordinates are made on the fly, so memory beyond the
    input's features is one band's worth: a caller that writes each band away (a file, see
    :func:`upscale_file`) never holds the output image. With CMSR active the whole target grid
    is decoded at once (it needs the full grid) and comes as one band, written by CMSR as the
    image (no coordinate grid, no intermediate copies).
    """
    b, _, h, w = img.shape
    H, W = int(size[0]), int(size[1])
    dev = img.device
    scale_hw = (H / h, W / w)
    lat_cell = clip_cell(make_cell((H, W), n=1, device=dev).unsqueeze(0).expand(b, 1, 2), scale_hw, scale_max)
    lat = model.prepare(normalise(img), lat_cell)
    active = multiscale.choose(model, lat, H * W, cmsr)
    own = getattr(model, "cmsr", None)
    requested = own if cmsr is None or cmsr is True else (cmsr or None)
    note = None
    if requested is not None and active is None:
        note = (f"CMSR does nothing for {model.__class__.__name__} (it needs an LMF model's modulations)"
                if lat.complexity is None else
                f"CMSR does nothing at x{max(scale_hw):g} (it acts only beyond x{multiscale.TRAINING_SCALE:g}); "
                "rendered in full")
    elif active is not None:
        active.check_model(model)
        s = (H * W / (h * w)) ** 0.5
        if len([d for d in active.table.levels(s)[0] if d >= 1]) <= 1:
            note = f"CMSR does nothing at x{s:g} (its table has no coarser level there); rendered in full"
            active = None
    if note is not None and stats is not None:
        stats["cmsr_note"] = note
    if active is not None:
        # the whole target grid at once, written as the image (no coordinate grid is made)
        yield 0, active.decode_image(model, lat, (H, W), bsize or model.chunk_size(lat), stats)
        return
    rows_y, cols_x = axis_coords(H, dev), axis_coords(W, dev)
    band = max(1, (bsize or model.chunk_size(lat)) * 4 // W)
    cell_row = clip_cell(make_cell((H, W), n=1, device=dev), scale_hw, scale_max)
    for r0 in range(0, H, band):
        r1 = min(H, r0 + band)
        coord = torch.stack(torch.meshgrid(rows_y[r0:r1], cols_x, indexing="ij"), dim=-1)
        coord = coord.view(1, -1, 2).expand(b, -1, -1)
        cell = cell_row.expand(coord.shape[1], 2).unsqueeze(0).expand(b, -1, -1)
        rgb = model.decode(lat, coord, cell, bsize)
        yield r0, denormalise(rgb).clamp_(0, 1).view(b, r1 - r0, W, 3).permute(0, 3, 1, 2)


def output_size(h: int, w: int, scale: float | Sequence[float] | None = None,
                size: Sequence[int] | None = None) -> tuple[int, int]:
    """Target (H, W) of an h x w image: ``scale`` (one factor, or (sy, sx) in the HxW order used
    everywhere) or ``size`` = (H, W)."""
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale and size")
    if size is not None:
        H, W = (int(v) for v in size)
        if H < 1 or W < 1:
            raise ValueError(f"size {tuple(size)!r}: height and width must be at least 1")
        return H, W
    assert scale is not None
    sy, sx = (scale, scale) if isinstance(scale, (int, float)) else tuple(scale)
    if not all(math.isfinite(float(v)) and float(v) > 0 for v in (sy, sx)):
        raise ValueError(f"scale {scale!r}: each factor must be a finite number > 0")
    H, W = round(h * float(sy)), round(w * float(sx))
    if H < 1 or W < 1:
        raise ValueError(f"scale {scale!r} is too small for the {h}x{w} (HxW) image: the output would be "
                         f"{H}x{W}; use a larger scale")
    return H, W


def _source(model: ImplicitDecoder, image, scale: float | Sequence[float] | None,
            size: Sequence[int] | None) -> tuple[torch.Tensor, Any, bool, tuple[int, int]]:
    """An image file or PIL image -> (its colour (1, 3, h, w) on the model's device, hidden colour
    under transparent pixels filled; its alpha or None; whether it is grayscale; the output size)."""
    from utils.images import fill_transparent, open_image

    with phase("reading"):
        rgb, alpha, gray = open_image(image)
    h, w = rgb.shape[-2:]
    H, W = output_size(h, w, scale, size)
    if alpha is not None:
        rgb = fill_transparent(rgb, alpha)
    return rgb.unsqueeze(0).to(next(model.parameters()).device), alpha, gray, (H, W)


def upscale_image(model: ImplicitDecoder, image, scale: float | Sequence[float] | None = None,
                  size: Sequence[int] | None = None, *, bsize: int | None = None,
                  cmsr: CMSR | bool | None = None, stats: dict | None = None,
                  progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Upscale an image file or PIL image -> (C, H, W) float tensor in [0, 1] on the CPU.

    ``scale``: one factor or (sy, sx); ``size``: (H, W) (the HxW order of the whole project).
    The colour is
    upscaled by the model on the model's device. An alpha channel is upscaled with Pillow's
    bicubic filter and appended (C = 4, or 2 for grayscale); the colour hidden under fully
    transparent pixels is first replaced by a fill from the visible ones, so it cannot bleed
    into the edge. Grayscale sources give one colour channel (the mean of the model's RGB).
    ``utils.images.to_pil`` / ``save_image`` turn the result into a PIL image / a file.
    """
    from utils.images import compose_output

    rgb, alpha, gray, (H, W) = _source(model, image, scale, size)
    sr = upsample(model, rgb, (H, W), bsize=bsize, cmsr=cmsr, stats=stats, progress=progress)[0].cpu()
    return torch.from_numpy(compose_output(sr.numpy(), alpha, gray))  # grayscale/alpha as the source


def upscale_file(model: ImplicitDecoder, image, path, scale: float | Sequence[float] | None = None,
                 size: Sequence[int] | None = None, *, bsize: int | None = None, cmsr: CMSR | bool | None = None,
                 stats: dict | None = None, progress: Callable[[int], None] | None = None) -> tuple[int, int]:
    """:func:`upscale_image` written to the image file ``path`` (format from its extension) band by
    band as the model renders it (:func:`upsample_bands`, :func:`utils.images.write_bands`): a PNG
    output is never held in memory, so its size is bounded by the disk, not by the RAM. Written
    atomically; the caller decides whether ``path`` may exist (``utils.cli.output_path``).
    Returns the output size (H, W)."""
    from utils.images import write_bands

    rgb, alpha, gray, (H, W) = _source(model, image, scale, size)
    bands = ((r0, band[0].float().cpu().numpy())
             for r0, band in upsample_bands(model, rgb, (H, W), bsize=bsize, cmsr=cmsr, stats=stats))
    # "writing" for the profile: the model's phases, run as each band is asked for, count apart
    with phase("writing"):
        write_bands(path, (H, W), bands, alpha, gray, progress=progress)
    return H, W
