"""The wrappers' crop-before-convert path gives the samples of the reference code, bit for bit.

``Reference*`` below is the pipeline as the official code (and this repository before the fast
path) runs it: the whole image converted to float, cropped, truncated back to uint8 for the
bicubic LR, every pixel's coordinate built and then indexed. The wrappers must return the same
tensors (values to the bit, dtype, shape, strides) and leave Python's and NumPy's global RNGs
in the same state after every item, for image folders in every cache mode (the fast path:
uint8 crops, 16-bit files as float crops) and for a plain dataset of tensors (the fallback).
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

import datasets
from datasets.resize import resize_bicubic, resize_bicubic_u8
from datasets.throughput import samples_per_second
from utils.coords import make_coord, pixel_samples_at, to_pixel_samples
from utils.images import array_to_float, read_image

CACHES = ("none", "in_memory", "bin")


# ------------------------------------------------------------------------ the reference pipeline

def ref_to_float(arr: np.ndarray) -> torch.Tensor:
    """The whole decoded image as ToTensor gives it (two numpy passes, as before)."""
    a = arr.transpose(2, 0, 1)
    if a.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(a.astype(np.float32) / np.float32(255)))
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def ref_resize(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """ToTensor(Resize((h, w), BICUBIC)(ToPILImage()(img))): truncation to uint8 first."""
    u8 = img.mul(255).clamp(0, 255).byte()
    pil = Image.fromarray(u8.permute(1, 2, 0).contiguous().numpy())
    out = np.asarray(pil.resize((w, h), Image.Resampling.BICUBIC), dtype=np.uint8)
    return torch.from_numpy(out.copy()).permute(2, 0, 1).contiguous().float().div(255)


def ref_augment(augment: bool):
    if not augment:
        return lambda x: x
    hflip, vflip, dflip = random.random() < 0.5, random.random() < 0.5, random.random() < 0.5

    def fn(x):
        x = x.flip(-2) if hflip else x
        x = x.flip(-1) if vflip else x
        return x.transpose(-2, -1) if dflip else x

    return fn


def ref_sample(crop_lr: torch.Tensor, crop_hr: torch.Tensor, sample_q: int | None) -> dict:
    hr = crop_hr.contiguous()
    coord, rgb = make_coord(hr.shape[-2:]), hr.reshape(hr.shape[0], -1).t()
    if sample_q is not None:
        keep = torch.from_numpy(np.random.choice(len(coord), sample_q, replace=False))
        coord, rgb = coord[keep], rgb[keep]
    cell = torch.tensor([2 / crop_hr.shape[-2], 2 / crop_hr.shape[-1]], dtype=torch.float32)
    return {"inp": crop_lr.contiguous(), "coord": coord, "cell": cell.expand(len(coord), 2).clone(),
            "gt": rgb.contiguous()}


def ref_downsampled(img: torch.Tensor, inp_size=None, scale_min=1, scale_max=None, augment=False,
                    sample_q=None, scale_hw=None, fit_scale=False) -> dict:
    scale_max = scale_min if scale_max is None else scale_max
    H, W = img.shape[-2:]
    sy = sx = 0.0
    if scale_hw is not None:
        sy, sx = scale_hw
    else:
        sy = sx = random.uniform(scale_min, scale_max)
    if inp_size is None:
        h_lr, w_lr = math.floor(H / sy + 1e-9), math.floor(W / sx + 1e-9)
        crop_hr = img[:, :round(h_lr * sy), :round(w_lr * sx)]
        crop_lr = ref_resize(crop_hr, h_lr, w_lr)
    else:
        w_hr = round(inp_size * sy)
        fits = min(H, W) / inp_size
        if fit_scale and w_hr > min(H, W) and fits >= scale_min and scale_max > scale_min:
            sy = scale_min + (sy - scale_min) * (fits - scale_min) / (scale_max - scale_min)
            w_hr = min(round(inp_size * sy), min(H, W))
        x0, y0 = random.randint(0, H - w_hr), random.randint(0, W - w_hr)
        crop_hr = img[:, x0:x0 + w_hr, y0:y0 + w_hr]
        crop_lr = ref_resize(crop_hr, inp_size, inp_size)
    aug = ref_augment(augment)
    return ref_sample(aug(crop_lr), aug(crop_hr), sample_q)


def ref_paired(img_lr: torch.Tensor, img_hr: torch.Tensor, inp_size=None, augment=False, sample_q=None) -> dict:
    h_lr, w_lr = img_lr.shape[-2:]
    s = img_hr.shape[-2] // h_lr
    if inp_size is None:
        crop_lr, crop_hr = img_lr, img_hr[:, :h_lr * s, :w_lr * s]
    else:
        w = inp_size
        x0, y0 = random.randint(0, h_lr - w), random.randint(0, w_lr - w)
        crop_lr = img_lr[:, x0:x0 + w, y0:y0 + w]
        crop_hr = img_hr[:, x0 * s:x0 * s + w * s, y0 * s:y0 * s + w * s]
    aug = ref_augment(augment)
    return ref_sample(aug(crop_lr), aug(crop_hr), sample_q)


class Tensors(Dataset):
    """A plain dataset of (3, H, W) float tensors (or pairs): the wrappers' fallback path."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> Any:
        return self.items[idx]


