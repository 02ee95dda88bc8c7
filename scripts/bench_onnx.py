#!/usr/bin/env python
"""onnxruntime vs PyTorch (fused CPU render kernel) on the same exported model: latency per
stage, file sizes, and the peak RSS of both paths on a large image. Prints a Markdown report.

    python scripts/export_onnx.py --out export/lmliif          # once
    python scripts/bench_onnx.py --onnx export/lmliif --threads 2

Latency: 320x180 -> x4 and x8 (median of --repeat runs after one warm-up), whole upsample and
its stages (encoder, latent, render). Peak RSS: a fresh process per path upscales a 1280x720
image x4 (``ru_maxrss``). Both paths use the same number of threads. Timings on a shared
machine are noisy: compare the ratios of one run, not figures across runs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = Path(__file__).resolve().parents[1]

PEAK_SCRIPT = """
import sys, time, resource
sys.path.insert(0, {root!r})
import numpy as np
h, w, s = 720, 1280, 4
y, x = np.mgrid[0:h, 0:w].astype(np.float32)
img = np.stack([np.sin(x / 9) * 0.4 + 0.5, np.cos(y / 7) * 0.4 + 0.5, ((x + y) % 31) / 31]).astype(np.float32)
t = time.process_time() if {cpu} else time.perf_counter()
if {onnx!r}:
    from utils.onnx_runner import OnnxUpscaler
    out = OnnxUpscaler({onnx!r}, threads={threads}).upsample(img, (h * s, w * s))
    assert "torch" not in sys.modules
else:
    import torch
    torch.set_num_threads({threads})
    import models
    from models.inference import upsample
    m = models.load_model({model!r})
    out = upsample(m, torch.from_numpy(img)[None], (h * s, w * s))
print((time.process_time() if {cpu} else time.perf_counter()) - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


CLOCK = time.perf_counter


def _median_time(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up (kernel build, onnxruntime's first-run allocations)
    times = []
    for _ in range(repeat):
        t = CLOCK()
        fn()
        times.append(CLOCK() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", required=True, help="folder written by scripts/export_onnx.py")
    ap.add_argument("--model", default=str(ROOT / "weights" / "lmliif_edsr-b_cpu.pth"),
                    help="the checkpoint that was exported (default: the bundled model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-peak", action="store_true", help="skip the 1280x720 x4 peak-RSS runs")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with the process's CPU time instead of the wall clock: robust on a busy "
                         "machine, meaningful with --threads 1 (no idle-spinning thread pools)")
    args = ap.parse_args()
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time

    import numpy as np
    import torch

    import models
    from models.inference import normalise, upsample
    from utils.onnx_runner import OnnxUpscaler, clipped_cell

    torch.set_num_threads(args.threads)
    model = models.load_model(args.model)
    runner = OnnxUpscaler(args.onnx, threads=args.threads)
    h, w = 180, 320
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([np.sin(x / 9) * 0.4 + 0.5, np.cos(y / 7) * 0.4 + 0.5, ((x + y) % 31) / 31]).astype(np.float32)
    timg = torch.from_numpy(img)[None]

    clock = "CPU time" if args.cpu_time else "wall clock"
    print(f"# onnxruntime vs PyTorch, {Path(args.model).name}, {args.threads} threads, {clock}, "
          f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}\n")
    print("| 320x180 -> | path | encoder | latent | render | total | ONNX / PyTorch |")
    print("|---|---|---|---|---|---|---|")
    for s in (4, 8):
        H, W = h * s, w * s
        # stages, PyTorch
        with torch.no_grad():
            inp = normalise(timg)
            cell = torch.from_numpy(clipped_cell((H, W), (s, s), 4.0)).view(1, 1, 2)
            feat = model.encode(inp)
            lat = model.latent(feat, inp, cell)
            t_enc = _median_time(partial(model.encode, inp), args.repeat)
            t_lat = _median_time(partial(model.latent, feat, inp, cell), args.repeat)
        t_all = _median_time(partial(upsample, model, timg, (H, W), cmsr=False), args.repeat)
        # stages, onnxruntime
        image = runner.normalise(img[None])
        cell_np = clipped_cell((H, W), (s, s), 4.0).reshape(1, 1, 2)
        f_np = runner.encode(image)
        o_enc = _median_time(partial(runner.encode, image), args.repeat)
        o_lat = _median_time(partial(runner.latent, f_np, image, cell_np), args.repeat)
        o_all = _median_time(partial(runner.upsample, img, (H, W)), args.repeat)
        t_ren, o_ren = t_all - t_enc - t_lat, o_all - o_enc - o_lat
        del lat
        print(f"| x{s} ({W}x{H}) | PyTorch (fused) | {t_enc * 1e3:.0f} ms | {t_lat * 1e3:.0f} ms | "
              f"{t_ren * 1e3:.0f} ms | {t_all * 1e3:.0f} ms | |")
        print(f"| | onnxruntime | {o_enc * 1e3:.0f} ms | {o_lat * 1e3:.0f} ms | {o_ren * 1e3:.0f} ms | "
              f"{o_all * 1e3:.0f} ms | {o_enc / t_enc:.2f} / {o_lat / t_lat:.2f} / {o_ren / t_ren:.2f} / "
              f"**{o_all / t_all:.2f}** |")
    print("\n(render = total - encoder - latent: coordinates, rendering, de-normalising, clamping)\n")

    folder = Path(args.onnx)
    sizes = {f: (folder / f).stat().st_size for f in ("encoder.onnx", "latent.onnx", "render.onnx")}
    print("| file | size |\n|---|---|")
    for f, n in sizes.items():
        print(f"| {f} | {n / 1e6:.2f} MB |")
    print(f"| all graphs | {sum(sizes.values()) / 1e6:.2f} MB |")
    print(f"| checkpoint {Path(args.model).name} | {Path(args.model).stat().st_size / 1e6:.2f} MB |\n")

    if not args.no_peak:
        print("| 1280x720 -> x4 (5120x2880), fresh process | time | peak RSS |\n|---|---|---|")
        for label, onnx in (("PyTorch (fused), models.inference.upsample", ""),
                            ("onnxruntime, utils/onnx_runner.py", str(folder))):
            code = PEAK_SCRIPT.format(root=str(ROOT), onnx=onnx, threads=args.threads, model=args.model,
                               cpu=bool(args.cpu_time))
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if res.returncode != 0:
                print(f"| {label} | failed: {res.stderr.strip().splitlines()[-1]} | |")
                continue
            secs, kib = res.stdout.split()[-2:]
            print(f"| {label} | {float(secs):.1f} s | {int(kib) / 2**20:.2f} GiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
