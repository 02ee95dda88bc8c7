#!/usr/bin/env python
"""Decoder benchmark: params, MACs and encoder / latent / render time per model and scale.

Everything is measured in one run so that ratios are comparable on a noisy machine: the
encoder time, each decoder's latent (per-LR-cell) and render (per-query) time, and the
machine's fp32 matmul throughput (large square matmuls) as a yardstick for the render stage.

    python scripts/bench_decoder.py                       # CPU, 160x90 LR, x4/x8/x12
    python scripts/bench_decoder.py --device cuda --amp bf16 --lr-size 320x180 --repeats 20
    python scripts/bench_decoder.py --device cuda --render eager    # LMF render in eager PyTorch
    python scripts/bench_decoder.py --device cuda --render compile  # ... under torch.compile

On CUDA times come from CUDA events (after a warm-up), TF32 is off (``--tf32`` allows it), and
the LMF render runs in the Triton kernel when triton is installed (``--render fused``).

MACs come from ``torch.utils.flop_counter`` (matmul/conv FLOPs / 2), not hand counts.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
from functools import partial
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models  # noqa: E402
from models import fast_render, triton_render  # noqa: E402
from models.decoder import ImplicitDecoder  # noqa: E402
from utils.devices import TIMERS, no_tf32  # noqa: E402
from utils.coords import make_cell, make_coord  # noqa: E402

ENC = {"name": "edsr-baseline", "args": {"no_upsampling": True}}
SPECS = {
    "LIIF": {"name": "liif", "args": {"encoder_spec": ENC, "imnet_spec": {
        "name": "mlp", "args": {"out_dim": 3, "hidden_list": [256] * 4}}}},
    "LTE": {"name": "lte", "args": {"encoder_spec": ENC, "hidden_dim": 256, "imnet_spec": {
        "name": "mlp", "args": {"out_dim": 3, "hidden_list": [256] * 3}}}},
    "LM-LIIF": {"name": "lmliif", "args": {
        "encoder_spec": ENC, "mod_input": True,
        "imnet_spec": {"name": "lmmlp", "args": {"out_dim": 3, "hidden_dim": 16, "hidden_depth": 6}},
        "hypernet_spec": {"name": "mlp", "args": {"out_dim": 208, "hidden_list": [208]}}}},
    "LM-LTE": {"name": "lmlte", "args": {
        "encoder_spec": ENC, "mod_input": True, "hidden_dim": 128,
        "imnet_spec": {"name": "lmmlp", "args": {"out_dim": 3, "hidden_dim": 16, "hidden_depth": 8}},
        "hypernet_spec": {"name": "mlp", "args": {"out_dim": 288, "hidden_list": [288]}}}},
    "LM-CiaoSR": {"name": "lmciaosr", "args": {
        "encoder": ENC, "mod_input": True, "local_size": 2, "feat_unfold": True, "non_local_attn": True,
        "multi_scale": [2], "softmax_scale": 1,
        "prenet_q": {"name": "mlp", "args": {"out_dim": 256, "hidden_list": [256]}},
        "hypernet_q": {"name": "mlp", "args": {"out_dim": 288, "hidden_list": [288]}},
        "imnet_q": {"name": "lmmlp", "args": {"out_dim": 3, "hidden_dim": 16, "hidden_depth": 8}},
        "imnet_k": {"name": "mlp", "args": {"out_dim": 256, "hidden_list": [256]}},
        "imnet_v": {"name": "mlp", "args": {"out_dim": 256, "hidden_list": [256]}}}},
}


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median time of ``fn()`` over ``repeats`` runs after warm-up (wall clock on the CPU, CUDA
    events on a GPU)."""
    timer = TIMERS[device.type](device)
    for _ in range(1 if device.type == "cpu" else 3):
        fn()
    return statistics.median(timer(fn) for _ in range(repeats))


