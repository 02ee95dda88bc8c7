#!/usr/bin/env python
"""Make a short procedural video with sound, to try video upscaling on (needs requirements-video.txt).

    python scripts/make_clip.py --output outputs/clip.mp4                      # 192x108, 1 s at 24 fps, a tone
    python scripts/make_clip.py --output outputs/clip.mkv --size 320x180 --seconds 2 --fps 30 --no-audio

The picture is smooth colour noise scrolling sideways with a hard-edged disc crossing it (texture,
edges and motion, as in real footage); the sound is a 440 Hz tone. Everything is computed from a
seeded generator by this script alone, so the output is free of any third-party rights (CC0), and
the same arguments make the same frames. The tests and scripts/bench_video.py make their clips
with :func:`make_clip`.
"""
from __future__ import annotations

import argparse
import fractions
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.cli import Parser, add_overwrite, check_output, output_path, positive_float, positive_int, run_main  # noqa: E402
from utils.errors import UserError  # noqa: E402


def texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float in [0, 1]: random colour grids enlarged bicubically, halving the amplitude."""
    acc = np.zeros((h, w, 3))
    for o, amp in enumerate((1.0, 0.5, 0.25, 0.125)):
        n = 2 ** (o + 2)
        grid = Image.fromarray((rng.random((n, n, 3)) * 255).astype(np.uint8))
        acc += amp * np.asarray(grid.resize((w, h), Image.Resampling.BICUBIC), np.float64) / 255
    acc -= acc.min()
    return acc / max(acc.max(), 1e-12)


def frames(width: int, height: int, count: int, seed: int = 0):
    """``count`` (height, width, 3) uint8 frames of the scrolling scene."""
    rng = np.random.default_rng(seed)
    tex = texture(rng, height, 2 * width)
    yy, xx = np.mgrid[0:height, 0:width]
    r = 0.22 * min(width, height)
    for i in range(count):
        t = i / max(count - 1, 1)
        shift = int(round(t * width))
        img = tex[:, shift:shift + width].copy()
        cx, cy = r + t * (width - 2 * r), height / 2 + 0.25 * height * np.sin(2 * np.pi * t)
        disc = (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= r * r
        img[disc] = (0.95, 0.85, 0.2)
        img[disc & ((yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= (0.5 * r) ** 2)] = (0.15, 0.2, 0.6)
        yield (img * 255).round().astype(np.uint8)


def make_clip(path: str | Path, width: int = 192, height: int = 108, count: int = 24, fps: int = 24,
              audio: bool = True, codec: str = "libx264", pix_fmt: str = "yuv420p", seed: int = 0) -> Path:
    """Write the clip to ``path`` (.mp4, .mkv or .mov: the container from the extension): ``count``
    frames at ``fps`` and, with ``audio``, a 440 Hz AAC tone as long as the video."""
    import av

    from utils.atomic import publish, temp_sibling

    path = Path(path)
    tmp = temp_sibling(path)  # written whole, then renamed: never a half clip under the name
    try:
        _write(av, tmp, width, height, count, fps, audio, codec, pix_fmt, seed)
        publish(tmp, path, "video")
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write(av, path: Path, width: int, height: int, count: int, fps: int, audio: bool, codec: str, pix_fmt: str,
           seed: int) -> None:
    with av.open(str(path), "w") as out:
        v = out.add_stream(codec, rate=fps, options={"crf": "18"} if codec == "libx264" else {})
        v.width, v.height, v.pix_fmt = width, height, pix_fmt
        a = None
        if audio:
            a = out.add_stream("aac", rate=44100)
            a.layout = "mono"
        for i, img in enumerate(frames(width, height, count, seed)):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = i, fractions.Fraction(1, fps)
            for p in v.encode(f):
                out.mux(p)
        for p in v.encode(None):
            out.mux(p)
        if a is not None:
            rate = 44100
            tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(rate * count // fps) / rate)).astype(np.float32)
            step = a.codec_context.frame_size or 1024
            fmt = a.codec_context.format.name
            for k in range(0, len(tone), step):
                chunk = tone[None, k:k + step]
                af = av.AudioFrame.from_ndarray(chunk if fmt.endswith("p") else chunk.T.reshape(1, -1).copy(),
                                                format="flt" if fmt == "flt" else "fltp", layout="mono")
                af.sample_rate, af.pts = rate, k
                for p in a.encode(af):
                    out.mux(p)
            for p in a.encode(None):
                out.mux(p)


def main(argv: list[str] | None = None) -> int:
    def body() -> None:
        ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        ap.add_argument("--output", required=True, help="the video to write (.mp4, .mkv, ...; folders are created)")
        ap.add_argument("--size", default="192x108", help="WIDTHxHEIGHT (default %(default)s)")
        ap.add_argument("--seconds", type=lambda t: positive_float(t, "--seconds"), default=1.0)
        ap.add_argument("--fps", type=positive_int, default=24)
        ap.add_argument("--no-audio", action="store_true", help="no sound track")
        add_overwrite(ap, "--output video")
        args = ap.parse_args(argv)
        try:
            w, h = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise UserError(f"--size {args.size!r} must be WIDTHxHEIGHT, e.g. 320x180") from None
        if Path(args.output).suffix.lower() not in (".mp4", ".mkv", ".mov"):
            raise UserError(f"--output {args.output}: write a .mp4, .mkv or .mov (H.264 and AAC)")
        if w < 2 or h < 2 or w % 2 or h % 2:
            raise UserError(f"--size {args.size}: width and height must be even and at least 2 (yuv420p)")
        from utils.video import import_av

        import_av()
        out = output_path(check_output(args.output, args.overwrite), args.overwrite)
        count = max(1, round(args.seconds * args.fps))
        make_clip(out, w, h, count, args.fps, audio=not args.no_audio)
        print(f"{out}: {w}x{h}, {count} frames at {args.fps} fps{'' if args.no_audio else ', 440 Hz tone'}")

    return run_main(body, out_of_memory="out of memory", interrupted="interrupted")


if __name__ == "__main__":
    sys.exit(main())
