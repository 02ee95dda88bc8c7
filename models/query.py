"""The query engine shared by every decoder, in training and inference alike.

A query is a continuous coordinate in [-1, 1]² (row, col) of the HR image. The engine finds
which LR cells it reads (the 4 nearest with local ensemble, as in LIIF), its coordinate relative
to each cell centre, the ensemble weights, and streams the queries through a decoder's
per-query function in chunks so that memory does not grow with the output size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from utils.coords import axis_coords

# LIIF's local ensemble: offsets (row, col) in units of half an LR cell, in the reference order.
_ENSEMBLE_OFFSETS = ((-1, -1), (-1, 1), (1, -1), (1, 1))
_EPS_SHIFT = 1e-6
_CLAMP = 1 - 1e-6
DEFAULT_BSIZE = 65536


@dataclass(frozen=True)
class Lookup:
    """Where each query reads the LR grid (K = 4 neighbours with local ensemble, else 1)."""

    index: torch.Tensor      # (B, K, Q) long: flat LR index row * w + col
    rel_coord: torch.Tensor  # (B, K, Q, 2): (query - LR centre) * (h, w)
    weight: torch.Tensor     # (B, K, Q): ensemble weights, sum to 1 over K


def _to_grid(coord: torch.Tensor) -> torch.Tensor:
    """(B, N, 2) (row, col) -> grid_sample grid (B, 1, N, 2) in (x, y) order."""
    return coord.flip(-1).unsqueeze(1)


def nearest_cell(coord: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column (long, (B, N) each) of the LR cell nearest to each coordinate.

    Uses ``grid_sample(mode='nearest')`` on index maps, so ties at cell borders are resolved
    exactly as the reference's nearest look-ups on every device.
    """
    b = coord.shape[0]
    rows = torch.arange(h, device=coord.device, dtype=torch.float32).view(1, 1, h, 1).expand(b, 1, h, w)
    cols = torch.arange(w, device=coord.device, dtype=torch.float32).view(1, 1, 1, w).expand(b, 1, h, w)
    maps = torch.cat([rows, cols], dim=1)
    idx = F.grid_sample(maps, _to_grid(coord.float()), mode="nearest", align_corners=False)[:, :, 0, :]
    return idx[:, 0].long(), idx[:, 1].long()


def locate(coord: torch.Tensor, h: int, w: int, local_ensemble: bool = True) -> Lookup:
    """Neighbour look-up for queries ``coord`` (B, Q, 2) on an LR grid of h x w cells."""
    b, q = coord.shape[:2]
    offsets = _ENSEMBLE_OFFSETS if local_ensemble else ((0, 0),)
    eps = _EPS_SHIFT if local_ensemble else 0.0
    rx, ry = 2 / h / 2, 2 / w / 2
    shift = torch.tensor([[vx * rx + eps, vy * ry + eps] for vx, vy in offsets],
                         dtype=coord.dtype, device=coord.device)  # (K, 2)
    shifted = (coord.unsqueeze(1) + shift.view(1, -1, 1, 2)).clamp_(-_CLAMP, _CLAMP)  # (B, K, Q, 2)
    k = shifted.shape[1]
    row, col = nearest_cell(shifted.view(b, k * q, 2), h, w)
    centre = torch.stack([axis_coords(h, coord.device)[row], axis_coords(w, coord.device)[col]], dim=-1)
    rel = coord.unsqueeze(1) - centre.view(b, k, q, 2)
    rel = rel * torch.tensor([h, w], dtype=rel.dtype, device=rel.device)
    index = (row * w + col).view(b, k, q)
    if not local_ensemble:
        return Lookup(index, rel, rel.new_ones(b, 1, q))
    area = (rel[..., 0] * rel[..., 1]).abs() + 1e-9  # (B, K, Q)
    total = area.sum(dim=1, keepdim=True)
    # each prediction is weighted by the area of the diagonally opposite neighbour
    weight = area.flip(1) / total
    return Lookup(index, rel, weight)


def gather(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of a per-LR-cell table (B, h*w, C) at ``index`` (B, ...) -> (B, ..., C)."""
    b, n, c = table.shape
    flat = index.reshape(b, -1)
    offset = (torch.arange(b, device=index.device) * n).view(b, 1)
    rows = table.reshape(b * n, c).index_select(0, (flat + offset).view(-1))
    return rows.view(*index.shape, c)


def ensemble(pred: torch.Tensor, lookup: Lookup) -> torch.Tensor:
    """Blend per-neighbour predictions (B, K, Q, C) with the ensemble weights -> (B, Q, C)."""
    return (pred * lookup.weight.unsqueeze(-1)).sum(dim=1)


def sample_bilinear(img: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
    """Bilinear (border-padded) samples of ``img`` (B, C, h, w) at ``coord`` (B, Q, 2) -> (B, Q, C)."""
    out = F.grid_sample(img, _to_grid(coord), mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, :, 0, :].permute(0, 2, 1)


def rel_cell(cell: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Query cell in LR-cell units: cell * (h, w)."""
    return cell * torch.tensor([h, w], dtype=cell.dtype, device=cell.device)


def stream(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], coord: torch.Tensor,
           cell: torch.Tensor, bsize: int | None = None) -> torch.Tensor:
    """Apply ``fn(coord_chunk, cell_chunk) -> (B, q, C)`` over chunks of at most ``bsize`` queries.

    Outputs are written into one preallocated tensor, so peak memory is the output plus one
    chunk's intermediates. Chunks are balanced (equal sizes) as in the reference.
    """
    b, q = coord.shape[:2]
    bsize = DEFAULT_BSIZE if bsize is None else int(bsize)
    if bsize <= 0:
        raise ValueError(f"bsize must be positive, got {bsize}")
    n_chunks = max(1, -(-q // bsize))
    if n_chunks == 1:
        return fn(coord, cell)
    size = -(-q // n_chunks)
    out = None
    for start in range(0, q, size):
        part = fn(coord[:, start:start + size], cell[:, start:start + size])
        if out is None:
            out = part.new_empty(b, q, part.shape[-1])
        out[:, start:start + size] = part
    return out
