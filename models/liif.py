"""LIIF (Chen et al., CVPR 2021): a 256-wide MLP per HR query — the baseline LMF speeds up."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from . import query as Q
from .decoder import ImplicitDecoder, Latent, as_table, unfold3x3
from .mlp import MLP
from .registry import make, register


@register("liif")
class LIIF(ImplicitDecoder):
    """Query input: [unfolded feature (9C), relative coord (2), relative cell (2)] -> imnet."""

    default_bsize = 8192

    def __init__(self, encoder_spec: Mapping[str, Any], imnet_spec: Mapping[str, Any] | None = None,
                 local_ensemble: bool = True, feat_unfold: bool = True, cell_decode: bool = True) -> None:
        super().__init__(encoder_spec)
        if imnet_spec is None:
            raise ValueError("liif: imnet_spec is required")
        self.local_ensemble, self.feat_unfold, self.cell_decode = local_ensemble, feat_unfold, cell_decode
        in_dim = self.encoder.out_dim * (9 if feat_unfold else 1) + 2 + (2 if cell_decode else 0)
        self.imnet = make(imnet_spec, args={"in_dim": in_dim}, kind=MLP)

    def latent(self, feat: torch.Tensor, inp: torch.Tensor, cell: torch.Tensor) -> Latent:
        return Latent(inp=inp, rows=as_table(unfold3x3(feat) if self.feat_unfold else feat))

    def render(self, lat: Latent, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        h, w = lat.hw
        lk = Q.locate(coord, h, w, self.local_ensemble)
        parts = [Q.gather(lat.need_rows(), lk.index), lk.rel_coord]
        if self.cell_decode:
            parts.append(Q.rel_cell(cell, h, w).unsqueeze(1).expand_as(lk.rel_coord))
        pred = self.imnet(torch.cat(parts, dim=-1))
        return Q.ensemble(pred, lk)
