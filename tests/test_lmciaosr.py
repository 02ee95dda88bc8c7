"""LM-CiaoSR: the official outputs (shared/fixtures/official-ciaosr) reproduced on the CPU, and the
decoder's invariants (chunking, batching, gradients, tiled non-local attention)."""
from __future__ import annotations

import functools
import json

import pytest
import torch
import yaml

import models
from conftest import SHARED, need
from models import query as Q
from models.cross_scale_attention import CrossScaleAttention, tile_spans
from utils.coords import make_cell, make_coord

FIX = SHARED / "fixtures" / "official-ciaosr"
TOL = 1e-4


def _cases() -> list[dict]:
    path = FIX / "manifest.json"
    return json.loads(path.read_text())["cases"] if path.exists() else []


@functools.lru_cache(maxsize=None)
def _expected() -> dict:
    return torch.load(need(FIX / "expected.pt"), weights_only=True)


@functools.lru_cache(maxsize=None)
def _checkpoint() -> dict:
    return torch.load(need(FIX / "lmciaosr.pth"), weights_only=True, map_location="cpu")


def _model(case: dict | None = None, train: bool = False) -> torch.nn.Module:
    cmsr = None
    if case is not None and case["cmsr"]:
        table = yaml.safe_load((FIX / case["cmsr"]["s2m_table_file"]).read_text())
        cmsr = {"mse_threshold": case["cmsr"]["mse_threshold"], "s2m_tables": table}
    return models.load_model(_checkpoint(), cmsr_spec=cmsr, eval_mode=not train)


CASES = _cases()
EVAL_CASES = [c for c in CASES if c["mode"] == "eval"]
TRAIN_CASES = [c for c in CASES if c["mode"] == "train"]


def _params(cases: list[dict]) -> list:
    """The fixture cases, or one case skipped with the reason (instead of pytest's bare
    "got empty parameter set") on a clone without the shared fixtures."""
    if cases:
        return [pytest.param(c, id=c["key"]) for c in cases]
    why = f"needs {FIX / 'manifest.json'} (the project's shared fixtures; absent in a fresh clone)"
    return [pytest.param(None, id="no-fixtures", marks=pytest.mark.skip(reason=why))]


def test_fixture_manifest():
    need(FIX / "manifest.json")
    assert len(CASES) == 9 and len(EVAL_CASES) == 8 and len(TRAIN_CASES) == 1


@pytest.mark.parametrize("case", _params(EVAL_CASES))
def test_golden_eval_and_cmsr(case):
    exp = _expected()
    model = _model(case)
    stats: dict = {}
    with torch.no_grad():
        out = model(exp["input"], exp[case["coord_key"]], exp[case["cell_key"]], stats=stats)
    ref = exp[case["key"]]
    assert out.shape == ref.shape
    diff = (out - ref).abs().max().item()
    assert diff <= TOL, f"max |diff| {diff:.3g} > {TOL}"
    if case["cmsr"]:
        assert 0.0 <= stats["cmsr_skipped_fraction"] <= 1.0


@pytest.mark.parametrize("case", _params(TRAIN_CASES))
def test_golden_train_is_official_train_plus_bilinear_residual(case):
    """The official training forward omits the LR residual its evaluation adds; ours adds it in
    both, so our train-mode output = official train output + bilinear residual."""
    exp = _expected()
    idx = exp[case["query_index_key"]]
    coord, cell = exp[case["coord_key"]][:, idx], exp[case["cell_key"]][:, idx]
    model = _model(train=True)
    assert model.training
    out = model(exp["input"], coord, cell)
    assert out.requires_grad
    ref = exp[case["key"]] + Q.sample_bilinear(exp["input"], coord)
    diff = (out.detach() - ref).abs().max().item()
    assert diff <= TOL, f"max |diff| {diff:.3g} > {TOL}"


def test_parameter_count_and_state_dict_keys_match_official():
    ckpt = _checkpoint()
    model = models.make({"name": "lmciaosr", "args": ckpt["model"]["args"]})
    assert sum(p.numel() for p in model.parameters()) == 1_955_438
    assert set(model.state_dict()) == set(ckpt["model"]["sd"])
    assert "cs_attn.escape_NaN" in dict(model.named_buffers())


