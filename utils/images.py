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
import struct
import threading
import warnings
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterable, TypeVar

import numpy as np
from PIL import Image

from utils.atomic import temp_sibling, write_atomic
from utils.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["GRAY_MODES", "IMAGE_EXTENSIONS", "ImageWriter", "array_to_float", "array_to_tensor", "compose_output",
           "fill_transparent", "load_image", "open_array", "open_image", "read_image", "save_array", "save_image",
           "to_pil", "write_bands"]

# the output extensions the programs accept (each one Pillow writes; .png is streamed row by row)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

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
    out = np.empty(a.shape, dtype=np.float32)  # always a new array, even where arr is float32
    if a.dtype == np.uint8:
        np.divide(a, np.float32(255), out=out)  # each value cast to float32, then divided: one pass
    else:
        out[...] = a
    return out


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
    written atomically (:class:`ImageWriter`), so a crash never leaves a half-written image.
    ``quality`` applies to JPEG/WebP only.
    """
    _check_chw(img, "save_array")
    with ImageWriter(path, img.shape[1], img.shape[2], img.shape[0], quality) as out:
        out.write(img)


def _quantise(rows: np.ndarray) -> np.ndarray:
    """(C, r, W) float in [0, 1] -> (r, W, C) uint8, rounded as :func:`to_pil` (float32 arithmetic)."""
    q = np.clip(np.round(rows.astype(np.float32, copy=False) * np.float32(255)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(q.transpose(1, 2, 0))


class ImageWriter:
    """An 8-bit image of known size written band by band, top to bottom, atomically.

    ``with ImageWriter(path, height, width, channels) as out: out.write(rows)`` with ``rows`` a
    (C, r, W) float array in [0, 1] (C = 1 L, 2 LA, 3 RGB, 4 RGBA; formats without alpha, such as
    JPEG and BMP, get the colour part). The file appears under its name only when every row was
    written; an error or an interrupted program leaves nothing behind.

    PNG is streamed: each band is filtered and compressed as it comes (:class:`_PngStream`), so
    the image is never held in memory and an output larger than the memory can be written. Other
    formats are collected in an 8-bit Pillow image (4 bytes a pixel for RGB/RGBA/LA, 1 for L)
    and encoded by Pillow at the end: Pillow cannot encode an image piece by piece.
    """

    SLAB = 1 << 18  # pixels quantised at a time

    def __init__(self, path: str | os.PathLike, height: int, width: int, channels: int, quality: int = 95) -> None:
        self.path = Path(path)
        fmt = Image.registered_extensions().get(self.path.suffix.lower())
        if fmt is None or fmt not in Image.SAVE:
            raise UserError(f"cannot save image {self.path}: unknown image extension {self.path.suffix!r}")
        if channels not in (1, 2, 3, 4):
            raise ValueError(f"ImageWriter: {channels} channels (expected 1, 2, 3 or 4)")
        self.fmt, self.height, self.width, self.quality = fmt, int(height), int(width), quality
        self.keep = channels - 1 if channels in (2, 4) and fmt in ("JPEG", "BMP") else channels  # alpha dropped
        self.rows = 0
        self._png: _PngStream | None = None
        self._pil: Image.Image | None = None
        self._tmp: Path | None = None
        self._file: BinaryIO | None = None

    def __enter__(self) -> "ImageWriter":
        mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[self.keep]
        if self.fmt == "PNG":
            self._tmp = temp_sibling(self.path)
            try:
                self._file = open(self._tmp, "xb")
            except OSError as e:
                raise UserError(f"cannot write image {self.path}: {e.strerror or e}") from None
            self._png = _PngStream(self._file, self.width, self.height, self.keep)
        else:
            self._pil = Image.new(mode, (self.width, self.height))
        return self

    def write(self, rows: np.ndarray) -> None:
        """The next ``r`` rows: a (C, r, W) float array in [0, 1]."""
        _check_chw(rows, "ImageWriter.write")
        if rows.shape[2] != self.width or self.rows + rows.shape[1] > self.height:
            raise ValueError(f"ImageWriter: rows {tuple(rows.shape)} do not fit a {self.width}x{self.height} image "
                             f"at row {self.rows}")
        step = max(1, self.SLAB // self.width)  # rows quantised at a time: bounds the float temporaries
        for r in range(0, rows.shape[1], step):
            q = _quantise(rows[:self.keep, r:r + step])
            try:
                if self._png is not None:
                    self._png.write(q)
                else:
                    assert self._pil is not None, "ImageWriter.write outside its with block"
                    self._pil.paste(Image.fromarray(q[:, :, 0] if self.keep == 1 else q), (0, self.rows))
            except OSError as e:
                raise UserError(f"cannot write image {self.path}: {e.strerror or e}") from None
            self.rows += q.shape[0]

    def __exit__(self, kind, value, tb) -> None:
        if self._png is None:  # Pillow: encode the collected image (only when every row came)
            pil, self._pil = self._pil, None
            if kind is None and pil is not None:
                self._check_complete()
                extra = {"quality": self.quality} if self.fmt in ("JPEG", "WEBP") else {}
                write_atomic(self.path, lambda f: pil.save(f, format=self.fmt, **extra), "image")
            return
        assert self._file is not None and self._tmp is not None
        try:
            try:
                if kind is None:
                    self._check_complete()
                    self._png.finish()
                    self._file.flush()
                    os.fsync(self._file.fileno())
            finally:
                self._file.close()
            if kind is None:
                os.replace(self._tmp, self.path)
        except OSError as e:
            raise UserError(f"cannot write image {self.path}: {e.strerror or e}") from None
        finally:
            self._tmp.unlink(missing_ok=True)

    def _check_complete(self) -> None:
        if self.rows != self.height:
            raise ValueError(f"ImageWriter: {self.rows} of {self.height} rows written to {self.path}")


class _PngStream:
    """A PNG file written as its rows come (8-bit L, LA, RGB or RGBA; no interlacing).

    Pillow encodes PNG only from a whole image in memory, and pypng (the pure-Python PNG library)
    streams rows but writes them unfiltered: its files of upscaled photos are 1.2-1.6x larger than
    Pillow's (docs/memory.md). So the rows are filtered here, per row with the filter that gives the
    smallest sum of absolute (signed) bytes, the heuristic libpng and Pillow use, and compressed
    with zlib at level 1; the chunks follow the PNG specification (signature, IHDR, IDAT, IEND,
    each with its CRC). Decoded, the file holds exactly the pixels Pillow would write.

    Level 1, not Pillow's default 6: a 3840x2160 upscaled photo is written in 0.55 s instead of
    2.6 s for a 13 % larger file (a smooth synthetic image: 0.30 s instead of 0.64 s, 52 % larger,
    1.9 instead of 1.3 MB); at 6 the PNG took longer than the demo's whole start-up (docs/speed.md).

    In parallel and in the background: the rows are cut into pieces of about ``PIECE`` raw bytes,
    each filtered and compressed by a worker thread (numpy and zlib release the GIL) into its own
    raw deflate segment, ended at a byte boundary (a sync flush), so that the segments, in order,
    form one deflate stream; the stream's checksum is combined from the pieces' (:func:`_adler32_cat`).
    ``write`` returns once its pieces are queued (at most ``IN_FLIGHT`` at a time), so the next
    band is rendered while this one is compressed; only the calling thread writes to the file.
    Each segment starts without the previous one's history, which costs ~0.1 % of the size.
    """
    LEVEL = 1            # zlib level
    CHUNK = 1 << 20      # compressed bytes collected per IDAT chunk
    PIECE = 1 << 20      # raw bytes filtered and compressed as one job (the filter's scratch is ~12x this)
    IN_FLIGHT = 4        # pieces queued or being compressed at a time (bounds the memory)

    def __init__(self, f: BinaryIO, width: int, height: int, channels: int) -> None:
        self.f, self.bpp = f, channels
        self.prev = np.zeros(width * channels, dtype=np.uint8)  # the row above the first is zeros
        self.jobs: deque[Future] = deque()
        self.adler = 1  # adler32 of no data
        self.pending = bytearray(b"\x78\x01")  # the zlib header: deflate, 32 KiB window, fastest level
        color = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
        f.write(b"\x89PNG\r\n\x1a\n")
        self._chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0))

    def _chunk(self, kind: bytes, data: bytes) -> None:
        self.f.write(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)))

    def write(self, rows: np.ndarray) -> None:
        """(r, W, C) uint8 rows (not changed by the caller afterwards: they are read in the background)."""
        flat = rows.reshape(rows.shape[0], -1)
        step = max(1, self.PIECE // max(1, flat.shape[1]))
        for i in range(0, flat.shape[0], step):
            piece = flat[i:i + step]
            self.jobs.append(_png_workers().submit(_deflate_piece, piece, self.prev, self.bpp, self.LEVEL))
            self.prev = piece[-1]
            while len(self.jobs) > self.IN_FLIGHT:
                self._collect()

    def _collect(self) -> None:
        """The oldest piece's deflate segment into the stream (and the file, a chunk at a time)."""
        data, adler, n = self.jobs.popleft().result()
        self.adler = _adler32_cat(self.adler, adler, n)
        self.pending += data
        if len(self.pending) >= self.CHUNK:
            self._chunk(b"IDAT", bytes(self.pending))
            self.pending.clear()

    def finish(self) -> None:
        while self.jobs:
            self._collect()
        self.pending += zlib.compressobj(self.LEVEL, zlib.DEFLATED, -15).flush()  # the final (empty) block
        self.pending += struct.pack(">I", self.adler)
        self._chunk(b"IDAT", bytes(self.pending))
        self.pending.clear()
        self._chunk(b"IEND", b"")


