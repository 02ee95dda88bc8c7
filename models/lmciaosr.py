"""LM-CiaoSR: CiaoSR's attention-in-attention decoder moved to latent space (LMF, CVPR 2024).

Per LR cell (:meth:`LMCiaoSR.latent`, once per image):

* a cross-scale non-local feature (64-d per scale, tiled for large inputs);
* the 3x3-unfolded feature (9C, channel-major) read as a (3, 3, C) array, from which four
  (2, 2, C) key slices ``[t:t+2, l:l+2]`` are taken, one per ensemble neighbour; the value of a
  slice is the key plus the non-local feature. Because the unfolded vector is channel-major,
  these slices pick groups of channel/position pairs rather than spatial 2x2 sub-windows; the
  reference does this and its checkpoints depend on it (docs/differences.md);
* ``imnet_k``/``imnet_v`` weight each key/value from [key or value, offset, relative cell], where
  the offset of neighbour (vx, vy) is ``-(vx, vy) / (h, w)`` in LR-cell units (the reference
  divides its shift by h once more than the other decoders do; kept for checkpoints);
* ``prenet_q`` turns the unfolded feature into a query; softmax attention over the four
  weighted keys mixes the weighted values; ``hypernet_q`` maps the result to the render
  modulations plus (``mod_input``) a compact latent code.

Per query (:meth:`LMCiaoSR.render`): [latent code, relative coord] of each of the 4 neighbours
-> modulated 16-wide render MLP -> area-weighted ensemble; then the bilinear LR residual.

The reference adds the residual only in evaluation; here training and evaluation compute the
same function (train-mode output = the reference's training output + bilinear residual).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from utils.coords import make_coord

from .cross_scale_attention import CrossScaleAttention
from .decoder import Latent, as_table, latent_cell, unfold3x3
from .lm import LMDecoder
from .mlp import MLP, ModulatedMLP, lm_dims
from .registry import make, register

# Ensemble neighbours (row shift, col shift), in the reference's order.
_NEIGHBOURS = {1: [(0, 0)], 2: [(-1, -1), (-1, 1), (1, -1), (1, 1)]}


@register("lmciaosr")
class LMCiaoSR(LMDecoder):
    residual = True

    def __init__(self, encoder: Mapping[str, Any], prenet_q: Mapping[str, Any] | None = None,
                 hypernet_q: Mapping[str, Any] | None = None, imnet_q: Mapping[str, Any] | None = None,
                 imnet_k: Mapping[str, Any] | None = None, imnet_v: Mapping[str, Any] | None = None,
                 local_size: int = 2, feat_unfold: bool = True, non_local_attn: bool = True,
                 multi_scale: Sequence[int] = (2,), softmax_scale: float = 1, mod_input: bool = False,
                 cmsr_spec: Mapping[str, Any] | None = None) -> None:
        super().__init__(encoder, cmsr_spec)
        if prenet_q is None or hypernet_q is None or imnet_q is None or imnet_k is None or imnet_v is None:
            missing = [n for n, s in (("prenet_q", prenet_q), ("hypernet_q", hypernet_q), ("imnet_q", imnet_q),
                                      ("imnet_k", imnet_k), ("imnet_v", imnet_v)) if s is None]
            raise ValueError(f"lmciaosr: {', '.join(missing)} required")
        if local_size not in _NEIGHBOURS:
            raise ValueError(f"lmciaosr: local_size must be 1 or 2, got {local_size}")
        if not feat_unfold:
            # the reference cannot run it either (its 2x2 key slices need the 3x3 unfolding)
            raise ValueError("lmciaosr: feat_unfold=False is not supported")
        self.local_size, self.feat_unfold, self.non_local_attn = local_size, feat_unfold, non_local_attn
        self.softmax_scale, self.mod_input = softmax_scale, mod_input
        c = self.encoder.out_dim
        if non_local_attn:
            self.cs_attn = CrossScaleAttention(channel=c, scale=list(multi_scale))
        nl_dim = self.cs_attn.out_dim if non_local_attn else 0
        self.key_dim = 4 * c                 # a (2, 2, C) slice of the unfolded feature
        self.value_dim = self.key_dim + nl_dim
        self.imnet_k = make(imnet_k, args={"in_dim": self.key_dim + 4, "out_dim": self.key_dim}, kind=MLP)
        self.imnet_v = make(imnet_v, args={"in_dim": self.value_dim + 4, "out_dim": self.value_dim}, kind=MLP)
        hd, _, self.mod_dim = lm_dims(imnet_q)
        self.hypernet_q = make(hypernet_q, args={"in_dim": self.value_dim,
                                                 "out_dim": self.mod_dim + (2 * hd if mod_input else 0)}, kind=MLP)
        self.prenet_q = make(prenet_q, args={"in_dim": 9 * c, "out_dim": self.key_dim}, kind=MLP)
        self.code_dim = 2 * hd if mod_input else self.value_dim  # per-cell part of the render input
        self.imnet_q = make(imnet_q, args={"in_dim": self.code_dim + 2, "mod_up_merge": False}, kind=ModulatedMLP)

    @property
    def render_mlp(self) -> ModulatedMLP:
        return self.imnet_q

    # -- per LR cell ----------------------------------------------------------------------
    latent_band_cells = 1 << 14  # without autograd, per-cell work runs on bands of LR rows

    def latent(self, feat: torch.Tensor, inp: torch.Tensor, cell: torch.Tensor) -> Latent:
        h, w = feat.shape[-2:]
        non_local = self.cs_attn(feat) if self.non_local_attn else None  # tiled: bounded memory
        rel_cell = latent_cell(cell, h, w)
        offsets = [self._key_offset(vx, vy, h, w, feat.device) for vx, vy in _NEIGHBOURS[self.local_size]]
        # The attention MLPs hold ~10 KB of activations per LR cell: on a 1280x720 input the whole
        # map at once would take GBs. Bands of rows (one-row halo for the 3x3 unfolding) compute
        # exactly the same numbers in bounded memory.

        def cells(r0: int, r1: int) -> tuple[torch.Tensor, torch.Tensor]:
            a0, a1 = max(0, r0 - 1), min(h, r1 + 1)
            rows = as_table(unfold3x3(feat[:, :, a0:a1])[:, :, r0 - a0: r1 - a0])  # (B, n, 9C), channel-major
            nl = None if non_local is None else as_table(non_local[:, :, r0:r1])
            return self._cells(rows, nl, rel_cell, [o[:, r0 * w: r1 * w] for o in offsets])

        mods, complexity = self.banded_latent(feat, self.latent_band_cells, cells)
        return Latent(inp=inp, mods=mods, complexity=complexity)

    def _cells(self, rows: torch.Tensor, non_local: torch.Tensor | None, rel_cell: torch.Tensor,
               offsets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-cell attention for n cells: rows (B, n, 9C), non_local (B, n, nl), offsets (1, n, 2)
        per neighbour -> folded render tables (depth, B*n, 2*hd) and complexity (B, n)."""
        b, n = rows.shape[:2]
        c = rows.shape[-1] // 9
        grid = rows.view(b, n, 3, 3, c)                     # the reference's (3, 3, C) reading
        rc = rel_cell.expand(b, n, 2)
        keys, values = [], []
        for (vx, vy), offset in zip(_NEIGHBOURS[self.local_size], offsets, strict=True):
            t, l = int(vy > 0), int(vx > 0)
            key = grid[:, :, t:t + 2, l:l + 2].reshape(b, n, self.key_dim)
            value = key if non_local is None else torch.cat([key, non_local], dim=-1)
            offset = offset.expand(b, n, 2)
            keys.append(key * self.imnet_k(torch.cat([key, offset, rc], dim=-1)))
            values.append(value * self.imnet_v(torch.cat([value, offset, rc], dim=-1)))
        query = self.prenet_q(rows).unsqueeze(2)                                       # (B, n, 1, 4C)
        attn = (query @ torch.stack(keys, dim=-1) / self.softmax_scale).softmax(dim=-1)  # (B, n, 1, K)
        fused = (attn @ torch.stack(values, dim=-2)).squeeze(2)                         # (B, n, value_dim)
        mod = self.hypernet_q(fused)
        code = mod[..., self.mod_dim:] if self.mod_input else fused
        w0 = self.imnet_q.hidden(0)
        layer0_bias = code @ w0.weight[:, : self.code_dim].t() + w0.bias
        folded = self.imnet_q.fold(mod[..., : self.mod_dim].reshape(b * n, -1), layer0_bias.reshape(b * n, -1))
        return folded, mod[..., self.imnet_q.shift_slice()].abs().mean(-1)

    @staticmethod
    def _key_offset(vx: int, vy: int, h: int, w: int, device: torch.device) -> torch.Tensor:
        """(1, hw, 2) offset of neighbour (vx, vy) fed to imnet_k/v, evaluated as the reference
        does: ``(centre - (centre + v / n²)) * n`` per axis (= -v / n up to rounding)."""
        centre = make_coord((h, w), device=device).unsqueeze(0)
        shifted = centre.clone()
        shifted[..., 0] += vx * (1 / h) / h
        shifted[..., 1] += vy * (1 / w) / w
        rel = centre - shifted
        rel[..., 0] *= h
        rel[..., 1] *= w
        return rel

    # -- per query ------------------------------------------------------------------------
    def render(self, lat: Latent, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        h, w = lat.hw
        return self.imnet_q.render_at(coord, lat.need_mods(), (h, w), self.local_size == 2,
                                      layer0_weight=self.imnet_q.hidden(0).weight[:, self.code_dim:])
