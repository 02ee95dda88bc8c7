#!/usr/bin/env python
"""Upscale one image by any factor with an LIIF-family model (LM-LIIF by default).

    python demo.py --input x.png --scale 4 --output y.png          # bundled model, no download
    python demo.py --input x.png --scale 3.5 --output y.png
    python demo.py --input x.png --scale 3x2 --output y.png        # x3 vertically, x2 horizontally (HxW)
    python demo.py --input x.png --size 1920x1080 --output y.jpg   # exact output size (W x H)
    python demo.py --input x.png --scale 12 --cmsr table.yaml --output y.png --model ckpt.pth
    python demo.py --onnx export/lmliif --input x.png --scale 3.5 --output y.png   # no torch needed
    python demo.py --input photos --scale 2 --output photos_x2     # every image of a folder; run again to resume
    python demo.py --input in.mp4 --size 1920x1080 --output out.mp4   # a video (pip install -r requirements-video.txt)

Any Pillow-readable input (PNG, JPEG, BMP, TIFF, ...; grayscale, palette, 16-bit). Colour is
upscaled by the model; an alpha channel is upscaled separately with Pillow's bicubic filter and
re-attached (JPEG output drops it); the colour under fully transparent pixels is replaced by a fill
from the visible ones first, so it cannot leak into the edge. Grayscale inputs give grayscale outputs (L, or LA with alpha).
EXIF orientation is not applied: the output follows the stored pixel grid. A 1x1 image is a valid
input. Output is 8-bit, PNG/JPEG/... by the output's extension, written atomically; an existing
file is replaced only with --overwrite, missing folders are created. Queries are rendered in row
bands (``--bsize`` queries at a time) and a PNG is written band by band as it is rendered, so its
size is not bounded by the memory; other formats hold the 8-bit image (4 bytes a pixel). An output
that would not fit in the memory available is refused up front, naming the largest that fits
(estimates measured in docs/memory.md).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from utils.cli import (Parser, add_overwrite, add_precision, check_output, device_label, device_name, imports_done,
                       no_torch_message, output_path, parse_scale, pick_device, positive_int, program, run_main,
                       scale_label)
from utils.errors import UserError
from utils.images import IMAGE_EXTENSIONS
from utils.profile import Profile, active, phase, process_start
from utils.video import is_video


DEFAULT_MODEL = Path(__file__).resolve().parent / "weights" / "lmliif_edsr-b_cpu.pth"
DEFAULT_CMSR = DEFAULT_MODEL.parent / "cmsr_lmliif_edsr-b_cpu.yaml"
MAX_SIDE = 65535  # PNG/JPEG limits are around here anyway


def parse_size(text: str) -> tuple[int, int]:
    """'1920x1080' (W x H) -> (H, W)."""
    try:
        w, h = (int(p) for p in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise UserError(f"--size {text!r} must be WIDTHxHEIGHT in pixels, e.g. 1920x1080") from None
    if w < 1 or h < 1:
        raise UserError(f"--size {text!r}: width and height must be at least 1")
    return h, w


def check_memory(args: argparse.Namespace, in_hw: tuple[int, int], out_hw: tuple[int, int], alpha: bool,
                 lm: bool = True, chunk: int | None = None) -> None:
    """The output fits in the memory available now, by the peak measured for this way of running
    (utils/ram.py, docs/memory.md): else refused in one line naming the largest that fits, instead
    of being killed by the system part-way. ``lm``: an LMF decoder; ``chunk``: queries a call."""
    from utils import ram

    cmsr = lm and args.cmsr is not None and max(out_hw[0] / in_hw[0], out_hw[1] / in_hw[1]) > 4  # beyond x4 only
    kind = ram.path_kind(onnx=args.onnx is not None, lm=lm, precision=args.precision, cmsr=cmsr)
    ram.check_fits(in_hw, out_hw, kind, fmt_streamed=Path(args.output).suffix.lower() == ".png", alpha=alpha,
                   chunk=chunk)


def check_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """The input exists; the output is a new or replaceable image file that is not the input."""
    inp_path, out_path = Path(args.input), Path(args.output)
    if not inp_path.exists():
        raise UserError(f"input image {inp_path} does not exist")
    if out_path.exists() and out_path.resolve() == inp_path.resolve():
        raise UserError(f"--output is the input file {inp_path}; refusing to overwrite the input")
    if out_path.is_dir():
        raise UserError(f"--output {out_path} is a folder; give a file name such as {out_path / 'out.png'}")
    check_output(out_path, args.overwrite)  # an existing file only with --overwrite; folders made when writing
    if out_path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise UserError(f"--output {out_path}: unsupported extension {out_path.suffix!r} "
                        f"(use {', '.join(IMAGE_EXTENSIONS)})")
    if (args.scale is None) == (args.size is None):
        raise UserError("give exactly one of --scale and --size")
    return inp_path, out_path


def output_size(args: argparse.Namespace, h: int, w: int) -> tuple[int, int]:
    """(H, W) of the output from --size or --scale, within the formats' side limit."""
    if args.size is not None:
        H, W = parse_size(args.size)
    else:
        sy, sx = args.scale
        H, W = round(h * sy), round(w * sx)
        if H < 1 or W < 1:
            raise UserError(f"--scale {scale_label(args.scale)} gives an empty output for a {w}x{h} image")
    if H > MAX_SIDE or W > MAX_SIDE:
        raise UserError(f"output {W}x{H} is too large (at most {MAX_SIDE} pixels per side)")
    return H, W


