"""Memory of an upscaling: the streamed PNG writer, the peak estimate (utils/ram.py) against
peaks measured now, and the one-line refusal above the memory available (issue 23, item 1)."""
from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from utils import ram
from utils.errors import UserError
from utils.images import ImageWriter, save_array, to_pil

ROOT = Path(__file__).resolve().parents[1]


# --- the writer ----------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("hw", [(1, 1), (1, 9), (7, 1), (37, 53)])
def test_streamed_png_holds_exactly_the_pixels_pillow_writes(tmp_path, channels, hw):
    rng = np.random.default_rng(channels * 100 + hw[0])
    img = rng.random((channels, *hw)).astype(np.float32)
    img[:, hw[0] // 2:] = np.linspace(0, 1, hw[1], dtype=np.float32)  # smooth rows: other filters win
    path = tmp_path / "a.png"
    with ImageWriter(path, hw[0], hw[1], channels) as out:
        r = 0
        while r < hw[0]:  # bands of uneven heights
            n = int(rng.integers(1, 6))
            out.write(img[:, r:r + n])
            r += n
    with Image.open(path) as got:
        assert got.mode == {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
        assert np.array_equal(np.asarray(got), np.asarray(to_pil(img)))


def _idat_stream(path) -> bytes:
    """The concatenated IDAT data of a PNG file (one zlib stream)."""
    data, pos, out = Path(path).read_bytes(), 8, bytearray()
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        if data[pos + 4:pos + 8] == b"IDAT":
            out += data[pos + 8:pos + 8 + n]
        pos += 12 + n
    return bytes(out)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_compressed_in_many_parallel_pieces_is_one_valid_stream(tmp_path, monkeypatch, channels):
    """Pieces of a few rows, several in flight, IDAT chunks cut inside pieces: the pixels are
    Pillow's, and the zlib stream (segments, final block, combined checksum) decompresses with
    its checksum verified to exactly the filtered rows."""
    from utils import images

    monkeypatch.setattr(images._PngStream, "PIECE", 200)
    monkeypatch.setattr(images._PngStream, "CHUNK", 300)
    rng = np.random.default_rng(channels)
    img = rng.random((channels, 97, 131)).astype(np.float32)
    img[:, 40:] = np.linspace(0, 1, 131, dtype=np.float32)  # smooth rows: filters other than none win
    path = tmp_path / "a.png"
    with ImageWriter(path, 97, 131, channels) as out:
        for r in range(0, 97, 13):
            out.write(img[:, r:r + 13])
    with Image.open(path) as got:
        assert np.array_equal(np.asarray(got), np.asarray(to_pil(img)))
    raw = zlib.decompress(_idat_stream(path))  # raises on a wrong adler32
    assert len(raw) == 97 * (1 + 131 * channels)
    assert len(_idat_stream(path)) > 0 and path.stat().st_size < 97 * 131 * channels * 1.2


def test_adler32_of_a_concatenation_from_its_parts():
    from utils.images import _adler32_cat

    rng = np.random.default_rng(0)
    for n_a, n_b in [(0, 0), (0, 5), (5, 0), (1, 1), (3000, 70000), (70000, 200000)]:
        a, b = rng.integers(0, 256, n_a, dtype=np.uint8).tobytes(), rng.integers(0, 256, n_b, dtype=np.uint8).tobytes()
        assert _adler32_cat(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(a + b)
    ones = b"\xff" * 200000  # sums that wrap the modulus many times
    assert _adler32_cat(zlib.adler32(ones), zlib.adler32(ones), len(ones)) == zlib.adler32(ones + ones)


def test_writer_leaves_nothing_when_rows_are_missing_or_an_error_occurs(tmp_path):
    img = np.zeros((3, 8, 8), np.float32)
    for name in ("a.png", "a.jpg"):
        with pytest.raises(ValueError, match="4 of 8 rows"):
            with ImageWriter(tmp_path / name, 8, 8, 3) as out:
                out.write(img[:, :4])
        with pytest.raises(RuntimeError):
            with ImageWriter(tmp_path / name, 8, 8, 3) as out:
                out.write(img[:, :4])
                raise RuntimeError("cut")
    assert list(tmp_path.iterdir()) == []


def test_jpeg_drops_alpha_and_other_formats_match_pillow(tmp_path):
    img = np.random.default_rng(0).random((4, 20, 30)).astype(np.float32)
    save_array(img, tmp_path / "a.jpg")
    save_array(img, tmp_path / "a.tif")
    with Image.open(tmp_path / "a.jpg") as j, Image.open(tmp_path / "a.tif") as t:
        assert j.mode == "RGB" and t.mode == "RGBA"
        assert np.array_equal(np.asarray(t), np.asarray(to_pil(img)))


# --- the estimate against measured peaks ------------------------------------------------------------
# A child's ru_maxrss counts the memory it had from its parent before exec (a fork of a
# large pytest process reads as that process's size), so demo.py is started by a small launcher.
_LAUNCH = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def _peak(args: list[str], cwd: Path) -> int:
    """Peak RSS (bytes) of one demo.py process, read from the kernel when it ends."""
    r = subprocess.run([sys.executable, "-c", _LAUNCH, sys.executable, "demo.py", *args], cwd=cwd,
                       capture_output=True, text=True)
    code, kib = map(int, r.stdout.split())
    assert code == 0, r.stderr
    return kib * 1024


@pytest.mark.skipif(not hasattr(os, "wait4") or sys.platform != "linux", reason="ru_maxrss in KiB: Linux")
def test_estimate_covers_the_measured_peak_at_three_sizes_and_a_png_is_not_held(tmp_path):
    src = tmp_path / "in.png"
    with Image.open(ROOT / "samples" / "clouds.png") as im:
        im.convert("RGB").resize((150, 100), Image.Resampling.BICUBIC).save(src)
    chunk = 65536  # a band of 4 chunks (262144 queries): smaller than the two larger outputs
    peaks = {}
    for scale in (2, 8, 24):  # 300x200, 1200x800, 3600x2400
        out = tmp_path / f"x{scale}.png"
        peaks[scale] = _peak(["--input", str(src), "--scale", str(scale), "--output", str(out), "--device", "cpu",
                              "--bsize", str(chunk)], ROOT)
        est = ram.estimate((100, 150), (100 * scale, 150 * scale), "torch-lm-fp32", chunk=chunk)
        assert peaks[scale] <= est, f"x{scale}: measured {peaks[scale] / ram.MiB:.0f} MiB > estimate {est / ram.MiB:.0f}"
        # not far above: 1.6x held when the costs were fitted; this machine now peaks at ~323 MiB at every
        # size here (the estimate's 500 MiB base dominates), also on the commit that fitted them
        assert est <= 1.8 * peaks[scale], f"x{scale}: estimate {est / ram.MiB:.0f} MiB far above {peaks[scale] / ram.MiB:.0f}"
        with Image.open(out) as im:
            assert im.size == (150 * scale, 100 * scale)
    # 7.7 million more output pixels beyond a band cost less than 2 bytes each: the output image
    # (12 bytes a pixel as float, 3 as 8 bit) is never held whole
    assert peaks[24] - peaks[8] < 2 * (3600 * 2400 - 1200 * 800), (peaks[24] - peaks[8]) / ram.MiB


def test_band_constants_are_the_renderers():
    from models import fast_render
    from models.inference import upsample_bands
    from models.liif import LIIF

    assert ram.LM_CHUNK == fast_render.FUSED_BSIZE and ram.OTHER_CHUNK == LIIF.default_bsize
    model = torch.hub.load(str(ROOT), "lmliif", source="local")
    img = torch.rand(1, 3, 10, 12)
    rows = [band.shape[2] for _, band in upsample_bands(model, img, (90, 100), bsize=1000)]
    assert rows[0] == ram.TORCH_BAND_CHUNKS * 1000 // 100 and sum(rows) == 90


# --- the refusal ---------------------------------------------------------------------------------------
def test_refusal_above_available_memory_names_the_largest_size_that_fits(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(ROOT))
    import demo

    avail = 900 * ram.MiB
    monkeypatch.setattr(ram, "available", lambda: avail)
    out = tmp_path / "big.jpg"
    rc = demo.main(["--input", str(ROOT / "samples" / "clouds.png"), "--scale", "60", "--output", str(out),
                    "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("error: output 9600x7200"), err
    assert "largest that fits is about" in err and ".png output" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []
    size = err.split("--size ")[1].split(")")[0]
    w, h = (int(v) for v in size.split("x"))
    kind = ram.path_kind()
    ram.check_fits((120, 160), (h, w), kind, fmt_streamed=False, avail=avail)  # the size it names fits
    with pytest.raises(UserError):
        ram.check_fits((120, 160), (h + 8, w + 8), kind, fmt_streamed=False, avail=avail)  # and is the largest
    # the same output as a PNG is streamed: it fits where the JPEG did not
    ram.check_fits((120, 160), (7200, 9600), kind, fmt_streamed=True, avail=avail)


def test_an_input_too_large_for_any_output_says_so():
    with pytest.raises(UserError, match="use a smaller input image"):
        ram.check_fits((4000, 6000), (8000, 12000), "torch-lm-fp32", avail=2 * ram.GiB)


def test_available_memory_is_read():
    avail = ram.available()
    assert avail is None or 0 < avail < 2 ** 50
