"""ONNX export (scripts/export_onnx.py) and the torch-free runner (utils/onnx_runner.py).

Parity: onnxruntime vs PyTorch (and vs the official outputs) within 1e-4 on the tiny golden
fixtures, and on a real image at x2.5, x4 and an asymmetric size. Needs the optional packages of
requirements-export.txt (onnx, onnxscript, onnxruntime); skips cleanly without them.
"""
from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, SHARED
from models.lm import LMDecoder

TOL = 1e-4
TINY_NAMES = ("liif", "lte", "lmliif", "lmlte")


def _tiny_dir() -> Path | None:
    for d in (ROOT / "tests" / "fixtures" / "official-tiny", SHARED / "fixtures" / "official-tiny"):
        if (d / "manifest.json").is_file():
            return d
    return None


def _need_export_packages() -> None:
    for mod in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(mod, reason=f"{mod} is not installed (pip install -r requirements-export.txt)")


@functools.lru_cache(maxsize=None)
def _export_dir(key: str) -> Path:
    """Export a model once per test session: a tiny fixture model's name, 'bundled' or 'rdn'."""
    import tempfile

    import models
    from models import onnx_export

    if key == "bundled":
        model = models.load_model(ROOT / "weights" / "lmliif_edsr-b_cpu.pth")
    elif key == "rdn":
        model = _rdn_model()
    else:
        model = models.load_model(torch.load(_tiny_dir() / f"{key}.pth", weights_only=True, map_location="cpu"))
    folder = Path(tempfile.mkdtemp(prefix=f"lmf-onnx-{key}-"))
    onnx_export.export(model, folder)
    return folder


def _rdn_model() -> torch.nn.Module:
    """A small LM-LTE on an RDN encoder (config A, narrow), random weights."""
    import models

    torch.manual_seed(5)
    spec = {"name": "lmlte", "args": {
        "encoder_spec": {"name": "rdn", "args": {"G0": 8, "RDNconfig": "A", "no_upsampling": True}},
        "imnet_spec": {"name": "lmmlp", "args": {"out_dim": 3, "hidden_dim": 16, "hidden_depth": 6}},
        "hypernet_spec": {"name": "mlp", "args": {"hidden_list": [32]}}, "hidden_dim": 32, "mod_input": True}}
    model = models.make(spec).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _model(key: str) -> torch.nn.Module:
    import models

    if key == "bundled":
        return models.load_model(ROOT / "weights" / "lmliif_edsr-b_cpu.pth")
    if key == "rdn":
        return _rdn_model()
    return models.load_model(torch.load(_tiny_dir() / f"{key}.pth", weights_only=True, map_location="cpu"))


def _runner(key: str):
    from utils.onnx_runner import OnnxUpscaler

    return OnnxUpscaler(_export_dir(key), threads=2)


# --- golden fixtures ----------------------------------------------------------------------
@pytest.mark.parametrize("name", TINY_NAMES)
def test_golden_fixtures_parity(name):
    """Every eval case of the tiny official fixtures (x2, x3.7, x4, 30x48, x8; no CMSR): the ONNX
    graphs give the official outputs and PyTorch's within 1e-4 (normalised space)."""
    tiny = _tiny_dir()
    if tiny is None:
        pytest.skip("needs the tiny official fixtures (tests/fixtures/official-tiny or ../shared/fixtures/official-tiny)")
    _need_export_packages()
    exp = torch.load(tiny / "expected.pt", weights_only=True)
    cases = [c for c in json.loads((tiny / "manifest.json").read_text())["cases"]
             if c["model"] == name and c["mode"] == "eval" and not c["cmsr"]]
    assert len(cases) == 5
    model, runner = _model(name), _runner(name)
    inp = exp["input"]
    for case in cases:
        coord, cell = exp[case["coord_key"]], exp[case["cell_key"]]
        out = runner.predict(inp.numpy(), coord.numpy(), cell.numpy())
        with torch.no_grad():
            ref = model(inp, coord, cell, **({"cmsr": False} if isinstance(model, LMDecoder) else {})).numpy()
        assert np.abs(out - exp[case["key"]].numpy()).max() <= TOL, case["key"]
        assert np.abs(out - ref).max() <= TOL, case["key"]


