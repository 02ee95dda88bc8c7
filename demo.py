#!/usr/bin/env python
"""Upscale one image by any factor with an LIIF-family model (LM-LIIF by default).

    python demo.py --input x.png --scale 4 --output y.png          # bundled model, no download
    python demo.py --input x.png --scale 3.5 --output y.png
    python demo.py --input x.png --scale 2,3 --output y.png        # x2 horizontally, x3 vertically
    python demo.py --input x.png --size 1920x1080 --output y.jpg   # exact output size (W x H)
    python demo.py --input x.png --scale 12 --cmsr table.yaml --output y.png --model ckpt.pth

Any Pillow-readable input (PNG, JPEG, BMP, TIFF, ...; grayscale, palette, 16-bit). Colour is
upscaled by the model; an alpha channel is upscaled separately with Pillow's bicubic filter and
re-attached (JPEG output drops it). Grayscale inputs give grayscale outputs (L, or LA with alpha).
EXIF orientation is not applied: the output follows the stored pixel grid. A 1x1 image is a valid
input. Output is 8-bit, PNG/JPEG/... by the output's extension, written atomically. Memory grows
with the output image only: queries are rendered in row bands (``--bsize`` queries at a time).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parent / "weights" / "lmliif_edsr-b_cpu.pth"
MAX_SIDE = 65535  # PNG/JPEG limits are around here anyway


class ArgError(Exception):
    """Bad command-line argument: one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2 (argparse's default prints usage too)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_scale(text: str) -> tuple[float, float]:
    """'3.5' -> (3.5, 3.5); '2,3' -> (sy, sx) = (3, 2) (x first, as in 'width,height')."""
    parts = text.split(",")
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise ArgError(f"--scale {text!r} is not a number or a pair 'x,y' (e.g. 4, 3.5 or 2,3)") from None
    if len(vals) not in (1, 2):
        raise ArgError(f"--scale {text!r}: give one factor or two ('x,y')")
    for v in vals:
        if not math.isfinite(v) or v <= 0:
            raise ArgError(f"--scale {text!r}: factors must be finite and > 0")
    sx, sy = (vals[0], vals[0]) if len(vals) == 1 else (vals[0], vals[1])
    return sy, sx


def parse_size(text: str) -> tuple[int, int]:
    """'1920x1080' (W x H) -> (H, W)."""
    try:
        w, h = (int(p) for p in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise ArgError(f"--size {text!r} must be WIDTHxHEIGHT in pixels, e.g. 1920x1080") from None
    if w < 1 or h < 1:
        raise ArgError(f"--size {text!r}: width and height must be at least 1")
    return h, w


def check_output_size(h: int, w: int, H: int, W: int) -> None:
    if H > MAX_SIDE or W > MAX_SIDE:
        raise ArgError(f"output {W}x{H} is too large (at most {MAX_SIDE} pixels per side)")
    need = H * W * (3 * 4 + 4)  # float32 RGB output + 8-bit copy for saving (+ alpha)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = None
    if total and need > 0.7 * total:
        raise ArgError(f"output {W}x{H} would need about {need / 2**30:.1f} GiB of memory, more than this "
                       f"machine can spare ({total / 2**30:.1f} GiB in all); choose a smaller --scale/--size")


def pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ArgError("--device cuda was asked for but CUDA is not available (use --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ArgError(f"--device {name!r} is not a device (auto, cpu, cuda, cuda:N)") from None


def run(args: argparse.Namespace) -> dict:
    inp_path, out_path = Path(args.input), Path(args.output)
    if not inp_path.exists():
        raise ArgError(f"input image {inp_path} does not exist")
    if out_path.exists() and inp_path.exists() and out_path.resolve() == inp_path.resolve():
        raise ArgError(f"--output is the input file {inp_path}; refusing to overwrite the input")
    if out_path.is_dir():
        raise ArgError(f"--output {out_path} is a folder; give a file name such as {out_path / 'out.png'}")
    if not out_path.parent.resolve().is_dir():
        raise ArgError(f"output folder {out_path.parent} does not exist")
    if out_path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"):
        raise ArgError(f"--output {out_path}: unsupported extension {out_path.suffix!r} (use .png or .jpg)")
    if (args.scale is None) == (args.size is None):
        raise ArgError("give exactly one of --scale and --size")
    if args.bsize is not None and args.bsize < 1:
        raise ArgError("--bsize must be a positive number of queries")

    import numpy as np
    import torch

    import models
    from models.cmsr import CMSR
    from models.inference import upsample
    from utils.images import load_image, read_alpha, save_image

    img = load_image(inp_path)
    h, w = img.shape[-2:]
    if args.size is not None:
        H, W = parse_size(args.size)
    else:
        sy, sx = parse_scale(args.scale)
        H, W = round(h * sy), round(w * sx)
        if H < 1 or W < 1:
            raise ArgError(f"--scale {args.scale} gives an empty output for a {w}x{h} image")
    check_output_size(h, w, H, W)
    device = pick_device(args.device)
    model_path = Path(args.model) if args.model else DEFAULT_MODEL
    if not model_path.exists():
        hint = " (the bundled model is missing from this checkout)" if args.model is None else ""
        raise ArgError(f"model checkpoint {model_path} does not exist{hint}")
    model = models.load_model(model_path, device=device)
    cmsr = None
    if args.cmsr is not None:
        cmsr = CMSR.from_spec({"s2m_tables": args.cmsr})

    bar = None
    if H * W >= 4_000_000:
        try:
            from tqdm import tqdm
            bar = tqdm(total=H, unit="row", desc=f"{w}x{h} -> {W}x{H}", file=sys.stderr, leave=False)
        except ImportError:
            bar = None
    stats: dict = {}
    sr = upsample(model, img.unsqueeze(0).to(device), (H, W), bsize=args.bsize, cmsr=cmsr, stats=stats,
                  progress=bar.update if bar is not None else None)[0].cpu()
    if bar is not None:
        bar.close()
    del model
    gray = _is_gray(inp_path)
    out = sr.mean(0, keepdim=True) if gray else sr
    alpha = read_alpha(inp_path)
    if alpha is not None:
        from PIL import Image
        a = Image.fromarray(alpha).resize((W, H), Image.BICUBIC)
        a = torch.from_numpy(np.array(a, dtype=np.float32) / 255).unsqueeze(0)
        out = torch.cat([out, a], dim=0)  # LA (gray) or RGBA
    save_image(out, out_path)
    return {"in": (w, h), "out": (W, H), **stats}


def _is_gray(path: Path) -> bool:
    from PIL import Image
    with Image.open(path) as im:
        return im.mode in ("L", "LA", "1", "I", "I;16", "I;16L", "I;16B", "F")


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, help="image to upscale")
    ap.add_argument("--output", required=True, help="where to write the result (.png, .jpg, ...)")
    ap.add_argument("--scale", help="factor (3.5) or 'x,y' factors (2,3)")
    ap.add_argument("--size", help="output size WIDTHxHEIGHT (instead of --scale)")
    ap.add_argument("--model", help=f"checkpoint (default: the bundled {DEFAULT_MODEL.name})")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--cmsr", nargs="?", const=str(Path(__file__).resolve().parent / "weights" / "cmsr_lmliif_edsr-b_cpu.yaml"),
                    help="use CMSR beyond x4 with this Scale2Mod table (default: the bundled model's)")
    ap.add_argument("--bsize", type=int, help="queries rendered at a time (memory/speed trade-off)")
    args = ap.parse_args(argv)
    try:
        from utils.errors import UserError
    except ImportError as e:  # pragma: no cover - broken installation
        print(f"error: cannot import the project ({e}); run from the repository root", file=sys.stderr)
        return 2
    try:
        info = run(args)
    except (ArgError, UserError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory; use a smaller --scale/--size or a smaller --bsize", file=sys.stderr)
        return 2
    except Exception as e:
        if type(e).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (CUDA, MPS): a RuntimeError
            print("error: out of GPU memory; pass a smaller --bsize (queries rendered at a time), "
                  "or use --device cpu", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    extra = f", CMSR skipped {100 * info['cmsr_skipped_fraction']:.1f}% of render queries" \
        if "cmsr_skipped_fraction" in info else ""
    print(f"{args.input} ({info['in'][0]}x{info['in'][1]}) -> {args.output} ({info['out'][0]}x{info['out'][1]}){extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
