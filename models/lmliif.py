"""LM-LIIF: LIIF with its big MLP moved to latent space (LMF, He & Jin, CVPR 2024).

The latent MLP ("hypernet") runs once per LR cell on [unfolded feature, relative cell] and
emits a 16-d latent code plus scale/shift modulations for every render layer. The render MLP
(16 wide) runs per query on [latent code, relative coord, relative cell].

Per-query cost is minimised by moving everything that depends only on the LR cell into the
latent stage: the latent code's contribution to render layer 0 and the modulations folded into
per-layer (a, c) pairs (see ``ModulatedMLP``). A query then only computes its 4-input part of
layer 0 and the 16x16 hidden layers.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from .decoder import Latent, as_table, conv_linear, latent_cell
from .lm import LMDecoder
from .mlp import MLP, ModulatedMLP, lm_dims
from .registry import make, register


@register("lmliif")
class LMLIIF(LMDecoder):
    def __init__(self, encoder_spec: Mapping[str, Any], imnet_spec: Mapping[str, Any] | None = None,
                 hypernet_spec: Mapping[str, Any] | None = None, local_ensemble: bool = True,
                 feat_unfold: bool = True, cell_decode: bool = True, mod_input: bool = False,
                 cmsr_spec: Mapping[str, Any] | None = None) -> None:
        super().__init__(encoder_spec, cmsr_spec)
        if imnet_spec is None or hypernet_spec is None:
            raise ValueError("lmliif: imnet_spec and hypernet_spec are required")
        self.local_ensemble, self.feat_unfold = local_ensemble, feat_unfold
        self.cell_decode, self.mod_input = cell_decode, mod_input
        hd, _, self.mod_dim = lm_dims(imnet_spec)
        c = self.encoder.out_dim
        hyper_in = c * (9 if feat_unfold else 1) + (2 if cell_decode else 0)
        hyper_out = self.mod_dim + (hd if mod_input else 0)
        self.hypernet = make(hypernet_spec, args={"in_dim": hyper_in, "out_dim": hyper_out}, kind=MLP)
        self.code_dim = hd if mod_input else c  # per-cell part of the render input
        imnet_in = self.code_dim + 2 + (2 if cell_decode else 0)
        self.imnet = make(imnet_spec, args={"in_dim": imnet_in, "mod_up_merge": False}, kind=ModulatedMLP)

    @property
    def render_mlp(self) -> ModulatedMLP:
        return self.imnet

    latent_band_cells = 1 << 16

    def latent(self, feat: torch.Tensor, inp: torch.Tensor, cell: torch.Tensor) -> Latent:
        b, _, h, w = feat.shape
        # the cell is measured in cells of the LR image (inp), not of ``feat``: the exported
        # latent graph gets a band of feature rows and must see the whole image's cell
        extra = latent_cell(cell, *inp.shape[-2:]) if self.cell_decode else None
        halo = 1 if self.feat_unfold else 0
        w0 = self.imnet.hidden(0)

        def cells(r0: int, r1: int) -> tuple[torch.Tensor, torch.Tensor]:
            a0, a1 = max(0, r0 - halo), min(h, r1 + halo)
            x = conv_linear(feat[:, :, a0:a1], self.hypernet.linear(0), self.feat_unfold, extra)
            mod = self.hypernet.layers[1:](x).view(b, a1 - a0, w, -1)[:, r0 - a0: r1 - a0].reshape(b, (r1 - r0) * w, -1)
            code = mod[..., self.mod_dim:] if self.mod_input else as_table(feat[:, :, r0:r1])
            layer0_bias = code @ w0.weight[:, : self.code_dim].t() + w0.bias
            folded = self.imnet.fold(mod[..., : self.mod_dim].reshape(-1, self.mod_dim),
                                     layer0_bias.reshape(-1, self.imnet.hidden_dim))
            return folded, mod[..., self.imnet.shift_slice()].abs().mean(-1)

        mods, complexity = self.banded_latent(feat, self.latent_band_cells, cells)
        return Latent(inp=inp, mods=mods, complexity=complexity)

    def render(self, lat: Latent, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        h, w = lat.hw
        return self.imnet.render_at(coord, lat.need_mods(), (h, w), self.local_ensemble,
                                    cell if self.cell_decode else None,
                                    layer0_weight=self.imnet.hidden(0).weight[:, self.code_dim:])
