"""Reading and writing images with Pillow, as (3, H, W) float tensors in [0, 1].

Decoding follows the reference pipeline (PIL ``convert('RGB')`` then ``ToTensor``, i.e. a
float32 division of the uint8 values by 255), so tensors are bit-identical to the official
ones for 8-bit files. Choices a reader should know:

* Every mode becomes RGB: grayscale is replicated to three channels, palette images are
  expanded, CMYK/YCbCr/LAB are converted by Pillow.
* Alpha (RGBA, LA, PA, ...) is **dropped**, not composited over a background (same as
  ``convert('RGB')``).
* 16-bit / 32-bit integer grayscale (``I;16*``, ``I``) is divided by 65535 (clipped to [0, 1])
  instead of Pillow's clipping to 255, and kept as float32 (no 8-bit quantisation); an 8-bit
  image stored as 16 bit (v * 257) gives exactly the same floats as the 8-bit file. ``F``
  (float) images are taken as already in [0, 1] and clipped.
* EXIF orientation is **not** applied: pixels are used in stored order, as the reference does.
* Pillow's decompression-bomb *warning* is an error here too (images above
  ``PIL.Image.MAX_IMAGE_PIXELS``, about 89 Mpx by default).
* Any failure to read a file is a one-line ``UserError`` naming the file.

Only the tensor functions (:func:`array_to_tensor`, :func:`load_image`, :func:`open_image`,
:func:`to_pil`, :func:`save_image`, and :func:`fill_transparent` given a tensor) need torch, imported
when called: the ONNX runner uses the numpy functions without it.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

import numpy as np
from PIL import Image

from utils.atomic import write_atomic
from utils.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["GRAY_MODES", "array_to_float", "array_to_tensor", "compose_output", "fill_transparent", "load_image",
           "open_array", "open_image", "read_image", "save_array", "save_image", "to_pil"]

GRAY_MODES = ("L", "LA", "1", "I", "I;16", "I;16L", "I;16B", "F")

_HIGH_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
T = TypeVar("T")


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8, or float32 in [0, 1] for >8-bit / float sources."""
    if img.mode in _HIGH_BIT_MODES or img.mode == "F":
        scale = 1.0 if img.mode == "F" else 65535.0
        a = np.asarray(img, dtype=np.float64) / scale
        a = np.clip(a, 0.0, 1.0).astype(np.float32)
        return np.repeat(a[:, :, None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode ``path`` to an (H, W, 3) array: uint8, or float32 in [0, 1] for 16-bit files.

    Kept separate from :func:`load_image` so caches can hold the compact uint8 form.
    """
    return _decode(path, _to_rgb_array)


def _decode(path: str | os.PathLike, take: Callable[[Image.Image], T]) -> T:
    """Open and decode ``path`` once and return ``take(image)``; any failure is one ``UserError``."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not an image file" if path.is_dir() else "does not exist"
        raise UserError(f"image {path} {what}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return take(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UserError(f"image {path} is too large ({e})") from None
    except Exception as e:  # Pillow raises many types for corrupt data (OSError, SyntaxError, zlib.error...)
        if path.stat().st_size == 0:
            raise UserError(f"image {path} is an empty (zero-byte) file") from None
        msg = " ".join(str(e).split()) or type(e).__name__
        raise UserError(f"cannot read image {path}: {msg}") from None


def array_to_float(arr: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 or float array -> (3, H, W) float32 in [0, 1] (ToTensor's arithmetic: a
    float32 division of the uint8 values by 255)."""
    a = arr.transpose(2, 0, 1)
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a.astype(np.float32) / np.float32(255))
    return np.ascontiguousarray(a, dtype=np.float32)


def array_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 or float array -> (3, H, W) float32 tensor in [0, 1] (:func:`array_to_float`)."""
    import torch

    return torch.from_numpy(array_to_float(arr))


def _alpha_of(img: Image.Image) -> np.ndarray | None:
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        return np.array(img.convert("RGBA").getchannel("A"), dtype=np.uint8)
    return None


def _array_alpha_gray(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None, bool]:
    return _to_rgb_array(img), _alpha_of(img), img.mode in GRAY_MODES


def open_array(src: str | os.PathLike | Image.Image) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """A file path or a PIL image -> (RGB (H, W, 3) as :func:`read_image`, alpha (H, W) uint8 or
    None, whether the source is grayscale, i.e. its output is grayscale too). A file is opened and
    decoded once, with :func:`read_image`'s one-line errors."""
    if isinstance(src, Image.Image):
        return _array_alpha_gray(src)
    return _decode(src, _array_alpha_gray)


def open_image(src: str | os.PathLike | Image.Image) -> tuple[torch.Tensor, np.ndarray | None, bool]:
    """:func:`open_array` with the RGB part as a (3, H, W) float32 tensor in [0, 1] (as :func:`load_image`)."""
    arr, alpha, gray = open_array(src)
    return array_to_tensor(arr), alpha, gray


def _pool2(x: np.ndarray) -> np.ndarray:
    """2x2 average pooling of (C, H, W) with ceil mode (edge windows average the pixels they hold);
    the same float32 arithmetic as ``torch.nn.functional.avg_pool2d(x, 2, ceil_mode=True)`` on a
    CPU: the window summed in row order, then divided by its pixel count."""
    c, h, w = x.shape
    p = np.zeros((c, h + h % 2, w + w % 2), dtype=x.dtype)
    p[:, :h, :w] = x
    s = p[:, 0::2, 0::2] + p[:, 0::2, 1::2] + p[:, 1::2, 0::2] + p[:, 1::2, 1::2]  # adding the zero pad is exact
    ny = np.full(s.shape[1], 2, dtype=x.dtype)
    nx = np.full(s.shape[2], 2, dtype=x.dtype)
    ny[-1], nx[-1] = 2 - h % 2, 2 - w % 2
    return s / (ny[:, None] * nx[None, :])


def fill_transparent(rgb, alpha):
    """Replace the colour of fully transparent pixels by a smooth fill from the visible ones.

    The colour stored under alpha 0 is invisible but arbitrary (often saturated: a green screen,
    black, whatever the editor left). A model, or any filter wider than one pixel, would carry
    it into the visible edge as a coloured rim; Pillow avoids that for its own filters by
    premultiplying, which does not work for a non-linear model. We "pull-push" instead: an
    alpha-weighted image pyramid is built down to 1x1, and every transparent pixel takes the
    colour of the finest level at which its neighbourhood holds visible pixels. Pixels with
    alpha > 0 keep their colour; an image with no visible pixel is returned unchanged.
    ``rgb``: (3, H, W) float32 numpy array or tensor (the result is of the same kind, on the
    same device); ``alpha``: (H, W) uint8 (or float in [0, 1]). Computed with numpy, so the
    PyTorch and the ONNX paths share it.
    """
    if not isinstance(rgb, np.ndarray):  # a tensor
        import torch

        arr = rgb.detach().cpu().numpy()
        out = fill_transparent(arr, alpha.cpu().numpy() if torch.is_tensor(alpha) else alpha)
        return rgb if out is arr else torch.from_numpy(out).to(device=rgb.device, dtype=rgb.dtype)
    alpha = np.asarray(alpha)
    a = alpha.astype(np.float32) / np.float32(255) if alpha.dtype == np.uint8 else alpha.astype(np.float32)
    hidden = a <= 0
    if not hidden.any() or hidden.all():
        return rgb
    w = a.astype(rgb.dtype)[None]
    c = rgb * w
    levels = [(c, w)]
    while max(c.shape[-2:]) > 1:  # pull: alpha-weighted averages (the pooling divisor cancels in c / w)
        c, w = _pool2(c), _pool2(w)
        levels.append((c, w))
    filled = None
    for c, w in reversed(levels):  # push: known colour where there is some, else the coarser fill
        mean = c / np.maximum(w, np.asarray(1e-12, dtype=w.dtype))
        if filled is not None:
            up = filled.repeat(2, axis=1).repeat(2, axis=2)[:, :c.shape[1], :c.shape[2]]
            mean = np.where(w > 0, mean, up)
        filled = mean
    assert filled is not None  # levels holds at least the full-size level
    return np.where(hidden[None], filled, rgb).astype(rgb.dtype, copy=False)


def compose_output(rgb: np.ndarray, alpha: np.ndarray | None, gray: bool) -> np.ndarray:
    """The upscaled colour (3, H, W) float32 in [0, 1] -> the output image of a source with this
    ``alpha`` ((h, w) uint8 or None) and grayscale flag (see :func:`open_array`): grayscale sources
    give the channel mean (1 channel), and the alpha channel is resized with Pillow's bicubic
    filter and appended ((C+1, H, W): LA or RGBA)."""
    out = rgb.mean(0, keepdims=True, dtype=np.float32) if gray else rgb
    if alpha is not None:
        a = Image.fromarray(alpha).resize((rgb.shape[2], rgb.shape[1]), Image.Resampling.BICUBIC)
        out = np.concatenate([out, (np.asarray(a, dtype=np.float32) / np.float32(255))[None]], axis=0)
    return out


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Load any Pillow-readable image as a (3, H, W) float32 tensor in [0, 1]."""
    return array_to_tensor(read_image(path))


def _check_chw(img, what: str) -> None:
    if img.ndim != 3 or img.shape[0] not in (1, 2, 3, 4):
        raise ValueError(f"{what} expects a (1|2|3|4, H, W) image, got shape {tuple(img.shape)}")


def _as_array(img) -> np.ndarray:
    return img if isinstance(img, np.ndarray) else img.detach().float().cpu().numpy()


def to_pil(img) -> Image.Image:
    """(C, H, W) tensor or array in [0, 1] -> 8-bit PIL image: L (C=1), LA (2), RGB (3) or RGBA (4);
    values are rounded (``(x*255).round().clip(0, 255)`` in float32), not truncated."""
    _check_chw(img, "to_pil")
    arr = np.clip(np.round(_as_array(img).astype(np.float32, copy=False) * np.float32(255)), 0, 255).astype(np.uint8)
    arr = np.ascontiguousarray(arr.transpose(1, 2, 0))
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)


def save_image(img: torch.Tensor, path: str | os.PathLike, quality: int = 95) -> None:
    """:func:`save_array` for a (C, H, W) tensor."""
    _check_chw(img, "save_image")
    save_array(_as_array(img), path, quality)


def save_array(img: np.ndarray, path: str | os.PathLike, quality: int = 95) -> None:
    """Write a (C, H, W) float array in [0, 1] as 8-bit L (C=1), LA (C=2), RGB (C=3) or RGBA (C=4;
    formats without alpha, such as JPEG and BMP, get the L/RGB part); format from the extension.

    Values are rounded (``(x*255).round().clip(0, 255)`` in float32), not truncated. The file is
    written atomically (:func:`utils.atomic.write_atomic`), so a crash never leaves a half-written
    image. ``quality`` applies to JPEG/WebP only.
    """
    path = Path(path)
    _check_chw(img, "save_array")
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise UserError(f"cannot save image {path}: unknown image extension {path.suffix!r}")
    if img.shape[0] in (2, 4) and fmt in ("JPEG", "BMP"):
        img = img[:img.shape[0] - 1]
    pil = to_pil(img)
    extra = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    write_atomic(path, lambda f: pil.save(f, format=fmt, **extra), "image")