# ------------------------------------------------------------------------ helpers

def assert_same(got: dict, want: dict, what: str) -> None:
    assert got.keys() == want.keys(), what
    for k in want:
        g, w = got[k], want[k]
        assert g.dtype == w.dtype and g.shape == w.shape, (what, k, g.dtype, g.shape, w.shape)
        assert g.stride() == w.stride() and g.is_contiguous() == w.is_contiguous(), (what, k)
        assert torch.equal(g.view(torch.int32), w.view(torch.int32)), (what, k)  # every bit


def rng_state() -> tuple:
    state: Any = np.random.get_state(legacy=True)
    return random.getstate(), state[0], state[1].tobytes(), state[2:]


def check_items(ds: Any, reference, refs: list[Any], n_items: int, what: str) -> None:
    """Items 0..n_items-1 (cycling) under per-item seeds equal the reference's, RNG draws included."""
    for k in range(n_items):
        idx = k % len(ds)
        random.seed(k), np.random.seed(1000 + k)
        got = ds[idx]
        after = rng_state()
        random.seed(k), np.random.seed(1000 + k)
        item = refs[idx % len(refs)]
        want = reference(*item) if isinstance(item, tuple) else reference(item)
        assert rng_state() == after, f"{what}: item {idx} drew differently"
        assert_same(got, want, f"{what}: item {idx}")


