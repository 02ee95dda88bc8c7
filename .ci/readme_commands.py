#!/usr/bin/env python
"""Run the README's commands as written in a temporary clone of the current commit (no ../shared,
no LMF_DATA, no downloaded data): what a newcomer sees.

    python .ci/readme_commands.py            # from the repository root; ~1-3 minutes on 2 CPU cores

The list below mirrors the README's ```bash blocks by hand (tests/test_readme.py fails when
the README gains a command that is not listed here). Each command is one of
RUN (must exit 0), NO_DATA (must fail with the one-line hint to fetch the data: downloads need
the internet, which CI does not have) or SKIP (a template with placeholders, an install line, or
the test suite itself, which .ci/run runs). A NO_DATA command listed in SHORT also runs in full
with a short override (tiny bundled data, fewer epochs). At the end, ``git status`` of the clone
must be clean: every file the commands write lies where .gitignore covers it. The README's Python snippet is run as written by
tests/test_hub.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = "weights/lmliif_edsr-b_cpu.pth"

RUN = [
    "python demo.py --input samples/shapes.png --scale 4 --output outputs/shapes_x4.png",
    "python demo.py --input samples/clouds.png --scale 3.5 --output outputs/clouds_x3.5.png",
    "python demo.py --input samples/clouds.png --scale 3x2 --output outputs/clouds_3x2.png",
    "python demo.py --input samples/shapes.png --size 640x480 --output outputs/shapes_640x480.jpg",
    "python demo.py --input samples/badge_rgba.png --scale 4 --output outputs/badge_x4.png",
    "python demo.py --input samples/rings.png --scale 12 --cmsr --output outputs/rings_x12.png",
    "python demo.py --input samples --scale 2 --output outputs/samples_x2",
    "python scripts/make_clip.py --output outputs/clip.mp4",  # .ci/run installs requirements-video.txt first
    "python demo.py --input outputs/clip.mp4 --scale 1.5 --output outputs/clip_x1.5.mp4",
    "python train.py --config configs/cpu/try_lmliif.yaml",
    "python scripts/bench_train.py --config configs/cpu/try_lmliif.yaml",
    f"python test.py --config configs/test/test-samples.yaml --model {BUNDLED} --scales 2,3,4",
    "python test.py --config configs/test/test-samples.yaml --model bicubic --scales 2,3,4",
    f"python test.py --config configs/test/test-samples.yaml --model {BUNDLED} --scales 2.5,3x2 --out outputs/results.json",
    f"python test.py --config configs/test/test-samples.yaml --model {BUNDLED} --scales 8 "
    "--cmsr weights/cmsr_lmliif_edsr-b_cpu.yaml",
    "python scripts/export_onnx.py --out export/lmliif",  # .ci/run installs requirements-export.txt first
    "python demo.py --onnx export/lmliif --input samples/clouds.png --scale 3.5 --output outputs/clouds_x3.5_onnx.png",
]
NO_DATA = [
    "python train.py --config configs/cpu/train_edsr-baseline-lmliif.yaml",
    "python train.py --config configs/train/train_edsr-baseline-lmliif.yaml",
    "python train.py --config configs/cpu/distill_liif-to-lmliif.yaml",
]
# A command that needs data (NO_DATA above) or an hour also runs in full with a short override:
# the same config with these top-level keys replaced (written outside the clone), so that every
# other part of it (here: the bundled teacher, init_from, freeze, the cache) is exercised as written.
TINY_DATA = {"train_dataset.dataset.args": {"root_path": "samples/train", "repeat": 1, "cache": "in_memory"},
             "val_dataset.dataset.args": {"root_path": "samples", "cache": "in_memory"}}
SHORT = {
    "python train.py --config configs/cpu/distill_liif-to-lmliif.yaml": {
        **TINY_DATA, "train_dataset.wrapper.args.inp_size": 24, "train_dataset.wrapper.args.sample_q": 576,
        "epoch_max": 2, "epoch_val": 1, "max_minutes": None},
}
SKIP = {
    "pip install torch --index-url https://download.pytorch.org/whl/cpu": "install line (network)",
    "pip install torch --index-url https://download.pytorch.org/whl/cu128": "install line (network)",
    "pip install -r requirements-dev.txt": "install line (network); .ci/run runs it",
    "pip install -r requirements-video.txt": "install line (network); .ci/run runs it",
    "python -m pytest -q": ".ci/run runs the suite",
    "python -m ruff check .": ".ci/run runs the lint",
    "python -m mypy": ".ci/run runs the type check",
    "python train.py --config ... --name NAME --resume": "template",
    "python train.py --config ... --name NAME --overwrite": "template",
    "torchrun --nproc_per_node 4 train.py --config ...": "template",
    "python train.py --config ... --amp bf16": "template",
    "python train.py --config ... --amp bf16 --compile": "template",
    "python scripts/get_data.py set5 && python test.py --config configs/test/test-set5.yaml "
    "--model save/NAME/epoch-last.pth --scales 2,3,4,6,8,12": "download (network) and a trained run",
    "python scripts/export_onnx.py --model ckpt.pth --out export/run --opset 18": "template",
}
ALL = set(RUN) | set(NO_DATA) | set(SKIP)


def main() -> int:
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "clone"  # no ../shared next to it
        subprocess.run(["git", "clone", "-q", "--no-checkout", str(ROOT), str(clone)], check=True)
        subprocess.run(["git", "-c", "advice.detachedHead=false", "checkout", "-q", sha], cwd=clone, check=True)
        env = {k: v for k, v in os.environ.items() if k not in ("LMF_DATA", "LMF_SHARED", "PYTHONPATH")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `python` = this one
        for cmd in RUN + NO_DATA:
            t = time.time()
            r = subprocess.run(cmd, shell=True, cwd=clone, env=env, capture_output=True, text=True, timeout=600)
            if cmd in RUN:
                ok = r.returncode == 0
            else:
                last = r.stderr.strip().splitlines()[-1:] or [""]
                ok = r.returncode == 2 and last[0].startswith("error:") and "get_data.py" in last[0]
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {time.time() - t:5.1f}s  {cmd}", flush=True)
            if not ok:
                print((r.stdout + r.stderr)[-2000:], flush=True)
        for cmd, over in SHORT.items():
            cfg_path = Path(tmp) / "short.yaml"
            cfg_path.write_text(yaml.safe_dump(shortened(clone / cmd.split("--config ")[1].split()[0], over)))
            short = cmd.replace(cmd.split("--config ")[1].split()[0], str(cfg_path)) + " --name _readme-short"
            t = time.time()
            r = subprocess.run(short, shell=True, cwd=clone, env=env, capture_output=True, text=True, timeout=900)
            ok = r.returncode == 0
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {time.time() - t:5.1f}s  {cmd}  (short: {', '.join(over)})", flush=True)
            if not ok:
                print((r.stdout + r.stderr)[-2000:], flush=True)
        for cmd, why in SKIP.items():
            print(f"skip        {cmd}  ({why})")
        # what the commands wrote must be where .gitignore covers it: the clone stays clean
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=clone,
                               capture_output=True, text=True, check=True).stdout.strip()
        if dirty:
            failed += 1
            print(f"FAIL        git status after the commands is not clean:\n{dirty}", flush=True)
        else:
            print("ok          git status is clean after the commands")
    total = len(RUN) + len(NO_DATA) + len(SHORT) + 1
    print(f"{total - failed} of {total} README checks behaved as documented")
    return 1 if failed else 0


def shortened(config: Path, over: dict) -> dict:
    """``config`` with the dotted keys of ``over`` set (None removes a key)."""
    cfg = yaml.safe_load(config.read_text())
    for dotted, value in over.items():
        *parents, last = dotted.split(".")
        node = cfg
        for key in parents:
            node = node[key]
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return cfg


if __name__ == "__main__":
    sys.exit(main())
