"""LTE (Lee & Jin, CVPR 2022): local texture estimator — a Fourier basis per query, 256-wide MLP."""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn as nn

from . import query as Q
from .decoder import ImplicitDecoder, Latent, as_table
from .mlp import MLP
from .registry import make, register


def fourier_basis(freq: torch.Tensor, rel: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """LTE's basis: freq (..., 2m) as m pairs (f_2k, f_2k+1); phase (..., m); rel (..., 2).

    phi_k = f_2k * rel_row + f_2k+1 * rel_col + phase_k  ->  [cos(pi phi), sin(pi phi)] (..., 2m)
    """
    pairs = freq.unflatten(-1, (-1, 2))
    phi = pairs[..., 0] * rel[..., :1] + pairs[..., 1] * rel[..., 1:] + phase
    return torch.cat([torch.cos(math.pi * phi), torch.sin(math.pi * phi)], dim=-1)


@register("lte")
class LTE(ImplicitDecoder):
    """Per query: coef ⊙ basis(freq, rel coord, phase(rel cell)) -> imnet, + bilinear residual."""

    residual = True
    default_bsize = 8192

    def __init__(self, encoder_spec: Mapping[str, Any], imnet_spec: Mapping[str, Any] | None = None,
                 hidden_dim: int = 256) -> None:
        super().__init__(encoder_spec)
        if imnet_spec is None:
            raise ValueError("lte: imnet_spec is required")
        c = self.encoder.out_dim
        self.coef = nn.Conv2d(c, hidden_dim, 3, padding=1)
        self.freq = nn.Conv2d(c, hidden_dim, 3, padding=1)
        self.phase = nn.Linear(2, hidden_dim // 2, bias=False)
        self.imnet = make(imnet_spec, args={"in_dim": hidden_dim}, kind=MLP)
        self.hidden_dim = hidden_dim

    def latent(self, feat: torch.Tensor, inp: torch.Tensor, cell: torch.Tensor) -> Latent:
        return Latent(inp=inp, rows=as_table(torch.cat([self.coef(feat), self.freq(feat)], dim=1)))

    def render(self, lat: Latent, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        h, w = lat.hw
        lk = Q.locate(coord, h, w)
        rows = Q.gather(lat.need_rows(), lk.index)
        coef, freq = rows.split(self.hidden_dim, dim=-1)
        phase = self.phase(Q.rel_cell(cell, h, w)).unsqueeze(1)
        pred = self.imnet(coef * fourier_basis(freq, lk.rel_coord, phase))
        return Q.ensemble(pred, lk)