def load(args: argparse.Namespace, device):
    """The model (--model, default the bundled one) and the CMSR of --cmsr (or None)."""
    import models
    from models.cmsr import CMSR

    model_path = Path(args.model) if args.model else DEFAULT_MODEL
    if not model_path.exists():
        hint = " (the bundled model is missing from this checkout)" if args.model is None else ""
        raise UserError(f"model checkpoint {model_path} does not exist{hint}")
    model = models.load_model(model_path, device=device, precision=args.precision)
    cmsr = CMSR.from_spec({"s2m_tables": args.cmsr}) if args.cmsr is not None else None
    return model, cmsr


def render(model, inp_path: Path, out_path: Path, size: tuple[int, int], args: argparse.Namespace, cmsr,
           stats: dict) -> None:
    """The input file upscaled into ``out_path`` band by band as it is rendered (grayscale/alpha
    kept, hidden colour under transparent pixels filled first: ``models.inference.upscale_file``),
    with a progress bar for large outputs."""
    from models.inference import upscale_file

    H, W = size
    bar = None
    if H * W >= 4_000_000 or (H * W >= 1_000_000 and sys.stderr.isatty()):  # ~ a couple of seconds on a CPU
        try:
            from tqdm import tqdm
            bar = tqdm(total=H, unit="row", desc=f"-> {W}x{H}", file=sys.stderr, leave=False)
        except ImportError:
            bar = None
    try:
        upscale_file(model, inp_path, out_path, size=(H, W), bsize=args.bsize, cmsr=cmsr, stats=stats,
                     progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()


def run(args: argparse.Namespace, engine: dict | None = None) -> dict:
    """One image file into one image file; a folder or a video as --input goes to :func:`run_folder`
    or :func:`run_video`. ``engine``: the model a folder loads once for all its images."""
    if engine is None and Path(args.input).is_dir():
        return run_folder(args)
    if engine is None and is_video(args.input):
        return run_video(args)
    inp_path, out_path = check_paths(args)
    if args.onnx is not None:
        return run_onnx(args, inp_path, out_path)
    from utils.images import open_array

    with phase("reading"):
        arr, alpha, _ = open_array(inp_path)  # validates the file (one-line errors)
    h, w = arr.shape[:2]
    del arr
    H, W = output_size(args, h, w)
    with phase("start-up"):  # torch and the weights (once for a folder)
        device, model, cmsr = loaded(args, {} if engine is None else engine)
    prof = active()
    if prof is not None:
        prof.device = device
    from models.lm import LMDecoder

    check_memory(args, (h, w), (H, W), alpha is not None, isinstance(model, LMDecoder), args.bsize)
    stats: dict = {}
    t0 = time.perf_counter()
    render(model, inp_path, output_path(out_path, args.overwrite), (H, W), args, cmsr, stats)
    return {"in": (w, h), "out": (W, H), "seconds": time.perf_counter() - t0, "device": device_label(device),
            **stats}


def run_onnx(args: argparse.Namespace, inp_path: Path, out_path: Path) -> dict:
    """The same upscaling with a model exported by scripts/export_onnx.py (onnxruntime, no torch)."""
    why = {"--model": "the exported folder is the model", "--cmsr": "the ONNX runner renders every query",
           "--device": "the ONNX runner runs on the CPU", "--precision": "the exported graphs are fp32"}
    for flag, given in (("--model", args.model is not None), ("--cmsr", args.cmsr is not None),
                        ("--device", args.device not in ("auto", "cpu")), ("--precision", args.precision != "fp32")):
        if given:
            raise UserError(f"--onnx cannot be combined with {flag} ({why[flag]})")
    from utils.onnx_runner import OnnxUpscaler, upscale_file

    imports_done()  # no device to pick on this path (see utils.cli.program)
    runner = OnnxUpscaler(args.onnx, chunk=args.bsize)
    info: dict = {}
    t0 = time.perf_counter()

    def size_of(h: int, w: int) -> tuple[int, int]:
        H, W = output_size(args, h, w)
        check_memory(args, (h, w), (H, W), has_alpha, chunk=runner.chunk)
        info.update({"in": (w, h), "out": (W, H)})
        return H, W

    from utils.images import open_array

    has_alpha = open_array(inp_path)[1] is not None
    upscale_file(runner, inp_path, output_path(out_path, args.overwrite), size_of)
    info["seconds"] = time.perf_counter() - t0
    info["device"] = "cpu, onnxruntime"
    return info


def loaded(args: argparse.Namespace, engine: dict) -> tuple:
    """(device, model, CMSR or None), loaded into ``engine`` on first use and kept there."""
    if "model" not in engine:
        engine["device"] = pick_device(args.device)
        engine["model"], engine["cmsr"] = load(args, engine["device"])
    return engine["device"], engine["model"], engine["cmsr"]


def run_folder(args: argparse.Namespace) -> dict:
    """--input DIR --output DIR: every image through :func:`run` with one model (utils/folder.py:
    existing outputs skipped, so a re-run resumes; a failing image reported and skipped)."""
    from utils.folder import plan_folder, run_folder as run_images

    if args.onnx is not None:
        raise UserError("--onnx upscales one image at a time; give an image file as --input")
    if (args.scale is None) == (args.size is None):
        raise UserError("give exactly one of --scale and --size")
    plan = plan_folder(args.input, args.output, args.recursive, args.overwrite)
    engine: dict = {}

    def work(src: Path, dst: Path) -> str:
        one = argparse.Namespace(**{**vars(args), "input": str(src), "output": str(dst)})
        return describe(one, run(one, engine))

    return {"line": run_images(plan, work, args.overwrite)}


def run_video(args: argparse.Namespace) -> dict:
    """--input movie.mp4 --output out.mp4: every frame through the model, streamed with the audio
    copied (models/video.py, utils/video.py)."""
    from utils.video import VIDEO_EXTENSIONS, Encoding, check_encoding, import_av

    inp_path, out_path = Path(args.input), Path(args.output)
    if args.onnx is not None:
        raise UserError("--onnx upscales images; video runs with the PyTorch model")
    import_av()
    if not is_video(out_path):
        raise UserError(f"--output {out_path}: a video input makes a video; end the name in "
                        f"{', '.join(VIDEO_EXTENSIONS[:5])}, ...")
    if out_path.exists() and inp_path.exists() and out_path.resolve() == inp_path.resolve():
        raise UserError(f"--output is the input file {inp_path}; refusing to overwrite the input")
    check_output(out_path, args.overwrite, "--output", "output video")
    if (args.scale is None) == (args.size is None):
        raise UserError("give exactly one of --scale and --size")
    enc = check_encoding(Encoding(args.codec, args.crf, args.preset, args.pix_fmt))
    from models.video import describe as describe_video, upscale_video

    engine: dict = {}
    info = upscale_video(lambda: loaded(args, engine)[1:], inp_path, out_path, lambda h, w: output_size(args, h, w),
                         enc, exact=args.size is not None, batch=args.batch, bsize=args.bsize, overwrite=args.overwrite)
    (w, h), (W, H) = info["in"], info["out"]
    return {"line": f"{inp_path} ({w}x{h}) -> {out_path} ({W}x{H}) in {info['seconds']:.1f} s on "
                    f"{device_label(engine['device'])}: {describe_video(info)}"}


def describe(args: argparse.Namespace, info: dict) -> str:
    """The line printed for an upscaled image: sizes, time, device and what the user should know."""
    (w, h), (W, H) = info["in"], info["out"]
    extra = f" in {info['seconds']:.1f} s on {info['device']}"
    sx, sy = W / w, H / h
    if abs(sx / sy - 1) > 0.01:
        extra += f", aspect ratio changed (x{sy:.3g} vertically, x{sx:.3g} horizontally)"
    if "cmsr_skipped_fraction" in info:
        extra += f", CMSR skipped {100 * info['cmsr_skipped_fraction']:.1f}% of render queries"
    if "cmsr_note" in info:
        extra += f"; note: {info['cmsr_note']}"
    return f"{args.input} ({w}x{h}) -> {args.output} ({W}x{H}){extra}"


def build_parser() -> Parser:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, help="image to upscale, or a folder of images, or a video")
    ap.add_argument("--output", required=True, help="where to write the result (.png, .jpg, ...; a folder for a folder, "
                    ".mp4, .mkv, ... for a video; folders are created)")
    add_overwrite(ap, "--output file")
    ap.add_argument("--scale", type=parse_scale, help="factor (3.5) or HxW factors (3x2: x3 vertically, x2 horizontally)")
    ap.add_argument("--size", help="output size WIDTHxHEIGHT in pixels (instead of --scale)")
    ap.add_argument("--model", help=f"checkpoint (default: the bundled {DEFAULT_MODEL.name})")
    ap.add_argument("--device", type=device_name, default="auto", help="auto | cpu | cuda | cuda:N")
    add_precision(ap)
    ap.add_argument("--cmsr", nargs="?", const=str(DEFAULT_CMSR),
                    help="use CMSR beyond x4 with this Scale2Mod table (default: the bundled model's)")
    ap.add_argument("--bsize", type=positive_int, help="queries rendered at a time (memory/speed trade-off)")
    ap.add_argument("--onnx", metavar="DIR", help="use a model exported by scripts/export_onnx.py "
                    "(onnxruntime, no PyTorch needed; see docs/export.md)")
    ap.add_argument("--profile", action="store_true", help="print where the wall time went: start-up (torch, "
                    "weights), reading, encoder, latent, render, CMSR, writing")
    many = ap.add_argument_group("a folder (--input DIR --output DIR) or a video (--input in.mp4 --output out.mp4; "
                                 "video needs: pip install -r requirements-video.txt)")
    many.add_argument("--recursive", action="store_true", help="folder: its subfolders too (same layout under --output)")
    many.add_argument("--batch", type=positive_int, help="video: frames per model call (default 4 on CUDA, 1 on the CPU)")
    many.add_argument("--codec", default="libx264", help="video encoder: libx264 (default), libx265, libvpx-vp9, "
                      "ffv1 (lossless), ...")
    many.add_argument("--crf", type=float, help="video quality, lower is better and larger "
                      "(default 18 for libx264, 20 libx265, 30 libvpx-vp9)")
    many.add_argument("--preset", help="libx264/libx265 speed preset (default medium; veryfast encodes several times "
                      "faster, for larger files)")
    many.add_argument("--pix-fmt", default="yuv420p", help="video pixel format (default yuv420p, which every player "
                      "shows; yuv444p keeps full colour)")
    return ap


def main(argv: list[str] | None = None) -> int:
    def body() -> None:
        args = build_parser().parse_args(argv)
        with Profile() as prof:
            prof.begin_at(process_start())  # the interpreter and the imports count as start-up
            info = run(args)
        print(info["line"] if "line" in info else describe(args, info))
        if args.profile:
            print(prof.report("demo.py time breakdown"))

    return run_main(body, out_of_memory="out of GPU memory or RAM; use a smaller --scale/--size or pass a "
                    "smaller --bsize (queries rendered at a time), or use --device cpu",
                    interrupted="interrupted; no file was left half-written (a folder run resumes when "
                    "run again)",
                    no_torch=no_torch_message("demo.py", "or upscale with an exported model and onnxruntime alone: "
                                              "demo.py --onnx DIR (docs/export.md)"))


if __name__ == "__main__":
    sys.exit(program(main))