def flops(fn: Callable[[], object]) -> int:
    # the fused CPU render kernel is invisible to the FLOP counter: count the same function on
    # the PyTorch path (the kernel does the same multiply-adds)
    with fast_render.disabled(), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def matmul_gflops(device: torch.device, repeats: int) -> float:
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    dt = timed(lambda: a @ b, device, repeats)
    return 2 * n ** 3 / dt / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lr-size", default="160x90", help="LR width x height (default 160x90)")
    ap.add_argument("--scales", default="4,8,12")
    ap.add_argument("--models", default="LIIF,LTE,LM-LIIF,LM-LTE,LM-CiaoSR")
    ap.add_argument("--baseline-scales", default="4", help="scales at which LIIF/LTE are run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bsize", type=int, default=None, help="query chunk (default: each model's)")
    ap.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-macs", action="store_true",
                    help="skip counting MACs (a second pass on the PyTorch path: slow for LIIF/LTE at large scales)")
    ap.add_argument("--render", choices=["fused", "eager", "compile"], default="fused",
                    help="LMF render: fused kernel where it applies (default), eager PyTorch, or eager "
                         "under torch.compile")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 on CUDA (default: off, exact fp32)")
    args = ap.parse_args()

    device = torch.device(args.device)
    if not args.tf32:
        no_tf32()
    if args.render != "fused":
        os.environ["LMF_TRITON_RENDER"] = "0"  # the Triton kernel off; the C kernel off below
    if args.threads:
        torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.lr_size.lower().split("x"))
    scales = [float(s) for s in args.scales.split(",")]
    base_scales = {float(s) for s in args.baseline_scales.split(",")}
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    ctx = (lambda: torch.autocast(device.type, dtype=amp)) if amp else contextlib.nullcontext

    torch.manual_seed(0)
    inp = (torch.rand(1, 3, h, w, device=device) - 0.5) / 0.5
    peak = matmul_gflops(device, args.repeats)
    if args.render != "fused":
        kernel = f"PyTorch ({args.render})"
    elif device.type == "cpu":
        kernel = "fused CPU kernel" if fast_render.library() is not None else "PyTorch"
    else:
        kernel = "Triton kernel" if triton_render.unavailable_reason() is None else \
            f"PyTorch ({triton_render.unavailable_reason()})"
    print(f"device {device}, threads {torch.get_num_threads()}, LR {w}x{h}, amp {args.amp}, "
          f"median of {args.repeats}; fp32 matmul: {peak:.1f} GFLOP/s; LMF render: {kernel}")

    rows = []
    enc_time: float | None = None
    enc_macs = 0.0
    names = args.models.split(",")
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        ap.error(f"unknown model {', '.join(unknown)}; choose from {', '.join(SPECS)}")
    for name in names:
        model = models.make(SPECS[name], kind=ImplicitDecoder).to(device).eval()
        if args.render == "compile":
            # this instance's render stage only (decode -> query -> self.render picks it up)
            model.render = torch.compile(model.render)  # type: ignore[method-assign]
        params = sum(p.numel() for p in model.parameters())
        dec_params = params - sum(p.numel() for p in model.encoder.parameters())
        eager = fast_render.disabled() if args.render != "fused" else contextlib.nullcontext()
        with torch.no_grad(), ctx(), eager:
            feat = model.encode(inp)
            if enc_time is None:
                enc_time = timed(partial(model.encode, inp), device, args.repeats)
                enc_macs = flops(partial(model.encode, inp)) / 2
            for s in scales:
                if name in ("LIIF", "LTE") and s not in base_scales:
                    continue
                H, W = round(h * s), round(w * s)
                coord = make_coord((H, W), device=device).unsqueeze(0)
                cell = make_cell((H, W), device=device).unsqueeze(0) * max(s / 4, 1)
                lat_fn = partial(model.latent, feat, inp, cell)
                lat = lat_fn()
                ren_fn = partial(model.decode, lat, coord, cell, args.bsize)
                t_lat = timed(lat_fn, device, args.repeats)
                t_ren = timed(ren_fn, device, args.repeats)
                f_lat, f_ren = (0, 0) if args.no_macs else (flops(lat_fn), flops(ren_fn))
                rows.append(dict(model=name, scale=s, params=params, dec_params=dec_params,
                                 lat_gmac=f_lat / 2e9, ren_gmac=f_ren / 2e9, t_lat=t_lat, t_ren=t_ren,
                                 ren_gflops=f_ren / t_ren / 1e9))

    assert enc_time is not None  # --models names at least one model (checked above)
    print(f"\nencoder EDSR-baseline: {enc_macs / 1e9:.2f} GMAC, {enc_time * 1000:.1f} ms\n")
    hdr = ("model", "scale", "params", "decoder", "latent GMAC", "render GMAC", "latent ms", "render ms",
           "decode/enc", "render GFLOP/s", "% matmul")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in rows:
        dec = r["t_lat"] + r["t_ren"]
        print(f"| {r['model']} | x{r['scale']:g} | {r['params']:,} | {r['dec_params']:,} | {r['lat_gmac']:.2f} | "
              f"{r['ren_gmac']:.2f} | {r['t_lat'] * 1000:.1f} | {r['t_ren'] * 1000:.1f} | {dec / enc_time:.3f} | "
              f"{r['ren_gflops']:.1f} | {100 * r['ren_gflops'] / peak:.0f}% |")

    def decode_time(m: str, s: float) -> float | None:
        for r in rows:
            if r["model"] == m and r["scale"] == s:
                return r["t_lat"] + r["t_ren"]
        return None

    print()
    for m, base in (("LM-LIIF", "LIIF"), ("LM-LTE", "LTE")):
        a, b = decode_time(m, 4.0), decode_time(base, 4.0)
        if a and b:
            print(f"{m} decode is {b / a:.1f}x faster than {base} decode at x4")


if __name__ == "__main__":
    main()
