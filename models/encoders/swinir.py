"""SwinIR encoder (Liang et al. 2021) in the classical-SR configuration LTE/LMF use.

Layout and state-dict keys follow the official code (``conv_first``, ``patch_embed.norm``,
``layers.{i}.residual_group.blocks.{j}.*``, ``layers.{i}.conv``, ``norm``, ``conv_after_body``,
``conv_before_upsample.0``), including the ``relative_position_index`` and ``attn_mask`` buffers,
so official checkpoints load strictly.

Differences from the official forward (also in docs/differences.md):

* the input is reflect-padded (bottom/right) to a multiple of the window size and the feature map
  is cropped back, so the output (B, 64, h, w) is aligned with the input (B, 3, h, w);
* the shifted-window attention mask is always computed for the actual (padded) size during the
  forward; the stored ``attn_mask`` buffer (for ``img_size``) is only kept for checkpoint
  compatibility and is never read.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.errors import SpecError

from ..registry import register
from .base import Encoder

__all__ = ["SwinIR", "DropPath", "window_partition", "window_reverse", "shifted_window_mask",
           "pad_to_multiple"]

MaskCache = dict[tuple, torch.Tensor]


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch per sample (scaled by 1/keep) while training."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(shape).bernoulli_(keep).div_(keep)
        return x * mask

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/ws * W/ws, ws, ws, C), windows in row-major order per image."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, ws, ws, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, h, w, c)


def shifted_window_mask(h: int, w: int, ws: int, shift: int,
                        device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Attention mask (nW, ws*ws, ws*ws) for shifted windows on an h x w map (h, w multiples of ws).

    After the cyclic shift, windows at the bottom/right border contain pixels from the opposite
    border; tokens from different original regions must not attend to each other (-100 bias).
    """
    region = torch.zeros((1, h, w, 1), device=device, dtype=dtype)
    bands = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    label = 0
    for hs in bands:
        for wsl in bands:
            region[:, hs, wsl, :] = label
            label += 1
    win = window_partition(region, ws).view(-1, ws * ws)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def _reflect_pad_axis(x: torch.Tensor, pad: int, dim: int) -> torch.Tensor:
    """Reflect-pad ``x`` by ``pad`` at the end of spatial ``dim`` (2 = height, 3 = width).

    A single reflection needs pad < size; larger pads (tiny inputs) repeat the reflection on the
    grown tensor, and a size-1 axis is replicated (reflection is undefined there).
    """
    while pad > 0:
        size = x.shape[dim]
        step = min(pad, size - 1)
        spec = (0, 0, 0, step) if dim == 2 else (0, step, 0, 0)
        if step == 0:
            step = pad
            spec = (0, 0, 0, step) if dim == 2 else (0, step, 0, 0)
            x = F.pad(x, spec, mode="replicate")
        else:
            x = F.pad(x, spec, mode="reflect")
        pad -= step
    return x


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad (B, C, h, w) at the bottom/right so h and w become multiples of ``multiple``.

    For pads smaller than the image this is exactly ``F.pad(x, (0, pw, 0, ph), 'reflect')``,
    the official ``check_image_size``.
    """
    h, w = x.shape[-2:]
    ph = (multiple - h % multiple) % multiple
    pw = (multiple - w % multiple) % multiple
    if ph < h and pw < w:
        return F.pad(x, (0, pw, 0, ph), mode="reflect") if (ph or pw) else x
    return _reflect_pad_axis(_reflect_pad_axis(x, ph, 2), pw, 3)


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ws x ws windows with a learned relative position bias."""

    relative_position_index: torch.Tensor  # buffer

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        ws = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
        # index[i, j] = flat offset of (row_i - row_j, col_i - col_j) into the bias table
        ys, xs = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
        coords = torch.stack((ys.flatten(), xs.flatten()))  # (2, ws*ws)
        rel = coords[:, :, None] - coords[:, None, :] + (ws - 1)  # (2, N, N), in [0, 2ws-2]
        self.register_buffer("relative_position_index", rel[0] * (2 * ws - 1) + rel[1])
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B*nW, N, C); mask: (nW, N, N) of 0 / -100, or None."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(x))


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention + MLP, each pre-normed with a residual and stochastic depth."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int = 8,
                 shift_size: int = 0, mlp_ratio: float = 2.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        self.window_size = window_size
        self.shift_size = shift_size
        if min(self.input_resolution) <= self.window_size:
            # as officially: a training size no larger than the window disables partition/shift
            self.shift_size = 0
            self.window_size = min(self.input_resolution)
        if not 0 <= self.shift_size < self.window_size:
            raise SpecError(f"swinir: shift size {self.shift_size} must be in [0, {self.window_size})")
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, self.window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        # Kept only so official checkpoints (which contain it) load strictly; forward never reads it.
        mask = (shifted_window_mask(self.input_resolution[0], self.input_resolution[1], self.window_size, self.shift_size)
                if self.shift_size > 0 else None)
        self.register_buffer("attn_mask", mask)

    def _mask(self, h: int, w: int, x: torch.Tensor, cache: MaskCache | None) -> torch.Tensor | None:
        if self.shift_size == 0:
            return None
        key = (h, w, self.window_size, self.shift_size, x.device, x.dtype)
        if cache is not None and key in cache:
            return cache[key]
        mask = shifted_window_mask(h, w, self.window_size, self.shift_size, device=x.device, dtype=x.dtype)
        if cache is not None:
            cache[key] = mask
        return mask

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], mask_cache: MaskCache | None = None) -> torch.Tensor:
        """x: (B, H*W, C) tokens of an H x W map (multiples of the window size).

        ``mask_cache`` is a dict owned by the caller for the duration of one forward, so that the
        blocks sharing a shift compute the mask once.
        """
        h, w = x_size
        b, _, c = x.shape
        ws, shift = self.window_size, self.shift_size
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        if shift > 0:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(x, ws).view(-1, ws * ws, c)
        windows = self.attn(windows, mask=self._mask(h, w, x, mask_cache))
        x = window_reverse(windows.view(-1, ws, ws, c), ws, h, w)
        if shift > 0:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        x = shortcut + self.drop_path(x.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BasicLayer(nn.Module):
    """A stack of Swin blocks alternating regular (even) and shifted (odd) windows."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int,
                 window_size: int, mlp_ratio: float, qkv_bias: bool, qk_scale: float | None,
                 drop: float, attn_drop: float, drop_path: Sequence[float]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, input_resolution, num_heads, window_size,
                                 0 if i % 2 == 0 else window_size // 2, mlp_ratio, qkv_bias, qk_scale,
                                 drop, attn_drop, drop_path[i])
            for i in range(depth)])

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], mask_cache: MaskCache | None = None) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, x_size, mask_cache)
        return x


def _tokens_to_map(x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W)."""
    b, _, c = x.shape
    return x.transpose(1, 2).reshape(b, c, x_size[0], x_size[1])


def _map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C)."""
    return x.flatten(2).transpose(1, 2)


def _resi_conv(dim: int, resi_connection: str) -> nn.Module:
    if resi_connection == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if resi_connection == "3conv":
        return nn.Sequential(nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),
                             nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(0.2, inplace=True),
                             nn.Conv2d(dim // 4, dim, 3, 1, 1))
    raise SpecError(f"swinir: resi_connection must be '1conv' or '3conv', got {resi_connection!r}")


class RSTB(nn.Module):
    """Residual Swin Transformer Block: Swin layers, a conv on the 2-D map, and a residual."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int,
                 window_size: int, mlp_ratio: float, qkv_bias: bool, qk_scale: float | None,
                 drop: float, attn_drop: float, drop_path: Sequence[float], resi_connection: str) -> None:
        super().__init__()
        self.residual_group = BasicLayer(dim, input_resolution, depth, num_heads, window_size, mlp_ratio,
                                         qkv_bias, qk_scale, drop, attn_drop, drop_path)
        self.conv = _resi_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], mask_cache: MaskCache | None = None) -> torch.Tensor:
        y = self.residual_group(x, x_size, mask_cache)
        return _map_to_tokens(self.conv(_tokens_to_map(y, x_size))) + x


