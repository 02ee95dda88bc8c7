#!/usr/bin/env python
"""Build a CMSR Scale2Mod table for a model (the official ``init_cmsr.py``, several scales per run).

    python scripts/init_cmsr.py --model save/run/epoch-last.pth --data ../shared/data/train/BSD200 \\
        --first-k 20 --scales 6,8,12,16 --mse 2e-5 --out weights/cmsr_table.yaml

For each target scale N, every HR image of ``--data`` is downsampled by N (Pillow bicubic, as in
training), rendered fully at xN and at each decode scale d < N (then bilinearly upsampled), and
the table row records, per d, up to which mean |shift modulation| the cheap rendering stays
within ``--mse`` of the full one (MSE in the model's [-1, 1] space, like the official tables;
2e-5 there = 5e-6 in [0, 1], about 53 dB). Use training images, not your test set. An existing
``--out`` file is updated (rows for other scales are kept) only with ``--overwrite``. See ``models/cmsr.py``.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.atomic import write_text_atomic  # noqa: E402
from utils.cli import add_overwrite, output_path  # noqa: E402
from utils.errors import UserError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="folder of HR images (training images)")
    ap.add_argument("--scales", default="6,8,12,16", help="target scales, comma-separated (> 4)")
    ap.add_argument("--mse", type=float, default=2e-5, help="MSE threshold in [-1, 1] space (official 2e-5)")
    ap.add_argument("--first-k", type=int, help="use only the first K images")
    ap.add_argument("--step", type=float, default=0.01, help="width of the modulation-mean bins")
    ap.add_argument("--out", required=True, help="YAML table to create, or to update with --overwrite")
    add_overwrite(ap, "--out table (its rows for other scales are kept)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bsize", type=int)
    args = ap.parse_args(argv)
    try:  # updating an existing table replaces rows of it: only when asked (before any work)
        output_path(args.out, args.overwrite, "--out", "table")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import yaml

    import datasets
    import models
    from models.cmsr import Scale2Mod
    from models.cmsr_calibration import calibrate_row
    from models.inference import normalise

    try:
        scales = [float(s) for s in args.scales.split(",")]
        if any(not math.isfinite(s) or s <= 1 for s in scales):
            raise ValueError
    except ValueError:
        print(f"error: --scales {args.scales!r} must be numbers > 1, comma-separated", file=sys.stderr)
        return 2
    try:
        model = models.load_model(args.model, device=args.device)
        if not hasattr(model, "imnet") or not hasattr(model.imnet, "shift_slice"):
            raise UserError(f"{args.model} is not an LMF model (CMSR needs modulations)")
        folder = datasets.make({"name": "image-folder", "args": {"root_path": args.data, "first_k": args.first_k}})
        table: dict[float, dict[float, float]] = {}
        if os.path.exists(args.out):
            old = Scale2Mod.load(args.out)
            from models.cmsr import CMSR
            CMSR(old).check_model(model)  # never mix rows calibrated on other weights into one table
            table = old.to_dict()
        for scale in scales:
            lrs = []
            for i in range(len(folder)):
                hr = folder[i]
                h, w = math.floor(hr.shape[-2] / scale + 1e-9), math.floor(hr.shape[-1] / scale + 1e-9)
                if h < 2 or w < 2:
                    continue
                crop = hr[:, :round(h * scale), :round(w * scale)]
                lrs.append(normalise(datasets.resize_bicubic(crop, (h, w))).unsqueeze(0).to(args.device))
            if not lrs:
                raise UserError(f"no image in {args.data} is large enough for x{scale:g}")
            row = calibrate_row(model, lrs, scale, args.mse, step=args.step, bsize=args.bsize)
            table[scale] = row
            print(f"x{scale:g}: " + ", ".join(f"{d:g}: {t:.3g}" for d, t in row.items()), flush=True)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def num(x: float) -> float:  # 2.0 -> 2 in the YAML
        return int(x) if float(x).is_integer() else float(x)

    from utils.checkpoint import state_dict_digest

    out: dict[float | str, dict[float, float] | str] = {
        num(k): {num(d): round(float(t), 4) for d, t in row.items()} for k, row in sorted(table.items())}
    out["checkpoint"] = state_dict_digest(model.state_dict())  # CMSR refuses the table with other weights
    write_text_atomic(args.out, f"# Scale2Mod table: target scale -> {{decode scale: max mean |shift modulation|}}\n"
                      f"# model {os.path.basename(args.model)}, data {args.data}, MSE threshold {args.mse:g}\n"
                      + yaml.safe_dump(out, sort_keys=False), "table")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
