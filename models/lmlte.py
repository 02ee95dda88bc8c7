"""LM-LTE: LTE with its big MLP moved to latent space (LMF, He & Jin, CVPR 2024).

Latent MLP input per LR cell: coef ⊙ basis(freq, rel = (1, 1), phase(rel cell)) (128-d);
output: render modulations + a 16-d coef' and 16-d freq'. Render per query: coef' ⊙
basis(freq', rel coord, imphase(rel cell)) -> modulated 16-wide MLP, + bilinear LR residual.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn

from . import query as Q
from .decoder import Latent, as_table, latent_cell
from .lm import LMDecoder
from .lte import fourier_basis
from .mlp import MLP, ModulatedMLP, lm_dims
from .registry import make, register


@register("lmlte")
class LMLTE(LMDecoder):
    residual = True

    def __init__(self, encoder_spec: Mapping[str, Any], imnet_spec: Mapping[str, Any] | None = None,
                 hypernet_spec: Mapping[str, Any] | None = None, hidden_dim: int = 128,
                 local_ensemble: bool = True, cell_decode: bool = True, mod_input: bool = False,
                 cmsr_spec: Mapping[str, Any] | None = None) -> None:
        super().__init__(encoder_spec, cmsr_spec)
        if imnet_spec is None or hypernet_spec is None:
            raise ValueError("lmlte: imnet_spec and hypernet_spec are required")
        self.local_ensemble, self.cell_decode, self.mod_input = local_ensemble, cell_decode, mod_input
        c = self.encoder.out_dim
        self.coef = nn.Conv2d(c, hidden_dim, 3, padding=1)
        self.freq = nn.Conv2d(c, hidden_dim, 3, padding=1)
        self.phase = nn.Linear(2, hidden_dim // 2, bias=False)
        hd, _, self.mod_dim = lm_dims(imnet_spec)
        self.code_dim = hd if mod_input else hidden_dim
        hyper_out = self.mod_dim + (2 * hd if mod_input else 0)
        self.hypernet = make(hypernet_spec, args={"in_dim": hidden_dim, "out_dim": hyper_out}, kind=MLP)
        if mod_input:
            self.imphase = nn.Linear(2, hd // 2, bias=False)
        self.imnet = make(imnet_spec, args={"in_dim": self.code_dim, "mod_up_merge": False}, kind=ModulatedMLP)
        self.hidden_dim = hidden_dim
        self.fused_input_width = self.code_dim  # the kernel computes the Fourier input itself

    @property
    def render_mlp(self) -> ModulatedMLP:
        return self.imnet

    def latent(self, feat: torch.Tensor, inp: torch.Tensor, cell: torch.Tensor) -> Latent:
        b, _, h, w = feat.shape
        coef, freq = as_table(self.coef(feat)), as_table(self.freq(feat))
        ones = freq.new_ones(1, 1, 2)
        if self.cell_decode:
            # (B, 1, hidden/2): one per image; cells of the LR image (inp), as in LM-LIIF
            phase = self.phase(latent_cell(cell, *inp.shape[-2:]))
        else:
            phase = freq.new_zeros(1, 1, self.hidden_dim // 2)
        mod = self.hypernet(coef * fourier_basis(freq, ones, phase))
        if self.mod_input:
            code = mod[..., self.mod_dim:]  # [coef' | freq'], 2 * hd
        else:
            code = torch.cat([coef, freq], dim=-1)
        folded = self.imnet.fold(mod[..., : self.mod_dim].reshape(b * h * w, -1))
        complexity = mod[..., self.imnet.shift_slice()].abs().mean(-1).view(b, 1, h, w)
        return Latent(inp=inp, rows=code.contiguous(), mods=folded.view(folded.shape[0], b, h * w, -1),
                      complexity=complexity)

    def render(self, lat: Latent, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        h, w = lat.hw
        kernel = self.imnet.kernel(lat.need_mods(), coord, cell, in_width=self.fused_input_width)
        if kernel is not None:
            if self.cell_decode:
                phase_fn = self.imphase if self.mod_input else self.phase
                phase = phase_fn(Q.rel_cell(cell, h, w))
            else:
                phase = coord.new_zeros(coord.shape[0], 1, self.code_dim // 2)
            last = self.imnet.hidden(-1)
            return kernel.lte16(coord, phase, lat.rows, lat.mods, h, w, self.local_ensemble,
                                self.imnet.hidden(0).weight,
                                [self.imnet.hidden(l).weight for l in range(1, self.imnet.hidden_depth)],
                                last.weight, last.bias)
        lk = Q.locate(coord, h, w, self.local_ensemble)
        b, k, q = lk.index.shape
        rows = Q.gather(lat.need_rows(), lk.index)
        coef, freq = rows.split(self.code_dim, dim=-1)
        if self.cell_decode:
            phase_fn = self.imphase if self.mod_input else self.phase
            phase = phase_fn(Q.rel_cell(cell, h, w)).unsqueeze(1)
        else:
            phase = rows.new_zeros(1, 1, 1, self.code_dim // 2)
        x = coef * fourier_basis(freq, lk.rel_coord, phase)
        return self.imnet.render_blend(x, lat.need_mods(), lk)
