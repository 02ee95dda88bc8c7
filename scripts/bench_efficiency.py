#!/usr/bin/env python
"""The paper's efficiency comparison, reproducible: params, MACs, latency and peak memory of
LIIF / LTE / LM-LIIF / LM-LTE / LM-CiaoSR (EDSR-baseline encoder) across scales, plus CMSR.

    python scripts/bench_efficiency.py                                   # CPU: 160x90 input
    python scripts/bench_efficiency.py --lr-size 320x180 --device cuda   # the paper's setting
    python scripts/bench_efficiency.py --models LM-LIIF --cmsr-model weights/lmliif_edsr-b_cpu.pth \\
        --cmsr weights/cmsr_lmliif_edsr-b_cpu.yaml

Each (model, scale) runs in its own process so that peak memory (max RSS on the CPU,
``max_memory_allocated`` on CUDA) belongs to that configuration alone. MACs are counted with
``torch.utils.flop_counter`` for the whole forward and for the decoder alone (everything after
the encoder). Latency is the median of ``--repeats`` full forwards (encoder + decoder). Writes a
markdown table (``--out``, default ``bench_efficiency.md``) and, if matplotlib is installed, a
plot of decoder MACs vs scale (``.png`` beside it). CMSR rows need a trained LMF checkpoint and
its Scale2Mod table (random weights have meaningless modulations).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.atomic import write_atomic, write_text_atomic  # noqa: E402
from utils.cli import add_overwrite, output_path  # noqa: E402
from utils.errors import UserError  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import models
    from bench_decoder import SPECS
    from models import fast_render
    from models.cmsr import CMSR, Scale2Mod, render
    from models.decoder import ImplicitDecoder
    from models.inference import clip_cell
    from utils.coords import make_cell, make_coord

    from utils.devices import no_tf32

    device = torch.device(args.device)
    no_tf32()  # exact fp32 on CUDA (TF32 off for matmuls and cuDNN convolutions)
    if args.threads:
        torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.lr_size.split("x"))
    s = float(args.scale)
    if args.cmsr:
        model = models.load_model(args.cmsr_model, device=device)
        cmsr: CMSR | bool = CMSR(Scale2Mod.load(args.cmsr))
    else:
        torch.manual_seed(0)
        model = models.make(SPECS[args.model], kind=ImplicitDecoder).to(device).eval()
        cmsr = False
    inp = torch.rand(1, 3, h, w, device=device) * 2 - 1
    H, W = round(h * s), round(w * s)
    coord = make_coord((H, W), device=device).unsqueeze(0)
    cell = clip_cell(make_cell((H, W), device=device).unsqueeze(0), (s, s))
    stats: dict = {}

    def full():
        return render(model, inp, coord, cell, cmsr=cmsr, stats=stats)

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for i in range(args.repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            full()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                times.append(time.perf_counter() - t)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    # counted after the peak-memory reading: the FLOP counter needs the PyTorch render path
    # (the fused CPU kernel does the same multiply-adds, invisibly to the counter)
    with torch.no_grad(), fast_render.disabled():
        with FlopCounterMode(display=False) as fc:
            full()
        total_macs = fc.get_total_flops() / 2
        with FlopCounterMode(display=False) as fc:
            model.encode(inp)
        enc_macs = fc.get_total_flops() / 2
    params = sum(p.numel() for p in model.parameters())
    enc_params = sum(p.numel() for p in model.encoder.parameters())
    print(json.dumps(dict(model=args.model + (" +CMSR" if args.cmsr else ""), scale=s, params=params,
                          dec_params=params - enc_params, macs=total_macs, dec_macs=total_macs - enc_macs,
                          latency=statistics.median(times), peak_mib=peak, base_rss_mib=rss0 / 1024,
                          skipped=stats.get("cmsr_skipped_fraction"))))


def photo_worker(args: argparse.Namespace) -> None:
    """One (scale, CMSR on/off) run of the demo path (models.inference.upsample) on a real photo."""
    import numpy as np
    import torch
    from PIL import Image

    import models
    from models.cmsr import CMSR
    from models.inference import upsample

    if args.threads:
        torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.lr_size.split("x"))
    with Image.open(args.photo) as im:
        lr = im.convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
    inp = torch.from_numpy(np.asarray(lr, dtype=np.float32) / 255).permute(2, 0, 1).unsqueeze(0)
    model = models.load_model(args.cmsr_model)
    cmsr = CMSR.from_spec({"s2m_tables": args.cmsr}) if args.photo_cmsr == "on" else False
    s = float(args.scale)
    size = (round(h * s), round(w * s))
    stats: dict = {}
    times = []
    for i in range(args.repeats + 1):
        t = time.perf_counter()
        out = upsample(model, inp, size, cmsr=cmsr, stats=stats)
        if i:
            times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.save(args.photo_out, out[0].numpy())
    print(json.dumps(dict(scale=s, cmsr=args.photo_cmsr, latency=statistics.median(times), peak_mib=peak,
                          skipped=stats.get("cmsr_skipped_fraction", 0.0))))


def photo_table(args: argparse.Namespace) -> list[str]:
    """CMSR vs the full render on a real photo: time, peak RSS, skipped fraction, PSNR change."""
    import tempfile

    import numpy as np

    lines = [f"CMSR on a real photo ({os.path.basename(args.photo)} resized to {args.lr_size}), the demo's "
             f"path (`models.inference.upsample`), median of {args.repeats}, each run in its own process:", "",
             "| scale | output | full render (s) | CMSR (s) | full peak RSS (MiB) | CMSR peak RSS (MiB) | skipped | PSNR CMSR vs full (dB) |",
             "|---|---|---|---|---|---|---|---|"]
    here = os.path.dirname(os.path.abspath(__file__))
    for s in args.scales.split(","):
        if float(s) <= 4:
            continue
        res = {}
        with tempfile.TemporaryDirectory() as tmp:
            for mode in ("off", "on"):
                out = os.path.join(tmp, f"{mode}.npy")
                cmd = [sys.executable, os.path.abspath(__file__), "--photo-worker", s, mode, "--photo", args.photo,
                       "--photo-out", out, "--lr-size", args.lr_size, "--repeats", str(args.repeats),
                       "--cmsr", args.cmsr, "--cmsr-model", args.cmsr_model]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": here})
                if r.returncode != 0:
                    raise SystemExit(f"photo x{s} {mode}: {r.stderr.strip()[-400:]}")
                res[mode] = json.loads(r.stdout.strip().splitlines()[-1])
                res[mode]["img"] = np.load(out)
        mse = float(((res["on"]["img"] - res["off"]["img"]) ** 2).mean())
        psnr = "identical" if mse == 0 else f"{10 * np.log10(1 / mse):.1f}"
        hh, ww = res["off"]["img"].shape[1:]
        lines.append(f"| x{float(s):g} | {ww}x{hh} | {res['off']['latency']:.2f} | {res['on']['latency']:.2f} | "
                     f"{res['off']['peak_mib']:.0f} | {res['on']['peak_mib']:.0f} | {100 * res['on']['skipped']:.1f}% | {psnr} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="LIIF,LTE,LM-LIIF,LM-LTE,LM-CiaoSR")
    ap.add_argument("--scales", default="4,8,12")
    ap.add_argument("--baseline-scales", default="4", help="scales for LIIF/LTE (slow on a CPU)")
    ap.add_argument("--lr-size", default="160x90", help="input W x H (the paper: 320x180)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--cmsr-model", help="trained LMF checkpoint for the CMSR rows")
    ap.add_argument("--cmsr", help="its Scale2Mod table")
    ap.add_argument("--out", default="outputs/bench_efficiency.md",
                    help="the table (and its plot, .png beside it); folders are created (default: %(default)s)")
    add_overwrite(ap, "--out table and plot")
    ap.add_argument("--photo", help="real photo for the CMSR-vs-full table (needs --cmsr-model and --cmsr); "
                                    "resized to --lr-size; only this table is made")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "SCALE"), help=argparse.SUPPRESS)
    ap.add_argument("--photo-worker", nargs=2, metavar=("SCALE", "CMSR"), help=argparse.SUPPRESS)
    ap.add_argument("--photo-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.model, args.scale = args.worker
        worker(args)
        return
    if args.photo_worker:
        args.scale, args.photo_cmsr = args.photo_worker
        photo_worker(args)
        return
    try:  # the files are refused before any benchmark runs
        output_path(args.out, args.overwrite, "--out", "table")
        if not args.photo:
            output_path(os.path.splitext(args.out)[0] + ".png", args.overwrite, "--out", "plot")
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    if args.photo:
        if not (args.cmsr and args.cmsr_model):
            raise SystemExit("error: --photo needs --cmsr-model and --cmsr")
        lines = photo_table(args)
        write_text_atomic(args.out, "\n".join(lines) + "\n", "table")
        print("\n".join(lines))
        return

    base = {float(s) for s in args.baseline_scales.split(",")}
    jobs = []
    for m in args.models.split(","):
        for s in args.scales.split(","):
            if m in ("LIIF", "LTE") and float(s) not in base:
                continue
            jobs.append((m, s, False))
            if args.cmsr and args.cmsr_model and m == "LM-LIIF" and float(s) > 4:
                jobs.append((m, s, True))
    rows = []
    here = os.path.dirname(os.path.abspath(__file__))
    for m, s, with_cmsr in jobs:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", m, s, "--lr-size", args.lr_size,
               "--device", args.device, "--repeats", str(args.repeats)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if with_cmsr:
            cmd += ["--cmsr", args.cmsr, "--cmsr-model", args.cmsr_model]
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": here})
        if r.returncode != 0:
            print(f"{m} x{s}: failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
            continue
        row = json.loads(r.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{row['model']:>14} x{row['scale']:<4g} {row['dec_macs'] / 1e9:9.2f} GMAC decoder  "
              f"{row['latency'] * 1000:9.1f} ms  peak {row['peak_mib']:8.0f} MiB", flush=True)

    w, h = args.lr_size.split("x")
    lines = [f"Input {w}x{h}, device {args.device}, median of {args.repeats}; MACs from torch.utils.flop_counter.", "",
             "| model | scale | params | decoder params | MACs (G) | decoder MACs (G) | latency (ms) | peak mem (MiB) | CMSR skipped |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sk = "" if r["skipped"] is None else f"{100 * r['skipped']:.1f}%"
        lines.append(f"| {r['model']} | x{r['scale']:g} | {r['params']:,} | {r['dec_params']:,} | {r['macs'] / 1e9:.1f} | "
                     f"{r['dec_macs'] / 1e9:.2f} | {r['latency'] * 1000:.1f} | {r['peak_mib']:.0f} | {sk} |")
    write_text_atomic(args.out, "\n".join(lines) + "\n", "table")
    print("\n".join(lines))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["model"] for r in rows):
        pts = sorted((r["scale"], r["dec_macs"] / 1e9) for r in rows if r["model"] == name)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("scale")
    ax.set_ylabel("decoder GMACs")
    ax.set_title(f"Decoder cost, {w}x{h} input")
    ax.legend()
    fig.tight_layout()
    png = os.path.splitext(args.out)[0] + ".png"
    write_atomic(png, lambda f: fig.savefig(f, format="png", dpi=120), "plot")
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
