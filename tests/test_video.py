"""Video upscaling (demo.py --input movie.mp4 --output out.mp4; utils/video.py, models/video.py).

Short synthetic clips are made in the tests (scripts/make_clip.py). The whole module skips with
the reason when PyAV, the optional extra of requirements-video.txt, is not installed."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

av = pytest.importorskip("av", reason="PyAV is not installed (optional extra: pip install -r requirements-video.txt)")

sys.path.insert(0, str(ROOT / "scripts"))
import demo  # noqa: E402
from make_clip import make_clip  # noqa: E402

from utils.errors import UserError  # noqa: E402
from utils.video import Encoding, VideoReader, VideoWriter, check_encoding, transcode  # noqa: E402

MODEL = ROOT / "weights" / "lmliif_edsr-b_cpu.pth"


def _decode(path: Path) -> tuple[list[np.ndarray], list[int], dict]:
    """RGB frames (the reader's conversion), their pts, and what the container says."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        info = {"rate": v.average_rate, "frames": v.frames, "duration": c.duration, "size": (v.width, v.height),
                "audio": [(s.codec_context.name, s.sample_rate) for s in c.streams.audio],
                "tags": (v.codec_context.colorspace, v.codec_context.color_primaries, v.codec_context.color_range)}
    r = VideoReader(path)
    frames, pts = [], []
    for p, rgb in r.frames():
        frames.append(rgb)
        pts.append(p)
    r.close()
    return frames, pts, info


def _audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def _demo(*args: str) -> int:
    return demo.main(["--model", str(MODEL), "--device", "cpu", *args])


def _per_image(frames: list[np.ndarray], size: tuple[int, int]) -> list[np.ndarray]:
    """The same frames through demo.py's per-image path (models.inference.upscale_image, rounded
    as utils.images.to_pil rounds when saving)."""
    import torch
    from PIL import Image

    import models
    from models.inference import upscale_image
    from utils.images import to_pil

    model = models.load_model(MODEL, device=torch.device("cpu"))
    return [np.asarray(to_pil(upscale_image(model, Image.fromarray(f), size=size))) for f in frames]


def test_video_keeps_frames_timing_and_audio_and_matches_the_per_image_path(tmp_path, capsys):
    src, dst = make_clip(tmp_path / "in.mp4", 48, 32, count=8, fps=25), tmp_path / "out" / "up.mp4"
    # CRF 0: x264 without loss after yuv420p, whose bit stream varies from run to run on some frames
    # (x264's threads, seen at this size), so that 'encoded the same way' decodes the same way
    assert _demo("--input", str(src), "--scale", "2", "--output", str(dst), "--crf", "0") == 0
    out = capsys.readouterr().out
    assert "8 frames" in out and "frames/s" in out and "audio stream(s) copied" in out, out
    f_in, pts_in, i_in = _decode(src)
    f_out, pts_out, i_out = _decode(dst)
    assert len(f_out) == len(f_in) == 8
    assert i_out["size"] == (96, 64) and i_out["rate"] == i_in["rate"] == 25
    assert abs(i_out["duration"] - i_in["duration"]) <= 1e6 / 25, (i_out["duration"], i_in["duration"])
    assert [float(p) for p in pts_out] == [float(p) for p in pts_in]  # same time base: same timestamps
    assert i_out["audio"] == i_in["audio"] and _audio_packets(dst) == _audio_packets(src)  # copied, not re-encoded
    assert i_out["tags"] == (6, 6, 1)  # a 32-line input: BT.601 (SMPTE 170M), limited range, written down
    # the per-image path's frames, encoded the same way (this writer, libx264 CRF 0, yuv420p), decode alike
    ref = _per_image(f_in, (64, 96))
    enc = tmp_path / "ref.mp4"
    r = VideoReader(src)
    w = VideoWriter(r, enc, (64, 96), check_encoding(Encoding(crf=0, audio=False)))
    for p, frame in zip(pts_in, ref, strict=True):
        w.write(p, frame)
    w.finish()
    w.publish()
    r.close()
    f_ref, _, _ = _decode(enc)
    worst = min(_psnr(a, b) for a, b in zip(f_out, f_ref, strict=True))
    assert worst >= 45, worst
    assert not list(dst.parent.glob(".tmp-*"))


