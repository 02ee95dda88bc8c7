"""Upscaling a video: its frames through the model in batches, streamed from file to file.

The file side (decoding, encoding, audio copy, the reader and writer threads, atomic output) is
:mod:`utils.video`; this module adds the model: a batch of decoded frames goes through
:func:`models.inference.upsample`, the function that upscales single images too, and comes back
as 8-bit frames rounded as saved images are (``utils.images.to_pil``). So a frame of the video
is the image that ``demo.py`` makes of that frame, up to the codec.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from utils.cli import output_path
from utils.errors import UserError
from utils.progress import Progress
from utils.video import Encoding, Timings, VideoReader, VideoWriter, fit_size, partial_name, remove_stale_temps, transcode

from .cmsr import CMSR
from .decoder import ImplicitDecoder
from .inference import upsample

CUDA_BATCH = 4  # frames per model call on CUDA: keeps the GPU busy between frames; 1 on the CPU (no gain there)


def frame_upsampler(model: ImplicitDecoder, size: tuple[int, int], bsize: int | None = None,
                    cmsr: CMSR | bool | None = None, stats: dict | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """(B, h, w, 3) uint8 RGB frames -> (B, H, W, 3) uint8, on the model's device.

    The arithmetic is the per-image path's: uint8 / 255 in float32 (``utils.images.array_to_float``),
    :func:`upsample`, then ``round(x * 255)`` clipped (``utils.images.to_pil``), done on the device
    so that only 8-bit frames cross to the CPU."""
    dev = next(model.parameters()).device

    def process(frames: np.ndarray) -> np.ndarray:
        # NCHW in memory, as the per-image path has it (a permuted view would run the encoder channels-last)
        x = torch.from_numpy(frames).to(dev).permute(0, 3, 1, 2).contiguous().float().div_(255)
        out = upsample(model, x, size, bsize=bsize, cmsr=cmsr, stats=stats)
        out = out.mul_(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        return out.cpu().numpy()

    return process


def video_size(reader: VideoReader, size_of: Callable[[int, int], tuple[int, int]], enc: Encoding,
               exact: bool) -> tuple[tuple[int, int], str | None]:
    """The output (H, W) for this video and a note when it was moved to fit the pixel format
    (yuv420p halves the chroma: even sides); an exact ``--size`` that does not fit is refused."""
    H, W = size_of(reader.height, reader.width)
    fit = fit_size(H, W, enc.pix_fmt)
    if fit == (H, W):
        return (H, W), None
    if exact:
        raise UserError(f"--size {W}x{H}: {enc.pix_fmt} needs sides that are multiples of the chroma "
                        f"subsampling; use --size {fit[1]}x{fit[0]}, or --pix-fmt yuv444p")
    return fit, f"output {fit[1]}x{fit[0]} instead of {W}x{H} ({enc.pix_fmt} needs even sides)"


def upscale_video(load: Callable[[], tuple[ImplicitDecoder, CMSR | None]], src: Path, dst: Path,
                  size_of: Callable[[int, int], tuple[int, int]], enc: Encoding, *, exact: bool = False,
                  batch: int | None = None, bsize: int | None = None, overwrite: bool = False) -> dict:
    """Upscale the video ``src`` into ``dst`` (see :mod:`utils.video` for what is kept).

    ``load()`` gives (model, CMSR or None); it is called after the input has been opened and the
    output size and codec checked, so bad input costs no model load. ``size_of(h, w)`` -> (H, W).
    ``batch``: frames per model call (default :data:`CUDA_BATCH` on CUDA, 1 on the CPU).
    Returns what ``demo.py`` reports: sizes, frames, seconds, frames/s and the stages' busy times.
    An input that is cut or corrupt raises a :class:`UserError` after finishing what was made of it
    into ``NAME.partial.EXT`` (playable; ``dst`` is not written; without ``overwrite`` an existing
    partial file is kept and the new one dropped)."""
    reader = VideoReader(src)
    try:
        (H, W), note = video_size(reader, size_of, enc, exact)
        model, cmsr = load()
        dev = next(model.parameters()).device
        batch = batch or (CUDA_BATCH if dev.type == "cuda" else 1)
        stale = remove_stale_temps(dst)
        stats: dict = {}
        writer = VideoWriter(reader, output_path(dst, overwrite, "--output", "output video"), (H, W), enc)
        total = reader.stream.frames or (round(reader.expected * float(reader.rate)) if reader.expected else None)
        bar = Progress(total, "frame", desc=f"{src.name} -> {W}x{H}")
        try:
            timings = transcode(reader, writer, frame_upsampler(model, (H, W), bsize, cmsr, stats), batch, bar.update)
        except BaseException:
            writer.discard()
            raise
        finally:
            bar.close()
        problem = reader.shortfall()
        if problem is not None:
            partial = partial_name(dst)
            if partial.exists() and not overwrite:
                writer.discard()
                raise UserError(f"input video {src}: {problem}; {dst} was not written, and the {timings.frames} "
                                f"frames upscaled were dropped because {partial} exists (--overwrite replaces it)")
            writer.publish(partial)
            raise UserError(f"input video {src}: {problem}; the {timings.frames} frames upscaled are in {partial} "
                            f"(playable); {dst} was not written")
        writer.publish()
    finally:
        reader.close()
    notes = [n for n in (note, stats.get("cmsr_note")) if n]
    if stale:
        notes.append(f"removed {len(stale)} unfinished temporary file(s) of an interrupted run")
    if reader.audio and not enc.audio:
        notes.append("audio not copied")
    if reader.others:
        notes.append(f"not copied: {', '.join(reader.others)} stream(s)")
    return {"in": (reader.width, reader.height), "out": (W, H), "frames": timings.frames,
            "seconds": timings.wall, "timings": timings, "batch": batch, "audio": len(reader.audio) if enc.audio else 0,
            "notes": notes}


def describe(info: dict) -> str:
    """``48 frames at 9.1 frames/s (decode 3%, model 90%, encode 7% of the busy time), audio copied``."""
    t: Timings = info["timings"]
    text = (f"{info['frames']} frames at {info['frames'] / max(t.wall, 1e-9):.2f} frames/s ({t.shares()} of the "
            f"busy time, batch {info['batch']})")
    if info["audio"]:
        text += f", {info['audio']} audio stream(s) copied"
    return text + "".join(f"; {n}" for n in info["notes"])
