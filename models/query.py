"""The query engine shared by every decoder, in training and inference alike.

A query is a continuous coordinate in [-1, 1]² (row, col) of the HR image. The engine finds
which LR cells it reads (the 4 nearest with local ensemble, as in LIIF), its coordinate relative
to each cell centre, the ensemble weights, and streams the queries through a decoder's
per-query function in chunks so that memory does not grow with the output size.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from utils.coords import axis_coords

_EPS_SHIFT = 1e-6
_CLAMP = 1 - 1e-6
CLAMP = _CLAMP  # look-up clamp of shifted coordinates, (-CLAMP, CLAMP)
DEFAULT_BSIZE = 65536

# Query chunks on CUDA are sized from the device's free memory: the intermediates of one chunk
# may take at most CHUNK_FREE_FRACTION of the free memory and never more than CHUNK_MEMORY_CAP
# (CPU chunks keep each decoder's default, sized for the caches; --bsize overrides both).
CHUNK_MEMORY_CAP = 4 << 30
CHUNK_FREE_FRACTION = 0.5
MAX_CHUNK = 1 << 22


@dataclass(frozen=True)
class Lookup:
    """Where each query reads the LR grid (K = 4 neighbours with local ensemble, else 1)."""

    index: torch.Tensor      # (B, K, Q) long: flat LR index row * w + col
    rel_coord: torch.Tensor  # (B, K, Q, 2): (query - LR centre) * (h, w)
    weight: torch.Tensor     # (B, K, Q): ensemble weights, sum to 1 over K


def _to_grid(coord: torch.Tensor) -> torch.Tensor:
    """(B, N, 2) (row, col) -> grid_sample grid (B, 1, N, 2) in (x, y) order."""
    return coord.flip(-1).unsqueeze(1)


def axis_cell(c: torch.Tensor, n: int) -> torch.Tensor:
    """Index (long, shape of ``c`` (B, N)) of the nearest of ``n`` LR cells along one axis.

    Uses ``grid_sample(mode='nearest')`` on an index ramp, so ties at cell borders resolve
    exactly as the reference's look-ups on every device (nearest sampling is separable: a
    1-D look-up per axis equals the 2-D one).
    """
    b = c.shape[0]
    grid = torch.stack([torch.zeros_like(c), c], dim=-1).view(b, -1, 1, 2)  # (x = 0, y = c)
    ramp = torch.arange(n, device=c.device, dtype=torch.float32).view(1, 1, n, 1).expand(b, 1, n, 1)
    idx = F.grid_sample(ramp, grid.float(), mode="nearest", align_corners=False)
    return idx.view(c.shape).long()


def nearest_cell(coord: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column (long, (B, N) each) of the LR cell nearest to each coordinate."""
    return axis_cell(coord[..., 0], h), axis_cell(coord[..., 1], w)


