"""demo.py on a folder (utils/folder.py): every image through the single-image path, images of
different sizes and modes in one run, an unreadable file reported and skipped, existing outputs
never overwritten without --overwrite, and a killed run resumed without redoing finished images."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import demo
from conftest import ROOT

MODEL = str(ROOT / "weights" / "lmliif_edsr-b_cpu.pth")


def _images(folder: Path) -> Path:
    """Four images of different sizes and modes (RGB PNG, JPEG, RGBA, grayscale) and a text file."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((20, 30, 3)) * 255).astype(np.uint8)).save(folder / "a.png")
    Image.fromarray((rng.random((16, 12, 3)) * 255).astype(np.uint8)).save(folder / "b.jpg")
    rgba = (rng.random((10, 14, 4)) * 255).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(folder / "c.png")
    Image.fromarray((rng.random((9, 11)) * 255).astype(np.uint8), "L").save(folder / "d.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _demo(*args: str) -> int:
    return demo.main(["--model", MODEL, "--device", "cpu", *args])


def test_every_image_is_upscaled_and_an_unreadable_one_is_reported_and_skipped(tmp_path, capsys):
    src = _images(tmp_path / "in")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"cut short")
    dst = tmp_path / "out" / "x2"  # made, with its parents
    assert _demo("--input", str(src), "--output", str(dst), "--scale", "2") == 2
    cap = capsys.readouterr()
    errors = [line for line in cap.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "broken.png" in errors[0] and "the other images go on" in errors[0], cap.err
    assert errors[-1].startswith("error: 1 of 5 image(s) failed"), errors
    assert "4 image(s) upscaled" in cap.out and "1 other file(s) left alone" in cap.out, cap.out
    sizes = {p.name: (Image.open(p).size, Image.open(p).mode) for p in dst.iterdir()}
    assert sizes == {"a.png": ((60, 40), "RGB"), "b.jpg": ((24, 32), "RGB"), "c.png": ((28, 20), "RGBA"),
                     "d.png": ((22, 18), "L")}, sizes  # every size in one run; alpha and grayscale kept
    # the same pixels as the single-image path
    single = tmp_path / "single.png"
    assert _demo("--input", str(src / "a.png"), "--output", str(single), "--scale", "2") == 0
    assert np.array_equal(np.asarray(Image.open(single)), np.asarray(Image.open(dst / "a.png")))


def test_existing_outputs_are_kept_and_overwrite_redoes_them(tmp_path, capsys):
    src = _images(tmp_path / "in")
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "a.png").write_bytes(b"the user's file")
    assert _demo("--input", str(src), "--output", str(dst), "--size", "40x30") == 0
    out = capsys.readouterr().out
    assert "1 of 4 images are done already" in out and "3 image(s) upscaled" in out, out
    assert (dst / "a.png").read_bytes() == b"the user's file"
    assert Image.open(dst / "d.png").size == (40, 30)  # --size: the same size for every image
    assert _demo("--input", str(src), "--output", str(dst), "--size", "40x30") == 0
    assert "nothing to do: all 4 images are done already" in capsys.readouterr().out
    assert _demo("--input", str(src), "--output", str(dst), "--size", "40x30", "--overwrite") == 0
    assert Image.open(dst / "a.png").size == (40, 30)


def test_subfolders_with_recursive_and_the_output_folder_is_not_input(tmp_path, capsys):
    src = _images(tmp_path / "in")
    (src / "sub").mkdir()
    Image.new("RGB", (8, 6), (10, 200, 30)).save(src / "sub" / "e.png")
    dst = src / "up"  # inside the input folder
    assert _demo("--input", str(src), "--output", str(dst), "--scale", "2") == 0
    assert not (dst / "sub").exists()
    capsys.readouterr()
    assert _demo("--input", str(src), "--output", str(dst), "--scale", "2", "--recursive") == 0
    out = capsys.readouterr().out
    assert Image.open(dst / "sub" / "e.png").size == (16, 12)
    assert "1 image(s) upscaled" in out and "4 skipped" in out, out  # up/ itself was not taken as input
    assert _demo("--input", str(src), "--output", str(src), "--scale", "2") == 2
    assert "is the input folder" in capsys.readouterr().err
    assert _demo("--input", str(src), "--output", str(src / "a.png"), "--scale", "2") == 2
    assert "is a file" in capsys.readouterr().err
    assert _demo("--input", str(src), "--output", str(tmp_path / "new.png"), "--scale", "2") == 2
    assert "names an image file" in capsys.readouterr().err and not (tmp_path / "new.png").exists()


def test_a_killed_folder_run_resumes_without_redoing_finished_images(tmp_path):
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(src / f"img{i}.png")
    cmd = [sys.executable, "demo.py", "--input", str(src), "--output", str(dst), "--scale", "4", "--model", MODEL,
           "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (dst.is_dir() and any(not p.name.startswith(".") for p in dst.iterdir())):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # as a crash or a power cut: no clean-up runs
    proc.wait()
    finished = {p.name: os.stat(p).st_mtime_ns for p in dst.iterdir() if not p.name.startswith(".")}
    assert 1 <= len(finished) < 6, finished
    for p in finished:
        Image.open(dst / p).load()  # complete images only: outputs are written atomically
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"{len(finished)} of 6 images are done already" in r.stdout, r.stdout
    assert sorted(p.name for p in dst.iterdir()) == [f"img{i}.png" for i in range(6)]  # no temporary file left
    assert {p: os.stat(dst / p).st_mtime_ns for p in finished} == finished  # not redone
