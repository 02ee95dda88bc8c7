"""What a newcomer's trial found (issue 23): the torch-less one-liner, one rule for outputs, the
messages that were almost right, the bundled "try it" training set and recipe."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "clouds.png"


def _without_torch(script: str, *argv: str) -> subprocess.CompletedProcess:
    """``script`` run as ``python script argv`` where ``import torch`` fails (an ONNX-only machine)."""
    code = ("import runpy, sys; sys.modules['torch'] = None; "
            f"sys.argv = [{script!r}, *{list(argv)!r}]; runpy.run_path({script!r}, run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script, argv, alternative", [
    ("demo.py", ["--input", str(SAMPLE), "--scale", "2", "--output", "never/x.png"], "--onnx"),
    ("test.py", ["--config", "configs/test/test-samples.yaml", "--model", "bicubic"], None),
    ("train.py", ["--config", "configs/cpu/try_lmliif.yaml"], None),
])
def test_without_pytorch_one_line_says_so(script, argv, alternative):
    r = _without_torch(script, *argv)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: {script} needs PyTorch") and "Traceback" not in r.stderr
    if alternative:
        assert alternative in lines[0]
    assert not (ROOT / "never").exists()


# --- one rule for outputs ----------------------------------------------------------------------------
def _demo(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "demo.py", "--device", "cpu", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_demo_refuses_an_existing_output_unless_overwrite_and_creates_folders(tmp_path):
    out = tmp_path / "new" / "folders" / "x.png"
    r = _demo("--input", str(SAMPLE), "--scale", "2", "--output", str(out))
    assert r.returncode == 0, r.stderr
    assert "on cpu" in r.stdout  # the device that auto/--device chose, on the timing line
    out.write_bytes(b"mine")
    r = _demo("--input", str(SAMPLE), "--scale", "2", "--output", str(out))
    assert r.returncode == 2 and "--overwrite" in r.stderr and out.read_bytes() == b"mine"
    r = _demo("--input", str(SAMPLE), "--scale", "2", "--output", str(out), "--overwrite")
    assert r.returncode == 0, r.stderr
    with Image.open(out) as im:
        assert im.size == (320, 240)
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.png"]  # no temporary file left


def test_demo_extension_message_lists_every_accepted_format(tmp_path):
    r = _demo("--input", str(SAMPLE), "--scale", "2", "--output", str(tmp_path / "x.gif"))
    assert r.returncode == 2
    assert all(ext in r.stderr for ext in (".png", ".jpg", ".bmp", ".tif", ".webp")), r.stderr


def _test_py(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "test.py", "--config", "configs/test/test-samples.yaml", "--model", "bicubic",
                           "--scales", "2", "--device", "cpu", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_test_py_out_and_save_dir_follow_the_rule(tmp_path):
    out, sr = tmp_path / "a" / "r.json", tmp_path / "sr"
    r = _test_py("--out", str(out), "--save-dir", str(sr))
    assert r.returncode == 0, r.stderr
    assert out.is_file() and len(list((sr / "x2").glob("*.png"))) == 4
    text = out.read_text()
    r = _test_py("--out", str(out))  # refused before anything is evaluated
    assert r.returncode == 2 and "--overwrite" in r.stderr and "evaluations" not in r.stdout
    assert out.read_text() == text
    r = _test_py("--out", str(tmp_path / "other.json"), "--save-dir", str(sr))  # an existing SR image too
    assert r.returncode == 2 and "--save-dir" in r.stderr and not (tmp_path / "other.json").exists()
    r = _test_py("--out", str(out), "--save-dir", str(sr), "--overwrite")
    assert r.returncode == 0, r.stderr


def test_export_overwrite_and_its_former_name_force():
    sys.path.insert(0, str(ROOT / "scripts"))
    import export_onnx

    for flag in ("--overwrite", "--force"):
        assert export_onnx.build_parser().parse_args(["--out", "x", flag]).overwrite is True
    assert export_onnx.build_parser().parse_args(["--out", "x"]).overwrite is False


def test_scripts_refuse_an_existing_file_before_any_work(tmp_path):
    existing = tmp_path / "t.md"
    existing.write_text("mine")
    for argv in (["scripts/bench_efficiency.py", "--out", str(existing)],
                 ["scripts/slim_checkpoint.py", "--model", "weights/lmliif_edsr-b_cpu.pth", "--out", str(existing)],
                 ["scripts/make_samples.py", "--out", str(ROOT / "samples")]):
        r = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and "--overwrite" in r.stderr, (argv, r.stderr)
    assert existing.read_text() == "mine"


# --- messages that were almost right ----------------------------------------------------------------
def test_hub_upscale_blames_the_scale():
    from models.inference import output_size

    with pytest.raises(ValueError, match="scale 0.*finite number > 0"):
        output_size(10, 10, scale=0)
    with pytest.raises(ValueError, match="scale 0.01 is too small"):
        output_size(10, 10, scale=0.01)


def test_eval_type_error_names_the_config(tmp_path):
    cfg = yaml.safe_load((ROOT / "configs" / "test" / "test-samples.yaml").read_text())
    cfg["eval_type"] = "benchmrk-4"
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "test.py", "--config", str(path), "--model", "bicubic", "--device", "cpu"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and str(path) in r.stderr and "eval_type" in r.stderr, r.stderr


# --- the "try it" training set ----------------------------------------------------------------------------
def test_try_it_training_set_is_the_script_output_and_small():
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_samples

    folder = ROOT / "samples" / "train"
    files = sorted(folder.glob("*.png"))
    assert [p.name for p in files] == sorted(make_samples.training_set())
    assert sum(p.stat().st_size for p in files) < 2_000_000
    first = make_samples.training_set()[files[0].name]()
    with Image.open(files[0]) as im:
        assert im.tobytes() == first.tobytes()  # regenerated bit for bit (CC0: made by the script alone)
    cfg = yaml.safe_load((ROOT / "configs" / "cpu" / "try_lmliif.yaml").read_text())
    assert cfg["train_dataset"]["dataset"]["args"]["root_path"] == "samples/train"
