#!/usr/bin/env python
"""Peak memory (RSS) of demo.py at several input and output sizes, for each way of running it
(PyTorch fp32 / bf16, CMSR, onnxruntime; PNG, JPEG, alpha), and the per-pixel model fitted to
them: the numbers behind utils/ram.py (docs/memory.md).

    python scripts/bench_memory.py                       # all groups, ~8 min on 2 CPU cores
    python scripts/bench_memory.py --groups torch-lm-fp32 --out peaks.md

Each run is a separate ``demo.py`` process whose peak RSS is read from the kernel when it ends
(``os.wait4``: the child's ``ru_maxrss``), so nothing of this process is counted. Inputs are
``samples/clouds.png`` (``samples/badge_rgba.png`` for alpha) resized to each size. The fit is a
least-squares ``peak = base + per_in * h*w + per_query * rendered`` per group over its PNG runs
(``rendered``: the output pixels up to one band, or all of them with CMSR; see utils/ram.py);
``estimate`` is what utils/ram.py estimates for the run now.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils import ram  # noqa: E402
from utils.cli import add_overwrite, output_path, run_main  # noqa: E402
from utils.atomic import write_text_atomic  # noqa: E402

S = (100, 150)
M = (200, 300)
L = (400, 600)
LIIF = "weights/liif_edsr-b_official_fp16.pth"
# group (a kind of utils/ram.py) -> (demo arguments, [(input (h, w), scale, extension, alpha)]); the
# largest outputs (8.6 Mpx) are more than one band of the PyTorch render (4.2 M queries)
GROUPS: dict[str, tuple[list[str], list[tuple[tuple[int, int], float, str, bool]]]] = {
    "torch-lm-fp32": ([], [(S, 2, ".png", False), (S, 8, ".png", False), (S, 24, ".png", False),
                           (M, 2, ".png", False), (M, 4, ".png", False), (M, 12, ".png", False),
                           (L, 2, ".png", False), (L, 4, ".png", False),
                           (M, 8, ".jpg", False), (M, 8, ".png", True)]),
    "torch-lm-bf16": (["--precision", "bf16"], [(S, 8, ".png", False), (M, 4, ".png", False), (L, 4, ".png", False),
                                                (M, 12, ".png", False)]),
    "torch-lm-cmsr": (["--cmsr"], [(S, 8, ".png", False), (S, 16, ".png", False), (M, 6, ".png", False),
                                   (M, 12, ".png", False)]),
    "torch-other": (["--model", LIIF], [(S, 4, ".png", False), (M, 4, ".png", False), (L, 4, ".png", False)]),
    "onnx": (["--onnx", "{export}"], [(S, 8, ".png", False), (M, 4, ".png", False), (L, 4, ".png", False),
                                      (M, 12, ".png", False)]),
}


def peak_of(cmd: list[str], cwd: Path) -> tuple[int, float]:
    """(peak RSS in bytes, seconds) of one child process; its failure is an error."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err.strip()[-500:]}")
    return usage.ru_maxrss * 1024, time.perf_counter() - t0  # ru_maxrss is in KiB on Linux


def make_input(folder: Path, hw: tuple[int, int], alpha: bool) -> Path:
    src = ROOT / "samples" / ("badge_rgba.png" if alpha else "clouds.png")
    path = folder / f"in_{hw[1]}x{hw[0]}{'_rgba' if alpha else ''}.png"
    if not path.exists():
        with Image.open(src) as im:
            im.convert("RGBA" if alpha else "RGB").resize((hw[1], hw[0]), Image.Resampling.BICUBIC).save(path)
    return path


def run(args: argparse.Namespace) -> None:
    out = output_path(args.out, args.overwrite, "--out", "table") if args.out else None
    rows, fits = [], []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        export = tmp / "export"
        for group in args.groups:
            extra, cases = GROUPS[group]
            if group == "onnx" and not export.exists():
                subprocess.run([sys.executable, "scripts/export_onnx.py", "--out", str(export)], cwd=ROOT,
                               check=True, stdout=subprocess.DEVNULL)
            measured = []
            chunk = None if group != "onnx" else json.loads((export / "model.json").read_text())["chunk"]
            band = ram.band_queries(group, chunk)
            for hw, scale, ext, alpha in cases:
                inp = make_input(tmp, hw, alpha)
                dst = tmp / f"out{ext}"
                cmd = [sys.executable, "demo.py", "--input", str(inp), "--scale", f"{scale:g}", "--output", str(dst),
                       "--overwrite", *[a.replace("{export}", str(export)) for a in extra]]
                peak, secs = peak_of(cmd, ROOT)
                H, W = round(hw[0] * scale), round(hw[1] * scale)
                est = ram.estimate(hw, (H, W), group, fmt_streamed=ext == ".png", alpha=alpha, chunk=chunk)
                rows.append((group, f"{hw[1]}x{hw[0]}", f"x{scale:g}", f"{W}x{H}", ext + (" rgba" if alpha else ""),
                             peak, est, secs))
                print(f"{group:11} {hw[1]}x{hw[0]} x{scale:g} {ext}{' rgba' if alpha else ''}: "
                      f"peak {peak / ram.MiB:.0f} MiB, estimate {est / ram.MiB:.0f} MiB, {secs:.1f} s", flush=True)
                if ext == ".png" and not alpha:  # the rendered part: the whole grid (CMSR) or up to a band
                    rendered = H * W if ram.COSTS[group].whole_grid else min(H * W, band + W)
                    measured.append((hw[0] * hw[1], rendered, peak))
            a = np.array([[1.0, i, o] for i, o, _ in measured])
            coef = np.linalg.lstsq(a, np.array([p for _, _, p in measured], dtype=float), rcond=None)[0]
            fits.append((group, *coef))
    lines = ["| way | input | scale | output | format | peak RSS (MiB) | estimate (MiB) | est / peak | s |",
             "|---|---|---|---|---|---:|---:|---:|---:|"]
    for g, i, s, o, f, peak, est, secs in rows:
        lines.append(f"| {g} | {i} | {s} | {o} | {f} | {peak / ram.MiB:.0f} | {est / ram.MiB:.0f} | "
                     f"{est / peak:.2f} | {secs:.1f} |")
    lines += ["", "| way | fitted base (MiB) | per input pixel (B) | per rendered query (B) |", "|---|---:|---:|---:|"]
    lines += [f"| {g} | {b / ram.MiB:.0f} | {i:.0f} | {o:.1f} |" for g, b, i, o in fits]
    text = "\n".join(lines) + "\n"
    print(text)
    if out is not None:
        write_text_atomic(out, text, "table")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", nargs="+", choices=list(GROUPS), default=list(GROUPS))
    ap.add_argument("--out", help="also write the markdown tables here")
    add_overwrite(ap, "--out file")
    return run_main(lambda: run(ap.parse_args(argv)), out_of_memory="out of memory", interrupted="interrupted")


if __name__ == "__main__":
    sys.exit(main())
