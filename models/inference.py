"""Inference helpers shared by test.py, demo.py and train.py's validation.

The model works in the normalised space ``(x - 0.5) / 0.5`` and never rescales cells itself;
these helpers do both, as the official scripts do: beyond the training range the cell is
enlarged by ``max(s / scale_max, 1)`` per axis (REFERENCE §3.10).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from utils.coords import make_cell, make_coord

from .cmsr import CMSR


def normalise(x: torch.Tensor, sub: Sequence[float] = (0.5,), div: Sequence[float] = (0.5,)) -> torch.Tensor:
    s = torch.tensor(list(sub), dtype=x.dtype, device=x.device).view(1, -1, 1, 1) if x.dim() == 4 else \
        torch.tensor(list(sub), dtype=x.dtype, device=x.device)
    d = torch.tensor(list(div), dtype=x.dtype, device=x.device).view(1, -1, 1, 1) if x.dim() == 4 else \
        torch.tensor(list(div), dtype=x.dtype, device=x.device)
    return (x - s) / d


def denormalise(x: torch.Tensor, sub: Sequence[float] = (0.5,), div: Sequence[float] = (0.5,)) -> torch.Tensor:
    """Inverse of :func:`normalise` for (..., C) query outputs (channels last)."""
    s = torch.tensor(list(sub), dtype=x.dtype, device=x.device)
    d = torch.tensor(list(div), dtype=x.dtype, device=x.device)
    return x * d + s


def clip_cell(cell: torch.Tensor, scale_hw: Sequence[float], scale_max: float = 4.0) -> torch.Tensor:
    """Enlarge cells beyond the training range: cell * max(s / scale_max, 1) per axis."""
    f = torch.tensor([max(float(s) / scale_max, 1.0) for s in scale_hw], dtype=cell.dtype, device=cell.device)
    return cell * f


@torch.no_grad()
def predict(model: nn.Module, inp: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor,
            scale_hw: Sequence[float] | None = None, scale_max: float = 4.0, bsize: int | None = None,
            cmsr: CMSR | bool | None = None, stats: dict | None = None,
            inp_norm: tuple = ((0.5,), (0.5,)), gt_norm: tuple = ((0.5,), (0.5,))) -> torch.Tensor:
    """LR ``inp`` (B, 3, h, w) in [0, 1] and queries -> RGB (B, Q, 3) in [0, 1] (clamped)."""
    if scale_hw is not None:
        cell = clip_cell(cell, scale_hw, scale_max)
    pred = model(normalise(inp, *inp_norm), coord, cell, bsize=bsize, cmsr=cmsr, stats=stats)
    return denormalise(pred, *gt_norm).clamp_(0, 1)


def upsample(model: nn.Module, img: torch.Tensor, size: tuple[int, int], scale_max: float = 4.0,
             bsize: int | None = None, cmsr: CMSR | bool | None = None, stats: dict | None = None) -> torch.Tensor:
    """Upscale ``img`` (B, 3, h, w) in [0, 1] to ``size`` = (H, W) -> (B, 3, H, W) in [0, 1]."""
    b, _, h, w = img.shape
    H, W = int(size[0]), int(size[1])
    coord = make_coord((H, W), device=img.device).unsqueeze(0).expand(b, -1, -1)
    cell = make_cell((H, W), device=img.device).unsqueeze(0).expand(b, -1, -1)
    rgb = predict(model, img, coord, cell, scale_hw=(H / h, W / w), scale_max=scale_max,
                  bsize=bsize, cmsr=cmsr, stats=stats)
    return rgb.view(b, H, W, 3).permute(0, 3, 1, 2)