def _png_filter(x: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """(r, n) raw rows, ``prev`` the raw row above the first -> (r, 1 + n): each row's filter
    type byte and its filtered bytes (the filter with the smallest sum of absolute signed bytes)."""
    r, n = x.shape
    up = np.concatenate([prev[None], x[:-1]]).astype(np.int16)
    xi = x.astype(np.int16)
    left = np.zeros_like(xi)
    left[:, bpp:] = xi[:, :-bpp]
    upleft = np.zeros_like(xi)
    upleft[:, bpp:] = up[:, :-bpp]
    p = left + up - upleft  # Paeth predictor: the neighbour closest to left + up - upper left
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    out = np.empty((r, n + 1), dtype=np.uint8)
    best = np.full(r, np.iinfo(np.int64).max)
    for kind, pred in enumerate((None, left, up, (left + up) >> 1, paeth)):  # filter types 0..4
        f = x if pred is None else ((xi - pred) & 0xFF).astype(np.uint8)
        cost = np.abs(f.view(np.int8).astype(np.int16)).sum(axis=1, dtype=np.int64)
        better = cost < best
        best[better] = cost[better]
        out[better, 0] = kind
        out[better, 1:] = f[better]
    return out


def _deflate_piece(x: np.ndarray, prev: np.ndarray, bpp: int, level: int) -> tuple[bytes, int, int]:
    """One piece of rows filtered and compressed: (a raw deflate segment ending at a byte boundary,
    the adler32 of the filtered bytes, their number)."""
    data = _png_filter(x, prev, bpp).tobytes()
    z = zlib.compressobj(level, zlib.DEFLATED, -15)
    return z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH), zlib.adler32(data), len(data)


