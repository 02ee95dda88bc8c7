"""Folders of images: ``image-folder`` and ``paired-image-folders``.

The file list is the sorted listing of ``root_path`` restricted to image files (known image
extensions; hidden files, sub-folders and other files such as ``.txt`` are skipped), or the
list ``split_file[split_key]`` of a JSON split file; then truncated to ``first_k``. Item ``i``
is file ``i mod n`` and ``len = n * repeat``. Items are (3, H, W) float32 tensors in [0, 1]
(see :mod:`utils.images` for how modes are converted). ``stored(i)`` gives item ``i`` before that
conversion, as the (H, W, 3) array the cache holds, so that the SR wrappers convert only their
crop (a DIV2K image is 8.3 M values, a training crop at most 110 k).

``cache``:

* ``none``: decode from disk on every access.
* ``in_memory``: decode every file once at construction (as uint8 where the file is 8-bit, a
  quarter of the reference's float memory; the tensors returned are identical).
* ``bin``: decode once into ``.npy`` files and load those afterwards. The reference pickles
  into a sibling folder ``_bin_<folder name>``; here the arrays are written with ``np.save``
  and read with ``allow_pickle=False`` (never pickle), atomically, and rebuilt when the image
  is newer than its cache file. The cache folder is that sibling folder, or
  ``cache_dir/_bin_<folder name>_<hash of the folder path>`` when ``cache_dir`` is given
  (use it when the data folder is read-only). Unlike the reference, grayscale files work.

Errors are one-line ``UserError``\\ s naming the path: missing folder, a folder with no image
files, a split file that is missing or lacks the key, a listed file that does not exist, and a
file that cannot be decoded (at construction for ``in_memory``/``bin``, at access for
``none``).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets import register
from utils.atomic import write_atomic
from utils.errors import SpecError, UserError
from utils.images import array_to_tensor, read_image

IMAGE_EXTENSIONS = frozenset({
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm",
    ".gif", ".tga",
})
CACHE_MODES = ("none", "in_memory", "bin")


def list_images(root: Path) -> list[str]:
    """Sorted names of the image files directly inside ``root`` (hidden files skipped)."""
    return sorted(name for name in os.listdir(root)
                  if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS
                  and (root / name).is_file())


def _read_split(split_file: str, split_key: str | None) -> list[str]:
    try:
        with open(split_file, encoding="utf-8") as f:
            split = json.load(f)
    except OSError as e:
        raise UserError(f"cannot read split file {split_file}: {e.strerror or e}") from None
    except ValueError as e:
        raise UserError(f"split file {split_file} is not valid JSON: {e}") from None
    if not isinstance(split, dict) or split_key not in split:
        keys = ", ".join(map(str, split)) if isinstance(split, dict) else "none (not a JSON object)"
        raise UserError(f"split file {split_file} has no key {split_key!r}; keys: {keys}")
    names = split[split_key]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"split file {split_file}: {split_key!r} must be a list of file names")
    return names


def _data_hint(folder: Path) -> str:
    """How to get a missing folder that lies under the data root (configs' ``${LMF_DATA}``)."""
    from utils.config import DATA_VAR, data_root

    try:
        folder.absolute().relative_to(data_root())
    except ValueError:
        return ""
    return (f" (the data root is {data_root()}: set {DATA_VAR} to the folder that holds benchmark/, "
            "div2k/ and train/, or fetch a set with python scripts/get_data.py NAME; see docs/data.md)")


def _read_only(arr: np.ndarray) -> np.ndarray:
    """``arr``, flagged read-only: a cached image handed out by :meth:`ImageFolder.stored` is never
    written to by mistake."""
    arr.flags.writeable = False
    return arr


@register("image-folder")
class ImageFolder(Dataset):
    """The images of one folder, as (3, H, W) float tensors in [0, 1]."""

    def __init__(self, root_path: str | list[str], split_file: str | None = None, split_key: str | None = None,
                 first_k: int | None = None, repeat: int = 1, cache: str = "none",
                 cache_dir: str | None = None) -> None:
        """``root_path``: a folder, or a list of folders whose images are concatenated in order."""
        if cache not in CACHE_MODES:
            raise SpecError(f"image-folder: cache must be one of {', '.join(CACHE_MODES)}, got {cache!r}")
        if not isinstance(repeat, int) or repeat < 1:
            raise SpecError(f"image-folder: repeat must be a positive integer, got {repeat!r}")
        if first_k is not None and (not isinstance(first_k, int) or first_k < 0):
            raise SpecError(f"image-folder: first_k must be a non-negative integer, got {first_k!r}")
        roots = [root_path] if isinstance(root_path, (str, os.PathLike)) else list(root_path)
        if not roots or not all(isinstance(r, (str, os.PathLike)) for r in roots):
            raise SpecError(f"image-folder: root_path must be a folder or a list of folders, got {root_path!r}")
        if split_file is not None and len(roots) > 1:
            raise SpecError("image-folder: split_file needs a single root_path")
        self.files = []
        for root in map(Path, roots):
            if not root.is_dir():
                what = "is not a folder" if root.exists() else "does not exist"
                raise UserError(f"image folder {root} {what}{_data_hint(root)}")
            names = list_images(root) if split_file is None else _read_split(split_file, split_key)
            self.files += [root / n for n in names]
        self.root = Path(roots[0])
        if first_k is not None:
            self.files = self.files[:first_k]
        if not self.files:
            where = ", ".join(map(str, roots))
            raise UserError(f"image folder {where} contains no image files"
                            + (f" (first_k={first_k})" if first_k == 0 else ""))
        for p in self.files:
            if not p.is_file():
                raise UserError(f"image {p} listed in split file {split_file} does not exist")
        self.repeat = repeat
        self.cache = cache
        self._arrays: list[np.ndarray] | None = None
        self._npy: list[Path] | None = None
        if cache == "in_memory":
            self._arrays = [_read_only(read_image(p)) for p in self.files]
        elif cache == "bin":
            self._npy = self._build_bin(cache_dir)

    @staticmethod
    def _bin_folder(root: Path, cache_dir: str | None) -> Path:
        if cache_dir is None:
            return root.parent / f"_bin_{root.name}"
        tag = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]
        return Path(cache_dir) / f"_bin_{root.name}_{tag}"

    def _build_bin(self, cache_dir: str | None) -> list[Path]:
        out = []
        for p in self.files:
            folder = self._bin_folder(p.parent, cache_dir)
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"cannot create cache folder {folder} ({e.strerror or e}); "
                                "set cache_dir to a writable folder or use cache: in_memory") from None
            npy = folder / (p.name + ".npy")
            if not npy.is_file() or npy.stat().st_mtime < p.stat().st_mtime:
                arr = read_image(p)
                write_atomic(npy, functools.partial(np.save, arr=arr, allow_pickle=False), "cache file")
            out.append(npy)
        return out

    def __len__(self) -> int:
        return len(self.files) * self.repeat

    def __getitem__(self, idx: int) -> torch.Tensor:
        return array_to_tensor(self._read(self._file_index(idx), mmap=False))

    def stored(self, idx: int) -> np.ndarray:
        """Item ``idx`` as stored, before the float conversion: an (H, W, 3) array, uint8 (8-bit
        files) or float32 in [0, 1]; ``array_to_tensor`` of it is ``self[idx]``. Read-only where
        it is the cache itself: the in-memory array, or with ``cache: bin`` a memory map of the
        ``.npy`` file, so that converting a crop of it reads and converts only the crop."""
        return self._read(self._file_index(idx), mmap=True)

    def _file_index(self, idx: int) -> int:
        if not -len(self) <= idx < len(self):
            raise IndexError(f"index {idx} out of range for a dataset of {len(self)} items")
        return idx % len(self.files)

    def _read(self, i: int, mmap: bool) -> np.ndarray:
        if self._arrays is not None:
            return self._arrays[i]
        if self._npy is not None:
            try:
                return np.load(self._npy[i], mmap_mode="r" if mmap else None, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise UserError(f"cannot read cache file {self._npy[i]}: {e}; delete it to rebuild") from None
        return read_image(self.files[i])


@register("paired-image-folders")
class PairedImageFolders(Dataset):
    """LR (``root_path_1``) and HR (``root_path_2``) folders paired by sorted index."""

    def __init__(self, root_path_1: str, root_path_2: str, split_file: str | None = None,
                 split_key: str | None = None, first_k: int | None = None, repeat: int = 1,
                 cache: str = "none", cache_dir: str | None = None) -> None:
        kw: dict[str, Any] = dict(split_file=split_file, split_key=split_key, first_k=first_k,
                                  repeat=repeat, cache=cache, cache_dir=cache_dir)
        self.dataset_1 = ImageFolder(root_path_1, **kw)
        self.dataset_2 = ImageFolder(root_path_2, **kw)
        n1, n2 = len(self.dataset_1.files), len(self.dataset_2.files)
        if n1 != n2:
            raise UserError(f"paired folders differ in size: {root_path_1} has {n1} images, "
                            f"{root_path_2} has {n2}")

    def __len__(self) -> int:
        return len(self.dataset_1)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset_1[idx], self.dataset_2[idx]

    def stored(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        """The LR and HR arrays of item ``idx`` as stored (see :meth:`ImageFolder.stored`)."""
        return self.dataset_1.stored(idx), self.dataset_2.stored(idx)
