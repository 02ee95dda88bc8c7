"""Image I/O, the reference bicubic resize, image folders and the SR wrappers."""
from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
from datasets.resize import resize_bicubic
from utils.coords import make_coord
from utils.errors import SpecError, UserError
from utils.images import load_image, save_image

from conftest import DATA, need  # ../shared/data (or $LMF_SHARED/data); need() skips if absent

SET5 = DATA / "benchmark" / "Set5" / "HR"
SET14 = DATA / "benchmark" / "Set14" / "HR"


def rand_u8(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_png(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr).save(path)
    return path


def u8_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255)


def pillow_resize(arr: np.ndarray, h: int, w: int) -> torch.Tensor:
    return u8_tensor(np.array(Image.fromarray(arr).resize((w, h), Image.BICUBIC)))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three RGB images of different sizes plus files that must be ignored."""
    root = tmp_path / "imgs"
    root.mkdir()
    for i, (h, w) in enumerate([(40, 52), (64, 64), (33, 70)]):
        write_png(root / f"im{i}.png", rand_u8(h, w, seed=i))
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"")
    (root / "sub.png").mkdir()
    return root


def image_folder(root: Path, **args) -> datasets.image_folder.ImageFolder:
    return datasets.make({"name": "image-folder", "args": {"root_path": str(root), **args}})


# ---------------------------------------------------------------------------------- resize

@pytest.mark.parametrize("hw,size", [((37, 53), (12, 17)), ((64, 64), (21, 21)),
                                     ((20, 30), (50, 45)), ((48, 48), (48, 48))])
def test_resize_matches_pillow_on_random_uint8(hw, size):
    arr = rand_u8(*hw, seed=hw[0])
    out = resize_bicubic(u8_tensor(arr), size)
    assert out.dtype == torch.float32 and out.shape == (3, *size)
    assert torch.equal(out, pillow_resize(arr, *size))


def test_resize_int_size_is_shorter_edge():
    arr = rand_u8(30, 60)
    out = resize_bicubic(u8_tensor(arr), 10)
    assert out.shape == (3, 10, 20)
    assert torch.equal(out, pillow_resize(arr, 10, 20))


def test_resize_truncates_like_topilimage():
    x = torch.tensor([0.999, 0.5, 0.0021]).view(3, 1, 1).expand(3, 4, 4).contiguous()
    out = resize_bicubic(x, (4, 4))  # same size: Pillow returns the uint8 image unchanged
    assert torch.equal(out[:, 0, 0] * 255, torch.tensor([254.0, 127.0, 0.0]))


def test_resize_matches_pillow_on_real_image():
    path = need(SET5 / "butterfly.png")
    arr = np.array(Image.open(path).convert("RGB"))
    out = resize_bicubic(load_image(path), (85, 85))
    assert torch.equal(out, pillow_resize(arr, 85, 85))


# ---------------------------------------------------------------------------------- image io

def test_load_modes_become_rgb(tmp_path):
    rgb = rand_u8(9, 11)
    gray = rgb[:, :, 0]
    ref_gray = torch.from_numpy(gray.copy()).float().div(255).expand(3, 9, 11)
    cases = {
        "l.png": Image.fromarray(gray),
        "la.png": Image.fromarray(gray).convert("LA"),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full((9, 11), 7, np.uint8)])),
        "p.png": Image.fromarray(rgb).quantize(16),
        "one.png": Image.fromarray(gray).convert("1"),
        "i16.png": Image.fromarray(gray.astype(np.uint16) * 257),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
    }
    for name, img in cases.items():
        img.save(tmp_path / name)
        t = load_image(tmp_path / name)
        assert t.shape == (3, 9, 11) and t.dtype == torch.float32, name
        assert 0 <= t.min() and t.max() <= 1, name
    assert torch.equal(load_image(tmp_path / "l.png"), ref_gray)
    assert torch.equal(load_image(tmp_path / "la.png"), ref_gray)
    assert torch.equal(load_image(tmp_path / "rgba.png"), u8_tensor(rgb))  # alpha dropped
    assert torch.equal(load_image(tmp_path / "i16.png"), ref_gray)  # v*257/65535 == v/255 exactly
    pal = np.array(Image.open(tmp_path / "p.png").convert("RGB"))
    assert torch.equal(load_image(tmp_path / "p.png"), u8_tensor(pal))
    assert set(load_image(tmp_path / "one.png").unique().tolist()) <= {0.0, 1.0}


def test_load_16bit_keeps_precision(tmp_path):
    a = np.array([[0, 1, 65534, 65535]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "a.png")
    t = load_image(tmp_path / "a.png")
    assert torch.allclose(t[0, 0].double(), torch.from_numpy(a[0] / 65535.0))
    assert torch.equal(t[0], t[2])


def test_load_real_grayscale_bridge():
    t = load_image(need(SET14 / "bridge.png"))
    assert t.shape == (3, 512, 512)
    assert torch.equal(t[0], t[1]) and torch.equal(t[0], t[2])


def test_load_errors_name_the_file(tmp_path, monkeypatch):
    good = write_png(tmp_path / "good.png", rand_u8(64, 64))
    data = good.read_bytes()
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello, not a png\n")
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "adir.png").mkdir()
    for name in ["missing.png", "empty.png", "text.png", "trunc.png", "adir.png"]:
        with pytest.raises(UserError) as e:
            load_image(tmp_path / name)
        msg = str(e.value)
        assert str(tmp_path / name) in msg and "\n" not in msg, msg
    # decompression bombs: Pillow's warning (> MAX pixels) and error (> 2x MAX) both refused
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 2 + 1)
    with pytest.raises(UserError, match="too large"):
        load_image(good)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 3)
    with pytest.raises(UserError, match="too large"):
        load_image(good)


def test_save_image_roundtrip_and_atomic(tmp_path):
    x = torch.rand(3, 13, 17)
    save_image(x, tmp_path / "a.png")
    assert torch.equal(load_image(tmp_path / "a.png"), (x * 255).round() / 255)
    save_image(x, tmp_path / "a.png")  # overwrite in place
    save_image(x, tmp_path / "b.jpg")
    assert load_image(tmp_path / "b.jpg").shape == (3, 13, 17)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.jpg"]  # no temp files left
    with pytest.raises(UserError, match="extension"):
        save_image(x, tmp_path / "c.xyz")
    with pytest.raises(UserError, match="nodir"):
        save_image(x, tmp_path / "nodir" / "c.png")


# ---------------------------------------------------------------------------------- folders

def test_image_folder_listing_repeat_first_k(folder):
    ds = image_folder(folder, repeat=2)
    assert [p.name for p in ds.files] == ["im0.png", "im1.png", "im2.png"]
    assert len(ds) == 6
    assert torch.equal(ds[4], ds[1]) and ds[4].shape == (3, 64, 64)
    with pytest.raises(IndexError):
        ds[6]
    assert len(image_folder(folder, first_k=2)) == 2


def test_image_folder_cache_modes_agree(folder, tmp_path):
    ref = [image_folder(folder)[i] for i in range(3)]
    mem = image_folder(folder, cache="in_memory")
    binned = image_folder(folder, cache="bin", cache_dir=str(tmp_path / "cache"))
    npys = sorted(p.name for p in (tmp_path / "cache").rglob("*.npy"))
    assert npys == ["im0.png.npy", "im1.png.npy", "im2.png.npy"]
    again = image_folder(folder, cache="bin", cache_dir=str(tmp_path / "cache"))  # reuses the files
    for i in range(3):
        assert torch.equal(mem[i], ref[i]) and torch.equal(binned[i], ref[i]) and torch.equal(again[i], ref[i])
    with pytest.raises(SpecError):
        image_folder(folder, cache="pickle")


def test_image_folder_errors(tmp_path, folder):
    with pytest.raises(UserError, match=str(tmp_path / "nope")):
        image_folder(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(UserError, match="no image files") as e:
        image_folder(empty)
    assert str(empty) in str(e.value)
    (folder / "im1.png").write_bytes(b"")  # now unreadable
    lazy = image_folder(folder)
    with pytest.raises(UserError, match="im1.png"):
        lazy[1]
    with pytest.raises(UserError, match="im1.png"):
        image_folder(folder, cache="in_memory")


def test_image_folder_split_file(folder, tmp_path):
    split = tmp_path / "split.json"
    split.write_text('{"train": ["im2.png", "im0.png"]}')
    ds = image_folder(folder, split_file=str(split), split_key="train")
    assert [p.name for p in ds.files] == ["im2.png", "im0.png"]
    with pytest.raises(UserError, match="val"):
        image_folder(folder, split_file=str(split), split_key="val")


def test_paired_folders_and_paired_wrapper(tmp_path):
    lr_dir, hr_dir = tmp_path / "lr", tmp_path / "hr"
    lr_dir.mkdir(), hr_dir.mkdir()
    for i in range(2):
        hr = rand_u8(30 + i, 36, seed=i)
        write_png(hr_dir / f"{i}.png", hr)
        write_png(lr_dir / f"{i}.png", rand_u8(10, 12, seed=10 + i))
    spec = {"name": "paired-image-folders", "args": {"root_path_1": str(lr_dir), "root_path_2": str(hr_dir)}}
    full = datasets.make_dataset(spec, {"name": "sr-implicit-paired"})
    b = full[1]  # HR 31x36 at scale 3 -> cropped to 30x36
    assert b["inp"].shape == (3, 10, 12) and b["gt"].shape == (30 * 36, 3)
    assert torch.equal(b["gt"], load_image(hr_dir / "1.png")[:, :30, :].reshape(3, -1).t())
    assert torch.allclose(b["cell"], torch.tensor([2 / 30, 2 / 36]).expand(30 * 36, 2))
    crops = datasets.make_dataset(spec, {"name": "sr-implicit-paired",
                                         "args": {"inp_size": 4, "augment": True, "sample_q": 50}})
    b = crops[0]
    assert b["inp"].shape == (3, 4, 4) and b["coord"].shape == (50, 2) and b["gt"].shape == (50, 3)
    write_png(hr_dir / "2.png", rand_u8(30, 36))
    with pytest.raises(UserError, match="differ"):
        datasets.make(spec)


# ---------------------------------------------------------------------------------- wrappers

def downsampled(ds, **args):
    return datasets.make({"name": "sr-implicit-downsampled", "args": args}, args={"dataset": ds})


def test_test_mode_scale3_on_256(tmp_path):
    arr = rand_u8(256, 256)
    write_png(tmp_path / "a.png", arr)
    b = downsampled(image_folder(tmp_path), scale_min=3)[0]
    assert b["inp"].shape == (3, 85, 85)  # floor(256/3 + 1e-9)
    assert b["gt"].shape == (255 * 255, 3) and b["coord"].shape == (255 * 255, 2)
    hr = u8_tensor(arr)[:, :255, :255]  # top-left crop to round(85*3)
    assert torch.equal(b["gt"], hr.reshape(3, -1).t())
    assert torch.equal(b["inp"], pillow_resize(arr[:255, :255], 85, 85))
    assert torch.equal(b["coord"], make_coord((255, 255)))
    assert torch.equal(b["cell"], torch.tensor([2 / 255, 2 / 255]).expand(255 * 255, 2))


@pytest.mark.parametrize("scale,hw,lr,crop", [(2.5, (256, 200), (102, 80), (255, 200)),
                                              (4, (33, 47), (8, 11), (32, 44))])
def test_test_mode_non_integer_and_odd_sizes(tmp_path, scale, hw, lr, crop):
    write_png(tmp_path / "a.png", rand_u8(*hw))
    b = downsampled(image_folder(tmp_path), scale_min=scale)[0]
    assert b["inp"].shape == (3, *lr) and b["gt"].shape == (crop[0] * crop[1], 3)
    assert torch.allclose(b["cell"][0], torch.tensor([2 / crop[0], 2 / crop[1]]))


def test_test_mode_asymmetric_scale(tmp_path):
    write_png(tmp_path / "a.png", rand_u8(256, 256))
    b = downsampled(image_folder(tmp_path), scale_hw=[2, 3])[0]
    assert b["inp"].shape == (3, 128, 85) and b["gt"].shape == (256 * 255, 3)
    assert torch.equal(b["cell"][0], torch.tensor([2 / 256, 2 / 255]))
    with pytest.raises(SpecError):
        downsampled(image_folder(tmp_path), scale_hw=[2, 3], inp_size=8)


def test_train_mode_shapes_ranges_unique_queries(tmp_path):
    write_png(tmp_path / "a.png", rand_u8(70, 90))
    ds = downsampled(image_folder(tmp_path, repeat=4), inp_size=16, scale_max=4, augment=True, sample_q=200)
    random.seed(1), np.random.seed(1)
    for i in range(len(ds)):
        b = ds[i]
        assert b["inp"].shape == (3, 16, 16) and b["inp"].dtype == torch.float32
        assert b["coord"].shape == (200, 2) and b["cell"].shape == (200, 2) and b["gt"].shape == (200, 3)
        assert 0 <= b["inp"].min() and b["inp"].max() <= 1 and 0 <= b["gt"].min() and b["gt"].max() <= 1
        assert b["coord"].abs().max() < 1
        assert len(torch.unique(b["coord"], dim=0)) == 200  # sampled without replacement
        w_hr = round(2 / b["cell"][0, 0].item())
        assert 16 <= w_hr <= 64 and torch.all(b["cell"] == b["cell"][0])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["inp"].shape == (2, 3, 16, 16) and batch["gt"].shape == (2, 200, 3)


def test_train_mode_follows_reference_rng_order(tmp_path):
    """Replaying the reference draws (uniform, randint x2, 3 flags, np choice) gives the sample."""
    arr = rand_u8(60, 50)
    write_png(tmp_path / "a.png", arr)
    ds = downsampled(image_folder(tmp_path), inp_size=12, scale_max=4, augment=True, sample_q=100)
    img = u8_tensor(arr)
    for seed in range(8):
        random.seed(seed), np.random.seed(seed)
        b = ds[0]
        random.seed(seed), np.random.seed(seed)
        s = random.uniform(1, 4)
        w_hr = round(12 * s)
        x0, y0 = random.randint(0, 60 - w_hr), random.randint(0, 50 - w_hr)
        flags = [random.random() < 0.5 for _ in range(3)]
        keep = np.random.choice(w_hr * w_hr, 100, replace=False)

        def aug(x, flags=flags):
            x = x.flip(-2) if flags[0] else x
            x = x.flip(-1) if flags[1] else x
            return x.transpose(-2, -1) if flags[2] else x

        hr = img[:, x0:x0 + w_hr, y0:y0 + w_hr]
        assert torch.equal(b["inp"], aug(resize_bicubic(hr, (12, 12))))
        assert torch.equal(b["gt"], aug(hr).reshape(3, -1).t()[keep])
        assert torch.equal(b["coord"], make_coord((w_hr, w_hr))[keep])


def test_augment_flips_lr_and_hr_together(tmp_path):
    """Over many random flag draws, LR stays the resize of the (transformed) HR crop.

    Flips commute exactly with Pillow's resize; a transpose only up to 1/255 (Pillow resizes
    rows then columns, rounding in between). A ramp image makes any mismatch far larger.
    """
    yy, xx = np.mgrid[0:64, 0:64]
    ramp = np.dstack([yy * 4, xx * 3, (yy + 2 * xx)]).clip(0, 255).astype(np.uint8)
    write_png(tmp_path / "a.png", ramp)
    ds = downsampled(image_folder(tmp_path), inp_size=16, scale_min=2, scale_max=3, augment=True)
    random.seed(0)
    for _ in range(16):
        b = ds[0]
        n = round(math.sqrt(len(b["gt"])))
        hr = b["gt"].t().reshape(3, n, n)
        assert (b["inp"] - resize_bicubic(hr, (16, 16))).abs().max() <= 1 / 255 + 1e-6


def test_wrapper_errors(tmp_path):
    write_png(tmp_path / "a.png", rand_u8(100, 120))
    ds = image_folder(tmp_path)
    with pytest.raises(UserError, match=r"item 0: HR image 100x120 is smaller than the 192x192"):
        downsampled(ds, inp_size=48, scale_min=4)[0]
    with pytest.raises(UserError, match="too small"):
        downsampled(ds, scale_min=200)[0]
    with pytest.raises(UserError, match="sample_q"):
        downsampled(ds, inp_size=8, sample_q=65)[0]
    with pytest.raises(SpecError):
        downsampled(ds, scale_min=4, scale_max=2)
    with pytest.raises(SpecError, match="inp_sz"):
        datasets.make({"name": "sr-implicit-downsampled", "args": {"inp_sz": 48}}, args={"dataset": ds})


def test_real_set5_test_and_train_mode():
    root = need(SET5)
    spec = {"name": "image-folder", "args": {"root_path": str(root), "first_k": 3}}
    test = datasets.make_dataset(spec, {"name": "sr-implicit-downsampled", "args": {"scale_min": 4}})
    b = test[2]  # butterfly 256x256
    assert b["inp"].shape == (3, 64, 64) and b["gt"].shape == (256 * 256, 3)
    train = datasets.make_dataset(spec, {"name": "sr-implicit-downsampled", "args": {
        "inp_size": 48, "scale_max": 4, "augment": True, "sample_q": 2304}})
    random.seed(0), np.random.seed(0)
    b = train[1]
    assert b["inp"].shape == (3, 48, 48) and b["gt"].shape == (2304, 3)
    assert 0 <= b["gt"].min() and b["gt"].max() <= 1
