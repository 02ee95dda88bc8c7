#!/usr/bin/env python
"""Write an inference-only copy of a checkpoint: the model spec and weights (optionally fp16),
without optimizer state, resume state or training config.

    python scripts/slim_checkpoint.py --model save/NAME/epoch-last.pth --out weights/model.pth --fp16 \
        --note "trained with configs/cpu/...; licence: ..."

The result keeps the official layout ``{'model': {'name', 'args', 'sd'}}`` and loads anywhere a
checkpoint is taken (fp16 tensors are cast to the model's fp32 parameters on load). ``--note``
is stored as ``provenance``. An existing ``--out`` is not replaced unless ``--overwrite`` (or its former name ``--force``).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.checkpoint import load_checkpoint, model_spec, save_atomic  # noqa: E402
from utils.cli import add_overwrite, output_path  # noqa: E402
from utils.errors import UserError  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--fp16", action="store_true", help="store floating-point weights as float16")
    ap.add_argument("--note", default=None, help="provenance text stored beside the weights")
    add_overwrite(ap, "--out checkpoint (--force: its former name)", "--force")
    args = ap.parse_args()
    try:
        output_path(args.out, args.overwrite, "--out", "checkpoint")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    spec = model_spec(load_checkpoint(args.model, map_location="cpu"), args.model)
    sd = {k: (v.half() if args.fp16 and v.is_floating_point() else v).contiguous() for k, v in spec["sd"].items()}
    out = {"model": {"name": spec["name"], "args": spec["args"], "sd": sd}}
    if args.note:
        out["provenance"] = args.note
    save_atomic(out, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB, {len(sd)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
