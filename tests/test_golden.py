"""Golden tests: the official LMF code's outputs reproduced, on both render paths.

Two fixture sets of the same 28 cases (see their READMEs): ``tests/fixtures/official-tiny``
(tiny EDSR-baseline encoders, kept in the repository, so these run on every clone) and the
full-size ``../shared/fixtures/official`` (an extra check that skips when ``../shared`` is absent).

Device: ``LMF_TEST_DEVICE`` (default cpu; e.g. ``LMF_TEST_DEVICE=cuda python -m pytest
tests/test_golden.py``). On CUDA the tolerance holds only with TF32 off for matmuls *and* cuDNN
convolutions (cuDNN convolutions use TF32 by default): conftest turns both off (``no_tf32``).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
import yaml

import models
from conftest import DEVICE, FIXTURES, need
from utils.coords import make_cell, make_coord

TOL = 1e-4
TINY = Path(__file__).resolve().parent / "fixtures" / "official-tiny"
SETS = {"tiny": TINY, "full": FIXTURES}


def _cases(folder: Path) -> list[dict]:
    path = folder / "manifest.json"
    if not path.exists():
        return []
    return json.loads(path.read_text())["cases"]


@functools.lru_cache(maxsize=None)
def _expected(folder: Path) -> dict:
    return torch.load(need(folder / "expected.pt"), weights_only=True)


@functools.lru_cache(maxsize=None)
def _checkpoint(folder: Path, name: str) -> dict:
    return torch.load(need(folder / f"{name}.pth"), weights_only=True, map_location="cpu")


def _model(folder: Path, case: dict) -> torch.nn.Module:
    ckpt = _checkpoint(folder, case["model"])
    cmsr = None
    if case["cmsr"]:
        table = yaml.safe_load((folder / case["cmsr"]["s2m_table_file"]).read_text())
        cmsr = {"mse_threshold": case["cmsr"]["mse_threshold"], "s2m_tables": table}
    return models.load_model(ckpt, device=DEVICE, cmsr_spec=cmsr, eval_mode=case["mode"] == "eval")


def _params(select=lambda c: True, limit: int | None = None) -> list:
    """(fixture folder, case) pairs of both sets; the full set's cases are listed by name from the
    tiny manifest when ../shared is absent, so that they show up as skipped."""
    out = []
    for name, folder in SETS.items():
        cases = _cases(folder) or _cases(TINY)
        cases = [c for c in cases if select(c)][:limit]
        out += [pytest.param(folder, c, id=f"{name}-{c['key']}") for c in cases]
    return out


def test_tiny_fixtures_are_in_the_repository():
    assert len(_cases(TINY)) == 28
    assert (TINY / "expected.pt").is_file()


def test_full_fixtures_present_or_skipped():
    need(FIXTURES / "manifest.json")
    assert len(_cases(FIXTURES)) == 28


@pytest.mark.parametrize("folder, case", _params())
def test_golden_case(folder, case):
    exp = _expected(folder)
    model = _model(folder, case)
    coord, cell = exp[case["coord_key"]].to(DEVICE), exp[case["cell_key"]].to(DEVICE)
    inp = exp["input"].to(DEVICE)
    if case["mode"] == "train":
        idx = exp[case["query_index_key"]].to(DEVICE)
        coord, cell = coord[:, idx], cell[:, idx]
        out = model(inp, coord, cell)
        assert out.requires_grad
    else:
        with torch.no_grad():
            stats: dict = {}
            # an LMF model built with the official cmsr_spec renders with CMSR in its forward
            out = model(inp, coord, cell, stats=stats) if case["cmsr"] else model(inp, coord, cell)
        if case["cmsr"]:
            assert 0.0 <= stats["cmsr_skipped_fraction"] <= 1.0
    ref = exp[case["key"]]
    assert out.shape == ref.shape
    diff = (out.detach().cpu() - ref).abs().max().item()
    assert diff <= TOL, f"max |diff| {diff:.3g} > {TOL}"


@pytest.mark.parametrize("folder, case", _params(lambda c: c["mode"] == "eval" and not c["cmsr"], limit=5))
def test_golden_with_own_grid_and_small_chunks(folder, case):
    """Our own grid/cell functions and chunked decoding give the same outputs."""
    exp = _expected(folder)
    h, w = case["out_hw"]
    coord = make_coord((h, w), device=DEVICE).unsqueeze(0)
    cell = make_cell((h, w), device=DEVICE).unsqueeze(0)
    model = _model(folder, case)
    with torch.no_grad():
        out = model(exp["input"].to(DEVICE), coord, cell, bsize=777)
    assert (out.cpu() - exp[case["key"]]).abs().max().item() <= TOL


@pytest.mark.parametrize("folder", list(SETS.values()), ids=list(SETS))
def test_own_grid_is_bit_exact(folder):
    exp = _expected(folder)
    keys = [k for k in exp if k.startswith("coord_")]
    assert keys
    for key in keys:
        h, w = map(int, key[len("coord_"):].split("x"))
        assert torch.equal(make_coord((h, w)).unsqueeze(0), exp[key]), key
        assert torch.equal(make_cell((h, w)).unsqueeze(0), exp[f"cell_{h}x{w}"]), key


@pytest.mark.parametrize("folder, case", _params(lambda c: c["mode"] == "eval" and c["model"].startswith("lm")))
def test_golden_fused_kernel_equals_pytorch_path(folder, case):
    """Where a fused render kernel runs (default above: C on the CPU, Triton on CUDA if
    installed), the layer-by-layer PyTorch path gives the same outputs too: both reproduce the
    official outputs, and agree to 2e-5 (an index flipped at a cell border would differ by far
    more)."""
    from models import fast_render

    exp = _expected(folder)
    model = _model(folder, case)
    coord, cell, inp = (exp[k].to(DEVICE) for k in (case["coord_key"], case["cell_key"], "input"))
    with torch.no_grad():
        fused = model(inp, coord, cell).cpu()
        with fast_render.disabled():
            plain = model(inp, coord, cell).cpu()
    assert (plain - exp[case["key"]]).abs().max().item() <= TOL
    assert (fused - plain).abs().max().item() <= 2e-5
