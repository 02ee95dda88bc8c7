"""Cross-scale non-local attention (CiaoSR's "non-local feature", from CSNLN).

Every pixel of the feature map attends over all 3x3 patches of the map downscaled by ``s``
(matched in a 32-d embedding, cosine-like: the patch keys are L2-normalised); the attention
weights then assemble the corresponding ``3s x 3s`` patches of the full-resolution map (a
transposed convolution with stride ``s``), which a stride-``s`` 3x3 convolution brings back to
the input resolution. One 64-d map per scale, concatenated.

The attention is global over the map: its cost is quadratic in the number of pixels. Large
maps are therefore processed in tiles (48x48 by default, as the reference does) with one pixel
of context on each side, which bounds memory for any input size. Tiling changes the result
(each tile only sees itself), so the tile size is part of the model's definition; maps of at
most ``tile²`` pixels are processed whole.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def same_pad(x: torch.Tensor, k: int, stride: int) -> torch.Tensor:
    """Zero padding so that a k x k window at ``stride`` covers ceil(n / stride) positions
    (TensorFlow's 'SAME'; the odd pixel, if any, goes to the bottom/right)."""
    pads: list[int] = []
    for n in (x.shape[-1], x.shape[-2]):  # F.pad lists the last dimension first
        total = max(0, (-(-n // stride) - 1) * stride + k - n)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def patches(x: torch.Tensor, k: int, stride: int) -> torch.Tensor:
    """All k x k windows of ``x`` (B, C, H, W) with 'same' padding: (B, L, C, k, k), row-major in L."""
    b, c = x.shape[:2]
    cols = F.unfold(same_pad(x, k, stride), k, stride=stride)  # (B, C*k*k, L)
    return cols.view(b, c, k, k, -1).permute(0, 4, 1, 2, 3)


def tile_spans(n: int, tile: int) -> list[tuple[int, int]]:
    """[start, end) of the tiles along an axis of ``n``: ``n // tile`` tiles of ``tile``, the last
    one taking the remainder (at least one tile, so axes shorter than ``tile`` are covered)."""
    count = max(1, n // tile)
    return [(i * tile, n if i == count - 1 else (i + 1) * tile) for i in range(count)]


def _conv_prelu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.PReLU())


class CrossScaleAttention(nn.Module):
    """Cross-scale attention of a (B, C, H, W) map -> (B, C * len(scales), H, W).

    State-dict layout of the reference (``escape_NaN`` buffer, ``conv_match_{1,2}``,
    ``conv_assembly``, ``down`` and, for scales 3/4, ``downx3``/``downx4``).
    """

    escape_NaN: torch.Tensor  # buffer

    def __init__(self, channel: int = 64, scale: int | Sequence[int] = 2, reduction: int = 2, ksize: int = 3,
                 softmax_scale: float = 10, tile: int | None = 48, context: int = 1) -> None:
        super().__init__()
        self.scales = [int(s) for s in (scale if isinstance(scale, Sequence) else [scale])]
        if not self.scales or any(s not in (2, 3, 4) for s in self.scales):
            raise ValueError(f"cross-scale attention: scales must be among 2, 3, 4, got {self.scales}")
        self.ksize, self.softmax_scale = ksize, softmax_scale
        self.tile, self.context = tile, context
        self.out_dim = channel * len(self.scales)
        # lower bound of a patch key's norm (a buffer in the reference's checkpoints)
        self.register_buffer("escape_NaN", torch.tensor([1e-4]))
        self.conv_match_1 = _conv_prelu(channel, channel // reduction)  # embeds the queries
        self.conv_match_2 = _conv_prelu(channel, channel // reduction)  # embeds the downscaled keys
        self.conv_assembly = _conv_prelu(channel, channel)              # what the attention assembles
        if 3 in self.scales:
            self.downx3 = nn.Conv2d(channel, channel, ksize, 3, 1)
        if 4 in self.scales:
            self.downx4 = nn.Conv2d(channel, channel, ksize, 4, 1)
        self.down = nn.Conv2d(channel, channel, ksize, 2, 1)

    def forward(self, x: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        """Tiled attention; ``tile`` overrides the module's tile size (0: never tile)."""
        tile = self.tile if tile is None else tile
        h, w = x.shape[-2:]
        if not tile or h * w <= tile * tile:
            return self.attend(x)
        c = self.context
        rows = []
        for r0, r1 in tile_spans(h, tile):
            a0, a1 = max(r0 - c, 0), min(r1 + c, h)
            cols = []
            for c0, c1 in tile_spans(w, tile):
                b0, b1 = max(c0 - c, 0), min(c1 + c, w)
                y = self.attend(x[..., a0:a1, b0:b1])
                cols.append(y[..., r0 - a0:r1 - a0, c0 - b0:c1 - b0])
            rows.append(torch.cat(cols, dim=-1))
        return torch.cat(rows, dim=-2)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """Attention over the whole of ``x`` (no tiling)."""
        h, w = x.shape[-2:]
        return torch.cat([self._attend(x, s)[..., :h, :w] for s in self.scales], dim=1)

    def _down(self, s: int) -> nn.Conv2d:
        return self.down if s == 2 else getattr(self, f"downx{s}")

    def _attend(self, x: torch.Tensor, s: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (-w) % s, 0, (-h) % s), mode="reflect")  # multiple of s
        k = self.ksize
        query = self.conv_match_1(x)                                                   # (B, C/r, H, W)
        key = patches(self.conv_match_2(F.interpolate(x, scale_factor=1 / s, mode="bilinear",
                                                      align_corners=False)), k, 1)     # (B, L, C/r, k, k)
        content = patches(self.conv_assembly(x), k * s, s)                             # (B, L, C, ks, ks)
        out = []
        for i in range(x.shape[0]):  # per image: the keys are convolution weights
            norm = torch.maximum(key[i].pow(2).sum(dim=(1, 2, 3), keepdim=True).sqrt(), self.escape_NaN)
            score = F.conv2d(same_pad(query[i:i + 1], k, 1), key[i] / norm)        # (1, L, H, W)
            attn = F.softmax(score * self.softmax_scale, dim=1)
            out.append(self._assemble(attn, content[i], s) / 6)
        return torch.cat(out, dim=0)

    def _assemble(self, attn: torch.Tensor, content: torch.Tensor, s: int) -> torch.Tensor:
        """``down(conv_transpose2d(attn, content, stride=s, padding=s))`` without the sH x sW map.

        Both steps are linear, so they compose into one stride-1 convolution of the attention map
        with a 4x4 kernel per key, ``K[l] = down_weight (*) content[l]`` (a stride-s convolution of
        the zero-padded 3s x 3s patch; 4 = the taps whose 3s-wide patch reaches a 3-tap window
        at stride s). This costs L*C*16 multiply-adds per pixel instead of L*C*9s² plus the
        down convolution: about 2x fewer for s = 2 (the bulk of LM-CiaoSR's latent).
        The composition also counts the transposed convolution's output at row/column -1, which
        the down convolution sees as zero padding; row 0 and column 0 are therefore recomputed
        exactly the original way from the first two attention rows/columns (all they depend on).
        """
        down = self._down(s)
        kernel = F.conv2d(F.pad(content, (1, 2, 1, 2)), down.weight, stride=s)  # (L, C_out, 4, 4)
        kernel = kernel.flip(-1, -2).transpose(0, 1)                              # (C_out, L, 4, 4)
        out = F.conv2d(F.pad(attn, (2, 1, 2, 1)), kernel, down.bias)              # (1, C_out, H, W)
        top = down(F.conv_transpose2d(attn[:, :, :2], content, stride=s, padding=s))[:, :, :1]
        left = down(F.conv_transpose2d(attn[:, :, :, :2], content, stride=s, padding=s))[:, :, :, :1]
        out[:, :, :1] = top
        out[:, :, :, :1] = left
        return out
