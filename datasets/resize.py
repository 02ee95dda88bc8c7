"""The reference bicubic downsampler (``resize_fn`` of LIIF/LTE/LMF), without torchvision.

The official code runs ``ToTensor(Resize(size, BICUBIC)(ToPILImage()(img)))``. Step by step:

1. ``ToPILImage`` turns a float tensor into uint8 by ``img.mul(255).byte()``: the values are
   **truncated**, not rounded (exact for tensors that came from 8-bit files, since
   ``(k/255)*255`` is k in float32 for every k);
2. ``Resize`` on a PIL image is Pillow's ``Image.resize((w, h), BICUBIC)``: Keys cubic
   (a = -0.5) with the kernel widened by the downscale factor (antialiasing), output rounded
   to uint8;
3. ``ToTensor`` divides by 255 in float32.

So the LR input is always 8-bit quantised. Every step is reproduced here exactly.
:func:`resize_bicubic_u8` starts from step 2 with an (H, W, 3) uint8 array: for an 8-bit image
this is the same result without the float round trip of step 1 (the identity for values k/255).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ["resize_bicubic", "resize_bicubic_u8"]


def _out_size(h: int, w: int, size: int | Sequence[int]) -> tuple[int, int]:
    """torchvision's Resize size rule: an int sets the shorter edge (aspect ratio kept)."""
    if isinstance(size, int):
        out = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    elif len(size) != 2:
        raise ValueError(f"size must be an int or (h, w), got {size!r}")
    else:
        out = (int(size[0]), int(size[1]))
    if out[0] < 1 or out[1] < 1:
        raise ValueError(f"resize_bicubic: output size must be positive, got {out}")
    return out


def resize_bicubic(img: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Resize a (3, H, W) float image in [0, 1] to ``size`` = (h, w) like the reference.

    An int ``size`` resizes the shorter edge (torchvision semantics; square crops give
    ``size x size``). Returns float32 (3, h, w) with values k/255.
    """
    if img.dim() != 3 or img.shape[0] != 3:
        raise ValueError(f"resize_bicubic expects a (3, H, W) tensor, got shape {tuple(img.shape)}")
    h, w = _out_size(img.shape[-2], img.shape[-1], size)
    # clamp is a no-op for [0, 1] inputs; it only keeps out-of-range values from wrapping
    u8 = img.detach().cpu().mul(255).clamp(0, 255).byte()
    return _resize_u8(u8.permute(1, 2, 0).contiguous().numpy(), h, w)


def resize_bicubic_u8(arr: np.ndarray, size: int | Sequence[int]) -> torch.Tensor:
    """:func:`resize_bicubic` of an (H, W, 3) uint8 array (e.g. a crop of a decoded 8-bit file).

    Gives exactly ``resize_bicubic(ToTensor(arr), size)``, without making the float image.
    """
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"resize_bicubic_u8 expects an (H, W, 3) uint8 array, got {arr.dtype} {arr.shape}")
    h, w = _out_size(arr.shape[0], arr.shape[1], size)
    return _resize_u8(np.ascontiguousarray(arr), h, w)


def _resize_u8(arr: np.ndarray, h: int, w: int) -> torch.Tensor:
    """Pillow's bicubic resize of a C-contiguous (H, W, 3) uint8 array to (h, w), as ToTensor gives it."""
    out = np.asarray(Image.fromarray(arr).resize((w, h), Image.Resampling.BICUBIC), dtype=np.uint8)
    return torch.from_numpy(out.copy()).permute(2, 0, 1).contiguous().float().div(255)
