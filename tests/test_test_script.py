"""test.py, the evaluation entry script, run as a user would (a subprocess from the repo root).

Most cases use a tiny folder of crops of Set5 so that they stay fast on two CPU cores; the
smoke test runs the shipped Set5 config at x4.
"""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from conftest import DATA, FIXTURES, ROOT, need

from datasets.resize import resize_bicubic
from models import load_model
from models.inference import predict
from utils.coords import make_cell, make_coord
from utils.images import load_image
from utils.metrics import psnr, ssim

SET5 = DATA / "benchmark" / "Set5" / "HR"
LMLIIF = FIXTURES / "lmliif.pth"
TABLE = FIXTURES / "edsr-b_lm-liif_mse2e-5.yaml"
# (name, Set5 source, top, left, height, width): small crops, odd sizes on purpose
CROPS = [("a_bird.png", "bird.png", 100, 90, 62, 47), ("b_head.png", "head.png", 80, 60, 41, 56)]


def cli(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run test.py like a user, single-threaded: robust to a busy machine (oversubscribed
    OpenMP threads are several times slower) and bit-comparable with in-process runs that
    also use one thread."""
    env = dict(os.environ, OMP_NUM_THREADS="1", LMF_DATA=str(DATA))  # the configs' ${LMF_DATA}
    return subprocess.run([sys.executable, "test.py", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def write_config(path: Path, root: Path | str, eval_type: str | None = "benchmark-4",
                 wrapper: dict | None = None, **extra) -> Path:
    cfg = {"test_dataset": {"dataset": {"name": "image-folder", "args": {"root_path": str(root), "cache": "none"}},
                            "wrapper": wrapper or {"name": "sr-implicit-downsampled",
                                                   "args": {"scale_min": 4, "scale_max": 4}},
                            "batch_size": 1},
           "eval_type": eval_type, "eval_bsize": 30000,
           "data_norm": {"inp": {"sub": [0.5], "div": [0.5]}, "gt": {"sub": [0.5], "div": [0.5]}}, **extra}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict:
    """A folder of two small crops of Set5, a config for it, and the checkpoint."""
    need(SET5)
    need(LMLIIF)
    base = tmp_path_factory.mktemp("small")
    folder = base / "HR"
    folder.mkdir()
    for name, src, t, l, h, w in CROPS:
        Image.open(SET5 / src).convert("RGB").crop((l, t, l + w, t + h)).save(folder / name)
    return {"base": base, "folder": folder, "config": write_config(base / "small.yaml", folder)}


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def check_ok(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"


def check_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------

def test_smoke_set5_x4(tmp_path):
    need(SET5)  # the config reads ${LMF_DATA}/benchmark/Set5/HR
    need(LMLIIF)
    out = tmp_path / "r.json"
    r = cli("--config", "configs/test/test-set5.yaml", "--model", LMLIIF, "--device", "cpu", "--out", out)
    check_ok(r)
    names = sorted(p.name for p in SET5.iterdir())
    for n in names:
        line = [ln for ln in r.stdout.splitlines() if ln.startswith(n)]
        assert len(line) == 1 and line[0].split()[1] == "x4", r.stdout
        float(line[0].split()[2])
    mean_lines = [ln for ln in r.stdout.splitlines() if ln.startswith("mean") and " x4 " in ln]
    assert len(mean_lines) == 1
    res = load_json(out)
    recs = res["records"]
    assert [x["image"] for x in recs] == names
    assert all(x["scale"] == "4" and x["eval_type"] == "benchmark-4" for x in recs)
    (m,) = res["means"]
    assert m["images"] == 5
    assert m["psnr"] == pytest.approx(sum(x["psnr"] for x in recs) / 5, rel=1e-12)
    assert m["ssim"] == pytest.approx(sum(x["ssim"] for x in recs) / 5, rel=1e-12)
    assert f"{m['psnr']:.4f}" in mean_lines[0]


def test_psnr_equals_manual_pipeline(small, tmp_path):
    """test.py's number is bit-identical to load -> crop -> bicubic -> predict -> psnr."""
    out = tmp_path / "r.json"
    check_ok(cli("--config", small["config"], "--model", LMLIIF, "--device", "cpu", "--scales", "2.5",
                 "--limit", "1", "--out", out))
    (rec,) = load_json(out)["records"]
    hr = load_image(small["folder"] / CROPS[0][0])
    s = 2.5
    h, w = math.floor(hr.shape[1] / s + 1e-9), math.floor(hr.shape[2] / s + 1e-9)
    H, W = round(h * s), round(w * s)
    hr = hr[:, :H, :W]
    lr = resize_bicubic(hr, (h, w))
    model = load_model(LMLIIF)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocess: float reductions may depend on the split
    try:
        pred = predict(model, lr[None], make_coord((H, W))[None], make_cell((H, W))[None], scale_hw=(s, s))
    finally:
        torch.set_num_threads(threads)
    sr = pred.view(H, W, 3).permute(2, 0, 1).contiguous()
    assert rec["image"] == CROPS[0][0] and rec["eval_type"] == "benchmark-3"  # shave ceil(2.5)
    assert rec["lr_size"] == [h, w] and rec["hr_size"] == [H, W]
    assert rec["psnr"] == psnr(sr, hr, "benchmark-3")
    assert rec["ssim"] == ssim(sr, hr, "benchmark-3")


def test_scales_noninteger_asymmetric_and_save_dir(small, tmp_path):
    out, save = tmp_path / "r.csv", tmp_path / "sr"
    r = cli("--config", small["config"], "--model", LMLIIF, "--device", "cpu", "--scales", "2,3.5,3x2",
            "--save-dir", save, "--out", out)
    check_ok(r)
    rows = list(csv.DictReader(out.open()))
    recs = [x for x in rows if x["kind"] == "image"]
    means = [x for x in rows if x["kind"] == "mean"]
    assert [m["scale"] for m in means] == ["2", "3.5", "3x2"]
    assert [m["eval_type"] for m in means] == ["benchmark-2", "benchmark-4", "benchmark-3"]
    assert len(recs) == 6
    for label, (sy, sx) in [("2", (2, 2)), ("3.5", (3.5, 3.5)), ("3x2", (3, 2))]:
        assert any(ln.split()[:2] == ["mean", f"x{label}"] for ln in r.stdout.splitlines()), r.stdout
        for name, _, _, _, H0, W0 in CROPS:
            h, w = math.floor(H0 / sy + 1e-9), math.floor(W0 / sx + 1e-9)
            H, W = round(h * sy), round(w * sx)
            (rec,) = [x for x in recs if x["image"] == name and x["scale"] == label]
            assert (int(rec["lr_h"]), int(rec["lr_w"]), int(rec["hr_h"]), int(rec["hr_w"])) == (h, w, H, W)
            with Image.open(save / f"x{label}" / f"{Path(name).stem}.png") as im:
                assert im.size == (W, H) and im.mode == "RGB"
    # nothing was written into the dataset folder
    assert sorted(p.name for p in small["folder"].iterdir()) == sorted(c[0] for c in CROPS)


def test_window_and_paired(small, tmp_path):
    """--window 8 (official SwinIR padding) and a paired LR/HR config without --scales."""
    out = tmp_path / "w.json"
    check_ok(cli("--config", small["config"], "--model", LMLIIF, "--device", "cpu", "--scales", "3",
                 "--window", "8", "--out", out))
    for rec, (_, _, _, _, H0, W0) in zip(load_json(out)["records"], CROPS, strict=True):
        assert rec["hr_size"] == [H0 // 3 * 3, W0 // 3 * 3] and math.isfinite(rec["psnr"])
    lr_dir, hr_dir = tmp_path / "LR", tmp_path / "HR"
    lr_dir.mkdir(), hr_dir.mkdir()
    for name, *_ in CROPS:
        img = Image.open(small["folder"] / name)
        img.save(hr_dir / name)
        img.resize((img.width // 4, img.height // 4), Image.BICUBIC).save(lr_dir / name)
    cfg = write_config(tmp_path / "paired.yaml", "", wrapper={"name": "sr-implicit-paired", "args": {}})
    data = yaml.safe_load(cfg.read_text())
    data["test_dataset"]["dataset"] = {"name": "paired-image-folders",
                                       "args": {"root_path_1": str(lr_dir), "root_path_2": str(hr_dir)}}
    cfg.write_text(yaml.safe_dump(data))
    out = tmp_path / "p.json"
    check_ok(cli("--config", cfg, "--model", LMLIIF, "--device", "cpu", "--out", out))
    res = load_json(out)
    assert [(x["scale"], x["hr_size"]) for x in res["records"]] == \
        [("4", [H0 // 4 * 4, W0 // 4 * 4]) for *_, H0, W0 in CROPS]
    # a paired config cannot be re-scaled
    check_error(cli("--config", cfg, "--model", LMLIIF, "--scales", "2"), "--scales", "sr-implicit-paired")


def test_cmsr_reports_skipped_fraction(tmp_path):
    need(SET5)
    need(LMLIIF)
    need(TABLE)
    cfg = write_config(tmp_path / "set5.yaml", SET5)
    out = tmp_path / "c.json"
    r = cli("--config", cfg, "--model", LMLIIF, "--device", "cpu", "--scales", "8", "--limit", "1",
            "--cmsr", TABLE, "--out", out)
    check_ok(r)
    res = load_json(out)
    (rec,) = res["records"]
    assert rec["eval_type"] == "benchmark-8" and rec["hr_size"] == [512, 512]
    assert 0 < rec["cmsr_skipped"] < 1
    assert res["means"][0]["cmsr_skipped"] == rec["cmsr_skipped"]
    assert f"{100 * rec['cmsr_skipped']:.2f}%" in r.stdout


# ---------------------------------------------------------------------------------------------
# errors: exit status 2 and one line "error: ..." on stderr, never a traceback

def test_errors_config_and_data(small, tmp_path):
    check_error(cli("--config", tmp_path / "nope.yaml", "--model", LMLIIF), "nope.yaml")

    bad = write_config(tmp_path / "bad.yaml", small["folder"], eval_bsize_typo=1)
    check_error(cli("--config", bad, "--model", LMLIIF), "bad.yaml", "eval_bsize_typo")
    data = yaml.safe_load(bad.read_text())
    del data["eval_bsize_typo"]
    data["test_dataset"]["wrapper"]["args"]["scale_mx"] = 4
    bad.write_text(yaml.safe_dump(data))
    check_error(cli("--config", bad, "--model", LMLIIF), "bad.yaml", "test_dataset.wrapper", "scale_mx")

    missing = write_config(tmp_path / "missing.yaml", tmp_path / "no_such_folder")
    check_error(cli("--config", missing, "--model", LMLIIF), "no_such_folder", "does not exist")

    (tmp_path / "empty").mkdir()
    empty = write_config(tmp_path / "empty.yaml", tmp_path / "empty")
    check_error(cli("--config", empty, "--model", LMLIIF), "no image files")

    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "x.png").write_bytes(b"not a png at all")
    corrupt = write_config(tmp_path / "corrupt.yaml", tmp_path / "corrupt")
    check_error(cli("--config", corrupt, "--model", LMLIIF), "x.png")


def test_errors_model_and_arguments(small, tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("this is not a checkpoint\n")
    check_error(cli("--config", small["config"], "--model", txt), "notes.txt")
    check_error(cli("--config", small["config"], "--model", tmp_path / "none.pth"), "none.pth")
    for bad in ("0", "nan", "abc", "-2", "3x0", "2,,3", "inf"):
        check_error(cli("--config", small["config"], "--model", LMLIIF, "--scales", bad), "--scales")
    check_error(cli("--config", small["config"]), "--model")
    check_error(cli("--config", small["config"], "--model", LMLIIF, "--out", tmp_path / "r.txt"), ".json or .csv")
    check_error(cli("--config", small["config"], "--model", LMLIIF, "--save-dir", small["folder"] / "sr"),
                "inside the dataset folder")
    check_error(cli("--config", small["config"], "--model", LMLIIF, "--cmsr", tmp_path / "t.yaml"), "t.yaml")
