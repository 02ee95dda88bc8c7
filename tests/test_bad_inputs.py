"""Hardening: what demo.py, test.py and train.py do with bad or unusual inputs.

Every user error must end with exit status 2 and exactly one stderr line ``error: <message>``
naming the problem (never a traceback), and must not clobber anything: the input's bytes are
unchanged and no output file appears. Unusual but valid inputs must work, with a documented
output size and mode:

===================================  ==========================================================
input                                behaviour (demo.py)
===================================  ==========================================================
1x1 / 2x3 image, x2                  works: 2x2 / 4x6 (a 1x1 image is a valid input)
RGBA / LA / P+transparency           works: RGBA / LA / RGBA (alpha upscaled with bicubic)
P / CMYK JPEG / 1-bit / I;16         works: RGB / RGB / L / L (8-bit output)
EXIF-rotated JPEG (orientation 6)    works; EXIF orientation is NOT applied: the output size
                                     follows the stored pixel size
checkpoint of another architecture   works when its layout is valid (lte.pth is an LTE model)
everything else in DEMO_ERRORS       error: one line, status 2
===================================  ==========================================================

test.py reads the same bad files through a config whose image folder holds them: unreadable
files and too-small images are one-line errors naming the file; valid modes are evaluated.

Most cases call the scripts' ``main()`` in-process (fast; an unexpected exception fails the test
just as a traceback would); a few run the real command lines as subprocesses.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import FIXTURES, need

from helpers import tiny_lmliif

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
LMLIIF = FIXTURES / "lmliif.pth"
LTE = FIXTURES / "lte.pth"


def _load_script(name: str):
    """Import an entry script by path (``test`` would otherwise be the standard library's)."""
    spec = importlib.util.spec_from_file_location(f"_lmf_script_{name}", ROOT / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def scripts():
    return {n: _load_script(n) for n in ("demo", "test", "train")}


def _call(main, argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_one_line_error(rc: int, err: str, needles: tuple[str, ...]) -> str:
    assert rc == 2, (rc, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])
    return lines[0]


# --- input files ---------------------------------------------------------------------------------
def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = (rng.random((max(1, h // 3), max(1, w // 3), 3)) * 255).astype(np.uint8)
    return np.array(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A few-hundred-byte PNG whose header declares a w x h RGB image (a decompression bomb)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def make_input(kind: str, folder: Path, h: int = 6, w: int = 7) -> Path:
    """Write the input file of a case into ``folder``; return its path."""
    rgb = _rgb(h, w)
    if kind == "zero_byte":
        p = folder / "zero.png"
        p.write_bytes(b"")
    elif kind == "truncated_png":
        p = folder / "trunc.png"
        Image.fromarray(_rgb(max(h, 24), max(w, 24))).save(p)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif kind == "truncated_jpeg":
        p = folder / "trunc.jpg"
        Image.fromarray(_rgb(max(h, 24), max(w, 24))).save(p, quality=95)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif kind == "text_as_png":
        p = folder / "notes.png"
        p.write_text("this is not an image\n")
    elif kind == "bomb":  # 10^10 pixels declared: Pillow's DecompressionBombError
        p = _png_header_only(folder / "bomb.png", 100_000, 100_000)
    elif kind == "bomb_warning":  # just above MAX_IMAGE_PIXELS: only a warning in Pillow, an error here
        p = _png_header_only(folder / "bomb2.png", 10_000, 9_000)
    elif kind == "rgb":
        p = folder / "rgb.png"
        Image.fromarray(rgb).save(p)
    elif kind == "1x1":
        p = folder / "one.png"
        Image.new("RGB", (1, 1), (200, 100, 50)).save(p)
    elif kind == "2x3":  # width 2, height 3
        p = folder / "two_by_three.png"
        Image.fromarray(_rgb(3, 2)).save(p)
    elif kind == "rgba":
        p = folder / "rgba.png"
        a = np.linspace(0, 255, h * w).reshape(h, w).astype(np.uint8)
        Image.fromarray(np.dstack([rgb, a])).save(p)
    elif kind == "la":
        p = folder / "la.png"
        Image.fromarray(rgb).convert("LA").save(p)
    elif kind == "palette":
        p = folder / "palette.png"
        Image.fromarray(rgb).convert("P").save(p)
    elif kind == "palette_transparency":
        p = folder / "palette_t.png"
        im = Image.fromarray(rgb).convert("P")
        im.info["transparency"] = 0
        im.save(p, transparency=0)
    elif kind == "i16":
        p = folder / "gray16.png"
        Image.fromarray((np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.uint16) * 257)).save(p)
        assert Image.open(p).mode.startswith("I;16")
    elif kind == "bilevel":
        p = folder / "bilevel.png"
        Image.fromarray(rgb).convert("1").save(p)
    elif kind == "cmyk_jpeg":
        p = folder / "cmyk.jpg"
        Image.fromarray(rgb).convert("CMYK").save(p, quality=95)
        assert Image.open(p).mode == "CMYK"
    elif kind == "exif_rotated":  # stored w x h, EXIF says "rotate 90" (orientation 6)
        p = folder / "exif.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(rgb).save(p, exif=exif, quality=95)
        assert Image.open(p).getexif()[0x0112] == 6
    elif kind == "directory":
        p = folder / "folder.png"
        p.mkdir()
    else:
        raise ValueError(kind)
    return p


# --- checkpoints ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """The golden LM-LIIF checkpoint and broken variants of it."""
    need(LMLIIF)
    need(LTE)
    d = tmp_path_factory.mktemp("ckpts")
    good = torch.load(LMLIIF, weights_only=True)
    lte = torch.load(LTE, weights_only=True)
    out = {"good": LMLIIF, "lte": LTE}

    bad = copy.deepcopy(good)  # named lmliif, holding LTE's state dict: mismatched keys
    bad["model"]["sd"] = lte["model"]["sd"]
    torch.save(bad, d / "lmliif_with_lte_sd.pth")
    out["mismatch"] = d / "lmliif_with_lte_sd.pth"

    bad = copy.deepcopy(good)
    del bad["model"]["sd"]["imnet.layers.0.weight"]
    torch.save(bad, d / "missing_keys.pth")
    out["missing_keys"] = d / "missing_keys.pth"

    bad = copy.deepcopy(good)  # an argument of the wrong type
    bad["model"]["args"]["imnet_spec"]["args"]["hidden_dim"] = "sixteen"
    torch.save(bad, d / "bad_args.pth")
    out["bad_args"] = d / "bad_args.pth"

    (d / "not_a_checkpoint.pth").write_text("just some text\n")
    out["not_ckpt"] = d / "not_a_checkpoint.pth"
    (d / "empty.pth").write_bytes(b"")
    out["empty"] = d / "empty.pth"
    data = LMLIIF.read_bytes()
    (d / "truncated.pth").write_bytes(data[: len(data) // 2])
    out["truncated"] = d / "truncated.pth"
    out["missing"] = d / "no_such_model.pth"
    return out


# --- demo.py: errors -------------------------------------------------------------------------------
# id: (input kind, extra arguments, checkpoint key, output name, substrings of the error line)
DEMO_ERRORS = {
    "zero_byte_file": ("zero_byte", ["--scale", "2"], "good", "out.png", ("zero.png", "empty")),
    "truncated_png": ("truncated_png", ["--scale", "2"], "good", "out.png", ("trunc.png", "truncated")),
    "truncated_jpeg": ("truncated_jpeg", ["--scale", "2"], "good", "out.png", ("trunc.jpg", "truncated")),
    "text_named_png": ("text_as_png", ["--scale", "2"], "good", "out.png", ("notes.png", "cannot identify")),
    "decompression_bomb": ("bomb", ["--scale", "2"], "good", "out.png", ("bomb.png", "too large")),
    "bomb_warning_level": ("bomb_warning", ["--scale", "2"], "good", "out.png", ("bomb2.png", "too large")),
    "input_missing": (None, ["--scale", "2"], "good", "out.png", ("nothere.png", "does not exist")),
    # a folder is upscaled image by image into a folder: an image file name as --output is refused
    "input_is_folder": ("directory", ["--scale", "2"], "good", "out.png", ("names an image file", "--output is a folder")),
    "scale_0": ("rgb", ["--scale", "0"], "good", "out.png", ("--scale", "> 0")),
    "scale_neg": ("rgb", ["--scale", "-1"], "good", "out.png", ("--scale", "> 0")),
    "scale_nan": ("rgb", ["--scale", "nan"], "good", "out.png", ("--scale", "finite")),
    "scale_inf": ("rgb", ["--scale", "inf"], "good", "out.png", ("--scale", "finite")),
    "scale_1e6": ("rgb", ["--scale", "1e6"], "good", "out.png", ("too large", "65535")),
    "scale_text": ("rgb", ["--scale", "big"], "good", "out.png", ("--scale", "not a number")),
    "scale_three": ("rgb", ["--scale", "1x2x3"], "good", "out.png", ("--scale", "one factor or two")),
    "scale_comma_pair": ("rgb", ["--scale", "2,3"], "good", "out.png", ("--scale", "HxW", "3x2")),
    "scale_tiny": ("rgb", ["--scale", "0.01"], "good", "out.png", ("empty output",)),
    "size_0x0": ("rgb", ["--size", "0x0"], "good", "out.png", ("--size", "at least 1")),
    "size_garbage": ("rgb", ["--size", "10"], "good", "out.png", ("--size", "WIDTHxHEIGHT")),
    "size_huge": ("rgb", ["--size", "70000x10"], "good", "out.png", ("too large",)),
    "scale_and_size": ("rgb", ["--scale", "2", "--size", "4x4"], "good", "out.png", ("exactly one",)),
    "no_scale_no_size": ("rgb", [], "good", "out.png", ("exactly one",)),
    "bsize_0": ("rgb", ["--scale", "2", "--bsize", "0"], "good", "out.png", ("--bsize",)),
    "bsize_text": ("rgb", ["--scale", "2", "--bsize", "many"], "good", "out.png", ("--bsize", "invalid int")),
    "device_bogus": ("rgb", ["--scale", "2", "--device", "tpu"], "good", "out.png", ("--device", "tpu")),
    "cmsr_table_missing": ("rgb", ["--scale", "6", "--cmsr", "/nonexistent/table.yaml"], "good", "out.png",
                           ("table.yaml",)),
    "model_missing": ("rgb", ["--scale", "2"], "missing", "out.png", ("no_such_model.pth", "does not exist")),
    "model_not_checkpoint": ("rgb", ["--scale", "2"], "not_ckpt", "out.png",
                             ("not_a_checkpoint.pth", "not a readable pytorch checkpoint")),
    "model_empty_file": ("rgb", ["--scale", "2"], "empty", "out.png", ("empty.pth", "empty")),
    "model_truncated": ("rgb", ["--scale", "2"], "truncated", "out.png", ("truncated.pth", "corrupted")),
    "model_lte_state_dict": ("rgb", ["--scale", "2"], "mismatch", "out.png",
                             ("lmliif_with_lte_sd.pth", "state dict does not fit", "missing key", "unexpected key")),
    "model_missing_keys": ("rgb", ["--scale", "2"], "missing_keys", "out.png",
                           ("missing_keys.pth", "1 missing key", "imnet.layers.0.weight")),
    "model_bad_args": ("rgb", ["--scale", "2"], "bad_args", "out.png", ("bad_args.pth", "cannot build model")),
    "output_exists": ("rgb", ["--scale", "2"], "good", "=existing", ("the output exists", "--overwrite")),
    "output_is_input": ("rgb", ["--scale", "2"], "good", "=input", ("refusing to overwrite the input",)),
    "output_is_input_other_spelling": ("rgb", ["--scale", "2"], "good", "=input_dotdot",
                                       ("refusing to overwrite the input",)),
    "output_is_folder": ("rgb", ["--scale", "2"], "good", "=folder", ("is a folder",)),
    "output_bad_extension": ("rgb", ["--scale", "2"], "good", "out.txt", ("unsupported extension",)),
}


@pytest.mark.parametrize("case", list(DEMO_ERRORS))
def test_demo_errors_are_one_line_and_clobber_nothing(tmp_path, case, scripts, ckpts, capsys):
    kind, extra, ck, out_name, needles = DEMO_ERRORS[case]
    inp = make_input(kind, tmp_path) if kind else tmp_path / "nothere.png"
    if out_name == "=input":
        out = inp
    elif out_name == "=input_dotdot":
        out = tmp_path / ".." / tmp_path.name / inp.name
    elif out_name == "=folder":
        out = tmp_path / "result.png"
        out.mkdir()
    elif out_name == "=existing":  # replaced only with --overwrite
        out = tmp_path / "result.png"
        out.write_bytes(b"mine")
    else:
        out = tmp_path / out_name
    before = _snapshot(tmp_path)
    rc, _, err = _call(scripts["demo"].main, ["--input", inp, "--output", out, "--model", ckpts[ck],
                                              "--device", "cpu", *extra], capsys)
    _assert_one_line_error(rc, err, needles)
    assert _snapshot(tmp_path) == before  # input unchanged, no output, no temporary file left


def test_demo_cuda_unavailable_is_one_line(tmp_path, scripts, ckpts, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    inp = make_input("rgb", tmp_path)
    rc, _, err = _call(scripts["demo"].main, ["--input", inp, "--output", tmp_path / "o.png", "--model",
                                              ckpts["good"], "--device", "cuda", "--scale", "2"], capsys)
    _assert_one_line_error(rc, err, ("cuda", "not available"))
    assert not (tmp_path / "o.png").exists()


def test_demo_out_of_gpu_memory_is_one_line(tmp_path, scripts, ckpts, capsys, monkeypatch):
    import models.inference

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    monkeypatch.setattr(models.inference, "upsample_bands", oom)
    inp = make_input("rgb", tmp_path)
    before = _snapshot(tmp_path)
    rc, _, err = _call(scripts["demo"].main, ["--input", inp, "--output", tmp_path / "o.png", "--model",
                                              ckpts["good"], "--device", "cpu", "--scale", "2"], capsys)
    _assert_one_line_error(rc, err, ("out of gpu memory", "--bsize"))
    assert _snapshot(tmp_path) == before


# --- demo.py: unusual but valid inputs ---------------------------------------------------------------
# id: (input kind, extra arguments, checkpoint key, expected output (W, H), expected output mode)
DEMO_OK = {
    "1x1_x2": ("1x1", ["--scale", "2"], "good", (2, 2), "RGB"),
    "2x3_x2": ("2x3", ["--scale", "2"], "good", (4, 6), "RGB"),
    "2x3_x2_by_x3": ("2x3", ["--scale", "3x2"], "good", (4, 9), "RGB"),  # HxW: x3 rows, x2 columns
    "1x1_size": ("1x1", ["--size", "5x3"], "good", (5, 3), "RGB"),
    "rgba": ("rgba", ["--scale", "2"], "good", (14, 12), "RGBA"),
    "la": ("la", ["--scale", "2"], "good", (14, 12), "LA"),
    "palette": ("palette", ["--scale", "2"], "good", (14, 12), "RGB"),
    "palette_transparency": ("palette_transparency", ["--scale", "2"], "good", (14, 12), "RGBA"),
    "i16_gray": ("i16", ["--scale", "2"], "good", (14, 12), "L"),
    "bilevel": ("bilevel", ["--scale", "2"], "good", (14, 12), "L"),
    "cmyk_jpeg": ("cmyk_jpeg", ["--scale", "2"], "good", (14, 12), "RGB"),
    # EXIF orientation is not applied: the stored 7x6 pixels give 14x12, not 12x14
    "exif_rotated_jpeg": ("exif_rotated", ["--scale", "2"], "good", (14, 12), "RGB"),
    "lte_checkpoint": ("rgb", ["--scale", "2.5"], "lte", (18, 15), "RGB"),
}


@pytest.mark.parametrize("case", list(DEMO_OK))
def test_demo_unusual_valid_inputs(tmp_path, case, scripts, ckpts, capsys):
    kind, extra, ck, size, mode = DEMO_OK[case]
    inp = make_input(kind, tmp_path)
    data = inp.read_bytes()
    out = tmp_path / "out.png"
    rc, stdout, err = _call(scripts["demo"].main, ["--input", inp, "--output", out, "--model", ckpts[ck],
                                                   "--device", "cpu", *extra], capsys)
    assert rc == 0, err
    assert "Traceback" not in err and "error" not in err.lower(), err
    assert inp.read_bytes() == data
    with Image.open(out) as im:
        assert im.size == size and im.mode == mode, (im.size, im.mode)
        arr = np.asarray(im)
    assert np.isfinite(arr.astype(np.float64)).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([inp.name, "out.png"])  # no temp files


def test_demo_grayscale_alpha_to_jpeg_is_gray(tmp_path, scripts, ckpts, capsys):
    inp = make_input("la", tmp_path)
    rc, _, err = _call(scripts["demo"].main, ["--input", inp, "--output", tmp_path / "out.jpg", "--model",
                                              ckpts["good"], "--device", "cpu", "--scale", "2"], capsys)
    assert rc == 0, err
    with Image.open(tmp_path / "out.jpg") as im:
        assert im.mode == "L" and im.size == (14, 12)


@pytest.mark.parametrize("case", ["truncated_png", "model_lte_state_dict", "bsize_text", "output_is_input"])
def test_demo_command_line_errors(tmp_path, case, ckpts):
    """The real command line: one line on stderr, status 2, no traceback."""
    kind, extra, ck, out_name, needles = DEMO_ERRORS[case]
    inp = make_input(kind, tmp_path)
    out = inp if out_name == "=input" else tmp_path / out_name
    before = _snapshot(tmp_path)
    r = subprocess.run([sys.executable, "demo.py", "--input", str(inp), "--output", str(out), "--model",
                        str(ckpts[ck]), "--device", "cpu", *extra], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=120)
    _assert_one_line_error(r.returncode, r.stderr, needles)
    assert _snapshot(tmp_path) == before


# --- test.py: the same bad files inside a test set -------------------------------------------------
def _test_config(path: Path, folder: Path, scale: float = 2, eval_type: str = "benchmark-2") -> Path:
    cfg = {"test_dataset": {"dataset": {"name": "image-folder", "args": {"root_path": str(folder)}},
                            "wrapper": {"name": "sr-implicit-downsampled",
                                        "args": {"scale_min": scale, "scale_max": scale}},
                            "batch_size": 1},
           "eval_type": eval_type}
    path.write_text(yaml.safe_dump(cfg))
    return path


# id: (input kind, extra arguments, checkpoint key, substrings of the error line)
TEST_ERRORS = {
    "zero_byte_file": ("zero_byte", [], "good", ("zero.png", "empty")),
    "truncated_png": ("truncated_png", [], "good", ("trunc.png", "truncated")),
    "truncated_jpeg": ("truncated_jpeg", [], "good", ("trunc.jpg", "truncated")),
    "text_named_png": ("text_as_png", [], "good", ("notes.png", "cannot identify")),
    "decompression_bomb": ("bomb", [], "good", ("bomb.png", "too large")),
    "1x1_too_small_for_x2": ("1x1", [], "good", ("one.png", "too small")),
    "2x3_too_small_to_shave": ("2x3", [], "good", ("two_by_three.png", "too small")),
    "scales_0": ("rgb", ["--scales", "0"], "good", ("scale", "> 0")),
    "scales_nan": ("rgb", ["--scales", "nan"], "good", ("scale", "finite")),
    "scales_neg": ("rgb", ["--scales=-1"], "good", ("scale", "> 0")),
    "model_missing": ("rgb", [], "missing", ("no_such_model.pth", "not found")),
    "model_not_checkpoint": ("rgb", [], "not_ckpt", ("not_a_checkpoint.pth", "not a readable pytorch checkpoint")),
    "model_lte_state_dict": ("rgb", [], "mismatch", ("lmliif_with_lte_sd.pth", "state dict does not fit")),
    "model_missing_keys": ("rgb", [], "missing_keys", ("missing_keys.pth", "1 missing key")),
    "model_bad_args": ("rgb", [], "bad_args", ("bad_args.pth", "cannot build model")),
}


@pytest.mark.parametrize("case", list(TEST_ERRORS))
def test_test_script_errors_are_one_line(tmp_path, case, scripts, ckpts, capsys):
    kind, extra, ck, needles = TEST_ERRORS[case]
    folder = tmp_path / "HR"
    folder.mkdir()
    make_input(kind, folder, h=24, w=26)
    cfg = _test_config(tmp_path / "cfg.yaml", folder)
    before = _snapshot(tmp_path)
    rc, _, err = _call(scripts["test"].main, ["--config", cfg, "--model", ckpts[ck], "--device", "cpu",
                                              "--save-dir", tmp_path / "sr", "--out", tmp_path / "res.json",
                                              *extra], capsys)
    _assert_one_line_error(rc, err, needles)
    assert _snapshot(tmp_path) == before  # no SR image, no results file, input unchanged
    assert not (tmp_path / "sr").exists()


@pytest.mark.parametrize("kind", ["rgba", "la", "palette", "i16", "cmyk_jpeg", "exif_rotated", "bilevel"])
def test_test_script_evaluates_valid_modes(tmp_path, kind, scripts, ckpts, capsys):
    folder = tmp_path / "HR"
    folder.mkdir()
    inp = make_input(kind, folder, h=24, w=26)
    data = inp.read_bytes()
    cfg = _test_config(tmp_path / "cfg.yaml", folder)
    rc, out, err = _call(scripts["test"].main, ["--config", cfg, "--model", ckpts["good"], "--device", "cpu",
                                                "--save-dir", tmp_path / "sr"], capsys)
    assert rc == 0, err
    assert inp.read_bytes() == data
    with Image.open(tmp_path / "sr" / "x2" / f"{inp.stem}.png") as im:
        assert im.size == (26, 24)  # stored pixel size, EXIF orientation not applied


# --- configs -------------------------------------------------------------------------------------
def _train_images(folder: Path, n: int = 4, size: int = 24) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(_rgb(size, size, seed=i)).save(folder / f"img{i}.png")
    return folder


def _train_config_dict(tmp: Path) -> dict:
    data = _train_images(tmp / "data")
    return {
        "train_dataset": {
            "dataset": {"name": "image-folder", "args": {"root_path": str(data), "repeat": 2}},
            "wrapper": {"name": "sr-implicit-downsampled",
                        "args": {"inp_size": 8, "scale_max": 3, "augment": True, "sample_q": 50}},
            "batch_size": 4},
        "model": tiny_lmliif(),
        "optimizer": {"name": "adam", "args": {"lr": 1e-3}},
        "epoch_max": 2,
        "num_workers": 0,
        "seed": 3,
    }


def _set(d: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d[k]
    d[keys[-1]] = value


def _drop(d: dict, dotted: str) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d[k]
    del d[keys[-1]]


# id: (edit, substrings of the message: key path, what is wrong, what is allowed)
CONFIG_ERRORS = {
    "unknown_key": (lambda d: _set(d, "epoch_maxx", 3),
                    ("epoch_maxx", "unknown key", "did you mean 'epoch_max'", "allowed:", "train_dataset")),
    "unknown_nested_key": (lambda d: _set(d, "optimizer.args.learning_rate", 0.1),
                           ("optimizer.args.learning_rate", "unknown key", "allowed: lr")),
    "wrong_type": (lambda d: _set(d, "epoch_max", "ten"), ("epoch_max", "expected an integer", "'ten'")),
    "negative_epochs": (lambda d: _set(d, "epoch_max", -3), ("epoch_max", "must be at least 1", "-3")),
    "zero_batch": (lambda d: _set(d, "train_dataset.batch_size", 0),
                   ("train_dataset.batch_size", "must be at least 1", "0")),
    "negative_lr": (lambda d: _set(d, "optimizer.args.lr", -1e-4), ("optimizer.args.lr", "must be at least 0")),
    "wrong_type_nested": (lambda d: _set(d, "optimizer.args.lr", "fast"),
                          ("optimizer.args.lr", "expected a number", "'fast'")),
    "wrong_type_float_for_int": (lambda d: _set(d, "train_dataset.batch_size", 2.5),
                                 ("train_dataset.batch_size", "expected an integer")),
    "missing_required": (lambda d: _drop(d, "model"), ("model", "missing required key", "spec")),
    "missing_required_nested": (lambda d: _drop(d, "optimizer.args.lr"),
                                ("optimizer.args.lr", "missing required key", "a number")),
    "choice": (lambda d: _set(d, "optimizer.name", "adamm"),
               ("optimizer.name", "'adamm' is not allowed", "allowed: adam, adamw, sgd")),
    "unknown_model": (lambda d: _set(d, "model.name", "lmliff"),
                      ("model", "unknown model 'lmliff'", "did you mean 'lmliif'", "known:", "lmlte")),
    "unknown_dataset": (lambda d: _set(d, "train_dataset.dataset.name", "image-foldr"),
                        ("train_dataset.dataset", "unknown dataset 'image-foldr'", "known:", "image-folder")),
    "unknown_wrapper": (lambda d: _set(d, "train_dataset.wrapper.name", "sr-implicit-downsampeld"),
                        ("train_dataset.wrapper", "unknown dataset", "sr-implicit-downsampled")),
    "dataset_arg_typo": (lambda d: _set(d, "train_dataset.dataset.args.root", "x"),
                         ("train_dataset.dataset", "no argument 'root'", "allowed: root_path")),
    "nested_model_arg_typo": (lambda d: _set(d, "model.args.encoder_spec.args.n_resblock", 2),
                              ("model.args.encoder_spec", "'edsr-baseline'", "no argument 'n_resblock'",
                               "allowed:", "n_resblocks")),
    "nested_model_name_typo": (lambda d: _set(d, "model.args.imnet_spec.name", "lmmpl"),
                               ("model.args.imnet_spec", "unknown model 'lmmpl'", "did you mean 'lmmlp'")),
    "model_arg_typo": (lambda d: _set(d, "model.args.local_ensmble", True),
                       ("model", "'lmliif'", "no argument 'local_ensmble'", "local_ensemble")),
    "spec_not_mapping": (lambda d: _set(d, "model", "lmliif"), ("model", "expected a spec")),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_config_errors_name_file_key_and_allowed(tmp_path, case):
    import datasets
    import models
    from utils.config import TRAIN, ConfigError, load_config

    cfg = _train_config_dict(tmp_path)
    edit, needles = CONFIG_ERRORS[case]
    edit(cfg)
    path = tmp_path / "my_config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as ei:
        load_config(path, TRAIN, {"model": models.registry.MODELS, "dataset": datasets.DATASETS})
    msg = str(ei.value)
    assert msg.startswith(f"{path}: "), msg  # the file
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)


def test_config_yaml_syntax_error_names_line(tmp_path):
    from utils.config import TRAIN, ConfigError, load_config

    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  name: lmliif\n  args: {a: 1\nepoch_max: 3\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML \(line \d+"):
        load_config(path, TRAIN)


@pytest.mark.parametrize("case", ["nested_model_arg_typo", "model_arg_wrong_type", "missing_config"])
def test_train_cli_config_errors(tmp_path, case, scripts, capsys):
    cfg = _train_config_dict(tmp_path)
    path = tmp_path / "my_config.yaml"
    if case == "nested_model_arg_typo":
        CONFIG_ERRORS[case][0](cfg)
        needles = ("my_config.yaml", "model.args.encoder_spec", "n_resblock", "allowed:")
    elif case == "model_arg_wrong_type":  # passes the schema (names only), fails in the constructor
        _set(cfg, "model.args.imnet_spec.args.hidden_dim", "wide")
        needles = ("my_config.yaml", "cannot build 'lmliif'", "wide")
    else:
        path = tmp_path / "nope.yaml"
        needles = ("nope.yaml", "not found")
    if case != "missing_config":
        path.write_text(yaml.safe_dump(cfg))
    rc, _, err = _call(scripts["train"].main, ["--config", path, "--save-root", tmp_path / "save",
                                               "--name", "run", "--device", "cpu"], capsys)
    _assert_one_line_error(rc, err, needles)
    assert not (tmp_path / "save" / "run" / "epoch-last.pth").exists()


def test_train_out_of_memory_is_one_line(tmp_path, scripts, capsys, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    monkeypatch.setattr(scripts["train"], "train_epoch", oom)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(_train_config_dict(tmp_path)))
    rc, _, err = _call(scripts["train"].main, ["--config", path, "--save-root", tmp_path / "save",
                                               "--name", "run", "--device", "cpu"], capsys)
    _assert_one_line_error(rc, err, ("out of memory", "batch_size", "--resume"))


def test_train_resume_with_nothing_to_resume(tmp_path, scripts, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(_train_config_dict(tmp_path)))
    rc, _, err = _call(scripts["train"].main, ["--config", path, "--save-root", tmp_path / "save",
                                               "--name", "run", "--device", "cpu", "--resume"], capsys)
    _assert_one_line_error(rc, err, ("nothing to resume", "epoch-last.pth", "without --resume"))


def test_train_bad_image_in_a_dataloader_worker_is_one_line(tmp_path):
    """A UserError raised inside a DataLoader worker comes back wrapped with the worker's
    traceback; train.py must still print the original one-line message."""
    cfg = _train_config_dict(tmp_path)
    cfg["epoch_max"] = 1
    make_input("truncated_png", tmp_path / "data")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "train.py", "--config", str(path), "--save-root", str(tmp_path / "save"),
                        "--name", "run", "--device", "cpu", "--workers", "1"], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=180)
    _assert_one_line_error(r.returncode, r.stderr, ("trunc.png", "truncated"))


# --- NaN / Inf loss ------------------------------------------------------------------------------
def _train_cli(cfg: dict, tmp: Path, name: str) -> subprocess.CompletedProcess:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run([sys.executable, "train.py", "--config", str(path), "--save-root", str(tmp / "save"),
                           "--name", name, "--device", "cpu"], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=180)


def test_nan_loss_from_the_start(tmp_path):
    """lr 1e30: the loss is NaN at the second iteration; no checkpoint exists yet."""
    cfg = _train_config_dict(tmp_path)
    cfg["optimizer"]["args"]["lr"] = 1e30
    r = _train_cli(cfg, tmp_path, "huge_lr")
    _assert_one_line_error(r.returncode, r.stderr, ("loss became nan", "epoch 1", "no checkpoint had been written",
                                                    "lower learning rate"))
    run = tmp_path / "save" / "huge_lr"
    assert not (run / "epoch-last.pth").exists()
    assert not list(run.glob(".tmp-*"))


@pytest.mark.parametrize("gamma,iters,needles", [
    (1e33, 3, ("loss became nan at epoch 2",)),            # lr 1e30 from epoch 2: NaN loss
    (1e33, 1, ("validation psnr is nan after epoch 2",)),  # one step: finite garbage weights, NaN outputs
    # lr 1e39 does not fit in float32: the default Adam refuses the step, the fused one makes the weights inf
    (1e42, 1, ("epoch 2", "learning rate 1e+39")),
], ids=["nan_loss", "nan_outputs", "lr_overflow"])
def test_divergence_keeps_the_last_good_checkpoint(tmp_path, gamma, iters, needles):
    """Epoch 1 trains normally (lr 1e-3), then the scheduler multiplies the lr by ``gamma``: the run
    must stop with one line, and epoch-last.pth must still be epoch 1, bit-identical to the
    epoch-1 weights of a run that stopped there."""
    cfg = _train_config_dict(tmp_path)
    cfg["max_iters_per_epoch"] = iters
    cfg["epoch_max"] = 4
    cfg["multi_step_lr"] = {"milestones": [1], "gamma": gamma}
    cfg["val_dataset"] = {"dataset": {"name": "image-folder", "args": {"root_path": str(tmp_path / "data"),
                                                                        "first_k": 1}},
                          "wrapper": {"name": "sr-implicit-downsampled", "args": {"scale_min": 2}},
                          "batch_size": 1}
    r = _train_cli(cfg, tmp_path, "diverge")
    _assert_one_line_error(r.returncode, r.stderr, (*needles, "last good checkpoint (epoch 1) is kept",
                                                    "epoch-last.pth"))
    last = tmp_path / "save" / "diverge" / "epoch-last.pth"
    ck = torch.load(last, weights_only=True)
    assert ck["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"]["sd"].values())
    assert not list(last.parent.glob(".tmp-*"))

    ref_cfg = copy.deepcopy(cfg)
    ref_cfg["epoch_max"] = 1
    ref = _train_cli(ref_cfg, tmp_path, "reference")
    assert ref.returncode == 0, ref.stderr
    ref_sd = torch.load(tmp_path / "save" / "reference" / "epoch-last.pth", weights_only=True)["model"]["sd"]
    assert ref_sd.keys() == ck["model"]["sd"].keys()
    for k in ref_sd:
        assert torch.equal(ref_sd[k], ck["model"]["sd"][k]), k
