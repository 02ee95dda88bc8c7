"""Pixel-centre coordinate grids in [-1, 1], computed bit-for-bit as the reference does.

The last dim of a coordinate is (row, col) = (y, x). At non-integer scales query points can lie
exactly on the border between two LR cells; the nearest-cell lookup then depends on the last bit
of the coordinate, so the float evaluation order below is part of the contract:
``c_i = (-1 + 1/n) + (2/n) * i`` with the two constants as Python floats and ``i`` a float32
arange (product and sum in float32).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def axis_coords(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Centres of ``n`` pixels along one axis, float32, shape (n,)."""
    r = 1.0 / n
    start = -1.0 + r
    step = 2.0 * r
    return start + step * torch.arange(n, device=device, dtype=torch.float32)


def make_coord(shape: Sequence[int], flatten: bool = True,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Grid of pixel centres for ``shape`` = (H, W, ...): (H*W, 2) or (H, W, 2) if not flatten."""
    axes = [axis_coords(int(n), device) for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    return grid.view(-1, grid.shape[-1]) if flatten else grid


def make_cell(shape: Sequence[int], n: int | None = None,
              device: torch.device | str | None = None) -> torch.Tensor:
    """Per-query cell size (2/H, 2/W) repeated ``n`` times (default H*W): (n, 2)."""
    h, w = int(shape[0]), int(shape[1])
    n = h * w if n is None else n
    cell = torch.tensor([2.0 / h, 2.0 / w], dtype=torch.float32, device=device)
    return cell.expand(n, 2).clone()


def to_pixel_samples(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, H, W) image -> coords (H*W, 2) and values (H*W, C), row-major."""
    coord = make_coord(img.shape[-2:], device=img.device)
    values = img.reshape(img.shape[0], -1).t()
    return coord, values


def pixel_samples_at(img: torch.Tensor, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``to_pixel_samples(img)`` at the row-major pixel indices ``index`` only: coords (Q, 2) and
    values (Q, C), both contiguous, identical to indexing the full result (no H*W grid is built)."""
    h, w = img.shape[-2:]
    rows = torch.from_numpy(np.asarray(index) // w)
    cols = torch.from_numpy(np.asarray(index) % w)
    coord = torch.stack([axis_coords(h, img.device)[rows], axis_coords(w, img.device)[cols]], dim=-1)
    values = img[:, rows, cols].t().contiguous()
    return coord, values
