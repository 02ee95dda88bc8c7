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

Only :func:`array_to_tensor`, :func:`load_image` and :func:`save_image` need torch (imported
when called): the ONNX runner uses the numpy functions without it.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from utils.atomic import write_atomic
from utils.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["read_image", "read_alpha", "is_gray", "compose_output", "array_to_tensor", "load_image",
           "save_image", "save_array"]

_HIGH_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


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
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not an image file" if path.is_dir() else "does not exist"
        raise UserError(f"image {path} {what}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return _to_rgb_array(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UserError(f"image {path} is too large ({e})") from None
    except Exception as e:  # Pillow raises many types for corrupt data (OSError, SyntaxError, zlib.error...)
        if path.stat().st_size == 0:
            raise UserError(f"image {path} is an empty (zero-byte) file") from None
        msg = " ".join(str(e).split()) or type(e).__name__
        raise UserError(f"cannot read image {path}: {msg}") from None


def array_to_tensor(arr: np.ndarray) -> "torch.Tensor":
    """(H, W, 3) uint8 or float array -> (3, H, W) float32 in [0, 1] (ToTensor's arithmetic)."""
    import torch

    if not arr.flags.writeable:  # torch.from_numpy warns on read-only arrays
        arr = arr.copy()
    t = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    if t.dtype == torch.uint8:
        return t.float().div(255)
    return t.float()


def read_alpha(path: str | os.PathLike) -> np.ndarray | None:
    """The alpha channel (H, W) uint8 of an image that has one (RGBA, LA, PA, transparency), else None."""
    try:
        with Image.open(path) as img:
            if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
                return np.array(img.convert("RGBA").getchannel("A"), dtype=np.uint8)
    except Exception as e:  # read_image has already validated the file; be defensive anyway
        raise UserError(f"cannot read the alpha channel of {path}: {e}") from None
    return None


def is_gray(path: str | os.PathLike) -> bool:
    """Whether the file is a grayscale image (its upscaled output is then grayscale too)."""
    with Image.open(path) as im:
        return im.mode in ("L", "LA", "1", "I", "I;16", "I;16L", "I;16B", "F")


def compose_output(rgb: np.ndarray, source: str | os.PathLike) -> np.ndarray:
    """The upscaled colour (3, H, W) float32 in [0, 1] -> what to save for the input ``source``:
    grayscale inputs give the channel mean (1 channel), and an alpha channel of the input is
    resized with Pillow's bicubic filter and appended ((C+1, H, W))."""
    out = rgb.mean(0, keepdims=True, dtype=np.float32) if is_gray(source) else rgb
    alpha = read_alpha(source)
    if alpha is not None:
        a = Image.fromarray(alpha).resize((rgb.shape[2], rgb.shape[1]), Image.BICUBIC)
        out = np.concatenate([out, (np.asarray(a, dtype=np.float32) / 255)[None]], axis=0)  # LA or RGBA
    return out


def load_image(path: str | os.PathLike) -> "torch.Tensor":
    """Load any Pillow-readable image as a (3, H, W) float32 tensor in [0, 1]."""
    return array_to_tensor(read_image(path))


def save_image(img: "torch.Tensor", path: str | os.PathLike, quality: int = 95) -> None:
    """:func:`save_array` for a (C, H, W) tensor."""
    if img.dim() != 3 or img.shape[0] not in (1, 2, 3, 4):
        raise ValueError(f"save_image expects a (1|2|3|4, H, W) tensor, got shape {tuple(img.shape)}")
    save_array(img.detach().float().cpu().numpy(), path, quality)


def save_array(img: np.ndarray, path: str | os.PathLike, quality: int = 95) -> None:
    """Write a (C, H, W) float array in [0, 1] as 8-bit L (C=1), LA (C=2), RGB (C=3) or RGBA (C=4;
    formats without alpha, such as JPEG and BMP, get the L/RGB part); format from the extension.

    Values are rounded (``(x*255).round().clip(0, 255)`` in float32), not truncated. The file is
    written atomically (:func:`utils.atomic.write_atomic`), so a crash never leaves a half-written
    image. ``quality`` applies to JPEG/WebP only.
    """
    path = Path(path)
    if img.ndim != 3 or img.shape[0] not in (1, 2, 3, 4):
        raise ValueError(f"save_array expects a (1|2|3|4, H, W) array, got shape {tuple(img.shape)}")
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise UserError(f"cannot save image {path}: unknown image extension {path.suffix!r}")
    if img.shape[0] in (2, 4) and fmt in ("JPEG", "BMP"):
        img = img[:img.shape[0] - 1]
    arr = np.clip(np.round(img.astype(np.float32, copy=False) * np.float32(255)), 0, 255).astype(np.uint8)
    arr = np.ascontiguousarray(arr.transpose(1, 2, 0))
    pil = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr, mode={1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[arr.shape[2]])
    extra = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    write_atomic(path, lambda f: pil.save(f, format=fmt, **extra), "image")
