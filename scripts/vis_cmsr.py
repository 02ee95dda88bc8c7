#!/usr/bin/env python
"""Show where CMSR renders at which resolution: a PNG with the SR image, the level map, and the
map blended over the image.

    python scripts/vis_cmsr.py --model weights/lmliif_edsr-b_cpu.pth \\
        --cmsr weights/cmsr_lmliif_edsr-b_cpu.yaml --input img.png --scale 12 --output cmsr_levels.png

Each LR cell is coloured by the decode scale that renders it (the finest level whose selection
rule, see docs/differences.md, includes the cell's mean |shift modulation|): dark = coarse (cheap),
bright = rendered at the full target resolution.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.atomic import write_atomic  # noqa: E402
from utils.cli import add_overwrite, output_path  # noqa: E402
from utils.errors import UserError  # noqa: E402

PALETTE = [(49, 54, 149), (69, 117, 180), (116, 173, 209), (254, 224, 144), (244, 109, 67), (215, 48, 39)]


def level_map(mu, table, scale: float):
    """Per-LR-cell index of the rendering level (0 = coarsest), and the levels' decode scales."""
    import torch

    from models.cmsr import selects

    decode, bounds = table.levels(scale)
    active = [i for i, d in enumerate(decode) if d >= 1]
    level = torch.full_like(mu, -1, dtype=torch.long)
    for i in active:  # later (finer) levels win, as in the merge
        level[selects(mu, i, active[0], active[-1], bounds)] = active.index(i)
    return level, [decode[i] for i in active]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--cmsr", required=True, help="Scale2Mod table")
    ap.add_argument("--input", required=True)
    ap.add_argument("--scale", type=float, default=12)
    ap.add_argument("--output", required=True, help="the 3-panel image (folders are created)")
    add_overwrite(ap, "--output image")
    ap.add_argument("--max-width", type=int, default=1800, help="shrink the 3-panel PNG to this width")
    args = ap.parse_args()
    try:  # refused before any model runs
        out_path = output_path(args.output, args.overwrite, "--output", "image")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import numpy as np
    import torch
    from PIL import Image, ImageDraw

    import models
    from models.cmsr import CMSR, Scale2Mod
    from models.inference import clip_cell, normalise, upsample
    from utils.coords import make_cell
    from utils.images import load_image

    try:
        model = models.load_model(args.model)
        table = Scale2Mod.load(args.cmsr)
        img = load_image(args.input).unsqueeze(0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    h, w = img.shape[-2:]
    H, W = round(h * args.scale), round(w * args.scale)
    stats: dict = {}
    sr = upsample(model, img, (H, W), cmsr=CMSR(table), stats=stats)[0]
    with torch.no_grad():
        cell = clip_cell(make_cell((H, W), n=1).unsqueeze(0), (args.scale, args.scale))
        mu = model.prepare(normalise(img), cell).need_complexity()[0, 0]
    level, scales = level_map(mu, table, (H * W / (h * w)) ** 0.5)
    anchors = np.array(PALETTE, dtype=np.float64)  # blue (coarse) -> red (full resolution)
    pos = np.linspace(0, len(PALETTE) - 1, max(len(scales), 2))[: len(scales)] if len(scales) > 1 else [len(PALETTE) - 1]
    colours = np.array([anchors[int(np.floor(p))] + (p - np.floor(p)) * (anchors[min(int(np.floor(p)) + 1, len(PALETTE) - 1)]
                        - anchors[int(np.floor(p))]) for p in pos]).round().astype(np.uint8)
    lv = level.numpy()
    cmap = Image.fromarray(colours[np.clip(lv, 0, len(colours) - 1)]).resize((W, H), Image.Resampling.NEAREST)
    sr_img = Image.fromarray((sr.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8))
    blend = Image.blend(sr_img, cmap, 0.45)
    f = min(1.0, args.max_width / (3 * W))
    W, H = max(1, round(W * f)), max(1, round(H * f))
    sr_img, cmap, blend = (im.resize((W, H), Image.Resampling.BILINEAR) for im in (sr_img, cmap, blend))
    legend_h = 28
    canvas = Image.new("RGB", (3 * W, H + legend_h), "white")
    for i, im in enumerate((sr_img, cmap, blend)):
        canvas.paste(im, (i * W, 0))
    draw = ImageDraw.Draw(canvas)
    x = 6
    for i, d in enumerate(scales):
        n = int((lv == i).sum())
        if n == 0:
            continue
        draw.rectangle([x, H + 6, x + 14, H + 20], fill=tuple(int(c) for c in colours[i]))
        label = f"x{d:g}: {100 * n / lv.size:.0f}% of LR cells"
        draw.text((x + 18, H + 8), label, fill="black")
        x += 26 + 7 * len(label)
    skipped = stats.get("cmsr_skipped_fraction")
    if skipped is not None:
        draw.text((x + 10, H + 8), f"render queries skipped: {100 * skipped:.1f}%", fill="black")
    write_atomic(out_path, lambda f: canvas.save(f, format="PNG"), "image")
    print(f"wrote {args.output} ({3 * W}x{H + legend_h}); skipped {100 * (skipped or 0):.1f}% of render queries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
