"""SR wrappers: turn HR images (or LR/HR pairs) into (LR input, query coords, cells, GT) samples.

Both follow the reference step by step, including the order in which Python's ``random`` and
NumPy's global RNG are drawn (scale, crop position, the three augment flags, then the query
subset), so a seeded run draws the same samples as the official code.

Each item is a dict: ``inp`` (3, h, w) LR in [0, 1]; ``coord`` (Q, 2) HR pixel centres
(row, col) in [-1, 1]; ``cell`` (Q, 2) = (2/H, 2/W) of the HR crop; ``gt`` (Q, 3) HR RGB.
Q = H*W, or ``sample_q`` randomly chosen distinct pixels.

Where the inner dataset offers ``stored(idx)`` (image folders: the (H, W, 3) array it caches,
uint8 for 8-bit files), the crop is taken from that array and only the crop is converted to
float, and an 8-bit crop is resized to the LR directly (the float round trip of the reference,
``k/255*255`` truncated to uint8, gives k back). Any other dataset's (3, H, W) float tensors go
the reference way. Both give the same samples, bit for bit.
"""
from __future__ import annotations

import math
import random
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets import register
from datasets.resize import resize_bicubic, resize_bicubic_u8
from utils.coords import make_cell, pixel_samples_at, to_pixel_samples
from utils.errors import SpecError, UserError
from utils.images import array_to_tensor

# an item's image before cropping: a stored (H, W, C) array, or a (3, H, W) float tensor
RawImage = np.ndarray | torch.Tensor


def _item(dataset: Any, idx: int) -> Any:
    """Item ``idx`` as stored arrays where the dataset offers them (``stored``), else as tensors."""
    stored = getattr(dataset, "stored", None)
    return stored(idx) if callable(stored) else dataset[idx]


def _hw(img: RawImage) -> tuple[int, int]:
    h, w = img.shape[:2] if isinstance(img, np.ndarray) else img.shape[-2:]
    return int(h), int(w)


def _crop(img: RawImage, top: int, left: int, h: int, w: int) -> RawImage:
    """The (h, w) window at (top, left), still unconverted (a view)."""
    if isinstance(img, np.ndarray):
        return img[top:top + h, left:left + w]
    return img[:, top:top + h, left:left + w]


def _to_float(crop: RawImage) -> torch.Tensor:
    """A crop as the (3, h, w) float32 tensor the dataset's item would hold there."""
    return array_to_tensor(crop) if isinstance(crop, np.ndarray) else crop


