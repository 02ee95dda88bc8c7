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
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from utils.atomic import write_atomic
from utils.errors import UserError

__all__ = ["read_image", "read_alpha", "array_to_tensor", "load_image", "save_image", "open_image",
           "fill_transparent", "to_pil", "GRAY_MODES"]

GRAY_MODES = ("L", "LA", "1", "I", "I;16", "I;16L", "I;16B", "F")

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


def array_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 or float array -> (3, H, W) float32 in [0, 1] (ToTensor's arithmetic)."""
    if not arr.flags.writeable:  # torch.from_numpy warns on read-only arrays
        arr = arr.copy()
    t = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    if t.dtype == torch.uint8:
        return t.float().div(255)
    return t.float()


def _alpha_of(img: Image.Image) -> np.ndarray | None:
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        return np.array(img.convert("RGBA").getchannel("A"), dtype=np.uint8)
    return None


def read_alpha(path: str | os.PathLike) -> np.ndarray | None:
    """The alpha channel (H, W) uint8 of an image that has one (RGBA, LA, PA, transparency), else None."""
    try:
        with Image.open(path) as img:
            return _alpha_of(img)
    except Exception as e:  # read_image has already validated the file; be defensive anyway
        raise UserError(f"cannot read the alpha channel of {path}: {e}") from None


def open_image(src: "str | os.PathLike | Image.Image") -> tuple[torch.Tensor, np.ndarray | None, bool]:
    """A file path or a PIL image -> (RGB (3, H, W) float32 in [0, 1], alpha (H, W) uint8 or None,
    whether the source is grayscale). The RGB part is decoded exactly as :func:`load_image`."""
    if isinstance(src, Image.Image):
        return array_to_tensor(_to_rgb_array(src)), _alpha_of(src), src.mode in GRAY_MODES
    rgb = load_image(src)
    with Image.open(src) as img:
        gray = img.mode in GRAY_MODES
    return rgb, read_alpha(src), gray


def fill_transparent(rgb: torch.Tensor, alpha: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Replace the colour of fully transparent pixels by a smooth fill from the visible ones.

    The colour stored under alpha 0 is invisible but arbitrary (often saturated: a green screen,
    black, whatever the editor left). A model, or any filter wider than one pixel, would carry
    it into the visible edge as a coloured rim; Pillow avoids that for its own filters by
    premultiplying, which does not work for a non-linear model. We "pull-push" instead: an
    alpha-weighted image pyramid is built down to 1x1, and every transparent pixel takes the
    colour of the finest level at which its neighbourhood holds visible pixels. Pixels with
    alpha > 0 keep their colour; an image with no visible pixel is returned unchanged.
    ``rgb``: (3, H, W) float; ``alpha``: (H, W) uint8 (or float in [0, 1]).
    """
    a = torch.as_tensor(np.asarray(alpha)).to(device=rgb.device)
    a = a.float() / 255 if a.dtype == torch.uint8 else a.float()
    hidden = a <= 0
    if not hidden.any() or hidden.all():
        return rgb
    import torch.nn.functional as F

    w = a.to(rgb.dtype)[None, None]
    c = rgb[None] * w
    levels = [(c, w)]
    while max(c.shape[-2:]) > 1:  # pull: alpha-weighted averages (the pooling divisor cancels in c / w)
        c, w = F.avg_pool2d(c, 2, ceil_mode=True), F.avg_pool2d(w, 2, ceil_mode=True)
        levels.append((c, w))
    filled = None
    for c, w in reversed(levels):  # push: known colour where there is some, else the coarser fill
        mean = c / w.clamp_min(1e-12)
        if filled is not None:
            up = filled.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)[..., :c.shape[2], :c.shape[3]]
            mean = torch.where(w > 0, mean, up)
        filled = mean
    return torch.where(hidden[None], filled[0], rgb)


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Load any Pillow-readable image as a (3, H, W) float32 tensor in [0, 1]."""
    return array_to_tensor(read_image(path))


def to_pil(img: torch.Tensor) -> Image.Image:
    """(C, H, W) tensor in [0, 1] -> 8-bit PIL image: L (C=1), LA (2), RGB (3) or RGBA (4); values
    are rounded (``(x*255).round().clamp(0, 255)``), not truncated."""
    if img.dim() != 3 or img.shape[0] not in (1, 2, 3, 4):
        raise ValueError(f"to_pil expects a (1|2|3|4, H, W) tensor, got shape {tuple(img.shape)}")
    arr = (img.detach().float().cpu() * 255).round().clamp(0, 255).to(torch.uint8)
    arr = arr.permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)


def save_image(img: torch.Tensor, path: str | os.PathLike, quality: int = 95) -> None:
    """Write a (C, H, W) tensor in [0, 1] as 8-bit L (C=1), LA (C=2), RGB (C=3) or RGBA (C=4;
    formats without alpha, such as JPEG and BMP, get the L/RGB part); format from the extension.

    Values are rounded (``(x*255).round().clamp(0, 255)``), not truncated. The file is written
    atomically (:func:`utils.atomic.write_atomic`), so a crash never leaves a half-written image.
    ``quality`` applies to JPEG/WebP only.
    """
    path = Path(path)
    if img.dim() != 3 or img.shape[0] not in (1, 2, 3, 4):
        raise ValueError(f"save_image expects a (1|2|3|4, H, W) tensor, got shape {tuple(img.shape)}")
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise UserError(f"cannot save image {path}: unknown image extension {path.suffix!r}")
    if img.shape[0] in (2, 4) and fmt in ("JPEG", "BMP"):
        img = img[:img.shape[0] - 1]
    pil = to_pil(img)
    extra = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    write_atomic(path, lambda f: pil.save(f, format=fmt, **extra), "image")