def test_own_grid_and_chunks_give_the_golden_outputs():
    """make_coord/make_cell and small query chunks reproduce the non-integer x3.7 case."""
    exp = _expected()
    model = _model()
    h, w = 89, 118
    coord, cell = make_coord((h, w)).unsqueeze(0), make_cell((h, w)).unsqueeze(0)
    with torch.no_grad():
        full = model(exp["input"], coord, cell, bsize=10 ** 9)
        chunked = model(exp["input"], coord, cell, bsize=777)
    assert torch.allclose(chunked, full, atol=1e-6)
    assert (full - exp[f"lmciaosr_eval_{h}x{w}"]).abs().max().item() <= TOL


def test_cmsr_splits_levels_with_a_table_inside_the_modulation_range():
    """The fixture's modulation means (~0.41-0.51) lie above every official x6-x12 bound, so
    the official cases render everything at the top level; a table with a bound inside that
    range renders part of the image on the LR grid."""
    exp = _expected()
    model = _model()
    with torch.no_grad():
        mu = model.prepare(exp["input"], exp["cell_144x192"]).complexity
        cmsr = {"s2m_tables": {6: {1: float(mu.median()), 6: 1}}}
        model = models.load_model(_checkpoint(), cmsr_spec=cmsr)
        stats: dict = {}
        out = model(exp["input"], exp["coord_144x192"], exp["cell_144x192"], stats=stats)
    assert out.shape == (1, 144 * 192, 3) and torch.isfinite(out).all()
    assert 0.0 < stats["cmsr_skipped_fraction"] < 1.0


# --- invariants on a small random model ------------------------------------------------------
def tiny_spec() -> dict:
    mlp = lambda out, hidden: {"name": "mlp", "args": {"out_dim": out, "hidden_list": [hidden]}}  # noqa: E731
    return {"name": "lmciaosr", "args": {
        "encoder": {"name": "edsr-baseline", "args": {"no_upsampling": True, "n_resblocks": 1, "n_feats": 8}},
        "prenet_q": mlp(32, 16), "hypernet_q": mlp(24, 24), "imnet_k": mlp(32, 16), "imnet_v": mlp(32, 16),
        "imnet_q": {"name": "lmmlp", "args": {"out_dim": 3, "hidden_dim": 4, "hidden_depth": 2,
                                              "mod_scale": True, "mod_shift": True}},
        "local_size": 2, "feat_unfold": True, "non_local_attn": True, "multi_scale": [2],
        "softmax_scale": 1, "mod_input": True}}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return models.make(tiny_spec()).eval()


