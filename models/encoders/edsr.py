"""EDSR and EDSR-baseline encoders (Lim et al. 2017), in the layout LIIF/LTE/LMF checkpoints use.

The module tree mirrors the official one so that state-dict keys match exactly:
``sub_mean``/``add_mean`` (frozen MeanShift 1x1 convs), ``head.0``, ``body.{i}.body.{0,2}``
(residual blocks), ``body.{n_resblocks}`` (the conv closing the body) and, only when upsampling,
``tail`` (Upsampler followed by a conv to RGB).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from utils.errors import SpecError

from ..registry import register
from .base import Encoder

__all__ = ["EDSR", "EDSRBaseline", "MeanShift", "ResBlock", "Upsampler"]

_DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


def _conv(in_ch: int, out_ch: int, kernel_size: int, bias: bool = True) -> nn.Conv2d:
    """'Same'-padded convolution, as EDSR's ``default_conv``."""
    return nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=bias)


class MeanShift(nn.Conv2d):
    """Frozen 1x1 conv that subtracts (sign=-1) or adds (sign=+1) the DIV2K mean.

    The official encoders build two of these but never call them (normalisation is done by
    data_norm outside the network). They are kept only so that official checkpoints load strictly.
    """

    def __init__(self, rgb_range: float, rgb_mean: Sequence[float] = _DIV2K_MEAN,
                 rgb_std: Sequence[float] = (1.0, 1.0, 1.0), sign: int = -1) -> None:
        super().__init__(3, 3, kernel_size=1)
        std = torch.tensor(rgb_std, dtype=torch.float32)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1) / std.view(3, 1, 1, 1))
            assert self.bias is not None  # created with bias=True
            self.bias.copy_(sign * rgb_range * torch.tensor(rgb_mean, dtype=torch.float32) / std)
        for p in self.parameters():
            p.requires_grad = False


class ResBlock(nn.Module):
    """conv -> ReLU -> conv, scaled by ``res_scale`` and added to the input."""

    def __init__(self, n_feats: int, kernel_size: int = 3, res_scale: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(n_feats, n_feats, kernel_size),
            nn.ReLU(inplace=True),
            _conv(n_feats, n_feats, kernel_size),
        )
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mul(self.res_scale) + x


class Upsampler(nn.Sequential):
    """Sub-pixel upsampling: (conv to 4C + PixelShuffle(2)) per factor 2, or conv + PixelShuffle(3)."""

    def __init__(self, scale: int, n_feats: int) -> None:
        layers: list[nn.Module] = []
        if scale >= 1 and (scale & (scale - 1)) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [_conv(n_feats, 4 * n_feats, 3), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [_conv(n_feats, 9 * n_feats, 3), nn.PixelShuffle(3)]
        else:
            raise SpecError(f"EDSR upsampling supports scale 2^n or 3, got {scale!r}")
        super().__init__(*layers)


@register("edsr")
class EDSR(Encoder):
    """EDSR feature extractor; with ``no_upsampling`` it returns (B, n_feats, h, w) LR features."""

    def __init__(self, n_resblocks: int = 32, n_feats: int = 256, res_scale: float = 0.1,
                 scale: int = 2, no_upsampling: bool = False, rgb_range: float = 1) -> None:
        super().__init__()
        n_colors, kernel_size = 3, 3
        self.no_upsampling = bool(no_upsampling)
        self.sub_mean = MeanShift(rgb_range)
        self.add_mean = MeanShift(rgb_range, sign=1)
        self.head = nn.Sequential(_conv(n_colors, n_feats, kernel_size))
        body: list[nn.Module] = [ResBlock(n_feats, kernel_size, res_scale) for _ in range(n_resblocks)]
        body.append(_conv(n_feats, n_feats, kernel_size))
        self.body = nn.Sequential(*body)
        if self.no_upsampling:
            self.out_dim = n_feats
        else:
            self.out_dim = n_colors
            self.tail = nn.Sequential(Upsampler(int(scale), n_feats), _conv(n_feats, n_colors, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) normalised image -> features (or an upscaled image when upsampling).

        ``sub_mean``/``add_mean`` are deliberately not applied (as in the official code).
        """
        x = self.head(x)
        res = self.body(x) + x
        return res if self.no_upsampling else self.tail(res)


@register("edsr-baseline")
class EDSRBaseline(EDSR):
    """EDSR-baseline: 16 blocks of 64 channels, res_scale 1 (the LMF default encoder)."""

    def __init__(self, n_resblocks: int = 16, n_feats: int = 64, res_scale: float = 1,
                 scale: int = 2, no_upsampling: bool = False, rgb_range: float = 1) -> None:
        super().__init__(n_resblocks=n_resblocks, n_feats=n_feats, res_scale=res_scale,
                         scale=scale, no_upsampling=no_upsampling, rgb_range=rgb_range)
