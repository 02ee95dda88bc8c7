"""--precision bf16 against fp32 on benchmark sets: PSNR change and speed-up, one table.

    python scripts/bench_precision.py                      # bundled model and official LIIF, Set5+Set14, x2/x3/x4/x8
    python scripts/bench_precision.py --models weights/lmliif_edsr-b_cpu.pth --sets Set14 --scales 4 --device cuda

Every (model, set, scale) runs test.py twice, fp32 then bf16, each in its own process; the time
is test.py's own "evaluations in" figure (model and metrics, without start-up). The two runs of
a row follow each other, so a row's speed-up compares like with like on a busy machine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["weights/lmliif_edsr-b_cpu.pth", "weights/liif_edsr-b_official_fp16.pth"]
CONFIGS = {"Set5": "configs/test/test-set5.yaml", "Set14": "configs/test/test-set14.yaml"}


def evaluate(model: str, config: str, scale: str, precision: str, device: str, limit: int | None,
             data: str) -> tuple[float, float]:
    """(mean PSNR, seconds of evaluation) of one test.py run."""
    with tempfile.TemporaryDirectory() as tmp:
        res = Path(tmp) / "r.json"
        cmd = [sys.executable, "test.py", "--config", config, "--model", model, "--scales", scale,
               "--device", device, "--precision", precision, "--out", str(res)]
        if limit:
            cmd += ["--limit", str(limit)]
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "LMF_DATA": data})
        if p.returncode != 0:
            sys.exit(f"error: {' '.join(cmd)} failed:\n{(p.stdout + p.stderr)[-2000:]}")
        secs = re.search(r"evaluations? in ([0-9.]+) s", p.stdout)
        if secs is None:
            sys.exit(f"error: no time in test.py's output:\n{p.stdout[-2000:]}")
        return json.loads(res.read_text())["means"][0]["psnr"], float(secs.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="comma list of checkpoints")
    ap.add_argument("--sets", default="Set5,Set14", help=f"comma list of {', '.join(CONFIGS)}")
    ap.add_argument("--scales", default="2,3,4,8")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--limit", type=int, default=None, help="first N images of each set (a dry run)")
    ap.add_argument("--data", default=os.environ.get("LMF_DATA", str(ROOT.parent / "shared" / "data")),
                    help="data folder holding benchmark/Set5 and benchmark/Set14 (default $LMF_DATA)")
    args = ap.parse_args()
    sets = args.sets.split(",")
    unknown = [s for s in sets if s not in CONFIGS]
    if unknown:
        ap.error(f"unknown set {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    print("| model | set | scale | PSNR fp32 | PSNR bf16 | change dB | s fp32 | s bf16 | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for name in sets:
            for scale in args.scales.split(","):
                (p32, t32), (p16, t16) = (evaluate(model, CONFIGS[name], scale, p, args.device, args.limit, args.data)
                                          for p in ("fp32", "bf16"))
                print(f"| {Path(model).name} | {name} | x{scale} | {p32:.4f} | {p16:.4f} | {p16 - p32:+.4f} | "
                      f"{t32:.1f} | {t16:.1f} | {t32 / t16:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