def test_lossless_video_frames_equal_the_per_image_path(tmp_path):
    src, dst = make_clip(tmp_path / "in.mkv", 48, 32, count=4, fps=24, audio=False), tmp_path / "up.mkv"
    assert _demo("--input", str(src), "--size", "80x56", "--output", str(dst), "--codec", "ffv1",
                 "--pix-fmt", "bgr0") == 0
    f_in, _, _ = _decode(src)
    f_out, _, info = _decode(dst)
    assert info["size"] == (80, 56) and len(f_out) == 4
    ref = _per_image(f_in, (56, 80))
    worst = min(_psnr(a, b) for a, b in zip(f_out, ref, strict=True))
    assert worst >= 45, worst
    # lossless RGB out: the same 8-bit pixels, but for float round-off flipping a rounding now and then
    diff = np.abs(np.stack(f_out).astype(int) - np.stack(ref))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())


@pytest.mark.parametrize("size,tag", [((64, 36), None), ((1280, 720), None), ((64, 36), "bt709")])
def test_colours_survive_the_round_trip(tmp_path, size, tag):
    """Decoding to RGB and encoding back use one matrix and the output is tagged with it: a x2
    nearest-neighbour 'model' gives back the input's colours (an SD/HD matrix mix-up is ~10 levels off)."""
    w, h = size
    src = tmp_path / "in.mp4"
    with av.open(str(src), "w") as c:
        s = c.add_stream("libx264", rate=10, options={"crf": "0"})
        s.width, s.height, s.pix_fmt = w, h, "yuv444p"
        if tag:
            s.codec_context.colorspace = s.codec_context.color_primaries = s.codec_context.color_trc = 1
            s.codec_context.color_range = 1
        img = np.zeros((h, w, 3), np.uint8)
        img[:, : w // 2] = (220, 40, 30)
        img[:, w // 2:] = (30, 200, 90)
        for i in range(2):
            f = av.VideoFrame.from_ndarray(img, "rgb24").reformat(format="yuv444p", dst_colorspace="ITU709" if (
                tag or w >= 1280) else "ITU601", dst_color_range="MPEG")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    r = VideoReader(src)
    assert r.colour.guessed == (tag is None) and r.colour.matrix == ("ITU709" if tag or w >= 1280 else "ITU601")
    dst = tmp_path / "out.mp4"
    wr = VideoWriter(r, dst, (2 * h, 2 * w), check_encoding(Encoding(crf=0)))
    transcode(r, wr, lambda b: b.repeat(2, axis=1).repeat(2, axis=2))
    wr.publish()
    r.close()
    frames, _, info = _decode(dst)
    assert info["tags"][0] == (1 if tag or w >= 1280 else 6)
    got = frames[0][::2, ::2].astype(int)
    assert np.abs(got[4:-4, 4: w // 2 - 4] - (220, 40, 30)).max() <= 3
    assert np.abs(got[4:-4, w // 2 + 4:-4] - (30, 200, 90)).max() <= 3


def test_a_cut_video_gives_one_line_and_a_playable_partial_file(tmp_path, capsys):
    whole = make_clip(tmp_path / "whole.mkv", 32, 18, count=24, fps=12)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])  # an interrupted download
    dst = tmp_path / "up.mkv"
    assert _demo("--input", str(cut), "--scale", "2", "--output", str(dst)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: input video") and "cut short" in err and "up.partial.mkv" in err, err
    assert not dst.exists() and not list(tmp_path.glob(".tmp-*"))
    frames, _, info = _decode(tmp_path / "up.partial.mkv")  # finished, playable, and named partial
    assert 3 <= len(frames) < 24 and info["size"] == (64, 36)


def test_a_damaged_video_packet_gives_a_partial_file_not_a_finished_one(tmp_path, capsys):
    src = make_clip(tmp_path / "in.mp4", 32, 18, count=24, fps=12, audio=False)
    with av.open(str(src)) as c:
        packets = [(p.pos, p.size) for p in c.demux(video=0) if p.size and p.pos is not None]
    pos, size = packets[len(packets) // 2]
    data = bytearray(src.read_bytes())
    data[pos:pos + size] = bytes((b * 7 + 3) % 256 for b in data[pos:pos + size])  # a damaged frame midway
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    dst = tmp_path / "up.mp4"
    assert _demo("--input", str(bad), "--scale", "2", "--output", str(dst)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "could not be decoded" in err and "up.partial.mp4" in err and "was not written" in err, err
    assert not dst.exists() and len(_decode(tmp_path / "up.partial.mp4")[0]) >= 10


def test_a_file_that_is_no_video_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"<html>not a video</html>")
    assert _demo("--input", str(bad), "--scale", "2", "--output", str(tmp_path / "o.mp4")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot read video") and "\n" not in err, err
    assert not list(tmp_path.glob("o*")) and not list(tmp_path.glob(".tmp-*"))


def test_existing_output_needs_overwrite_and_sizes_fit_the_pixel_format(tmp_path, capsys):
    src = make_clip(tmp_path / "in.mp4", 50, 30, count=3, fps=10, audio=False)
    dst = tmp_path / "up.mp4"
    dst.write_bytes(b"keep me")
    assert _demo("--input", str(src), "--scale", "1.5", "--output", str(dst)) == 2
    assert "--overwrite" in capsys.readouterr().err and dst.read_bytes() == b"keep me"
    assert _demo("--input", str(src), "--scale", "1.5", "--output", str(dst), "--overwrite") == 0
    assert "76x46 instead of 75x45" in capsys.readouterr().out  # yuv420p needs even sides
    assert _decode(dst)[2]["size"] == (76, 46)
    assert _demo("--input", str(src), "--size", "75x45", "--output", str(tmp_path / "x.mp4")) == 2
    assert "--size 76x46" in capsys.readouterr().err  # an exact size is not changed behind the user's back
    assert _demo("--input", str(src), "--scale", "2", "--output", str(tmp_path / "x.png")) == 2
    assert "video" in capsys.readouterr().err


def test_frames_stream_in_bounded_memory_and_errors_stop_all_threads(tmp_path):
    """At most 2 x batch frames wait on either side of the model, whatever the length; a failing
    model stops the reader and writer and leaves no file."""
    src = make_clip(tmp_path / "in.mp4", 32, 18, count=30, fps=30, audio=False)
    r = VideoReader(src)
    decoded = {"n": 0}
    frames = r.frames

    def counting():
        for item in frames():
            decoded["n"] += 1
            yield item

    r.frames = counting  # type: ignore[method-assign]
    seen, ahead = [0], []

    def slow(batch):
        time.sleep(0.02)
        seen[0] += len(batch)
        ahead.append(decoded["n"] - seen[0])
        return batch

    w = VideoWriter(r, tmp_path / "o.mp4", (18, 32), check_encoding(Encoding()))
    t = transcode(r, w, slow, batch=3)
    w.publish()
    r.close()
    assert t.frames == 30 and max(ahead) <= 2 * 3 + 2, ahead  # the queue plus the frame in the reader's hands

    r = VideoReader(src)
    w = VideoWriter(r, tmp_path / "p.mp4", (18, 32), check_encoding(Encoding()))
    calls = [0]

    def boom(batch):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt  # Ctrl-C during the model
        return batch

    before = threading.active_count()
    with pytest.raises(KeyboardInterrupt):
        try:
            transcode(r, w, boom, batch=2)
        except BaseException:
            w.discard()
            raise
    r.close()
    assert threading.active_count() == before and not list(tmp_path.glob(".tmp-*")) and not (tmp_path / "p.mp4").exists()


def test_encoding_options_are_checked_in_one_line():
    with pytest.raises(UserError, match="not a video encoder"):
        check_encoding(Encoding(codec="nope"))
    with pytest.raises(UserError, match="codec ffv1 has no crf"):
        check_encoding(Encoding(codec="ffv1", crf=20))
    with pytest.raises(UserError, match="--pix-fmt 'rgb48le'"):
        check_encoding(Encoding(pix_fmt="rgb48le"))
    assert check_encoding(Encoding()).options == {"crf": "18", "preset": "medium"}
    assert check_encoding(Encoding(codec="libvpx-vp9")).options["b"] == "0"


def test_without_pyav_video_is_one_line(tmp_path):
    """On a machine without the extra, video input says how to install it (PyAV hidden from a child)."""
    code = ("import sys; sys.modules['av'] = None; import demo; "
            f"sys.exit(demo.main(['--input', {str(tmp_path / 'in.mp4')!r}, '--scale', '2', '--output', "
            f"{str(tmp_path / 'o.mp4')!r}]))")
    (tmp_path / "in.mp4").write_bytes(b"x")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.strip().startswith("error: video needs PyAV"), p.stderr
    assert "requirements-video.txt" in p.stderr


def test_on_cuda_frames_go_through_the_model_in_batches(tmp_path):
    """The CUDA path (tests/fake_cuda.py's stand-in: every device branch taken, tensors kept on the
    CPU): the default device is the GPU, four frames a model call, 8-bit frames brought back."""
    import fake_cuda

    src, dst = make_clip(tmp_path / "in.mp4", 48, 32, count=6, fps=12), tmp_path / "up.mp4"
    p = subprocess.run([sys.executable, "demo.py", "--input", str(src), "--scale", "2", "--output", str(dst),
                        "--model", str(MODEL)], cwd=ROOT, env=fake_cuda.env_for(count=1), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "on cuda:0" in p.stdout and "batch 4" in p.stdout and "6 frames" in p.stdout, p.stdout
    frames, _, info = _decode(dst)
    assert len(frames) == 6 and info["size"] == (96, 64)