# --- a real image -------------------------------------------------------------------------
def _real_image() -> np.ndarray:
    """(3, h, w) in [0, 1]: a 40x52 crop of Set5 butterfly if ../shared has it, else a
    synthetic image with edges, texture and smooth gradients."""
    path = SHARED / "data" / "benchmark" / "Set5" / "HR" / "butterfly.png"
    if path.is_file():
        from utils.images import read_image

        return np.ascontiguousarray(read_image(path)[100:140, 80:132].transpose(2, 0, 1)).astype(np.float32) / 255
    y, x = np.mgrid[0:40, 0:52].astype(np.float32)
    img = np.stack([(np.sin(x / 3) * np.cos(y / 5) + 1) / 2, (x > 20).astype(np.float32) * 0.8 + 0.1,
                    ((x + y) % 7) / 7], axis=0)
    return img.astype(np.float32)


SIZES = {"x2.5": lambda h, w: (round(h * 2.5), round(w * 2.5)), "x4": lambda h, w: (h * 4, w * 4),
         "3.3x2": lambda h, w: (round(h * 3.3), w * 2)}  # asymmetric (HxW)


@pytest.mark.parametrize("key", ["bundled", "lmlte", "lte", "liif", "rdn"])
def test_real_image_parity(key):
    """The runner's upsample == models.inference.upsample (PyTorch, fused kernel where it applies)."""
    if key not in ("bundled", "rdn") and _tiny_dir() is None:
        pytest.skip("needs the tiny official fixtures")
    _need_export_packages()
    from models.inference import upsample

    img = _real_image()
    model, runner = _model(key), _runner(key)
    h, w = img.shape[1:]
    for label, size_fn in SIZES.items():
        size = size_fn(h, w)
        ref = upsample(model, torch.from_numpy(img)[None], size, cmsr=False)[0].numpy()
        out = runner.upsample(img, size)
        assert out.shape == ref.shape == (3, *size)
        assert np.abs(out - ref).max() <= TOL, label


def test_runner_bands_and_chunks_are_exact():
    """Small latent bands (with halo) and small render chunks give the same image as one call."""
    _need_export_packages()
    from utils.onnx_runner import OnnxUpscaler

    img = _real_image()
    size = (97, 131)
    whole = OnnxUpscaler(_export_dir("bundled"), threads=2).upsample(img, size)
    small = OnnxUpscaler(_export_dir("bundled"), threads=2, chunk=1000)
    small.meta = dict(small.meta, latent_band_cells=3 * img.shape[2] + 5)  # 3-row bands
    assert np.abs(small.upsample(img, size) - whole).max() <= 1e-5


def test_coordinates_are_bit_identical_to_pytorch():
    from utils.coords import axis_coords, make_cell
    from utils.onnx_runner import axis_coords as np_axis_coords
    from utils.onnx_runner import clipped_cell
    from models.inference import clip_cell

    for n in (1, 2, 3, 7, 30, 59, 720, 2881, 5120):
        assert np.array_equal(np_axis_coords(n), axis_coords(n).numpy()), n
    for hw, s in (((96, 128), (8.0, 8.0)), ((30, 48), (2.5, 3.0)), ((44, 59), (3.7, 3.6875))):
        ref = clip_cell(make_cell(hw, n=1), s)[0].numpy()
        assert np.array_equal(clipped_cell(hw, s, 4.0), ref)


# --- files, torch-free use ----------------------------------------------------------------
def test_export_writes_graphs_and_json():
    _need_export_packages()
    folder = _export_dir("lmliif" if _tiny_dir() else "bundled")
    meta = json.loads((folder / "model.json").read_text())
    assert meta["model"] == "lmliif" and meta["render_tables"] == ["mods"]
    assert meta["normalisation"]["inp_sub"] == [0.5] and meta["training_scale_range"] == [1.0, 4.0]
    import onnx

    for g in ("encoder", "latent", "render"):
        onnx.checker.check_model(str(folder / f"{g}.onnx"))
    render = onnx.load(str(folder / "render.onnx"))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in render.graph.input}
    assert all(isinstance(d, str) for d in dims["image"][2:]) and isinstance(dims["coord"][1], str)


