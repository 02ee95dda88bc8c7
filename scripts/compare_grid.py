#!/usr/bin/env python
"""Side-by-side crops of bicubic, one or more models and the HR image, with PSNR captions.

    python scripts/compare_grid.py --models "LIIF=../shared/weights/liif_edsr-baseline_official.pth" \
        "LM-LIIF=weights/lmliif_edsr-b_cpu.pth" --images IMG1.png IMG2.png --scales 4,12 \
        --out docs/compare.png

For every image and scale the HR image is cropped to a multiple of the scale, the LR image made
with Pillow bicubic (the benchmark protocol), and each model upsamples the whole LR image (so
band and chunk borders are inside the crop if there are any). The caption's PSNR is on the
whole image, Y channel, shave = scale (``benchmark-s``). The crop is the ``--crop``-pixel HR
square with the most detail (largest HR gradient energy) unless ``--at`` gives its centre.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models  # noqa: E402
from datasets.resize import resize_bicubic  # noqa: E402
from models.inference import upsample  # noqa: E402
from utils.images import load_image  # noqa: E402
from utils.atomic import write_atomic  # noqa: E402
from utils.cli import add_overwrite, output_path  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.metrics import psnr  # noqa: E402

CAPTION = 16  # pixels of caption text under each tile


def busiest_square(hr: torch.Tensor, size: int) -> tuple[int, int]:
    """Top-left corner of the size x size window with the largest gradient energy."""
    g = hr.mean(0)
    energy = (g[1:, :-1] - g[:-1, :-1]).abs() + (g[:-1, 1:] - g[:-1, :-1]).abs()
    pooled = torch.nn.functional.avg_pool2d(energy[None, None], size, stride=max(1, size // 4))[0, 0]
    i = int(pooled.argmax())
    r, c = divmod(i, pooled.shape[1])
    return r * max(1, size // 4), c * max(1, size // 4)


def tile(img: torch.Tensor, top: int, left: int, size: int, zoom: int, caption: str) -> Image.Image:
    crop = img[:, top:top + size, left:left + size].clamp(0, 1)
    arr = (crop.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    pic = Image.fromarray(arr).resize((size * zoom, size * zoom), Image.Resampling.NEAREST)
    out = Image.new("RGB", (pic.width, pic.height + CAPTION), "white")
    out.paste(pic, (0, 0))
    ImageDraw.Draw(out).text((3, pic.height + 2), caption, fill="black")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", required=True, help="LABEL=checkpoint, in column order")
    ap.add_argument("--images", nargs="+", required=True, help="HR images")
    ap.add_argument("--scales", default="4,12")
    ap.add_argument("--crop", type=int, default=96, help="HR crop size in pixels")
    ap.add_argument("--zoom", type=int, default=2, help="nearest-neighbour enlargement of the crops")
    ap.add_argument("--out", required=True, help="the grid image (folders are created)")
    add_overwrite(ap, "--out image")
    args = ap.parse_args()
    try:  # refused before any model runs
        out = output_path(args.out, args.overwrite, "--out", "image")
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    nets = []
    for item in args.models:
        label, sep, path = item.partition("=")
        if not sep:
            ap.error(f"--models takes LABEL=checkpoint, got {item!r}")
        nets.append((label, models.load_model(path)))
    rows = []
    for path in args.images:
        full = load_image(path)
        for s in (int(v) for v in args.scales.split(",")):
            h, w = full.shape[-2] // s, full.shape[-1] // s
            hr = full[:, :h * s, :w * s]
            lr = resize_bicubic(hr, (h, w))
            top, left = busiest_square(hr, args.crop)
            outs = [("bicubic", resize_bicubic(lr, (h * s, w * s)))]
            with torch.no_grad():
                outs += [(label, upsample(net, lr[None], (h * s, w * s))[0]) for label, net in nets]
            name = os.path.splitext(os.path.basename(path))[0]
            tiles = [tile(img, top, left, args.crop, args.zoom,
                          f"{label} x{s}: {float(psnr(img.clamp(0, 1)[None], hr[None], f'benchmark-{s}')):.2f} dB")
                     for label, img in outs]
            tiles.append(tile(hr, top, left, args.crop, args.zoom, f"HR {name}"))
            rows.append(tiles)
    tw, th = rows[0][0].size
    grid = Image.new("RGB", (tw * max(map(len, rows)) + 4 * (len(rows[0]) - 1), th * len(rows) + 4 * (len(rows) - 1)),
                     "white")
    for i, row in enumerate(rows):
        for j, t in enumerate(row):
            grid.paste(t, (j * (tw + 4), i * (th + 4)))
    write_atomic(out, lambda f: grid.save(f, format=Image.registered_extensions().get(out.suffix.lower(), "PNG")),
                 "image")
    print(f"wrote {args.out} ({grid.width}x{grid.height})")


if __name__ == "__main__":
    main()
