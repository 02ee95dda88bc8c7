"""Building CMSR Scale2Mod tables (offline; used by ``scripts/init_cmsr.py``).

For a target scale, every decode scale d below it is tested: rendering at d and bilinearly
upsampling is compared with the full rendering, and the table row keeps, per d, the largest
modulation mean up to which the error stays within the MSE threshold. The runtime side
(reading tables, multi-scale rendering) is :mod:`models.cmsr`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from utils.coords import make_cell, make_coord

from . import query as Q
from .cmsr import TRAINING_SCALE, level_cells

if TYPE_CHECKING:  # pragma: no cover
    from .decoder import ImplicitDecoder

DEFAULT_DECODE_SCALES = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)


@torch.no_grad()
def calibrate_row(model: "ImplicitDecoder", lr_images: list[torch.Tensor], scale: float, mse_threshold: float,
                  decode_scales: tuple[float, ...] = DEFAULT_DECODE_SCALES, step: float = 0.01,
                  bsize: int | None = None, row: dict[float, float] | None = None) -> dict[float, float]:
    """One S2M row for target ``scale``: for each decode scale d < scale, the largest modulation
    mean up to which rendering at d (then bilinear upsampling) matches full rendering within
    ``mse_threshold`` (MSE in the model's normalised [-1, 1] space, as the official tables).

    Follows the official procedure with three fixes (docs/differences.md): the modulation means are
    split into contiguous bins of width ``step`` (the official code only tests ±0.001 windows
    around each sample value); a decode scale at which no further bin passes gets the previous
    level's bound (officially it keeps its initial 1, i.e. "render everything there" — the
    opposite); and decode levels are rendered with the clipped cells that inference uses.
    ``lr_images``: normalised (1, 3, h, w) tensors. Images combine by the minimum per entry.
    """
    candidates = [d for d in decode_scales if d < scale]
    row = dict(row) if row else {d: 1.0 for d in candidates}
    bsize = bsize or model.default_bsize
    for lr in lr_images:
        h, w = lr.shape[-2:]
        H, W = round(h * scale), round(w * scale)
        clip = max(scale / TRAINING_SCALE, 1)
        coord = make_coord((H, W), device=lr.device).unsqueeze(0)
        cell = make_cell((H, W), device=lr.device).unsqueeze(0) * clip
        lat = model.prepare(lr, cell)
        ref = model.decode(lat, coord, cell, bsize)[0]
        # each target pixel's LR cell, in integers (a target grid is a level grid of H x W points)
        row_idx, col_idx = level_cells(h, H, lr.device), level_cells(w, W, lr.device)
        mu = lat.need_complexity().reshape(-1)[(row_idx.view(-1, 1) * w + col_idx.view(1, -1)).view(-1)]
        bins = torch.floor(mu / step).long()
        remaining = sorted(set(bins.tolist()))
        bound = 0.0  # the bound reached so far for this image (a level passing nothing keeps it)
        for d in candidates:
            qh, qw = int(h * d), int(w * d)
            q_coord = make_coord((qh, qw), device=lr.device).unsqueeze(0)
            q_cell = make_cell((qh, qw), device=lr.device).unsqueeze(0) * max(d / TRAINING_SCALE, 1)
            low = model.decode(lat, q_coord, q_cell, bsize)
            up = Q.sample_bilinear(low.view(1, qh, qw, 3).permute(0, 3, 1, 2), coord)[0]
            err = ((up - ref) ** 2).mean(-1)
            for b in list(remaining):
                if err[bins == b].mean().item() > mse_threshold:
                    break
                remaining.remove(b)
                bound = (b + 1) * step
            row[d] = min(row.get(d, 1.0), bound)
        for d in candidates:  # thresholds never decrease with the decode scale
            for e in candidates:
                if e < d and row[e] > row[d]:
                    row[e] = row[d]
    row[float(scale)] = 1.0
    return dict(sorted(row.items()))