RUNNER_SCRIPT = textwrap.dedent("""
    import sys, resource
    sys.path.insert(0, {root!r})
    from PIL import Image
    import numpy as np
    import utils.onnx_runner as r
    assert "torch" not in sys.modules
    if {folder!r}:
        h, w = {lr!r}
        y, x = np.mgrid[0:h, 0:w]
        arr = np.stack([(x * 7 + y * 3) % 256, (x ^ y) % 256, (y * 5) % 256], -1).astype(np.uint8)
        Image.fromarray(arr).convert("RGBA").save({src!r})
        m = r.OnnxUpscaler({folder!r}, threads=2)
        r.upscale_file(m, {src!r}, {dst!r}, (h * {scale}, w * {scale}))
        assert "torch" not in sys.modules, "the runner imported torch"
        out = Image.open({dst!r})
        assert out.size == (w * {scale}, h * {scale}) and out.mode == "RGBA", (out.size, out.mode)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


# what docs/export.md says a machine without torch needs beside onnxruntime, numpy and Pillow
RUNNER_FILES = ("utils/__init__.py", "utils/onnx_runner.py", "utils/images.py", "utils/errors.py", "utils/atomic.py")


def _runner_only_copy(dest: Path) -> Path:
    """The documented runner files alone, in a folder of their own (no repository on the path)."""
    doc = (ROOT / "docs" / "export.md").read_text()
    for f in RUNNER_FILES:
        assert f"`{Path(f).name}`" in doc, f"docs/export.md does not list {f}"
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        (dest / f).write_bytes((ROOT / f).read_bytes())
    return dest


def _run_runner(tmp_path: Path, folder: Path | None, lr: tuple[int, int] = (9, 13), scale: int = 3) -> int:
    root = _runner_only_copy(tmp_path / "runner-only")
    code = RUNNER_SCRIPT.format(root=str(root), folder=str(folder) if folder else "", lr=lr, scale=scale,
                                src=str(tmp_path / "in.png"), dst=str(tmp_path / "out.png"))
    res = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    return int(res.stdout.split()[-1])  # peak RSS in KiB (Linux)


def test_runner_module_imports_no_torch(tmp_path):
    """A fresh interpreter imports the runner, and (with onnxruntime) upscales an RGBA file, without torch."""
    _run_runner(tmp_path, None)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return
    _need_export_packages()
    _run_runner(tmp_path, _export_dir("bundled"))


@pytest.mark.skipif(sys.platform != "linux", reason="peak RSS is read in KiB from Linux's getrusage")
def test_runner_bounded_memory_1280x720_x4(tmp_path):
    """1280x720 -> 5120x2880 with the bundled model: peak RSS stays far below what rendering all
    14.7 M queries at once would take (the K=4 per-neighbour rows alone: > 10 GB)."""
    _need_export_packages()
    peak_kib = _run_runner(tmp_path, _export_dir("bundled"), lr=(720, 1280), scale=4)
    print(f"runner peak RSS, 1280x720 x4: {peak_kib / 2**20:.2f} GiB")
    assert peak_kib < 3 * 2**20


def test_runner_rgba_has_no_fringe_from_hidden_colour(tmp_path):
    """The runner fills the colour under fully transparent pixels as the PyTorch path does (no
    green rim around a disc cut out of a green background), and writes what upscale_image gives."""
    _need_export_packages()
    from PIL import Image
    from test_alpha import _disc_over_green, _green_excess

    from models.inference import upscale_image
    from utils.images import to_pil
    from utils.onnx_runner import upscale_file

    src = _disc_over_green()
    path, dst = tmp_path / "disc.png", tmp_path / "out.png"
    src.save(path)
    upscale_file(_runner("bundled"), path, dst, (192, 192))
    out = np.asarray(Image.open(dst))
    assert out.shape == (192, 192, 4) and _green_excess(out) == 0
    ref = np.asarray(to_pil(upscale_image(_model("bundled"), path, scale=4)))
    assert np.abs(out.astype(np.int16) - ref.astype(np.int16)).max() <= 1


# --- bad requests -------------------------------------------------------------------------
def _export_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "export_onnx.py"), *argv],
                          capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("case", ["missing-model", "opset", "chunk", "cmsr-non-lm", "out-is-file", "out-exists",
                                  "out-has-other-files", "unwritable", "unknown-model", "not-exportable",
                                  "swinir", "bad-option"])
def test_bad_export_requests_one_line_exit_2(case, tmp_path):
    _need_export_packages()
    out = tmp_path / "out"
    argv = ["--out", str(out)]
    if case == "missing-model":
        argv += ["--model", str(tmp_path / "nope.pth")]
    elif case == "opset":
        argv += ["--opset", "11"]
    elif case == "chunk":
        argv += ["--chunk", "0"]
    elif case == "cmsr-non-lm":
        if _tiny_dir() is None:
            pytest.skip("needs the tiny official fixtures")
        argv += ["--model", str(_tiny_dir() / "liif.pth"), "--cmsr", str(ROOT / "weights" / "cmsr_lmliif_edsr-b_cpu.yaml")]
    elif case == "out-is-file":
        out.write_text("keep me")
        argv = ["--out", str(out)]
    elif case == "out-exists":
        out.mkdir()
        (out / "model.json").write_text("{}")
    elif case == "out-has-other-files":
        out.mkdir()
        (out / "holiday.png").write_bytes(b"mine")
    elif case == "unwritable":
        import os
        if os.geteuid() == 0:
            argv = ["--out", "/proc/lmf-export"]  # not writable even for root
        else:
            out.mkdir()
            out.chmod(0o500)
            argv = ["--out", str(out / "sub")]
    elif case == "unknown-model":  # a name no registry knows
        ck = tmp_path / "srgan.pth"
        torch.save({"model": {"name": "srgan", "args": {}, "sd": {}}}, ck)
        argv += ["--model", str(ck)]
    elif case == "not-exportable":  # a decoder we have but do not export (LM-CiaoSR)
        import models
        from test_lmciaosr import tiny_spec

        spec, ck = tiny_spec(), tmp_path / "lmciaosr.pth"
        torch.save({"model": {**spec, "sd": models.make(spec).state_dict()}}, ck)
        argv += ["--model", str(ck)]
    elif case == "swinir":  # the exporter fixes SwinIR's input size: refused, not a one-size graph
        import models

        torch.manual_seed(0)
        spec = {"name": "lmliif", "args": {
            "encoder_spec": {"name": "swinir", "args": {"no_upsampling": True, "embed_dim": 12, "depths": [2],
                                                        "num_heads": [2], "window_size": 4, "img_size": 16}},
            "imnet_spec": {"name": "lmmlp", "args": {"out_dim": 3, "hidden_dim": 16, "hidden_depth": 2}},
            "hypernet_spec": {"name": "mlp", "args": {"hidden_list": [32]}}, "mod_input": True}}
        ck = tmp_path / "swinir-lmliif.pth"
        torch.save({"model": {**spec, "sd": models.make(spec).state_dict()}}, ck)
        argv += ["--model", str(ck)]
    elif case == "bad-option":
        argv += ["--precision", "fp16"]
    res = _export_cli(*argv)
    assert res.returncode == 2, res.stderr[-1500:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-1500:]
    assert "Traceback" not in res.stderr
    expected = {"opset": "opset 11 is not supported", "not-exportable": "'lmciaosr' cannot be exported to ONNX",
                "out-has-other-files": "holds other files (holiday.png)",
                "swinir": "cannot be exported with dynamic sizes"}
    assert expected.get(case, "") in lines[0]
    if case == "out-is-file":
        assert out.read_text() == "keep me"
    if case == "out-exists":
        assert (out / "model.json").read_text() == "{}"
    if case == "out-has-other-files":
        assert sorted(p.name for p in out.iterdir()) == ["holiday.png"]
    if case == "swinir":  # the temporary export folder is gone
        assert not out.exists() or not any(out.iterdir())


def test_runner_bad_folder_is_one_clear_error(tmp_path):
    from utils.errors import UserError
    from utils.onnx_runner import OnnxUpscaler

    with pytest.raises(UserError, match="does not exist"):
        OnnxUpscaler(tmp_path / "nope")
    with pytest.raises(UserError, match="model.json"):
        OnnxUpscaler(tmp_path)
    (tmp_path / "model.json").write_text('{"format": "something-else"}')
    with pytest.raises(UserError, match="not an lmf-onnx"):
        OnnxUpscaler(tmp_path)
    with pytest.raises(UserError, match="is a file: pass the export folder"):
        OnnxUpscaler(tmp_path / "model.json")


def _copy_export(key: str, dest: Path) -> Path:
    import shutil

    return Path(shutil.copytree(_export_dir(key), dest))


@pytest.mark.parametrize("case", ["version", "missing-key", "mixed-render", "mixed-latent"])
def test_runner_refuses_a_stale_or_mixed_export(case, tmp_path):
    """model.json of another format version or without a key it needs, or graphs of two exports
    in one folder: one UserError naming the problem (no onnxruntime or KeyError traceback)."""
    _need_export_packages()
    if _tiny_dir() is None:
        pytest.skip("needs the tiny official fixtures")
    from utils.errors import UserError
    from utils.onnx_runner import OnnxUpscaler

    folder = _copy_export("lmliif", tmp_path / "lmliif")
    meta = json.loads((folder / "model.json").read_text())
    if case == "version":
        meta["version"] = 2
        expect = "format version 2; this runner reads version 1"
    elif case == "missing-key":
        del meta["chunk"], meta["normalisation"]["gt_div"]
        expect = "lacks chunk, normalisation"
    else:  # LIIF's graph (it reads per-cell rows, not mods) dropped into the LM-LIIF export
        graph = case.split("-")[1] + ".onnx"
        (folder / graph).write_bytes((_export_dir("liif") / graph).read_bytes())
        expect = f"{graph} does not belong with this model.json"
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=expect):
        OnnxUpscaler(folder)


def test_runner_checks_its_python_arguments(tmp_path):
    _need_export_packages()
    from PIL import Image

    from utils.errors import UserError
    from utils.onnx_runner import upscale_file

    m = _runner("bundled")
    img = np.zeros((3, 4, 5), np.float32)
    with pytest.raises(UserError, match=r"\(3, h, w\) float image.*got uint8"):
        m.upsample((img * 255).astype(np.uint8), (8, 10))
    with pytest.raises(UserError, match=r"\(3, h, w\) float image.*got float32 \(4, 5, 3\)"):
        m.upsample(img.transpose(1, 2, 0), (8, 10))
    for size in [(0, 0), (8.5, 10)]:
        with pytest.raises(UserError, match="two whole numbers >= 1"):
            m.upsample(img, size)
    src = tmp_path / "x.png"
    Image.new("RGB", (5, 4), (10, 20, 30)).save(src)
    before = src.read_bytes()
    with pytest.raises(UserError, match="is the input image"):
        upscale_file(m, src, src, (8, 10))
    assert src.read_bytes() == before


# --- demo.py --onnx -----------------------------------------------------------------------
def _demo(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "demo.py"), *argv], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("mode", ["LA", "RGB"])
def test_demo_onnx_matches_demo_pytorch(mode, tmp_path):
    """demo.py --onnx writes the image demo.py writes with PyTorch (same size, mode; pixels within
    one 8-bit level), for a grayscale+alpha and an RGB input, at an asymmetric scale."""
    _need_export_packages()
    from PIL import Image

    img = (_real_image()[:, :21, :30] * 255).round().astype(np.uint8).transpose(1, 2, 0)
    src = tmp_path / "in.png"
    im = Image.fromarray(img)
    if mode == "LA":
        im = im.convert("L")
        im.putalpha(Image.fromarray(img[:, :, 1]))
    im.save(src)
    a, b = tmp_path / "torch.png", tmp_path / "onnx.png"
    r1 = _demo("--input", str(src), "--scale", "3x2.5", "--output", str(a), "--device", "cpu")
    r2 = _demo("--onnx", str(_export_dir("bundled")), "--input", str(src), "--scale", "3x2.5", "--output", str(b))
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr
    ia, ib = Image.open(a), Image.open(b)
    assert ia.mode == ib.mode == mode and ia.size == ib.size == (75, 63)
    assert np.abs(np.asarray(ia, np.int16) - np.asarray(ib, np.int16)).max() <= 1


@pytest.mark.parametrize("extra", [["--cmsr"], ["--model", "x.pth"], ["--device", "cuda"], []])
def test_demo_onnx_bad_requests(extra, tmp_path):
    """Options the ONNX runner does not have, and a folder that is not an export: one line, exit 2."""
    from PIL import Image

    src = tmp_path / "in.png"
    Image.new("RGB", (5, 4)).save(src)
    folder = tmp_path / "not-an-export"
    folder.mkdir()
    res = _demo("--onnx", str(folder), "--input", str(src), "--scale", "2", "--output", str(tmp_path / "o.png"), *extra)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert not (tmp_path / "o.png").exists()