def _queries(b: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    return make_coord((h, w)).expand(b, -1, -1), make_cell((h, w)).expand(b, -1, -1)


# chunking, batching, train/eval, gradients and module state: tests/test_models.py (tiny_model)


def test_zero_render_output_leaves_the_bilinear_residual():
    torch.manual_seed(1)
    m = models.make(tiny_spec()).eval()
    with torch.no_grad():
        m.imnet_q.layers[-1].weight.zero_()
        m.imnet_q.layers[-1].bias.zero_()
        inp = torch.rand(1, 3, 5, 6)
        coord, cell = _queries(1, 12, 13)
        assert torch.allclose(m(inp, coord, cell), Q.sample_bilinear(inp, coord), atol=1e-6)


# --- the tiled cross-scale attention --------------------------------------------------------
def _reference_tiling(attn: CrossScaleAttention, x: torch.Tensor, tile: int) -> torch.Tensor:
    """The official loop: h // tile x w // tile tiles, the last ones taking the remainder, each
    computed on its crop plus one pixel of context where the map extends."""
    b, _, h, w = x.shape
    out = torch.zeros(b, attn.out_dim, h, w)
    nh, nw = h // tile, w // tile
    for i in range(nh):
        for j in range(nw):
            i1, i2 = i * tile, ((i + 1) * tile if i < nh - 1 else h)
            j1, j2 = j * tile, ((j + 1) * tile if j < nw - 1 else w)
            p_top, p_bottom = (1 if i1 - 1 >= 0 else 0), (1 if i2 + 1 <= h else 0)
            p_left, p_right = (1 if j1 - 1 >= 0 else 0), (1 if j2 + 1 <= w else 0)
            y = attn.attend(x[:, :, i1 - p_top:i2 + p_bottom, j1 - p_left:j2 + p_right])
            out[:, :, i1:i2, j1:j2] = y[:, :, p_top:y.shape[-2] - p_bottom, p_left:y.shape[-1] - p_right]
    return out


def test_tiled_attention_follows_the_reference_tiling():
    torch.manual_seed(2)
    attn = CrossScaleAttention(channel=8, scale=[2])
    x = torch.randn(2, 8, 20, 24)
    crops: list[tuple[int, int]] = []
    whole = attn.attend

    def recording(t: torch.Tensor) -> torch.Tensor:
        crops.append(tuple(t.shape[-2:]))
        return whole(t)

    with torch.no_grad():
        untiled = attn.attend(x)
        assert torch.equal(attn(x), untiled)              # 20*24 <= 48²: processed whole
        assert torch.equal(attn(x, tile=0), untiled)      # 0: never tile
        attn.attend = recording
        try:
            tiled = attn(x, tile=8)
        finally:
            del attn.attend
        assert torch.allclose(tiled, _reference_tiling(attn, x, 8), atol=1e-6)
    # 2 x 3 tiles, each at most (2*tile - 1) + 2 context pixels per side: memory is bounded
    assert len(crops) == 6 and max(max(c) for c in crops) <= 2 * 8 - 1 + 2
    # each tile only sees its crop, so tiling is part of the definition (not an approximation)
    assert not torch.allclose(tiled, untiled, atol=1e-3)


def test_tiles_cover_axes_shorter_than_a_tile():
    """The reference leaves the non-local feature at zero when one side is shorter than a tile
    but the area exceeds tile²; every axis gets at least one tile here."""
    assert tile_spans(5, 8) == [(0, 5)]
    assert tile_spans(20, 8) == [(0, 8), (8, 20)]
    torch.manual_seed(3)
    attn = CrossScaleAttention(channel=8, scale=[2])
    with torch.no_grad():
        x = torch.randn(1, 8, 6, 40)
        y = attn(x, tile=8)
        assert torch.allclose(y[..., :8], attn.attend(x[..., :9])[..., :8], atol=1e-6)
        assert (y.abs().sum(dim=1) > 0).all()


@pytest.mark.parametrize("change", [{"non_local_attn": False}, {"mod_input": False}, {"local_size": 1},
                                    {"multi_scale": [2, 3]}], ids=lambda c: "-".join(map(str, c.items())))
def test_other_options_build_and_decode(change):
    """Options the official configs do not use (some of which the reference cannot run)."""
    s = tiny_spec()
    s["args"].update(change)
    torch.manual_seed(4)
    m = models.make(s).eval()
    coord, cell = _queries(1, 13, 14)
    with torch.no_grad():
        out = m(torch.rand(1, 3, 5, 7), coord, cell)
    assert out.shape == (1, 13 * 14, 3) and torch.isfinite(out).all()


def test_unfolding_is_required():
    s = tiny_spec()
    s["args"]["feat_unfold"] = False
    with pytest.raises(ValueError, match="feat_unfold"):
        models.make(s)


@torch.no_grad()
def test_banded_latent_equals_whole_map(tiny, monkeypatch):
    """Without autograd the per-cell attention runs on bands of LR rows (bounded memory on large
    inputs): bands of 1, 2 and 3 rows give the same tables as the whole map at once."""
    torch.manual_seed(5)
    inp = torch.randn(2, 3, 9, 7)
    feat = tiny.encode(inp)
    cell = make_cell((27, 21)).unsqueeze(0).expand(2, -1, -1)
    with torch.enable_grad():
        whole = tiny.latent(feat, inp, cell)  # autograd on: one band
    for rows in (1, 2, 3):
        monkeypatch.setattr(tiny, "latent_band_cells", rows * 7)
        banded = tiny.latent(feat, inp, cell)
        torch.testing.assert_close(banded.mods, whole.mods.detach(), rtol=0, atol=1e-6)
        torch.testing.assert_close(banded.complexity, whole.complexity.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("s", [2, 3, 4])
@pytest.mark.parametrize("hw", [(12, 12), (8, 14), (2, 4), (1, 1)])
@torch.no_grad()
def test_assembly_equals_transposed_conv_then_down(s, hw):
    """The composed 4x4 assembly convolution (with exact row/column 0) == the reference's
    conv_transpose2d at stride s followed by the stride-s down convolution."""
    import torch.nn.functional as F

    torch.manual_seed(s)
    m = CrossScaleAttention(16, [s])
    for p in m.parameters():
        p.normal_(0, 0.2)
    h, w = hw[0] * s, hw[1] * s
    attn = torch.softmax(torch.randn(1, 7, h, w), dim=1)
    content = torch.randn(7, 16, 3 * s, 3 * s)
    ref = m._down(s)(F.conv_transpose2d(attn, content, stride=s, padding=s))
    torch.testing.assert_close(m._assemble(attn, content, s), ref, rtol=0, atol=2e-5)
