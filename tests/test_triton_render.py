"""The Triton render kernels (models/triton_render.py) compute what the PyTorch path computes.

On a machine without a GPU the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``,
set here before the kernels are first built), which is slow: the cases are kept small. With
``LMF_TEST_DEVICE=cuda`` they run compiled on the GPU. Skipped when ``triton`` is not installed
(``pip install triton``; .ci/run installs it).
"""
from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import pytest
import torch

from conftest import DEVICE, FIXTURES, need

pytest.importorskip("triton", reason="triton is not installed (pip install triton): Triton render kernels untested")

if DEVICE.type == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are first built (below, lazily)

import models  # noqa: E402
from models import fast_render, triton_render  # noqa: E402
from models.mlp import ModulatedMLP  # noqa: E402
from utils.coords import make_cell, make_coord  # noqa: E402

_kernels = triton_render.kernels()
pytestmark = pytest.mark.skipif(DEVICE.type == "cpu" and _kernels is not None
                                and type(_kernels["query"]).__name__ != "InterpretedFunction",
                                reason="the Triton kernels were built before TRITON_INTERPRET=1 could be set")

ENC = {"name": "edsr-baseline", "args": {"no_upsampling": True, "n_feats": 8, "n_resblocks": 1}}


def triton_path():
    """Where the kernels run: on CUDA by default, on the CPU only when routed there."""
    return triton_render.on_cpu() if DEVICE.type == "cpu" else contextlib.nullcontext()


@functools.lru_cache(maxsize=None)
def _spec(name: str) -> dict:
    imnet = {"name": "lmmlp", "args": {"out_dim": 3, "hidden_dim": 16, "hidden_depth": 6}}
    hyper = {"name": "mlp", "args": {"hidden_list": [32]}}
    if name.startswith("lmliif"):
        return {"name": "lmliif", "args": {"encoder_spec": ENC, "imnet_spec": imnet, "hypernet_spec": hyper,
                                           "mod_input": "plain" not in name, "local_ensemble": "noens" not in name,
                                           "cell_decode": "nocell" not in name}}
    imnet["args"]["hidden_depth"] = 8
    return {"name": "lmlte", "args": {"encoder_spec": ENC, "imnet_spec": imnet, "hypernet_spec": hyper,
                                      "hidden_dim": 32, "mod_input": "plain" not in name,
                                      "local_ensemble": "noens" not in name}}


def test_cpu_path_does_not_route_here_by_default():
    """Without :func:`triton_render.on_cpu` CPU tensors never reach Triton (the C kernel or
    PyTorch computes them), so installing triton changes nothing on the CPU."""
    t = torch.zeros(6, 1, 4, 32)
    assert not triton_render.usable(16, t, torch.zeros(1, 4, 2))
    with triton_render.on_cpu():
        assert triton_render.usable(16, t, torch.zeros(1, 4, 2)) == (triton_render.unavailable_reason() is None)
        assert not triton_render.usable(8, t)  # only the 16-wide render
        assert not triton_render.usable(16, t, in_width=fast_render.LTE_MAX_INPUT + 1)  # LM-LTE's limit
        with fast_render.disabled():
            assert not triton_render.usable(16, t)


@pytest.mark.parametrize("name,lr,hr", [("lmliif", (5, 7), (13, 17)), ("lmliif-noens-nocell", (5, 9), (11, 20)),
                                        ("lmliif-plain", (1, 6), (3, 13)), ("lmlte", (5, 7), (13, 17)),
                                        ("lmlte-plain-noens", (6, 4), (13, 9))])
@torch.no_grad()
def test_kernel_matches_pytorch_path(name, lr, hr):
    """Whole decoders, batch of 2, non-square LR (one with a single LR row), odd query counts."""
    torch.manual_seed(3)
    model = models.make(_spec(name)).to(DEVICE).eval()
    inp = torch.rand(2, 3, *lr, device=DEVICE) * 2 - 1
    coord = make_coord(hr, device=DEVICE).unsqueeze(0).expand(2, -1, -1)
    cell = make_cell(hr, device=DEVICE).unsqueeze(0).expand(2, -1, -1)
    with fast_render.disabled():
        plain = model(inp, coord, cell)
    with triton_path():
        lat = model.prepare(inp, cell)
        assert model.imnet.fused(lat.mods)
        fused = model(inp, coord, cell)
    torch.testing.assert_close(fused, plain, rtol=0, atol=2e-5)


@torch.no_grad()
def test_queries_on_cell_borders_and_outside():
    """Coordinates exactly on the look-up thresholds (ties between two cells), and beyond
    [-1, 1]: the kernel's look-up is exact, so outputs agree as closely as anywhere else."""
    from models import query as Q

    torch.manual_seed(0)
    h, w = 5, 7
    m = ModulatedMLP(4, 3, 16, 4).to(DEVICE)
    tables = m.fold(torch.randn(2 * h * w, m.mod_dim, device=DEVICE)).view(4, 2, h * w, -1)
    ty, tx = Q.axis_thresholds(h)[1:], Q.axis_thresholds(w)[1:]
    rows = torch.cat([ty, torch.nextafter(ty, torch.tensor(-2.0)), torch.tensor([-1.5, 1.5, -1.0, 1.0])])
    cols = torch.cat([tx, torch.nextafter(tx, torch.tensor(2.0)), torch.tensor([-1.5, 1.5, 0.0])])
    coord = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1).view(1, -1, 2).repeat(2, 1, 1).to(DEVICE)
    cell = torch.full_like(coord, 0.05)
    with fast_render.disabled():
        plain = m.render_at(coord, tables, (h, w), True, cell)
    with triton_path():
        fused = m.render_at(coord, tables, (h, w), True, cell)
    torch.testing.assert_close(fused, plain, rtol=0, atol=2e-5)


