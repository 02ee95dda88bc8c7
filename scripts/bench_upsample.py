#!/usr/bin/env python
"""End-to-end upscaling time (``models.inference.upsample``: encoder, latent and render of one
image, as demo.py runs it) in fp32 and ``--precision bf16``, with the PSNR of bf16's output
against fp32's and the peak memory.

    python scripts/bench_upsample.py                                     # CPU, bundled model
    python scripts/bench_upsample.py --device cuda --cases 320x180:4,320x180:8,320x180:12,960x540:2,960x540:4
    python scripts/bench_upsample.py --device cuda --model weights/liif_edsr-b_official_fp16.pth --cases 320x180:4

The precisions alternate within each round (ratios in one run; the machine may be noisy); times
are medians over ``--repeats`` rounds after one warm-up (on CUDA, CUDA events; the chunk sizes
are the program's own: from free memory on CUDA, the decoder's default on the CPU). The input is
a smooth random image (the time does not depend on content without CMSR).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from functools import partial

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models  # noqa: E402
from models.inference import upsample  # noqa: E402
from utils.cli import PRECISIONS, pick_device  # noqa: E402
from utils.devices import TIMERS  # noqa: E402

DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights",
                             "lmliif_edsr-b_cpu.pth")


def parse_cases(text: str) -> list[tuple[int, int, float]]:
    """'320x180:4,960x540:2' -> [(w, h, scale), ...] (input WIDTHxHEIGHT, as image sizes are written)."""
    out = []
    for tok in text.split(","):
        size, _, scale = tok.partition(":")
        w, h = (int(v) for v in size.lower().split("x"))
        out.append((w, h, float(scale)))
    return out


def peak_memory(device: torch.device, fn) -> float | None:
    """Peak GiB allocated during ``fn`` on CUDA (None on the CPU: see scripts/bench_efficiency.py)."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--cases", default="160x90:4,320x180:4", help="WIDTHxHEIGHT:scale,...")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    args = ap.parse_args()
    dev = pick_device(args.device)
    model = models.load_model(args.model, device=dev)
    timer = TIMERS[dev.type](dev)
    precisions = args.precisions.split(",")
    torch.manual_seed(0)
    print(f"# {os.path.basename(args.model)} ({type(model).__name__}) on {dev}, {timer.name}, "
          f"median of {args.repeats}")
    print("| input | scale | output | " + " | ".join(f"{p} ms" for p in precisions)
          + " | speed-up | PSNR bf16 vs fp32 | peak GiB |")
    print("|---|---|---|" + "---|" * len(precisions) + "---|---|---|")
    for w, h, s in parse_cases(args.cases):
        img = torch.nn.functional.interpolate(torch.rand(1, 3, h // 8 + 1, w // 8 + 1), size=(h, w),
                                              mode="bicubic", align_corners=False).clamp(0, 1).to(dev)
        size = (round(h * s), round(w * s))
        outs: dict[str, torch.Tensor] = {}
        times: dict[str, list[float]] = {p: [] for p in precisions}
        for p in precisions:  # warm-up (and the outputs compared below)
            models.set_precision(model, p)
            outs[p] = upsample(model, img, size).cpu()
        for _ in range(args.repeats):
            for p in precisions:
                models.set_precision(model, p)
                times[p].append(timer(partial(upsample, model, img, size)))
        med = {p: statistics.median(times[p]) * 1000 for p in precisions}
        models.set_precision(model, precisions[0])
        peak = peak_memory(dev, partial(upsample, model, img, size))
        ratio = med[precisions[0]] / med[precisions[-1]] if len(precisions) > 1 else 1.0
        quality = f"{psnr(outs['fp32'], outs['bf16']):.1f} dB" if {"fp32", "bf16"} <= set(outs) else "-"
        print(f"| {w}x{h} | x{s:g} | {size[1]}x{size[0]} | " + " | ".join(f"{med[p]:.1f}" for p in precisions)
              + f" | {ratio:.2f}x | {quality} | {'-' if peak is None else f'{peak:.2f}'} |", flush=True)
    models.set_precision(model, "fp32")
    print(f"# done in {time.process_time():.0f} s of CPU time")


if __name__ == "__main__":
    main()