def _adler32_cat(a: int, b: int, n: int) -> int:
    """The adler32 of data A followed by data B (``n`` bytes) from adler32(A) = ``a`` and
    adler32(B) = ``b``. With the sums s1 = 1 + the bytes and s2 = the sum of the running s1 (mod
    65521): s1 = s1(A) + s1(B) - 1 and s2 = s2(A) + s2(B) + n (s1(A) - 1)."""
    mod = 65521
    s1 = (a & 0xFFFF) + (b & 0xFFFF) - 1
    s2 = (a >> 16) + (b >> 16) + n * ((a & 0xFFFF) - 1)
    return (s1 % mod) | ((s2 % mod) << 16)


_workers: ThreadPoolExecutor | None = None
_workers_pid = 0
_workers_lock = threading.Lock()


def _png_workers() -> ThreadPoolExecutor:
    """The PNG compression threads (one per core this process may run on, at most 4; made again
    in a forked child)."""
    global _workers, _workers_pid
    with _workers_lock:
        if _workers is None or _workers_pid != os.getpid():
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            _workers = ThreadPoolExecutor(max(1, min(4, cores)), thread_name_prefix="lmf-png")
            _workers_pid = os.getpid()
        return _workers


def write_bands(path: str | os.PathLike, size: tuple[int, int], bands: Iterable[tuple[int, np.ndarray]],
                alpha: np.ndarray | None = None, gray: bool = False, quality: int = 95,
                progress: Callable[[int], None] | None = None) -> None:
    """Write the upscaled colour, given as bands (first row, (3, r, W) float32 in [0, 1]) from top
    to bottom, as the output image of a source with this ``alpha`` and grayscale flag (what
    :func:`compose_output` does for a whole image, band by band): grayscale sources give the
    channel mean, an alpha channel is resized once with Pillow's bicubic filter (1 byte a pixel;
    Pillow's resize of a part is not the same as the part of its resize) and appended.
    Memory beyond a band: that alpha channel, and for formats other than PNG the 8-bit image
    (:class:`ImageWriter`). ``progress(n_rows)`` after each band."""
    H, W = size
    big_alpha = None
    if alpha is not None:
        big_alpha = np.asarray(Image.fromarray(alpha).resize((W, H), Image.Resampling.BICUBIC))
    channels = (1 if gray else 3) + (alpha is not None)
    with ImageWriter(path, H, W, channels, quality) as out:
        for r0, rgb in bands:
            part = compose_output(rgb, None, gray)
            if big_alpha is not None:
                a = big_alpha[r0:r0 + rgb.shape[1]].astype(np.float32) / np.float32(255)
                part = np.concatenate([part, a[None]], axis=0)
            out.write(part)
            if progress is not None:
                progress(rgb.shape[1])
