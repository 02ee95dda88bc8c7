#!/usr/bin/env python
"""Make the sample images in samples/ (procedural, so they can be redistributed freely).

    python scripts/make_samples.py --overwrite          # rewrites samples/*.png (deterministic)
    python scripts/make_samples.py --train --overwrite  # rewrites samples/train/ (the "try it" training set)

``--train`` makes the tiny training set of the README's "try it" recipe
(configs/cpu/try_lmliif.yaml): 32 images of 128x128 in the styles below with other seeds, about
1 MB, so that training runs on a fresh clone without downloading anything. An existing file is
replaced only with ``--overwrite``.

They are computed from seeded noise and geometry by this script alone (no photo or third-party
image is involved), which is why the repository may ship them: the output of this script is
dedicated to the public domain (CC0). They give the README's demo and evaluate commands
something to run on in a fresh clone; they are no benchmark (use Set5/Set14/...: docs/data.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from utils.atomic import write_atomic  # noqa: E402
from utils.cli import add_overwrite, output_path  # noqa: E402
from utils.errors import UserError  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "samples"


def _noise(rng: np.random.Generator, h: int, w: int, octaves: int = 5) -> np.ndarray:
    """Smooth fractal noise in [0, 1]: random grids bicubically enlarged, halving amplitude."""
    acc = np.zeros((h, w), np.float64)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        n = 2 ** (o + 2)
        grid = Image.fromarray((rng.random((n, n)) * 255).astype(np.uint8))
        acc += amp * np.asarray(grid.resize((w, h), Image.Resampling.BICUBIC), np.float64) / 255
        total += amp
        amp /= 2
    acc /= total
    return (acc - acc.min()) / (acc.max() - acc.min() + 1e-12)


def clouds(rng, w=160, h=120) -> Image.Image:
    """Sky-like colour noise with a horizon."""
    n = _noise(rng, h, w)
    y = np.linspace(0, 1, h)[:, None]
    sky = np.stack([0.35 + 0.5 * n, 0.5 + 0.4 * n, 0.85 + 0.15 * n], -1)
    ground = np.stack([0.25 + 0.3 * n, 0.35 + 0.35 * n, 0.15 + 0.1 * n], -1)
    img = np.where((y > 0.7 + 0.05 * (n - 0.5))[..., None], ground, sky)
    return Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8))


def shapes(rng, w=160, h=128) -> Image.Image:
    """Hard-edged discs, boxes and lines over a gradient, slightly blurred like a photo."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([0.8 - 0.4 * yy, 0.7 - 0.2 * xx, 0.5 + 0.3 * yy], -1)
    img = Image.fromarray((base * 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(9):
        x0, y0 = rng.integers(0, w - 20), rng.integers(0, h - 20)
        s = int(rng.integers(12, 48))
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([x0, y0, x0 + s, y0 + s], fill=col)
    for _ in range(6):
        pts = [int(v) for v in rng.integers(0, min(w, h), 4)]
        d.line(pts, fill=tuple(int(c) for c in rng.integers(0, 256, 3)), width=int(rng.integers(1, 4)))
    return img.filter(ImageFilter.GaussianBlur(0.6))


def rings(rng, w=128, h=128) -> Image.Image:
    """A zone plate (rings of rising frequency) with coloured noise: aliasing and fine detail."""
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / (max(h, w) ** 2)
    z = 0.5 + 0.5 * np.cos(np.pi * 90 * r2)
    n = _noise(rng, h, w, 4)
    img = np.stack([z * (0.6 + 0.4 * n), z * 0.8 + 0.1, (1 - z) * 0.7 + 0.3 * n], -1)
    return Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8))


def badge_rgba(rng, w=96, h=96) -> Image.Image:
    """A hard-edged round badge with transparent surroundings (saturated green hidden under them)."""
    img = shapes(rng, w, h).convert("RGBA")
    arr = np.array(img)
    yy, xx = np.mgrid[0:h, 0:w]
    inside = (yy - h / 2 + 0.5) ** 2 + (xx - w / 2 + 0.5) ** 2 <= (0.42 * min(h, w)) ** 2
    arr[~inside] = (0, 255, 0, 0)
    return Image.fromarray(arr, "RGBA")


def texture(rng, w=128, h=128) -> Image.Image:
    """Stripes and checks at random angles and frequencies under colour noise: the high
    frequencies an upscaler has to learn (the other styles are mostly smooth)."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    a, f = rng.uniform(0, np.pi), rng.uniform(6, 30)
    u = np.cos(a) * xx + np.sin(a) * yy
    v = -np.sin(a) * xx + np.cos(a) * yy
    pat = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * f * u)) * (np.sin(2 * np.pi * f * v) if rng.random() < 0.5 else 1)
    n = _noise(rng, h, w, 4)
    c0, c1 = rng.random(3), rng.random(3)
    img = c0 * (1 - pat[..., None]) + c1 * pat[..., None]
    img = 0.8 * img + 0.2 * n[..., None]
    return Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.5))


SAMPLES = {"clouds.png": clouds, "shapes.png": shapes, "rings.png": rings, "badge_rgba.png": badge_rgba}
TRAIN_STYLES = (clouds, shapes, rings, texture)
TRAIN_COUNT = 32


def training_set() -> dict[str, Callable[[], Image.Image]]:
    """name -> maker of the "try it" training images (128x128, seeds 2000+)."""
    def one(i: int) -> Callable[[], Image.Image]:
        style = TRAIN_STYLES[i % len(TRAIN_STYLES)]
        return lambda: style(np.random.default_rng(2000 + i), 128, 128).convert("RGB")
    return {f"{i:03d}.png": one(i) for i in range(TRAIN_COUNT)}


def save_png(img: Image.Image, path: Path) -> None:
    write_atomic(path, lambda f: img.save(f, format="PNG", optimize=True), "image")


def samples() -> dict[str, Callable[[], Image.Image]]:
    """name -> maker of the demo samples (seeds 1000+)."""
    def one(i: int, make: Callable[[np.random.Generator], Image.Image]) -> Callable[[], Image.Image]:
        return lambda: make(np.random.default_rng(1000 + i))
    return {name: one(i, make) for i, (name, make) in enumerate(SAMPLES.items())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help=f"folder to write (default: {OUT}, or {OUT / 'train'} with --train)")
    ap.add_argument("--train", action="store_true", help="make the tiny training set instead of the samples")
    add_overwrite(ap, "image")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else (OUT / "train" if args.train else OUT)
    makers = training_set() if args.train else samples()
    try:
        paths = [output_path(out / name, args.overwrite, "--out", "image") for name in makers]  # all checked first
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, make in zip(paths, makers.values(), strict=True):
        save_png(make(), path)
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
