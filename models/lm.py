"""What the LMF decoders (LM-LIIF, LM-LTE, LM-CiaoSR) share: the modulated render MLP and its
folded modulation tables, the chunk size that follows from where they render, the per-LR-cell
latent computed in bands of rows, and the official ``cmsr_spec`` argument.

Vocabulary used across the models: ``mods`` are the folded per-layer modulation tables
``(depth, B, h*w, 2*hd)`` = ``[a_l | c_l]`` of every LR cell (:meth:`ModulatedMLP.fold`);
``Latent.rows`` are other per-cell rows a decoder gathers per query (LM-LTE's [coef | freq]).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from . import cmsr as multiscale
from . import fast_render
from .cmsr import CMSR
from .decoder import ImplicitDecoder
from .mlp import ModulatedMLP


class LMDecoder(ImplicitDecoder):
    """Base of the LMF decoders. Subclasses name their ``lmmlp`` as :attr:`render_mlp` and may
    set ``fused_input_width`` (a computed MLP input the kernel builds itself: LM-LTE's Fourier
    input)."""

    default_bsize = 8192
    fused_input_width = 0
    # per-cell work runs on bands of LR rows of about this many cells when the decoder uses
    # :meth:`banded_latent` (None: one band, as in the exported latent graph)
    latent_band_cells: int | None = None

    @property
    def render_mlp(self) -> ModulatedMLP:
        raise NotImplementedError

    def __init__(self, encoder_spec: Mapping[str, Any], cmsr_spec: Mapping[str, Any] | str | None = None) -> None:
        super().__init__(encoder_spec)
        # the official argument: this model's own CMSR table, used unless a call passes another
        self.cmsr = CMSR.from_spec(cmsr_spec) if cmsr_spec is not None else None

    def chunk_size(self, lat) -> int:
        # the fused kernel keeps nothing per query but the output: large chunks, less overhead
        fused = self.render_mlp.fused(lat.mods, in_width=self.fused_input_width)
        return fast_render.FUSED_BSIZE if fused else super().chunk_size(lat)

    def banded_latent(self, feat: torch.Tensor, band_cells: int | None,
                      cells: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-LR-cell work on bands of LR rows of about ``band_cells`` cells (one band: with
        autograd, or when ``band_cells`` is None): ``cells(r0, r1)`` returns rows r0..r1's folded
        tables (depth, B*n, 2*hd) and CMSR complexity (B, n), n = (r1 - r0) * w. Returns
        ``mods`` (depth, B, h*w, 2*hd) and the complexity map (B, 1, h, w). Exact: a band reads
        its neighbour rows itself (halo), so bands only bound the peak memory on large images."""
        b, _, h, w = feat.shape
        depth = self.render_mlp.hidden_depth
        if torch.is_grad_enabled() or not band_cells or band_cells // w >= h:
            # one band, without a loop whose length depends on the size (the ONNX export traces this)
            folded, comp = cells(0, h)
            return folded.view(depth, b, h * w, -1), comp.view(b, 1, h, w)
        band = max(1, band_cells // w)
        mods = feat.new_empty(depth, b, h * w, 2 * self.render_mlp.hidden_dim)
        complexity = feat.new_empty(b, 1, h, w)
        for r0 in range(0, h, band):
            r1 = min(h, r0 + band)
            folded, comp = cells(r0, r1)
            mods[:, :, r0 * w: r1 * w] = folded.view(depth, b, (r1 - r0) * w, -1)
            complexity[:, :, r0:r1] = comp.view(b, 1, r1 - r0, w)
        return mods, complexity

    def forward(self, inp: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor, bsize: int | None = None,
                cmsr: CMSR | bool | None = None, stats: dict | None = None, *,
                feat: torch.Tensor | None = None) -> torch.Tensor:
        """As :meth:`ImplicitDecoder.forward`, through :func:`models.cmsr.render`: ``cmsr`` None
        uses the model's own table (``cmsr_spec``), False none, or a :class:`CMSR`; ``stats``
        receives CMSR's skipped-render fraction; ``feat`` as in :meth:`ImplicitDecoder.forward`."""
        return multiscale.render(self, inp, coord, cell, bsize=bsize, cmsr=cmsr, stats=stats, feat=feat)