class PatchEmbed(nn.Module):
    """Flatten the map to tokens, then (optionally) LayerNorm them; key ``patch_embed.norm``."""

    def __init__(self, embed_dim: int, norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _map_to_tokens(x)
        return self.norm(x) if self.norm is not None else x


def _as_pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


@register("swinir")
class SwinIR(Encoder):
    """SwinIR body without upsampling: (B, in_chans, h, w) -> (B, 64, h, w) features (out_dim 64).

    The defaults are the classical-SR configuration that the official LTE/LMF factory always
    builds (it ignores its arguments). Other values are honoured where they only change sizes;
    ``img_size`` only fixes the stored ``attn_mask`` buffers (inputs may have any size).
    """

    def __init__(self, img_size: int | Sequence[int] = 48, patch_size: int = 1, in_chans: int = 3,
                 embed_dim: int = 180, depths: Sequence[int] = (6, 6, 6, 6, 6, 6),
                 num_heads: Sequence[int] = (6, 6, 6, 6, 6, 6), window_size: int = 8,
                 mlp_ratio: float = 2.0, qkv_bias: bool = True, qk_scale: float | None = None,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 ape: bool = False, patch_norm: bool = True, upscale: int = 2, img_range: float = 1.0,
                 upsampler: str = "none", resi_connection: str = "1conv",
                 no_upsampling: bool = True) -> None:
        super().__init__()
        if not no_upsampling or upsampler not in ("none", None, ""):
            raise SpecError("swinir: only the feature encoder is supported "
                            "(no_upsampling=True, upsampler='none')")
        if patch_size != 1:
            raise SpecError(f"swinir: only patch_size 1 is supported, got {patch_size!r}")
        if ape:
            raise SpecError("swinir: absolute position embedding (ape=True) is not supported "
                            "(it would tie the model to one input size)")
        depths, num_heads = list(depths), list(num_heads)
        if len(depths) != len(num_heads):
            raise SpecError(f"swinir: depths ({len(depths)}) and num_heads ({len(num_heads)}) differ in length")
        num_feat = 64
        self.window_size = int(window_size)
        self.img_range = img_range  # unused: the official normalisation is commented out
        self.upscale = upscale      # unused without upsampling
        self.out_dim = num_feat
        resolution = _as_pair(img_size)

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()  # stochastic depth rule
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads, strict=False)):
            start = sum(depths[:i])
            self.layers.append(RSTB(embed_dim, resolution, depth, heads, self.window_size, mlp_ratio,
                                    qkv_bias, qk_scale, drop_rate, attn_drop_rate,
                                    dpr[start:start + depth], resi_connection))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = _resi_conv(embed_dim, resi_connection)
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1),
                                                  nn.LeakyReLU(inplace=True))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Deep features of a (B, embed_dim, H, W) map whose sides are multiples of the window."""
        x_size = (x.shape[2], x.shape[3])
        x = self.pos_drop(self.patch_embed(x))
        mask_cache: MaskCache = {}  # lives for this call only
        for layer in self.layers:
            x = layer(x, x_size, mask_cache)
        return _tokens_to_map(self.norm(x), x_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, h, w) -> (B, 64, h, w); padding to the window multiple is internal."""
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.window_size)
        x = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.conv_before_upsample(x)
        return x[..., :h, :w]
