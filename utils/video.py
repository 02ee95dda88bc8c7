"""Video files through PyAV: decode to RGB frames, encode new frames, copy the audio.

PyAV is an optional extra (``pip install -r requirements-video.txt``): its wheel ships its own
FFmpeg libraries, so nothing is installed system-wide. Without it, video input is one line that
says how to install it. torch is not imported here: the model's part comes in as a function.

:func:`transcode` streams a video through a function of frame batches in bounded memory. A
reader thread decodes the input's first video stream into 8-bit RGB frames, the caller's
``process`` turns batches of them into new frames (in the calling thread: the model), and a
writer thread encodes them and muxes them with the input's audio packets, which are copied
(not re-encoded). The queues between the three are bounded (a few batches), so memory does not
grow with the video's length, and decoding and encoding overlap the model.

Kept from the input: every frame's timestamp (so the frame rate, constant or variable, and the
duration; a common start offset is removed as FFmpeg does), the audio streams (packet for
packet), and the colours: YUV is turned into RGB and back with the same matrix (the input's
tagged one, else what players assume for its size: BT.709 from 720p up, BT.601 below), and the
output is tagged with it, so that players show it in the input's colours. Not kept: subtitle and
data streams, rotation metadata, more than 8 bits per sample (frames are 8-bit RGB in between).

The output is written to a temporary sibling and renamed into place when complete
(:mod:`utils.atomic`): a finished name always holds a finished video. An input that ends before
its header says (a cut download) or that stops decoding (corrupt data) is reported: what was
made of it is finished into a playable ``NAME.partial.EXT`` and the output name is not written.
"""
from __future__ import annotations

import fractions
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from utils.atomic import publish, stale_temps, temp_sibling
from utils.errors import UserError

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
                    ".wmv", ".flv", ".ogv", ".3gp")
INSTALL = "pip install -r requirements-video.txt"

# FFmpeg's AVColorSpace tags -> the matrix names of PyAV's reformatter (swscale)
_MATRIX = {1: "ITU709", 4: "FCC", 5: "ITU601", 6: "ITU601", 7: "SMPTE240M", 9: "BT2020", 10: "BT2020"}
_BT709, _BT470BG, _SMPTE170M, _UNSPECIFIED = 1, 5, 6, 2  # AVColorSpace/Primaries/TransferCharacteristic
_MPEG, _JPEG = 1, 2  # AVColorRange: limited (16-235) and full (0-255)
_RANGE_NAME = {_MPEG: "MPEG", _JPEG: "JPEG"}  # as PyAV's reformatter names them

# codec -> (default CRF, default preset): the codecs whose quality is one CRF number
CRF_CODECS: dict[str, tuple[float, str | None]] = {
    "libx264": (18, "medium"), "libx265": (20, "medium"), "libvpx-vp9": (30, None),
    "libaom-av1": (30, None), "libsvtav1": (30, "8"),
}


def is_video(path: str | Path) -> bool:
    """Whether a path names a video by its extension."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def import_av() -> Any:
    """The ``av`` module, or a one-line :class:`UserError` that says how to install it."""
    try:
        import av
    except ImportError:
        raise UserError(f"video needs PyAV, which is not installed here: {INSTALL} "
                        "(its wheel brings its own FFmpeg libraries)") from None
    return av


def _msg(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# --- what is kept of the input -----------------------------------------------------------------
@dataclass(frozen=True)
class Colour:
    """How the input's YUV maps to RGB: the matrix used both ways, the tags the output gets."""
    matrix: str          # swscale's matrix name (ITU709, ITU601, ...)
    space: int           # AVColorSpace tag of the output
    primaries: int
    trc: int
    in_range: int        # the input's range: limited (_MPEG) or full (_JPEG)
    guessed: bool        # the input was untagged: the matrix is what players assume for its size


def colour_of(frame: Any) -> Colour:
    """The :class:`Colour` of a decoded frame (its tags; untagged: by its size, as players do)."""
    full = frame.format.name.startswith("yuvj") or int(frame.color_range) == _JPEG
    space = int(frame.colorspace)
    if space in _MATRIX:
        prim, trc = int(frame.color_primaries), int(frame.color_trc)
        hd = space == _BT709
        return Colour(_MATRIX[space], space, prim if prim != _UNSPECIFIED else (_BT709 if hd else _SMPTE170M),
                      trc if trc != _UNSPECIFIED else (_BT709 if hd else _SMPTE170M), _JPEG if full else _MPEG, False)
    if frame.width >= 1280 or frame.height > 576 or space == 0:  # HD, or an RGB-coded input: BT.709
        return Colour("ITU709", _BT709, _BT709, _BT709, _JPEG if full else _MPEG, space != 0)
    prim = _BT470BG if frame.height == 576 else _SMPTE170M  # PAL or NTSC primaries
    return Colour("ITU601", _SMPTE170M, prim, _SMPTE170M, _JPEG if full else _MPEG, True)