def write(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture(scope="module")
def hr_folder(tmp_path_factory) -> Path:
    """8-bit RGB images of several sizes, an 8-bit grayscale one and a 16-bit grayscale one."""
    root = tmp_path_factory.mktemp("hr")
    rng = np.random.default_rng(5)
    for i, (h, w) in enumerate([(70, 90), (64, 64), (57, 101)]):
        smooth = np.cumsum(rng.integers(-9, 10, (h, w, 3)), axis=1) + 128  # smooth and noisy parts
        write(root / f"rgb{i}.png", np.clip(smooth, 0, 255).astype(np.uint8))
    write(root / "gray.png", rng.integers(0, 256, (66, 80), dtype=np.uint8))
    Image.fromarray(rng.integers(0, 65536, (75, 61), dtype=np.uint16)).save(root / "deep16.png")
    return root


@pytest.fixture(scope="module")
def pair_folders(tmp_path_factory) -> tuple[Path, Path]:
    """LR/HR pairs at scale 2 (with an HR one pixel taller than 2x) and 3, one 16-bit grayscale."""
    lr, hr = tmp_path_factory.mktemp("lr"), tmp_path_factory.mktemp("hr")
    rng = np.random.default_rng(9)
    for i, ((h, w), s) in enumerate([((20, 24), 2), ((18, 21), 3)]):
        write(lr / f"{i}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        write(hr / f"{i}.png", rng.integers(0, 256, (h * s + (i == 0), w * s, 3), dtype=np.uint8))
    Image.fromarray(rng.integers(0, 65536, (16, 19), dtype=np.uint16)).save(lr / "2.png")
    Image.fromarray(rng.integers(0, 65536, (32, 38), dtype=np.uint16)).save(hr / "2.png")
    return lr, hr


def folder(root: Path, cache: str, tmp_path: Path) -> Any:
    return datasets.make({"name": "image-folder", "args": {
        "root_path": str(root), "cache": cache, "cache_dir": str(tmp_path / "bin")}})


def wrap(name: str, ds: Any, args: dict) -> Any:
    return datasets.make({"name": name, "args": args}, args={"dataset": ds})


DOWNSAMPLED = [
    dict(inp_size=14, scale_max=4, augment=True, sample_q=200),       # the recipe shape, small
    dict(inp_size=12, scale_min=2.5, augment=True, sample_q=100),     # fixed non-integer scale
    dict(inp_size=10, scale_min=3, augment=False, sample_q=None),     # whole crop, integer scale
    dict(inp_size=15, scale_min=1.3, scale_max=3.7, augment=True),    # every pixel, non-integer
    dict(inp_size=24, scale_max=4, augment=True, sample_q=64, fit_scale=True),  # crops up to 96 > 57
    dict(scale_min=2.5),                                              # test mode
    dict(scale_min=3, scale_max=3),
    dict(scale_hw=[2, 3.5]),
]


# ------------------------------------------------------------------------ the wrappers

@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("args", DOWNSAMPLED, ids=lambda a: "-".join(f"{k}={v}" for k, v in a.items()))
def test_downsampled_matches_reference(hr_folder, tmp_path, cache, args):
    ds = folder(hr_folder, cache, tmp_path)
    refs = [ref_to_float(read_image(p)) for p in ds.files]
    n = 40 if "inp_size" in args else len(refs)
    check_items(wrap("sr-implicit-downsampled", ds, args), lambda img: ref_downsampled(img, **args), refs,
                n, f"{cache} {args}")
    if cache == "none":  # the fallback: a dataset of tensors, no stored arrays
        check_items(wrap("sr-implicit-downsampled", Tensors(refs), args),
                    lambda img: ref_downsampled(img, **args), refs, n, f"tensors {args}")


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("args", [dict(inp_size=8, augment=True, sample_q=150), dict(inp_size=6),
                                  dict(inp_size=5, augment=True), dict()], ids=str)
def test_paired_matches_reference(pair_folders, tmp_path, cache, args):
    lr, hr = pair_folders
    ds = datasets.make({"name": "paired-image-folders", "args": {
        "root_path_1": str(lr), "root_path_2": str(hr), "cache": cache, "cache_dir": str(tmp_path / "bin")}})
    refs = [(ref_to_float(read_image(a)), ref_to_float(read_image(b)))
            for a, b in zip(ds.dataset_1.files, ds.dataset_2.files, strict=True)]
    n = 30 if args else len(refs)
    check_items(wrap("sr-implicit-paired", ds, args), lambda a, b: ref_paired(a, b, **args), refs, n,
                f"{cache} {args}")
    if cache == "none":
        check_items(wrap("sr-implicit-paired", Tensors(refs), args), lambda a, b: ref_paired(a, b, **args),
                    refs, n, f"tensors {args}")


def test_recipe_shape_on_a_large_image(tmp_path):
    """A DIV2K-sized frame at the official recipe's settings: crops up to 192x192 of 1356x2040."""
    rng = np.random.default_rng(2)
    write(tmp_path / "0001.png", np.clip(np.cumsum(rng.integers(-4, 5, (1356, 2040, 3)), axis=0) + 128,
                                         0, 255).astype(np.uint8))
    ds = wrap("sr-implicit-downsampled", folder(tmp_path, "in_memory", tmp_path),
              dict(inp_size=48, scale_max=4, augment=True, sample_q=2304))
    refs = [ref_to_float(read_image(tmp_path / "0001.png"))]
    check_items(ds, lambda img: ref_downsampled(img, inp_size=48, scale_max=4, augment=True, sample_q=2304),
                refs, 12, "recipe")


# ------------------------------------------------------------------------ the pieces

def test_stored_arrays_per_cache_mode(hr_folder, tmp_path):
    for cache in CACHES:
        ds = folder(hr_folder, cache, tmp_path)
        for i, p in enumerate(ds.files):
            arr = ds.stored(i)
            assert arr.shape[2] == 3 and arr.dtype == (np.float32 if p.name == "deep16.png" else np.uint8)
            assert np.array_equal(arr, read_image(p))
            assert torch.equal(ds[i], torch.from_numpy(array_to_float(arr)))
            if cache == "in_memory":
                assert arr is ds.stored(i) and not arr.flags.writeable
            if cache == "bin":
                assert isinstance(arr, np.memmap) and not arr.flags.writeable
        with pytest.raises(IndexError):
            ds.stored(len(ds))


def test_array_to_float_is_tototensor_and_a_new_array():
    rng = np.random.default_rng(0)
    cases: list[np.ndarray] = [np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2),
             rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)[5:50, 3:61],  # a strided crop
             rng.random((9, 7, 3)), rng.random((9, 7, 3)).astype(np.float32),
             rng.random((1, 1, 3)).astype(np.float32)]
    for arr in cases:
        out, ref = array_to_float(arr), ref_to_float(arr).numpy()
        assert out.dtype == np.float32 and out.shape == ref.shape and out.flags.c_contiguous
        assert np.array_equal(out.view(np.uint32), ref.view(np.uint32))
        assert out.flags.writeable and not np.shares_memory(out, arr)