@torch.no_grad()
def test_bf16_tables_are_computed_in_fp32():
    """Under bf16 autocast the latent stage makes bf16 tables: the kernel reads them and
    computes in fp32 (= the fp32 path on the same, bf16-rounded tables)."""
    torch.manual_seed(1)
    m = ModulatedMLP(2, 3, 16, 6).to(DEVICE)
    tables = m.fold(torch.randn(3 * 4, m.mod_dim, device=DEVICE)).view(6, 1, 12, -1)
    coord = make_coord((9, 10), device=DEVICE).unsqueeze(0)
    with fast_render.disabled():
        plain = m.render_at(coord, tables.bfloat16().float(), (3, 4), True)
    with triton_path():
        fused = m.render_at(coord, tables.bfloat16(), (3, 4), True)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, plain, rtol=0, atol=2e-5)


TINY = Path(__file__).resolve().parent / "fixtures" / "official-tiny"


def _golden_params() -> list:
    """(fixture folder, case): the tiny set in the repository and the full shared set (skipped
    when absent). The interpreter is slow: one small LM-LIIF case of the tiny set only there;
    on a GPU every LM-LIIF/LM-LTE eval case of both sets."""
    import json

    tiny = json.loads((TINY / "manifest.json").read_text())["cases"]
    out = []
    for label, folder in (("tiny", TINY), ("full", FIXTURES)):
        if DEVICE.type == "cpu" and label == "full":
            continue
        for c in tiny:  # both sets hold the same 28 cases
            if c["mode"] == "eval" and not c["cmsr"] and c["model"] in ("lmliif", "lmlte") \
                    and (DEVICE.type != "cpu" or c["key"] == "lmliif_eval_48x64"):
                out.append(pytest.param(folder, c, id=f"{label}-{c['key']}"))
    return out


@pytest.mark.parametrize("folder, case", _golden_params())
@torch.no_grad()
def test_golden(folder, case):
    """The official outputs through the Triton kernel, within 1e-4."""
    exp = torch.load(need(folder / "expected.pt"), weights_only=True)
    ckpt = torch.load(need(folder / f"{case['model']}.pth"), weights_only=True, map_location="cpu")
    model = models.load_model(ckpt, device=DEVICE)
    coord, cell, inp = (exp[k].to(DEVICE) for k in (case["coord_key"], case["cell_key"], "input"))
    with triton_path():
        assert model.imnet.fused(model.prepare(inp, cell).mods)
        out = model(inp, coord, cell)
    diff = (out.cpu() - exp[case["key"]]).abs().max().item()
    assert diff <= 1e-4, f"max |diff| {diff:.3g} > 1e-4"


def _binder(fn, specialise_sizes: bool = True):
    """Triton's own specialisation key function for ``fn`` on a CUDA target (built without a GPU):
    ``binder(*args, **kwargs)[1]`` is what selects (or triggers) a compiled kernel."""
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        from triton.runtime.jit import JITFunction, create_function_from_signature

        backend = make_backend(GPUTarget("cuda", 90, 32))
    except Exception as e:  # another Triton's internals: nothing to compare with
        pytest.skip(f"this Triton's specialisation key cannot be computed without a GPU ({type(e).__name__}: {e})")
    if isinstance(fn, JITFunction):  # compiled (GPU) mode: the decorated kernel itself
        jit = fn if specialise_sizes else JITFunction(fn.fn)
    else:  # the interpreter's wrapper keeps the decorator's arguments
        options = {k: v for k, v in fn.kwargs.items() if v is not None}
        if not specialise_sizes:
            options = {k: v for k, v in options.items() if not k.startswith("do_not_specialize")}
        jit = JITFunction(fn.fn, **options)
    return create_function_from_signature(jit.signature, jit.params, backend)


@torch.no_grad()
def test_one_compiled_kernel_serves_every_image_and_level_size(monkeypatch):
    """On a GPU Triton compiles a kernel per specialisation key (integers equal to 1 or divisible
    by 16, pointers aligned to 16 bytes). The launches of whole decodes at LR and HR sizes that
    differ in exactly those properties (a single LR row, counts divisible by 16 or odd, views at
    odd offsets as CMSR's levels and the chunks pass) all give one key: one compilation per
    model and device, not one per image size. Without the kernel's do_not_specialize lists the
    same launches give several keys (the check can fail)."""
    real = _kernels["query"]
    launches = []

    class Recorder:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append((args, kwargs))
                return real[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(triton_render, "kernels", lambda: {"query": Recorder()})
    torch.manual_seed(0)
    for name in ("lmliif", "lmlte"):
        model = models.make(_spec(name)).to(DEVICE).eval()
        for lr, hr in [((4, 4), (16, 16)), ((1, 5), (3, 11)), ((5, 7), (13, 17)), ((3, 8), (32, 9))]:
            inp = torch.rand(1, 3, *lr, device=DEVICE) * 2 - 1
            coord = make_coord(hr, device=DEVICE).unsqueeze(0)
            cell = make_cell(hr, device=DEVICE).unsqueeze(0)
            with triton_path():
                lat = model.prepare(inp, cell[:, :1])
                model.decode(lat, coord, cell)
                model.decode(lat, coord[:, 1:], cell[:, 1:])  # views at an odd offset
    assert len(launches) >= 16
    bind = _binder(real)
    keys = {name: {repr(bind(*a, **k)[1]) for a, k in launches if k["LTE"] == (name == "lmlte")}
            for name in ("lmliif", "lmlte")}
    assert all(len(k) == 1 for k in keys.values()), keys
    unspecialised = _binder(real, specialise_sizes=False)
    assert len({repr(unspecialised(*a, **k)[1]) for a, k in launches}) > 2