def _metadata_seconds(text: str | None) -> float | None:
    """Matroska's per-stream DURATION tag ``HH:MM:SS.nnnnnnnnn`` -> seconds."""
    m = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d+)?)", (text or "").strip())
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3)) if m else None


class VideoReader:
    """The first video stream of a file as RGB frames ``(pts, (h, w, 3) uint8)``.

    Opened and checked at construction (one-line errors); the first frame is decoded then, so a
    file that cannot be decoded is refused before any work. Frames keep the first frame's size
    (a stream that changes size midway is resized to it). After :meth:`frames` is exhausted,
    :meth:`shortfall` says whether the input ended early or stopped on corrupt data.
    """

    def __init__(self, path: str | Path) -> None:
        av = import_av()
        self.path = Path(path)
        if not self.path.is_file():
            what = "is a folder, not a video file" if self.path.is_dir() else "does not exist"
            raise UserError(f"input video {self.path} {what}")
        self.count, self.seconds, self.bad_packets = 0, 0.0, 0
        self.error: str | None = None
        self.last_end = 0.0
        try:
            self.container = av.open(str(self.path))
        except (av.FFmpegError, OSError) as e:
            raise UserError(f"cannot read video {self.path}: {_msg(e)} (is it complete, and a video?)") from None
        try:
            if not self.container.streams.video:
                raise UserError(f"{self.path} holds no video stream")
            self.stream = s = self.container.streams.video[0]
            s.thread_type = "AUTO"  # frame and slice threads: decoding keeps pace with a fast model
            self.time_base = s.time_base or fractions.Fraction(1, 90000)
            self.rate = s.average_rate or s.guessed_rate or s.base_rate or fractions.Fraction(25)
            # a common start offset is removed from every stream's timestamps, as FFmpeg does by default
            start_us = self.container.start_time or 0
            self.offset = int(fractions.Fraction(start_us, 1_000_000) / self.time_base)
            self.expected = self._expected_seconds(s, start_us)
            self.audio = list(self.container.streams.audio)
            self.others = [st.type for st in self.container.streams if st.type not in ("video", "audio")]
            self._decoded = self._decode()
            first = next(self._decoded, None)
        except av.FFmpegError as e:
            self.container.close()
            raise UserError(f"cannot read video {self.path}: {_msg(e)}") from None
        except BaseException:
            self.container.close()
            raise
        if first is None:
            self.container.close()
            raise UserError(f"cannot read video {self.path}: no frame could be decoded"
                            + (f" ({self.error})" if self.error else ""))
        self._first = first
        self.width, self.height = first.width, first.height
        self.colour = colour_of(first)
        self.error, self.bad_packets = None, 0  # undecodable packets before the first frame: a stream cut in mid-GOP

    def _expected_seconds(self, s: Any, start_us: int) -> float | None:
        """Where the header says the video stream ends (seconds after the common start), if it says."""
        if s.duration:
            return float(((s.start_time or 0) + s.duration) * self.time_base - fractions.Fraction(start_us, 1_000_000))
        tagged = _metadata_seconds(s.metadata.get("DURATION"))
        if tagged is not None:
            return tagged
        return self.container.duration / 1_000_000 if self.container.duration else None

    def _decode(self) -> Iterator[Any]:
        """Decoded frames; a demuxing error ends the stream, an undecodable packet is skipped (both noted)."""
        import av

        packets = self.container.demux(self.stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError as e:
                self.error = _msg(e)
                return
            try:
                decoded = packet.decode()
            except av.FFmpegError as e:
                self.bad_packets += 1
                self.error = self.error or _msg(e)
                continue
            yield from decoded

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(pts, rgb)`` for every frame: pts in :attr:`time_base` from the common start."""
        step = max(1, round(1 / (self.rate * self.time_base)))  # one frame in time_base units
        pts_prev = None
        frame = self._first
        while frame is not None:
            t = time.perf_counter()
            rgb = frame.to_ndarray(format="rgb24", width=self.width, height=self.height,
                                   src_colorspace=self.colour.matrix,
                                   src_color_range=_RANGE_NAME[self.colour.in_range])
            pts = frame.pts - self.offset if frame.pts is not None else (0 if pts_prev is None else pts_prev + step)
            dur = frame.duration or step
            self.count += 1
            self.last_end = float((pts + dur) * self.time_base)
            pts_prev = pts
            self.seconds += time.perf_counter() - t
            yield pts, rgb
            t = time.perf_counter()
            frame = next(self._decoded, None)
            self.seconds += time.perf_counter() - t

    def shortfall(self) -> str | None:
        """None for an input read to its end; else why not (cut short, corrupt), for the user."""
        fps = float(self.rate)
        short = self.expected is not None and self.last_end < self.expected - max(0.5, 3 / fps)
        if short:
            why = f"it ends after {self.count} frames ({self.last_end:.2f} s of the {self.expected:.2f} s its header says)"
            return why + (f" on an error ({self.error})" if self.error else "; the file is cut short or damaged")
        if self.error:
            bad = f"{self.bad_packets} packet(s) could not be decoded" if self.bad_packets else "reading stopped"
            return f"{bad} after {self.count} frames ({self.error}); the file is corrupt"
        return None

    def close(self) -> None:
        self.container.close()


# --- encoding ----------------------------------------------------------------------------------
@dataclass
class Encoding:
    """Video codec options of the output (the audio is copied)."""
    codec: str = "libx264"
    crf: float | None = None      # None: the codec's default in CRF_CODECS
    preset: str | None = None     # None: the codec's default in CRF_CODECS
    pix_fmt: str = "yuv420p"
    audio: bool = True
    options: dict[str, str] = field(default_factory=dict)  # filled by check_encoding: the codec's options


def check_encoding(enc: Encoding) -> Encoding:
    """Refuse an unknown codec, a pixel format it cannot encode, or a CRF/preset it has no use
    for, in one line each; fill in the codec options (CRF and preset defaults)."""
    av = import_av()
    try:
        codec = av.codec.Codec(enc.codec, "w")
    except (av.FFmpegError, ValueError):
        raise UserError(f"--codec {enc.codec!r} is not a video encoder of this PyAV/FFmpeg "
                        f"(e.g. libx264, libx265, libvpx-vp9, ffv1)") from None
    if codec.type != "video":
        raise UserError(f"--codec {enc.codec!r} is not a video codec")
    formats = [f.name for f in (codec.video_formats or [])]
    if formats and enc.pix_fmt not in formats:
        raise UserError(f"--pix-fmt {enc.pix_fmt!r}: codec {enc.codec} encodes {', '.join(formats[:12])}")
    try:
        av.VideoFormat(enc.pix_fmt)
    except (ValueError, av.FFmpegError):
        raise UserError(f"--pix-fmt {enc.pix_fmt!r} is not a pixel format (e.g. yuv420p, yuv444p)") from None
    if enc.crf is not None and not enc.crf >= 0:
        raise UserError(f"--crf {enc.crf:g}: the quality must be a number >= 0 (lower is better)")
    defaults = CRF_CODECS.get(enc.codec)
    if defaults is None:
        for flag, value in (("--crf", enc.crf), ("--preset", enc.preset)):
            if value is not None:
                raise UserError(f"{flag} applies to {', '.join(CRF_CODECS)}; codec {enc.codec} has no {flag[2:]}")
        enc.options = {}
        return enc
    crf = defaults[0] if enc.crf is None else enc.crf
    preset = enc.preset or defaults[1]
    if enc.preset is not None and defaults[1] is None:
        raise UserError(f"--preset: codec {enc.codec} has no presets (libx264 and libx265 have)")
    enc.options = {"crf": f"{crf:g}"}
    if preset is not None:
        enc.options["preset"] = preset
    if enc.codec == "libvpx-vp9":
        enc.options["b"] = "0"  # constant quality: libvpx takes the CRF as a cap unless the bitrate is 0
    return enc


def chroma_step(pix_fmt: str) -> tuple[int, int]:
    """(rows, columns) that the output size must be a multiple of (2, 2 for yuv420p: its chroma is
    subsampled by two both ways)."""
    av = import_av()
    fmt = av.VideoFormat(pix_fmt, 8, 8)
    return 8 // min(c.height for c in fmt.components), 8 // min(c.width for c in fmt.components)


def fit_size(H: int, W: int, pix_fmt: str) -> tuple[int, int]:
    """The nearest size the pixel format can hold (each side a multiple of its chroma step)."""
    sy, sx = chroma_step(pix_fmt)
    return max(sy, sy * int(H / sy + 0.5)), max(sx, sx * int(W / sx + 0.5))  # halves up: 45 -> 46, 75 -> 76


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temporary files of ``path`` that a killed run left (:func:`utils.atomic.stale_temps`)."""
    gone = stale_temps(path.parent, {path.name})
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def partial_name(path: Path) -> Path:
    """``out.mp4`` -> ``out.partial.mp4``: where what was made of a cut or corrupt input goes."""
    return path.with_name(f"{path.stem}.partial{path.suffix}")


class VideoWriter:
    """Encodes RGB frames into a temporary sibling of ``path`` with the reader's timestamps, frame
    rate and colours, and copies the reader's audio streams packet for packet, interleaved by
    time. :meth:`finish` then :meth:`publish` put the finished video in place; :meth:`discard`
    removes it."""

    def __init__(self, reader: VideoReader, path: str | Path, size: tuple[int, int], enc: Encoding) -> None:
        av = import_av()
        self.path = Path(path)
        self.reader, self.enc = reader, enc
        self.seconds = 0.0
        self.tmp = temp_sibling(self.path)  # ends with the output's name: the format follows its extension
        self.audio_in: Any = None
        self._pending: list[Any] = []
        self._audio: dict[int, Any] = {}  # input audio stream index -> its copy in the output
        self._yuv = not av.VideoFormat(enc.pix_fmt).is_rgb
        try:
            self.container = av.open(str(self.tmp), "w")
        except (av.FFmpegError, ValueError, OSError) as e:
            self.tmp.unlink(missing_ok=True)
            raise UserError(f"cannot write video {self.path}: {_msg(e)} (use .mp4, .mkv, .mov or .webm)") from None
        try:
            self._open_streams(av, size)
        except (av.FFmpegError, ValueError, OSError) as e:
            self.discard()
            raise UserError(f"cannot write video {self.path} ({enc.codec}, {enc.pix_fmt}"
                            f"{', audio copied' if self._audio else ''}): {_msg(e)}"
                            + ("; a .mkv output takes any audio codec" if self._audio else "")) from None
        except BaseException:
            self.discard()
            raise

    def _open_streams(self, av: Any, size: tuple[int, int]) -> None:
        r, enc = self.reader, self.enc
        v = self.container.add_stream(enc.codec, rate=r.rate, options=dict(enc.options))
        v.height, v.width = size
        v.pix_fmt = enc.pix_fmt
        v.time_base = r.time_base
        cc = v.codec_context
        cc.time_base = r.time_base  # frames keep the input's timestamps, in the input's units
        if self._yuv:
            cc.colorspace, cc.color_primaries, cc.color_trc = r.colour.space, r.colour.primaries, r.colour.trc
            cc.color_range = _MPEG
        self.video = v
        if self.enc.audio and r.audio:
            self.audio_in = av.open(str(r.path))  # a second demuxer: audio packets come in time order beside the frames
            streams = list(self.audio_in.streams.audio)
            self._audio = {s.index: self.container.add_stream_from_template(s) for s in streams}
            self._packets = self.audio_in.demux(*streams)
            start_us = self.audio_in.start_time or 0
            self._audio_offset = {s.index: int(fractions.Fraction(start_us, 1_000_000) / s.time_base) for s in streams}
        self.container.start_encoding()  # the header: a codec the container cannot hold fails here, before any work

    def _next_audio(self) -> Any:
        """The next audio packet (timestamps moved by the common start offset), or None at the end."""
        if self._pending:
            return self._pending[0]
        while self.audio_in is not None:
            p = next(self._packets, None)
            if p is None:
                self.audio_in.close()
                self.audio_in = None
                return None
            if p.dts is None or p.size == 0:  # the demuxer's end-of-stream markers
                continue
            off = self._audio_offset[p.stream.index]
            p.dts -= off
            if p.pts is not None:
                p.pts -= off
            self._pending.append(p)
            return p
        return None

    def _mux_audio_until(self, seconds: float | None) -> None:
        """Copy the audio packets that start before ``seconds`` (all that are left: None)."""
        while True:
            p = self._next_audio()
            if p is None or (seconds is not None and p.dts * p.time_base > seconds):
                return
            self._pending.pop(0)
            p.stream = self._audio[p.stream.index]
            self.container.mux(p)

    def _mux(self, packets: Any) -> None:
        for p in packets:
            if self._audio and p.dts is not None:
                self._mux_audio_until(float(p.dts * p.time_base))
            self.container.mux(p)

    def write(self, pts: int, rgb: np.ndarray) -> None:
        """Encode one (H, W, 3) uint8 RGB frame shown at ``pts`` (reader's time base)."""
        av = import_av()
        t = time.perf_counter()
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        kw: dict[str, Any] = {"format": self.enc.pix_fmt}
        if self._yuv:
            kw.update(dst_colorspace=self.reader.colour.matrix, dst_color_range="MPEG")
        frame = frame.reformat(threads=0, **kw)  # swscale on every core: a 4K frame takes ~25 ms on one
        frame.pts, frame.time_base = pts, self.reader.time_base
        self._mux(self.video.encode(frame))
        self.seconds += time.perf_counter() - t

    def finish(self) -> None:
        """Flush the encoder, copy the remaining audio and close the file (still the temporary one)."""
        t = time.perf_counter()
        self._mux(self.video.encode(None))
        if self._audio:
            self._mux_audio_until(None)
        self.container.close()
        self.seconds += time.perf_counter() - t

    def publish(self, path: Path | None = None) -> Path:
        """Rename the finished file to ``path`` (default: the output's name)."""
        target = self.path if path is None else path
        publish(self.tmp, target, "video")
        return target

    def discard(self) -> None:
        """Close everything and remove the temporary file (after an error or an interruption)."""
        for c in (getattr(self, "container", None), self.audio_in):
            if c is not None:
                try:
                    c.close()
                except Exception:  # closing a half-written container may fail too; the file goes anyway
                    pass
        self.audio_in = None
        self.tmp.unlink(missing_ok=True)


# --- the pipeline ------------------------------------------------------------------------------
@dataclass
class Timings:
    """Busy seconds of each stage (they overlap: decoding and encoding run beside the model)."""
    frames: int = 0
    wall: float = 0.0
    decode: float = 0.0
    model: float = 0.0
    encode: float = 0.0

    def shares(self) -> str:
        """``decode 8%, model 81%, encode 11%`` of the stages' summed busy time (one decimal below 10%)."""
        total = max(self.decode + self.model + self.encode, 1e-9)
        shares = {k: 100 * getattr(self, k) / total for k in ("decode", "model", "encode")}
        return ", ".join(f"{k} {v:.1f}%" if v < 10 else f"{k} {v:.0f}%" for k, v in shares.items())


_END = object()      # the producer is done
_STOPPED = object()  # another thread failed or the run was interrupted


def _put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event) -> object:
    while not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue
    return _STOPPED


