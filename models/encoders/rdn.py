"""RDN encoder (Zhang et al. 2018), in the layout LIIF/LTE/LMF checkpoints use.

Keys: ``SFENet1``, ``SFENet2``, ``RDBs.{i}.convs.{c}.conv.0``, ``RDBs.{i}.LFF``, ``GFF.{0,1}`` and,
only when upsampling, ``UPNet``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from utils.errors import SpecError

from ..registry import register
from .base import Encoder

__all__ = ["RDN", "RDB", "RDBConv"]

# config name -> (number of RDBs D, dense layers per RDB C, growth rate G)
RDN_CONFIGS: dict[str, tuple[int, int, int]] = {"A": (20, 6, 32), "B": (16, 8, 64)}


def _conv(in_ch: int, out_ch: int, kernel_size: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size, padding=(kernel_size - 1) // 2, stride=1)


class RDBConv(nn.Module):
    """One dense layer: conv + ReLU whose output is concatenated to its input."""

    def __init__(self, in_channels: int, grow_rate: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(in_channels, grow_rate, kernel_size), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.conv(x)), 1)


class RDB(nn.Module):
    """Residual dense block: C dense layers, 1x1 local feature fusion, local residual."""

    def __init__(self, grow_rate0: int, grow_rate: int, n_conv_layers: int) -> None:
        super().__init__()
        # The official RDB always uses 3x3 dense layers, whatever RDNkSize says; kept for
        # checkpoint compatibility.
        self.convs = nn.Sequential(*[RDBConv(grow_rate0 + c * grow_rate, grow_rate, 3)
                                     for c in range(n_conv_layers)])
        self.LFF = nn.Conv2d(grow_rate0 + n_conv_layers * grow_rate, grow_rate0, 1, padding=0, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LFF(self.convs(x)) + x


@register("rdn")
class RDN(Encoder):
    """RDN feature extractor; with ``no_upsampling`` it returns (B, G0, h, w) LR features."""

    def __init__(self, G0: int = 64, RDNkSize: int = 3, RDNconfig: str = "B", scale: int = 2,  # noqa: N803
                 no_upsampling: bool = False, n_colors: int = 3) -> None:
        super().__init__()
        if RDNconfig not in RDN_CONFIGS:
            raise SpecError(f"rdn: RDNconfig must be one of {sorted(RDN_CONFIGS)}, got {RDNconfig!r}")
        k = RDNkSize
        self.D, C, G = RDN_CONFIGS[RDNconfig]
        self.no_upsampling = bool(no_upsampling)

        self.SFENet1 = _conv(n_colors, G0, k)
        self.SFENet2 = _conv(G0, G0, k)
        self.RDBs = nn.ModuleList([RDB(G0, G, C) for _ in range(self.D)])
        self.GFF = nn.Sequential(nn.Conv2d(self.D * G0, G0, 1, padding=0, stride=1), _conv(G0, G0, k))

        if self.no_upsampling:
            self.out_dim = G0
        else:
            self.out_dim = n_colors
            if scale in (2, 3):
                self.UPNet = nn.Sequential(_conv(G0, G * scale * scale, k), nn.PixelShuffle(scale),
                                           _conv(G, n_colors, k))
            elif scale == 4:
                self.UPNet = nn.Sequential(_conv(G0, G * 4, k), nn.PixelShuffle(2),
                                           _conv(G, G * 4, k), nn.PixelShuffle(2),
                                           _conv(G, n_colors, k))
            else:
                raise SpecError(f"rdn: scale must be 2, 3 or 4 when upsampling, got {scale!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_colors, h, w) -> features: global feature fusion of all RDB outputs + shallow skip."""
        f1 = self.SFENet1(x)
        x = self.SFENet2(f1)
        outs = []
        for rdb in self.RDBs:
            x = rdb(x)
            outs.append(x)
        x = self.GFF(torch.cat(outs, 1)) + f1
        return x if self.no_upsampling else self.UPNet(x)
