"""Golden tests: the official LMF code's outputs (shared/fixtures/official) reproduced on the CPU."""
from __future__ import annotations

import functools
import json

import pytest
import torch
import yaml

import models
from conftest import FIXTURES, need
from utils.coords import make_cell, make_coord

TOL = 1e-4


def _cases() -> list[dict]:
    path = FIXTURES / "manifest.json"
    if not path.exists():
        return []
    return json.loads(path.read_text())["cases"]


@functools.lru_cache(maxsize=None)
def _expected() -> dict:
    return torch.load(need(FIXTURES / "expected.pt"), weights_only=True)


@functools.lru_cache(maxsize=None)
def _checkpoint(name: str) -> dict:
    return torch.load(need(FIXTURES / f"{name}.pth"), weights_only=True, map_location="cpu")


def _model(case: dict) -> torch.nn.Module:
    ckpt = _checkpoint(case["model"])
    cmsr = None
    if case["cmsr"]:
        table = yaml.safe_load((FIXTURES / case["cmsr"]["s2m_table_file"]).read_text())
        cmsr = {"mse_threshold": case["cmsr"]["mse_threshold"], "s2m_tables": table}
    return models.load_model(ckpt, cmsr_spec=cmsr, eval_mode=case["mode"] == "eval")


CASES = _cases()


def test_fixtures_present_or_skipped():
    need(FIXTURES / "manifest.json")
    assert len(CASES) == 28


@pytest.mark.parametrize("case", CASES, ids=[c["key"] for c in CASES])
def test_golden_case(case):
    exp = _expected()
    model = _model(case)
    coord, cell = exp[case["coord_key"]], exp[case["cell_key"]]
    if case["mode"] == "train":
        idx = exp[case["query_index_key"]]
        coord, cell = coord[:, idx], cell[:, idx]
        out = model(exp["input"], coord, cell)
        assert out.requires_grad
    else:
        with torch.no_grad():
            stats: dict = {}
            out = model(exp["input"], coord, cell, stats=stats)
        if case["cmsr"]:
            assert 0.0 <= stats["cmsr_skipped_fraction"] <= 1.0
    ref = exp[case["key"]]
    assert out.shape == ref.shape
    diff = (out.detach() - ref).abs().max().item()
    assert diff <= TOL, f"max |diff| {diff:.3g} > {TOL}"


@pytest.mark.parametrize("case", [c for c in CASES if c["mode"] == "eval" and not c["cmsr"]][:5],
                         ids=lambda c: c["key"])
def test_golden_with_own_grid_and_small_chunks(case):
    """Our own grid/cell functions and chunked decoding give the same outputs."""
    exp = _expected()
    h, w = case["out_hw"]
    coord = make_coord((h, w)).unsqueeze(0)
    cell = make_cell((h, w)).unsqueeze(0)
    model = _model(case)
    with torch.no_grad():
        out = model(exp["input"], coord, cell, bsize=777)
    assert (out - exp[case["key"]]).abs().max().item() <= TOL


def test_own_grid_is_bit_exact():
    exp = _expected()
    keys = [k for k in exp if k.startswith("coord_")]
    assert keys
    for key in keys:
        h, w = map(int, key[len("coord_"):].split("x"))
        assert torch.equal(make_coord((h, w)).unsqueeze(0), exp[key]), key
        assert torch.equal(make_cell((h, w)).unsqueeze(0), exp[f"cell_{h}x{w}"]), key


@pytest.mark.parametrize("case", [c for c in CASES if c["mode"] == "eval" and c["model"].startswith("lm")],
                         ids=lambda c: c["key"])
def test_golden_fused_kernel_equals_pytorch_path(case):
    """Where the fused CPU render kernel runs (default above), the layer-by-layer PyTorch path
    gives the same outputs too: both reproduce the official outputs, and agree to 2e-5 (an
    index flipped at a cell border would differ by far more)."""
    from models import fast_render

    exp = _expected()
    model = _model(case)
    coord, cell = exp[case["coord_key"]], exp[case["cell_key"]]
    with torch.no_grad():
        fused = model(exp["input"], coord, cell)
        with fast_render.disabled():
            plain = model(exp["input"], coord, cell)
    assert (plain - exp[case["key"]]).abs().max().item() <= TOL
    assert (fused - plain).abs().max().item() <= 2e-5
