#!/usr/bin/env python
"""Encoder benchmark: EDSR-baseline / RDN / SwinIR feature extraction in fp32, bf16 autocast and
channels_last, timed in one run (modes interleaved) so that the ratios hold on a busy machine.

    python scripts/bench_encoder.py                                  # CPU, 160x90 LR
    python scripts/bench_encoder.py --encoders edsr-b --repeats 9
    python scripts/bench_encoder.py --device cuda --lr-size 320x180  # CUDA events

Also prints the largest feature difference of each mode from fp32 (bf16 rounds the inputs of
every convolution to 8 mantissa bits; the features are compared relative to their range).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
from functools import partial

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models  # noqa: E402
from utils.devices import TIMERS, no_tf32  # noqa: E402

ENCODERS = {
    "edsr-b": {"name": "edsr-baseline", "args": {"no_upsampling": True}},
    "rdn": {"name": "rdn", "args": {"no_upsampling": True}},
    "swinir": {"name": "swinir", "args": {"no_upsampling": True}},
}
MODES = ("fp32", "bf16", "fp32-cl", "bf16-cl")


def run_mode(enc: torch.nn.Module, inp: torch.Tensor, mode: str) -> torch.Tensor:
    x = inp.contiguous(memory_format=torch.channels_last) if mode.endswith("-cl") else inp
    ctx = torch.autocast(inp.device.type, dtype=torch.bfloat16) if mode.startswith("bf16") else contextlib.nullcontext()
    with ctx:
        return enc(x).float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lr-size", default="160x90", help="LR width x height (default 160x90)")
    ap.add_argument("--encoders", default="edsr-b,rdn,swinir")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (each round runs every mode once)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    no_tf32()
    w, h = (int(v) for v in args.lr_size.lower().split("x"))
    modes = args.modes.split(",")
    bad = [m for m in modes if m not in MODES] + [e for e in args.encoders.split(",") if e not in ENCODERS]
    if bad:
        ap.error(f"unknown mode/encoder {', '.join(bad)}; modes: {', '.join(MODES)}; encoders: {', '.join(ENCODERS)}")
    timer = TIMERS[device.type](device)
    torch.manual_seed(0)
    inp = (torch.rand(1, 3, h, w, device=device) - 0.5) / 0.5
    print(f"device {device}, threads {torch.get_num_threads()}, LR {w}x{h}, median of {args.repeats} "
          f"interleaved rounds ({timer.name})")
    print("\n| encoder | mode | ms | speed-up vs fp32 | max |diff| / feature range |")
    print("|---|---|---|---|---|")
    for name in args.encoders.split(","):
        enc = models.make(ENCODERS[name]).to(device).eval()
        times: dict[str, list[float]] = {m: [] for m in modes}
        with torch.no_grad():
            ref = run_mode(enc, inp, "fp32")
            diffs = {}
            for m in modes:  # warm-up, and the accuracy of each mode
                out = run_mode(enc, inp, m)
                diffs[m] = ((out - ref).abs().max() / (ref.max() - ref.min())).item()
            for _ in range(args.repeats):
                for m in modes:
                    times[m].append(timer(partial(run_mode, enc, inp, m)))
        base = statistics.median(times["fp32"]) if "fp32" in times else None
        for m in modes:
            t = statistics.median(times[m])
            speed = f"{base / t:.2f}x" if base else ""
            print(f"| {name} | {m} | {t * 1000:.1f} | {speed} | {diffs[m]:.1e} |", flush=True)


if __name__ == "__main__":
    main()
