#!/usr/bin/env python
"""Video upscaling speed, end to end (decode -> model -> encode, as ``demo.py --input movie.mp4``
runs it: models.video.upscale_video), and where the time goes. Needs requirements-video.txt.

    python scripts/bench_video.py                                            # CPU: 320x180 x2, 480x270 -> 720p
    python scripts/bench_video.py --device cuda --cases 960x540:3840x2160,1280x720:1920x1080 --frames 120
    python scripts/bench_video.py --device cuda --cases 960x540:3840x2160 --precisions bf16 --preset veryfast

A case is ``WIDTHxHEIGHT:SCALE`` or ``WIDTHxHEIGHT:WIDTHxHEIGHT`` (input, then scale or output size).
For each case a procedural clip with sound (scripts/make_clip.py, ``--frames`` frames at 30 fps)
is made once and upscaled into a fresh file with the bundled model (``--model``) in each
precision, ``--repeats`` times alternating with the model alone; the output is read back (frame
count and size checked). Reported (medians of the rounds):

* frames/s end to end (wall clock from opening the input to the renamed output, model warm);
* frames/s of the model alone on the same frames and batch (``models.video.frame_upsampler``,
  the frames already decoded): the ratio of the two is what decoding/encoding cost on top;
* the busy time of each stage (decode, model, encode) per frame and as a share of their sum. The
  stages run in three threads, so with spare cores the end-to-end rate approaches the slowest one.

One warm-up run (a few frames) per precision comes first. The machine may be shared: compare
the rates of one row with each other (rounds alternate, so load changes hit both), not across runs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import models  # noqa: E402
from make_clip import make_clip  # noqa: E402
from models.video import CUDA_BATCH, frame_upsampler, upscale_video  # noqa: E402
from utils.cli import PRECISIONS, pick_device  # noqa: E402
from utils.video import Encoding, VideoReader, check_encoding  # noqa: E402

DEFAULT_MODEL = ROOT / "weights" / "lmliif_edsr-b_cpu.pth"
T = TypeVar("T")


def parse_cases(text: str) -> list[tuple[tuple[int, int], str]]:
    """'320x180:2,480x270:1280x720' -> [((w, h), '2'), ((w, h), '1280x720')]."""
    out = []
    for tok in text.split(","):
        size, _, target = tok.partition(":")
        w, h = (int(v) for v in size.lower().split("x"))
        out.append(((w, h), target))
    return out


def target_size(h: int, w: int, target: str) -> tuple[int, int]:
    """(H, W) of a case: 'WxH' or a scale factor."""
    if "x" in target:
        W, H = (int(v) for v in target.lower().split("x"))
        return H, W
    return round(h * float(target)), round(w * float(target))


def fixed(value: T) -> Callable[..., T]:
    """A function of any arguments that returns ``value`` (the model loader, the output size)."""
    return lambda *_: value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--cases", default="320x180:2,480x270:1280x720")
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=1, help="rounds of (end to end, model alone), medians reported")
    ap.add_argument("--precisions", default="fp32", help=f"comma-separated, of {', '.join(PRECISIONS)}")
    ap.add_argument("--batch", type=int, default=None, help=f"frames per model call (default {CUDA_BATCH} on CUDA, 1 on CPU)")
    ap.add_argument("--codec", default="libx264")
    ap.add_argument("--preset", default=None, help="x264/x265 preset (default: the program's, medium)")
    ap.add_argument("--out", default=None, help="keep the outputs in this folder (default: a temporary one)")
    args = ap.parse_args()
    dev = pick_device(args.device)
    enc = check_encoding(Encoding(codec=args.codec, preset=args.preset))
    batch = args.batch or (CUDA_BATCH if dev.type == "cuda" else 1)
    print(f"# {Path(args.model).name} on {dev}"
          f"{' (' + torch.cuda.get_device_name(dev) + ')' if dev.type == 'cuda' else f', {torch.get_num_threads()} threads'}"
          f", {os.cpu_count()} CPUs; {args.frames} frames per clip, batch {batch}, {enc.codec} {enc.options}")
    print("| input | output | precision | frames/s end to end | frames/s model alone | end to end / model | "
          "decode ms/frame | model ms/frame | encode ms/frame | frames written |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    failed = False
    with tempfile.TemporaryDirectory() as tmp_dir:
        folder = Path(args.out) if args.out else Path(tmp_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for (w, h), target in parse_cases(args.cases):
            H, W = target_size(h, w, target)
            clip = make_clip(folder / f"in_{w}x{h}.mp4", w, h, count=args.frames, fps=30)
            warm = make_clip(folder / f"warm_{w}x{h}.mp4", w, h, count=min(3, args.frames), fps=30, audio=False)
            for precision in args.precisions.split(","):
                model = models.load_model(args.model, device=dev, precision=precision)
                dst = folder / f"out_{W}x{H}_{precision}.mp4"
                dst.unlink(missing_ok=True)
                upscale_video(fixed((model, None)), warm, dst, fixed((H, W)), enc, batch=batch)  # warm-up
                reader = VideoReader(clip)
                frames = [rgb for _, rgb in reader.frames()]  # for the model alone: the same decoded frames
                reader.close()
                process = frame_upsampler(model, (H, W))
                e2e, alone, runs = [], [], []
                for _ in range(args.repeats):  # the two alternate, so a change of load hits both alike
                    dst.unlink(missing_ok=True)
                    info = upscale_video(fixed((model, None)), clip, dst, fixed((H, W)), enc, batch=batch)
                    runs.append(info["timings"])
                    e2e.append(info["frames"] / info["timings"].wall)
                    t = time.perf_counter()
                    for i in range(0, len(frames), batch):
                        process(np.stack(frames[i:i + batch]))
                    alone.append(len(frames) / (time.perf_counter() - t))
                check = VideoReader(dst)
                written = sum(1 for _ in check.frames())
                ok = written == args.frames and (check.width, check.height) == (W, H)
                check.close()
                failed |= not ok
                tm = runs[e2e.index(statistics.median_low(e2e))]
                fps, model_fps = statistics.median(e2e), statistics.median(alone)
                total = max(tm.decode + tm.model + tm.encode, 1e-9)
                stages = " | ".join(f"{1000 * v / tm.frames:.1f} ({100 * v / total:.1f}%)"
                                    for v in (tm.decode, tm.model, tm.encode))
                print(f"| {w}x{h} | {W}x{H} | {precision} | {fps:.2f} | {model_fps:.2f} | {fps / model_fps:.2f} | "
                      f"{stages} | {written}{'' if ok else ' (WRONG)'} |", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