def transcode(reader: VideoReader, writer: VideoWriter, process: Callable[[np.ndarray], np.ndarray],
              batch: int = 1, progress: Callable[[int], None] | None = None) -> Timings:
    """Every frame of ``reader`` through ``process`` ((B, h, w, 3) uint8 -> (B, H, W, 3) uint8, in
    the calling thread, at most ``batch`` frames at a time) into ``writer``; ``progress(n)`` after
    each encoded frame. Decoding and encoding run in their own threads; at most ``2 * batch``
    frames wait on either side of the model. The writer is flushed (:meth:`VideoWriter.finish`)
    but not published: the caller decides where the file goes (:meth:`VideoReader.shortfall`).
    An error in any stage stops all three and is raised here."""
    timings = Timings()
    t0 = time.perf_counter()
    q_in: queue.Queue = queue.Queue(maxsize=2 * batch)
    q_out: queue.Queue = queue.Queue(maxsize=2 * batch)
    stop = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for item in reader.frames():
                if not _put(q_in, item, stop):
                    return
            _put(q_in, _END, stop)
        except BaseException as e:  # handed to the calling thread, which raises it
            errors.append(e)
            stop.set()

    def write() -> None:
        try:
            while True:
                item = _get(q_out, stop)
                if item is _END or item is _STOPPED:
                    return
                writer.write(*item)  # type: ignore[misc]
                timings.frames += 1
                if progress is not None:
                    progress(1)
        except BaseException as e:
            errors.append(e)
            stop.set()

    def failed() -> BaseException:
        return errors[0] if errors else RuntimeError("video pipeline stopped")

    threads = [threading.Thread(target=read, name="video-reader", daemon=True),
               threading.Thread(target=write, name="video-writer", daemon=True)]
    for th in threads:
        th.start()
    try:
        done = False
        while not done:
            items: list[Any] = []
            while len(items) < batch:
                item = _get(q_in, stop)
                if item is _STOPPED:
                    raise failed()
                if item is _END:
                    done = True
                    break
                items.append(item)
            if not items:
                break
            t = time.perf_counter()
            out = process(np.stack([rgb for _, rgb in items]))
            timings.model += time.perf_counter() - t
            for (pts, _), frame in zip(items, out, strict=True):
                if not _put(q_out, (pts, frame), stop):
                    raise failed()
        if not _put(q_out, _END, stop):
            raise failed()
        threads[1].join()
        if errors:
            raise failed()
        writer.finish()
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=5)
    timings.decode, timings.encode = reader.seconds, writer.seconds
    timings.wall = time.perf_counter() - t0
    return timings
