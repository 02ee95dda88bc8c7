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
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ["resize_bicubic"]


def _out_size(h: int, w: int, size: int | Sequence[int]) -> tuple[int, int]:
    """torchvision's Resize size rule: an int sets the shorter edge (aspect ratio kept)."""
    if isinstance(size, int):
        if h <= w:
            return size, int(size * w / h)
        return int(size * h / w), size
    if len(size) != 2:
        raise ValueError(f"size must be an int or (h, w), got {size!r}")
    return int(size[0]), int(size[1])


def resize_bicubic(img: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Resize a (3, H, W) float image in [0, 1] to ``size`` = (h, w) like the reference.

    An int ``size`` resizes the shorter edge (torchvision semantics; square crops give
    ``size x size``). Returns float32 (3, h, w) with values k/255.
    """
    if img.dim() != 3 or img.shape[0] != 3:
        raise ValueError(f"resize_bicubic expects a (3, H, W) tensor, got shape {tuple(img.shape)}")
    h, w = _out_size(img.shape[-2], img.shape[-1], size)
    if h < 1 or w < 1:
        raise ValueError(f"resize_bicubic: output size must be positive, got {(h, w)}")
    # clamp is a no-op for [0, 1] inputs; it only keeps out-of-range values from wrapping
    u8 = img.detach().cpu().mul(255).clamp(0, 255).byte()
    pil = Image.fromarray(u8.permute(1, 2, 0).contiguous().numpy())
    out = np.asarray(pil.resize((w, h), Image.Resampling.BICUBIC), dtype=np.uint8)
    return torch.from_numpy(out.copy()).permute(2, 0, 1).contiguous().float().div(255)