def _downsample(crop: RawImage, crop_hr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The reference LR of an HR crop (``crop_hr`` is ``_to_float(crop)``)."""
    if isinstance(crop, np.ndarray) and crop.dtype == np.uint8:
        return resize_bicubic_u8(crop, size)
    return resize_bicubic(crop_hr, size)


def _augment_fn(augment: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """Draw the three flags (p = 0.5 each) and return the transform to apply to LR and HR."""
    if not augment:
        return lambda x: x
    hflip = random.random() < 0.5
    vflip = random.random() < 0.5
    dflip = random.random() < 0.5

    def fn(x: torch.Tensor) -> torch.Tensor:
        if hflip:
            x = x.flip(-2)
        if vflip:
            x = x.flip(-1)
        if dflip:
            x = x.transpose(-2, -1)
        return x

    return fn


def _sample(crop_lr: torch.Tensor, crop_hr: torch.Tensor, sample_q: int | None,
            idx: int) -> dict[str, torch.Tensor]:
    h, w = crop_hr.shape[-2:]
    if sample_q is None:
        coord, rgb = to_pixel_samples(crop_hr.contiguous())
    else:
        if sample_q > h * w:
            raise UserError(f"item {idx}: sample_q={sample_q} exceeds the {h * w} pixels "
                            f"of the {h}x{w} HR crop")
        coord, rgb = pixel_samples_at(crop_hr, np.random.choice(h * w, sample_q, replace=False))
    cell = make_cell((h, w), n=len(coord))
    return {"inp": crop_lr.contiguous(), "coord": coord, "cell": cell, "gt": rgb.contiguous()}


def _check_positive_int(name: str, value: Any, wrapper: str) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise SpecError(f"{wrapper}: {name} must be a positive integer, got {value!r}")


@register("sr-implicit-downsampled")
class SRImplicitDownsampled(Dataset):
    """HR images, downsampled on the fly by a random (or fixed) scale with PIL bicubic.

    Test mode (``inp_size`` None): LR = floor(H/s + 1e-9) x floor(W/s + 1e-9) and the HR is
    cropped top-left to round(h_lr*s) x round(w_lr*s). ``scale_hw`` = [sy, sx] fixes an
    asymmetric scale instead (test mode only; the random scale is then not drawn).
    Train mode: a random square HR crop of round(inp_size*s) resized to inp_size x inp_size.
    ``fit_scale`` (train mode): an image too small for the drawn scale's crop gets the draw mapped
    linearly onto the scales whose crop fits (small images, e.g. T91's, then serve the lower
    scales) instead of an error.
    """

    def __init__(self, dataset: Any, inp_size: int | None = None, scale_min: float = 1,
                 scale_max: float | None = None, augment: bool = False,
                 sample_q: int | None = None, scale_hw: Sequence[float] | None = None,
                 fit_scale: bool = False) -> None:
        name = "sr-implicit-downsampled"
        _check_positive_int("inp_size", inp_size, name)
        _check_positive_int("sample_q", sample_q, name)
        scale_max = scale_min if scale_max is None else scale_max
        if not 0 < scale_min <= scale_max:
            raise SpecError(f"{name}: need 0 < scale_min <= scale_max, got {scale_min}, {scale_max}")
        if scale_hw is not None:
            if inp_size is not None:
                raise SpecError(f"{name}: scale_hw is for test mode only (leave inp_size unset)")
            try:
                sy, sx = (float(v) for v in scale_hw)
                ok = sy > 0 and sx > 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise SpecError(f"{name}: scale_hw must be [sy, sx] with positive values, got {scale_hw!r}")
            scale_hw = (sy, sx)
        self.dataset = dataset
        self.inp_size = inp_size
        self.scale_min = scale_min
        self.scale_max = scale_max
        self.augment = augment
        self.sample_q = sample_q
        self.scale_hw = scale_hw
        self.fit_scale = bool(fit_scale)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        img = _item(self.dataset, idx)
        H, W = _hw(img)
        if self.scale_hw is not None:
            sy, sx = self.scale_hw
        else:
            sy = sx = random.uniform(self.scale_min, self.scale_max)

        if self.inp_size is None:
            h_lr = math.floor(H / sy + 1e-9)
            w_lr = math.floor(W / sx + 1e-9)
            if h_lr < 1 or w_lr < 1:
                raise UserError(f"item {idx}: HR image {H}x{W} is too small for scale "
                                f"{sy:g}x{sx:g} (LR would be {h_lr}x{w_lr})")
            crop = _crop(img, 0, 0, round(h_lr * sy), round(w_lr * sx))
            lr_size = (h_lr, w_lr)
        else:
            w_hr = round(self.inp_size * sy)
            fits = min(H, W) / self.inp_size  # largest scale whose crop fits
            if self.fit_scale and w_hr > min(H, W) and fits >= self.scale_min and self.scale_max > self.scale_min:
                sy = self.scale_min + (sy - self.scale_min) * (fits - self.scale_min) / (self.scale_max - self.scale_min)
                w_hr = min(round(self.inp_size * sy), min(H, W))
            if H < w_hr or W < w_hr:
                raise UserError(f"item {idx}: HR image {H}x{W} is smaller than the {w_hr}x{w_hr} "
                                f"crop needed for inp_size {self.inp_size} at scale {sy:.3f}")
            x0 = random.randint(0, H - w_hr)
            y0 = random.randint(0, W - w_hr)
            crop = _crop(img, x0, y0, w_hr, w_hr)
            lr_size = (self.inp_size, self.inp_size)
        crop_hr = _to_float(crop)
        crop_lr = _downsample(crop, crop_hr, lr_size)

        aug = _augment_fn(self.augment)
        return _sample(aug(crop_lr), aug(crop_hr), self.sample_q, idx)


@register("sr-implicit-paired")
class SRImplicitPaired(Dataset):
    """Given LR/HR pairs (integer scale s = H_hr // h_lr): full images or aligned random crops."""

    def __init__(self, dataset: Any, inp_size: int | None = None, augment: bool = False,
                 sample_q: int | None = None) -> None:
        _check_positive_int("inp_size", inp_size, "sr-implicit-paired")
        _check_positive_int("sample_q", sample_q, "sr-implicit-paired")
        self.dataset = dataset
        self.inp_size = inp_size
        self.augment = augment
        self.sample_q = sample_q

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        img_lr, img_hr = _item(self.dataset, idx)
        h_lr, w_lr = _hw(img_lr)
        H, W = _hw(img_hr)
        s = H // h_lr
        if s < 1 or W < w_lr * s:
            raise UserError(f"item {idx}: HR image {H}x{W} does not cover LR image {h_lr}x{w_lr} "
                            f"at scale {max(s, 1)}")
        if self.inp_size is None:
            crop_lr, crop_hr = img_lr, _crop(img_hr, 0, 0, h_lr * s, w_lr * s)
        else:
            w = self.inp_size
            if h_lr < w or w_lr < w:
                raise UserError(f"item {idx}: LR image {h_lr}x{w_lr} is smaller than inp_size {w}")
            x0 = random.randint(0, h_lr - w)
            y0 = random.randint(0, w_lr - w)
            crop_lr = _crop(img_lr, x0, y0, w, w)
            crop_hr = _crop(img_hr, x0 * s, y0 * s, w * s, w * s)

        aug = _augment_fn(self.augment)
        return _sample(aug(_to_float(crop_lr)), aug(_to_float(crop_hr)), self.sample_q, idx)
