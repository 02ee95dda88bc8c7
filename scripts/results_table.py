#!/usr/bin/env python
"""Merge test.py ``--out`` JSON files into one markdown table (mean PSNR per scale).

    python scripts/results_table.py bicubic=set5-bicubic.json LM-LIIF=set5-lmliif.json [...] [--ssim]
"""
from __future__ import annotations

import argparse
import json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="LABEL=results.json")
    ap.add_argument("--ssim", action="store_true", help="also show SSIM")
    ap.add_argument("--delta", help="label of the row to show differences against (e.g. bicubic)")
    args = ap.parse_args()
    table: dict[str, dict[str, dict]] = {}
    scales: list[str] = []
    for item in args.runs:
        label, path = item.split("=", 1)
        with open(path) as f:
            data = json.load(f)
        table[label] = {m["scale"]: m for m in data["means"]}
        for m in data["means"]:
            if m["scale"] not in scales:
                scales.append(m["scale"])
    print("| model | " + " | ".join(f"x{s}" for s in scales) + " |")
    print("|---|" + "---|" * len(scales))
    base = table.get(args.delta) if args.delta else None
    for label, row in table.items():
        cells = []
        for s in scales:
            m = row.get(s)
            if m is None:
                cells.append("")
                continue
            text = f"{m['psnr']:.2f}"
            if args.ssim:
                text += f" / {m['ssim']:.4f}"
            if base is not None and label != args.delta and s in base:
                text += f" ({m['psnr'] - base[s]['psnr']:+.2f})"
            cells.append(text)
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
