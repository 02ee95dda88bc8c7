#!/usr/bin/env python
"""CMSR's decode against the full decode on one photo: the table of docs/cmsr.md.

    python scripts/bench_cmsr.py --threads 1 --scales 8,12 --out cmsr_decode.md
    python scripts/bench_cmsr.py --threads 2 --compare /tmp/wt_before   # also CMSR from another checkout

The photo (default Set14's monarch.png under ${LMF_DATA}) is resized to --lr-size with Pillow's
bicubic filter and upscaled by the bundled LM-LIIF with its Scale2Mod table. Only the decode is
timed: ``models.inference.upsample`` with ``model.prepare`` answered from a cache (the encoder and
latent stage, which CMSR does not touch, run once), the minimum of --repeats runs after a warm-up.
Each configuration (full decode; CMSR from this checkout and from each --compare checkout) runs
in its own process, interleaved over --rounds rounds; the table gives the median of the rounds'
minima and the peak RSS of the processes (max over rounds).
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(args: argparse.Namespace) -> None:
    """One configuration in this process: print its timing as one JSON line."""
    sys.path.insert(0, args.repo)
    import torch
    from PIL import Image

    import models
    from models.cmsr import CMSR
    from models.inference import upsample

    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.lr_size.split("x"))
    with Image.open(args.image) as im:
        lr = im.convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
    img = torch.from_numpy(__import__("numpy").asarray(lr).copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)
    model = models.load_model(args.model)
    cmsr = CMSR.from_spec({"s2m_tables": args.table}) if args.config == "cmsr" else False
    prepare, cache = model.prepare, {}

    def cached_prepare(*a, **k):
        if "lat" not in cache:
            cache["lat"] = prepare(*a, **k)
        return cache["lat"]

    model.prepare = cached_prepare  # type: ignore[method-assign]  # the latent made once: only the decode is timed
    size = (round(h * args.scale), round(w * args.scale))
    stats: dict = {}
    out = upsample(model, img, size, cmsr=cmsr, stats=stats)  # warm-up (and the latent)
    times = []
    for _ in range(args.repeats):
        del out
        t0 = time.perf_counter()
        out = upsample(model, img, size, cmsr=cmsr, stats=stats)
        times.append(time.perf_counter() - t0)
    if args.save:
        import numpy as np

        np.save(args.save, out.numpy())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(dict(time=min(times), peak_mib=peak, skipped=stats.get("cmsr_skipped_fraction", 0.0))))


def run_one(args: argparse.Namespace, repo: str, config: str, scale: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", config, "--worker-repo", repo,
           "--worker-scale", str(scale), "--threads", str(args.threads), "--repeats", str(args.repeats),
           "--lr-size", args.lr_size, "--image", args.image, "--model", args.model, "--table", args.table]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=repo)
    if done.returncode != 0:
        raise SystemExit(f"error: {config} x{scale:g} from {repo} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    data = os.environ.get("LMF_DATA", os.path.join(ROOT, "..", "shared", "data"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="PyTorch and kernel threads (default 1)")
    ap.add_argument("--scales", default="8,12", help="comma-separated scales (default 8,12)")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per process after a warm-up (default 7)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--compare", nargs="*", default=[], help="other checkouts whose CMSR is timed alongside")
    ap.add_argument("--out", help="also write the markdown table here")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out table")
    ap.add_argument("--image", default=os.path.join(data, "benchmark", "Set14", "HR", "monarch.png"))
    ap.add_argument("--lr-size", default="185x125", help="WxH the photo is resized to (default 185x125)")
    ap.add_argument("--model", default=os.path.join(ROOT, "weights", "lmliif_edsr-b_cpu.pth"))
    ap.add_argument("--table", default=os.path.join(ROOT, "weights", "cmsr_lmliif_edsr-b_cpu.yaml"))
    ap.add_argument("--worker", choices=["full", "cmsr"], help=argparse.SUPPRESS)
    ap.add_argument("--worker-repo", default=ROOT, help=argparse.SUPPRESS)
    ap.add_argument("--worker-scale", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.config, args.repo, args.scale = args.worker, args.worker_repo, args.worker_scale
        worker(args)
        return
    # this checkout's helpers, imported only here: a worker imports everything from the checkout it times
    sys.path.insert(0, ROOT)
    from utils.atomic import write_text_atomic
    from utils.cli import output_path
    from utils.errors import UserError

    if args.threads < 1 or args.repeats < 1 or args.rounds < 1:
        raise SystemExit("error: --threads, --repeats and --rounds must be at least 1")
    if args.out:
        try:
            output_path(args.out, args.overwrite, "--out", "table")
        except UserError as e:
            raise SystemExit(f"error: {e}") from None
    if not os.path.isfile(args.image):
        raise SystemExit(f"error: no image {args.image} (set LMF_DATA or give --image)")
    scales = [float(s) for s in args.scales.split(",")]
    configs = [("full", ROOT), ("cmsr", ROOT)] + [("cmsr", os.path.abspath(r)) for r in args.compare]
    results: dict = {}
    for _ in range(args.rounds):
        for s in scales:
            for config, repo in configs:
                results.setdefault((s, config, repo), []).append(run_one(args, repo, config, s))
    head = ["scale", "skipped", "threads", "full decode", "CMSR"] + [f"CMSR {os.path.basename(r)}" for r in args.compare]
    head += ["CMSR / full"] + [f"{os.path.basename(r)} / full" for r in args.compare]
    head += ["goal (1 - skipped + 0.10)", "peak RSS full / CMSR" + "".join(f" / {os.path.basename(r)}" for r in args.compare)
             + " (MiB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in scales:
        t = {k: statistics.median(r["time"] for r in results[(s, k[0], k[1])]) for k in configs}
        full = t[("full", ROOT)]
        cm = [t[k] for k in configs[1:]]
        peaks = " / ".join(f"{max(r['peak_mib'] for r in results[(s, k[0], k[1])]):.0f}" for k in configs)
        skipped = results[(s, "cmsr", ROOT)][0]["skipped"]
        row = [f"x{s:g}", f"{100 * skipped:.1f} %", str(args.threads), f"{full:.3f} s"]
        row += [f"{v:.3f} s" for v in cm] + [f"{v / full:.2f}" for v in cm] + [f"{1.1 - skipped:.2f}", peaks]
        lines.append("| " + " | ".join(row) + " |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        write_text_atomic(args.out, text, "table")


if __name__ == "__main__":
    main()