def axis_shifts(n: int, local_ensemble: bool, dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> torch.Tensor:
    """The reference's look-up shifts along an axis of ``n`` cells: ``-+1/n + 1e-6`` or ``0``."""
    r = 2 / n / 2
    shifts = (-1 * r + _EPS_SHIFT, 1 * r + _EPS_SHIFT) if local_ensemble else (0.0,)
    return torch.tensor(shifts, dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)
def axis_thresholds(n: int) -> torch.Tensor:
    """Float32 (n,) CPU tensor t with t[j] = the smallest coordinate in [-C, C] (C = 1 - 1e-6,
    the look-up clamp) whose nearest cell is >= j (t[0] = -inf).

    :func:`axis_cell` is a non-decreasing step function of the coordinate, so "nearest cell of
    x" = number of j >= 1 with t[j] <= x, bit for bit, for every clamped float32 x. Fused
    kernels use this to reproduce the look-up exactly without re-deriving ``grid_sample``'s
    float arithmetic. Found by bisection over the ordered float32 bit patterns (32 steps).
    """
    lo_f = torch.tensor(-_CLAMP, dtype=torch.float32)
    hi_f = torch.tensor(_CLAMP, dtype=torch.float32)
    lo = torch.full((n - 1,), _ordered(lo_f).item(), dtype=torch.int64)
    hi = torch.full((n - 1,), _ordered(hi_f).item(), dtype=torch.int64)
    target = torch.arange(1, n)
    while bool((lo < hi).any()):
        mid = (lo + hi) // 2  # invariant: cell(hi) >= j; answer in (lo-1, hi]
        ok = axis_cell(_from_ordered(mid).view(1, -1), n).view(-1) >= target
        hi = torch.where(ok, mid, hi)
        lo = torch.where(ok, lo, mid + 1)
    return torch.cat([torch.tensor([float("-inf")]), _from_ordered(hi)])


def _ordered(x: torch.Tensor) -> torch.Tensor:
    """float32 -> int64 that orders like the floats (negative floats mirrored below zero)."""
    bits = x.view(torch.int32).to(torch.int64)
    return torch.where(bits < 0, -(bits & 0x7FFFFFFF), bits)


def _from_ordered(k: torch.Tensor) -> torch.Tensor:
    bits = torch.where(k < 0, (-k) | 0x80000000, k)
    bits = torch.where(bits >= 2 ** 31, bits - 2 ** 32, bits)
    return bits.to(torch.int32).view(torch.float32)


def _axis_neighbours(c: torch.Tensor, n: int, local_ensemble: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighbour cells along one axis: (B, V, Q) indices and offsets (c - centre) * n.

    With local ensemble V = 2: the cells reached by the reference's shifts ``c -+ 1/n + 1e-6``
    clamped into (-1, 1); else V = 1, the nearest cell.
    """
    shift = axis_shifts(n, local_ensemble, c.dtype, c.device).view(1, -1, 1)
    shifted = (c.unsqueeze(1) + shift).clamp_(-_CLAMP, _CLAMP)  # (B, V, Q)
    idx = axis_cell(shifted.flatten(1), n).view(shifted.shape)
    rel = (c.unsqueeze(1) - axis_coords(n, c.device)[idx]) * n
    return idx, rel


def locate(coord: torch.Tensor, h: int, w: int, local_ensemble: bool = True) -> Lookup:
    """Neighbour look-up for queries ``coord`` (B, Q, 2) on an LR grid of h x w cells.

    Neighbour k = (row shift, col shift) in the reference order (-,-), (-,+), (+,-), (+,+);
    rows and columns are looked up separately (2 + 2 look-ups instead of 4 x 2).
    """
    b, q = coord.shape[:2]
    rows, rel_r = _axis_neighbours(coord[..., 0], h, local_ensemble)  # (B, V, Q)
    cols, rel_c = _axis_neighbours(coord[..., 1], w, local_ensemble)
    v = rows.shape[1]
    index = (rows.unsqueeze(2) * w + cols.unsqueeze(1)).view(b, v * v, q)
    rel_r4, rel_c4 = rel_r.unsqueeze(2).expand(b, v, v, q), rel_c.unsqueeze(1).expand(b, v, v, q)
    rel = torch.stack([rel_r4, rel_c4], dim=-1).view(b, v * v, q, 2)
    if not local_ensemble:
        return Lookup(index, rel, rel.new_ones(b, 1, q))
    area = (rel_r4 * rel_c4).abs().reshape(b, v * v, q) + 1e-9
    # each prediction is weighted by the area of the diagonally opposite neighbour
    weight = area.flip(1) / area.sum(dim=1, keepdim=True)
    return Lookup(index, rel, weight)


def flat_index(index: torch.Tensor, n_cells: int) -> torch.Tensor:
    """Per-image cell indices (B, ...) -> indices into a batch-flattened table (B*n_cells rows)."""
    b = index.shape[0]
    offset = (torch.arange(b, device=index.device) * n_cells).view(b, *([1] * (index.dim() - 1)))
    return (index + offset).reshape(-1)


def gather(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of a per-LR-cell table (B, h*w, C) at ``index`` (B, ...) -> (B, ..., C)."""
    b, n, c = table.shape
    rows = table.reshape(b * n, c).index_select(0, flat_index(index, n))
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


def device_chunk(default: int, query_bytes: Callable[[], int], device: torch.device) -> int:
    """Queries per chunk on ``device``: ``default`` on the CPU; on CUDA as many as fit in
    min(CHUNK_MEMORY_CAP, CHUNK_FREE_FRACTION x free memory) at ``query_bytes()`` bytes of
    intermediates per query (called only on CUDA), never fewer than ``default``."""
    if device.type != "cuda":
        return default
    free, _ = torch.cuda.mem_get_info(device)
    budget = min(CHUNK_MEMORY_CAP, int(CHUNK_FREE_FRACTION * free))
    n = budget // max(1, query_bytes())
    return int(max(default, min(MAX_CHUNK, n // 1024 * 1024)))


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
    assert out is not None  # q > 0 here: at least one chunk ran
    return out
