"""The two MLPs of the method: a plain MLP (LIIF/LTE decoders, LMF latent MLP) and the small
*render* MLP whose hidden layers are modulated per query (LMF).
"""
from __future__ import annotations

from types import ModuleType
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from . import fast_render, triton_render
from . import query as Q
from .registry import register


@register("mlp")
class MLP(nn.Module):
    """Linear/ReLU stack; state-dict keys ``layers.{0,2,...}`` as in the official code."""

    def __init__(self, in_dim: int, out_dim: int, hidden_list: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        last = in_dim
        for hidden in hidden_list:
            layers += [nn.Linear(last, hidden), nn.ReLU(inplace=True)]
            last = hidden
        layers.append(nn.Linear(last, out_dim))
        self.layers = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        return self.layers(x.reshape(-1, x.shape[-1])).view(*shape, -1)

    def linear(self, i: int) -> nn.Linear:
        """The i-th linear layer (``layers[2 i]``; -1: the output layer)."""
        return _linear(self.layers, i)


def _linear(layers: nn.Sequential, i: int) -> nn.Linear:
    layer = layers[2 * i if i >= 0 else i]
    assert isinstance(layer, nn.Linear)
    return layer


def lm_dims(spec: Mapping[str, Any]) -> tuple[int, int, int]:
    """(hidden_dim, hidden_depth, mod_dim) of an ``lmmlp`` spec, as the official wrappers derive."""
    a = spec.get("args", {})
    hd, depth = int(a["hidden_dim"]), int(a["hidden_depth"])
    per_layer = hd * (int(bool(a.get("mod_scale", True))) + int(bool(a.get("mod_shift", True))))
    return hd, depth, per_layer * depth


@register("lmmlp")
class ModulatedMLP(nn.Module):
    """Render MLP: hidden layer l computes ``relu((W_l x + b_l) * (1 + S_l) + T_l)``.

    A modulation vector holds the scales of all layers first, then the shifts
    (``S_l = m[l*hd:(l+1)*hd]``, ``T_l = m[hd*depth + l*hd: ...]``), the official layout.

    Rendering is split in two so that the per-query work is as small as possible:
    :meth:`fold` runs once per LR cell and turns a modulation vector into per-layer
    ``(a_l, c_l) = (1 + S_l, b_l * (1 + S_l) + T_l)``; :meth:`render` then only does
    ``relu((W_l x) * a_l + c_l)`` per query. Layer 0 may also take a per-cell bias (the part
    of its input that only depends on the LR cell, precomputed by the decoder).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, hidden_depth: int,
                 mod_scale: bool = True, mod_shift: bool = True, mod_up_merge: bool = False,
                 use_conv: bool = False) -> None:
        super().__init__()
        if mod_up_merge:
            raise ValueError("lmmlp: mod_up_merge=True is not supported (all LMF decoders turn it off)")
        if use_conv:
            raise ValueError("lmmlp: use_conv=True is not supported (no LMF config uses it)")
        self.hidden_dim, self.hidden_depth = hidden_dim, hidden_depth
        self.mod_scale, self.mod_shift = bool(mod_scale), bool(mod_shift)
        layers: list[nn.Module] = []
        last = in_dim
        for _ in range(hidden_depth):
            layers += [nn.Linear(last, hidden_dim), nn.ReLU(inplace=True)]
            last = hidden_dim
        layers.append(nn.Linear(last, out_dim))
        self.layers = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    @property
    def mod_dim(self) -> int:
        """Length of one modulation vector (scales and/or shifts of every hidden layer)."""
        return self.hidden_dim * self.hidden_depth * (int(self.mod_scale) + int(self.mod_shift))

    def hidden(self, l: int) -> nn.Linear:
        """Render layer l's linear map (``layers[2 l]``; -1: the output layer)."""
        return _linear(self.layers, l)

    def shift_slice(self) -> slice:
        """Channels of a modulation vector that hold the shifts (CMSR's complexity measure)."""
        start = self.hidden_dim * self.hidden_depth if (self.mod_scale and self.mod_shift) else 0
        return slice(start, start + self.hidden_dim * self.hidden_depth)

    def fold(self, mod: torch.Tensor, layer0_bias: torch.Tensor | None = None) -> torch.Tensor:
        """(N, mod_dim) modulations -> (depth, N, 2*hd) per-layer tables ``[a_l | c_l]``.

        ``layer0_bias`` (N, hd) replaces the bias of layer 0 (it then includes the part of the
        first layer's input that only depends on the LR cell). One contiguous table per layer
        keeps each per-query gather small and cache-friendly.
        """
        hd, depth = self.hidden_dim, self.hidden_depth
        n = mod.shape[0]
        if self.mod_scale:
            scale = mod[:, : hd * depth].reshape(n, depth, hd).transpose(0, 1) + 1.0
        else:
            scale = mod.new_ones(depth, n, hd)
        if self.mod_shift:
            start = hd * depth if self.mod_scale else 0
            shift = mod[:, start: start + hd * depth].reshape(n, depth, hd).transpose(0, 1)
        else:
            shift = mod.new_zeros(depth, n, hd)
        bias = torch.stack([self.hidden(l).bias for l in range(depth)]).unsqueeze(1)  # (depth, 1, hd)
        if layer0_bias is not None:
            bias = torch.cat([layer0_bias.unsqueeze(0), bias[1:].expand(depth - 1, n, hd)], dim=0)
        return torch.cat([scale, bias * scale + shift], dim=-1).contiguous()

    def render(self, x: torch.Tensor, mods: torch.Tensor, index: torch.Tensor | None = None,
               layer0_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Per-query pass: x (N, in); row ``index[i]`` of each modulation table modulates row i.

        ``mods`` is (depth, M, 2*hd) from :meth:`fold`; without ``index`` M must equal N.
        """
        hd = self.hidden_dim
        w0 = self.hidden(0).weight if layer0_weight is None else layer0_weight
        if fast_render.use_kernel(hd, mods, x):
            last = self.hidden(-1)
            return fast_render.render16(x, mods, index, w0, [self.hidden(l).weight for l in range(1, self.hidden_depth)],
                                        last.weight, last.bias)
        rows = None
        if index is not None and torch.is_grad_enabled():
            # training: one gather of all layers' rows (and one scatter-add in backward) instead
            # of one narrow gather per layer; several times faster on the CPU
            # (unbind, not slicing: its backward is one stack, not a zero-filled copy per slice)
            flat = mods.permute(1, 0, 2).reshape(mods.shape[1], -1).index_select(0, index)
            rows = flat.view(-1, self.hidden_depth, 2, hd).unbind(1)
        h = x @ w0.t()
        for l in range(self.hidden_depth):
            if l > 0:
                h = h @ self.hidden(l).weight.t()
            if rows is not None:
                a, c = rows[l].unbind(1)
            else:
                ac = mods[l] if index is None else mods[l].index_select(0, index)
                a, c = ac[:, :hd], ac[:, hd:]
            h = torch.relu_(torch.addcmul(c, h, a))
        return self.layers[-1](h)

    def render_blend(self, x: torch.Tensor, mods: torch.Tensor, lookup: Q.Lookup,
                     shared: torch.Tensor | None = None,
                     layer0_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Render every query at its K neighbour cells and blend with the ensemble weights.

        x (B, K, Q, in_x) per-neighbour inputs; ``shared`` (B, Q, in_s) inputs common to the K
        neighbours, appended after x; mods (depth, B, h*w, 2*hd) from :meth:`fold`;
        ``lookup`` from :func:`query.locate`. Returns (B, Q, out_dim). (The rows go through
        :meth:`render`, i.e. the row kernel of ``fast_render`` where it applies.)
        """
        w0 = self.hidden(0).weight if layer0_weight is None else layer0_weight
        b, k, q, _ = x.shape
        if shared is not None:
            x = torch.cat([x, shared.unsqueeze(1).expand(b, k, q, shared.shape[-1])], dim=-1)
        pred = self.render(x.reshape(b * k * q, -1), mods.flatten(1, 2),
                           Q.flat_index(lookup.index, mods.shape[2]), layer0_weight=w0)
        return Q.ensemble(pred.view(b, k, q, -1), lookup)

    def kernel(self, mods: torch.Tensor, *inputs: torch.Tensor | None, in_width: int = 0) -> ModuleType | None:
        """The fused kernel module that computes a render call with these modulation tables and
        per-query inputs (:mod:`models.triton_render` on CUDA, :mod:`models.fast_render` on the
        CPU; each module's own check is the one place that decides), or None: the PyTorch path."""
        if triton_render.usable(self.hidden_dim, mods, *inputs, in_width=in_width):
            return triton_render
        if fast_render.use_kernel(self.hidden_dim, mods, *inputs, in_width=in_width):
            return fast_render
        return None

    def fused(self, mods: torch.Tensor, *inputs: torch.Tensor | None, in_width: int = 0) -> bool:
        """Whether a render call with these modulation tables and per-query inputs runs in a
        fused kernel (:meth:`kernel`)."""
        return self.kernel(mods, *inputs, in_width=in_width) is not None

    def render_at(self, coord: torch.Tensor, mods: torch.Tensor, hw: tuple[int, int],
                  local_ensemble: bool, cell: torch.Tensor | None = None,
                  layer0_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Render queries whose per-neighbour input is [relative coord, (relative cell)].

        coord, cell (B, Q, 2); mods (depth, B, h*w, 2*hd). Look-up, render and blend: one
        fused kernel without autograd (Triton on CUDA, C on the CPU), else :func:`query.locate` +
        :meth:`render_blend`.
        """
        h, w = hw
        w0 = self.hidden(0).weight if layer0_weight is None else layer0_weight
        kernel = self.kernel(mods, coord, cell)
        if kernel is not None:
            last = self.hidden(-1)
            return kernel.query16(coord, cell, mods, h, w, local_ensemble, w0,
                                  [self.hidden(l).weight for l in range(1, self.hidden_depth)],
                                  last.weight, last.bias)
        lk = Q.locate(coord, h, w, local_ensemble)
        shared = None if cell is None else Q.rel_cell(cell, h, w)
        return self.render_blend(lk.rel_coord, mods, lk, shared, layer0_weight=w0)

    def forward(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        """Official call: x (..., in_dim) with one modulation vector per row (..., mod_dim)."""
        shape = x.shape[:-1]
        mods = self.fold(mod.reshape(-1, mod.shape[-1]))
        return self.render(x.reshape(-1, x.shape[-1]), mods).view(*shape, -1)