def test_uint8_round_trip_is_the_identity():
    """k/255 in float32, times 255, truncated to uint8 (ToPILImage) gives k back for every k."""
    k = np.arange(256, dtype=np.uint8)
    f = torch.from_numpy(array_to_float(k.reshape(1, 256, 1).repeat(3, axis=2)))
    assert torch.equal(f.mul(255).clamp(0, 255).byte()[0, 0], torch.from_numpy(k))


@pytest.mark.parametrize("hw,size", [((37, 53), (12, 17)), ((64, 64), (21, 21)), ((20, 30), (50, 45)),
                                     ((48, 48), (48, 48)), ((30, 60), 10)])
def test_resize_u8_equals_resize_of_the_float_image(hw, size):
    arr = np.random.default_rng(hw[0]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    want = resize_bicubic(ref_to_float(arr), size)
    for a in (arr, np.ascontiguousarray(arr[::-1]).copy()[::-1]):  # contiguous and negative strides
        got = resize_bicubic_u8(a, size)
        assert got.dtype == want.dtype and got.stride() == want.stride() and torch.equal(got, want)
    with pytest.raises(ValueError):
        resize_bicubic_u8(arr.astype(np.float32), size)


def test_pixel_samples_at_equals_indexing_all_pixels():
    img = torch.rand(3, 23, 31)
    keep = np.random.default_rng(1).choice(23 * 31, 300, replace=False)
    for x in (img, img.flip(-1), img.transpose(-2, -1), img.flip(-2).transpose(-2, -1)):
        coord, values = to_pixel_samples(x.contiguous())
        got_c, got_v = pixel_samples_at(x, keep)
        t = torch.from_numpy(keep)
        assert torch.equal(got_c, coord[t]) and torch.equal(got_v, values[t].contiguous())
        assert got_c.is_contiguous() and got_v.is_contiguous()


# ------------------------------------------------------------------------ throughput

class Slow(Dataset):
    """Each item takes ``delay`` s of sleeping (no CPU), so the expected rate is known."""

    def __init__(self, ds: Dataset, delay: float) -> None:
        self.ds, self.delay = ds, delay

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    def __getitem__(self, idx: int) -> Any:
        import time

        time.sleep(self.delay)
        return self.ds[idx]


def test_samples_per_second_times_the_items(hr_folder):
    spec = {"dataset": {"name": "image-folder", "args": {"root_path": str(hr_folder), "first_k": 3}},
            "wrapper": {"name": "sr-implicit-downsampled", "args": {"inp_size": 8, "scale_max": 4,
                                                                   "augment": True, "sample_q": 32}},
            "batch_size": 4}
    assert samples_per_second(spec, 0, 20) > 0
    state = random.getstate()
    alone = samples_per_second(spec, 0, 20, wrap=lambda ds: Slow(ds, 0.02))
    assert random.getstate() == state  # the caller's RNGs are left as they were
    assert 25 < alone <= 50  # at most 1 / 0.02 s
    two = samples_per_second(spec, 2, 32, wrap=lambda ds: Slow(ds, 0.02))
    assert 50 < two <= 110  # two workers in parallel: about 2 / 0.02 s
    with pytest.raises(ValueError):
        samples_per_second(spec, -1, 10)
