"""Unit tests of the model core: registry, grid, query engine, decoders, CMSR."""
from __future__ import annotations

import math
import random
import re
from pathlib import Path

import pytest
import torch

import models
from models import query as Q
from models.cmsr import CMSR, Scale2Mod
from utils.coords import axis_coords, make_cell, make_coord
from utils.errors import CheckpointError, SpecError

ENC = {"name": "edsr-baseline", "args": {"no_upsampling": True}}
TINY = {"name": "edsr-baseline", "args": {"no_upsampling": True, "n_resblocks": 1, "n_feats": 8}}


def spec(name: str, enc: dict = ENC, depth: int | None = None) -> dict:
    """Official training-config model specs (configs/train-*/train_edsr-baseline-*.yaml)."""
    if name == "liif":
        args = {"imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [256] * 4}}}
    elif name == "lte":
        args = {"imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [256] * 3}},
                "hidden_dim": 256}
    elif name == "lmliif":
        d = depth or 6
        args = {"imnet_spec": {"name": "lmmlp", "args": {"out_dim": 3, "hidden_dim": 16, "hidden_depth": d,
                                                        "mod_scale": True, "mod_shift": True}},
                "hypernet_spec": {"name": "mlp", "args": {"out_dim": 208, "hidden_list": [208]}},
                "local_ensemble": True, "feat_unfold": True, "cell_decode": True, "mod_input": True}
    elif name == "lmlte":
        d = depth or 8
        args = {"imnet_spec": {"name": "lmmlp", "args": {"out_dim": 3, "hidden_dim": 16, "hidden_depth": d,
                                                        "mod_scale": True, "mod_shift": True}},
                "hypernet_spec": {"name": "mlp", "args": {"out_dim": 288, "hidden_list": [288]}},
                "hidden_dim": 128, "local_ensemble": True, "cell_decode": True, "mod_input": True}
    else:
        raise KeyError(name)
    return {"name": name, "args": {"encoder_spec": enc, **args}}


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# --- registry ------------------------------------------------------------------------------
@pytest.mark.parametrize("name,count", [("liif", 1_567_323), ("lte", 1_714_267),
                                        ("lmliif", 1_386_091), ("lmlte", 1_490_907)])
def test_parameter_counts_match_official(name, count):
    assert n_params(models.make(spec(name))) == count


def test_parameter_count_rdn_lmliif_and_swinir_lmliif():
    assert n_params(models.make(spec("lmliif", {"name": "rdn", "args": {"no_upsampling": True}}))) == 22_139_603
    sw = spec("lmliif", {"name": "swinir", "args": {"no_upsampling": True}}, depth=8)
    sw["args"]["hypernet_spec"]["args"]["out_dim"] = 272
    assert n_params(models.make(sw)) == 11_782_615


def test_unknown_name_and_argument_are_named():
    with pytest.raises(SpecError, match=r"unknown model 'lmlif'.*did you mean 'lmliif'.*known:"):
        models.make({"name": "lmlif", "args": {}})
    bad = spec("lmliif")
    bad["args"]["mixed_le"] = True
    with pytest.raises(SpecError, match=r"'lmliif' has no argument 'mixed_le'; allowed: .*encoder_spec"):
        models.make(bad)
    with pytest.raises(SpecError, match="missing required argument"):
        models.make({"name": "liif", "args": {}})


def test_parts_of_the_wrong_kind_are_named():
    # a spec may name any registered model; a decoder checks that each part is what it needs
    enc_as_mlp = spec("lmliif")
    enc_as_mlp["args"]["encoder_spec"] = {"name": "mlp", "args": {"in_dim": 3, "out_dim": 8, "hidden_list": []}}
    with pytest.raises(SpecError, match=r"model 'mlp' \(MLP\) cannot be used here \(expected: Encoder\)"):
        models.make(enc_as_mlp)
    with pytest.raises(CheckpointError, match=r"model 'edsr-baseline' \(EDSRBaseline\) cannot be used here "
                       r"\(expected: ImplicitDecoder\)"):
        models.load_model({"model": {"name": "edsr-baseline", "args": {"no_upsampling": True}, "sd": {}}})


def test_loader_drops_legacy_mixed_le_argument():
    m = models.make(spec("lmliif", TINY))
    ckpt = {"model": {"name": "lmliif", "args": {**spec("lmliif", TINY)["args"], "mixed_le": True},
                      "sd": m.state_dict()}}
    assert isinstance(models.load_model(ckpt), type(m))


# --- coordinates and the query engine ------------------------------------------------------
def test_make_coord_centres_and_layout():
    c = make_coord((3, 4), flatten=False)
    assert c.shape == (3, 4, 2)
    assert torch.allclose(c[:, 0, 0], torch.tensor([-2 / 3, 0.0, 2 / 3]))
    assert torch.allclose(c[0, :, 1], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    flat = make_coord((3, 4))
    assert torch.equal(flat[5], c[1, 1])  # row-major
    assert torch.equal(make_cell((3, 4))[0], torch.tensor([2 / 3, 0.5]))
    # the reference's float evaluation order, bit for bit
    n = 7
    ref = (-1 + 1 / n) + (2 / n) * torch.arange(n).float()
    assert torch.equal(axis_coords(n), ref)


def test_nearest_cell_matches_floor_rule_off_ties():
    h, w = 5, 7
    coord = torch.rand(1, 500, 2) * 1.98 - 0.99
    row, col = Q.nearest_cell(coord, h, w)
    assert torch.equal(row[0], ((coord[0, :, 0] + 1) / 2 * h).floor().long().clamp(0, h - 1))
    assert torch.equal(col[0], ((coord[0, :, 1] + 1) / 2 * w).floor().long().clamp(0, w - 1))


def test_ensemble_weights_are_bilinear_weights():
    """LIIF's area weights with the opposite-corner swap equal bilinear interpolation weights."""
    h, w = 6, 5
    coord = torch.rand(2, 300, 2) * 1.4 - 0.7  # interior: no border clamping
    lk = Q.locate(coord, h, w)
    assert torch.allclose(lk.weight.sum(1), torch.ones(2, 300), atol=1e-6)
    rel = lk.rel_coord  # (query - centre) * (h, w): neighbouring centres are 2 apart
    assert (rel.abs() <= 2 + 1e-5).all()
    expected = (1 - rel[..., 0].abs() / 2) * (1 - rel[..., 1].abs() / 2)
    assert torch.allclose(lk.weight, expected, atol=1e-5)
    # the 4 neighbours are the 2x2 block of cells around the query
    rows, cols = lk.index // w, lk.index % w
    assert ((rows.max(1).values - rows.min(1).values) <= 1).all()
    assert ((cols.max(1).values - cols.min(1).values) <= 1).all()


def test_no_local_ensemble_uses_nearest_cell():
    coord = torch.rand(1, 50, 2) * 2 - 1
    lk = Q.locate(coord, 4, 4, local_ensemble=False)
    assert lk.index.shape == (1, 1, 50) and torch.equal(lk.weight, torch.ones(1, 1, 50))


def test_stream_is_chunk_invariant_and_balanced():
    calls = []

    def fn(c, ce):
        calls.append(c.shape[1])
        return c.sum(-1, keepdim=True) + ce[..., :1]

    coord, cell = torch.randn(2, 1001, 2), torch.randn(2, 1001, 2)
    full = fn(coord, cell)
    calls.clear()
    out = Q.stream(fn, coord, cell, bsize=300)
    assert torch.equal(out, full)
    assert calls == [251, 251, 251, 248]


# --- decoders ------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["liif", "lte", "lmliif", "lmlte", "lmciaosr"])
def tiny_model(request):
    from test_lmciaosr import tiny_spec

    torch.manual_seed(0)
    return models.make(tiny_spec() if request.param == "lmciaosr" else spec(request.param, TINY)).eval()


def _queries(b: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    return make_coord((h, w)).expand(b, -1, -1), make_cell((h, w)).expand(b, -1, -1)


def test_chunked_equals_unchunked(tiny_model):
    inp = torch.rand(2, 3, 9, 11) * 2 - 1
    coord, cell = _queries(2, 31, 40)
    with torch.no_grad():
        full = tiny_model(inp, coord, cell, bsize=10 ** 9)
        for bsize in (1, 97, 1000):
            assert torch.allclose(tiny_model(inp, coord, cell, bsize=bsize), full, atol=1e-6)


def test_batch_equals_single_images(tiny_model):
    inp = torch.rand(2, 3, 7, 8) * 2 - 1
    coord, cell = _queries(2, 20, 17)
    with torch.no_grad():
        both = tiny_model(inp, coord, cell)
        for i in range(2):
            one = tiny_model(inp[i:i + 1], coord[i:i + 1], cell[i:i + 1])
            assert torch.allclose(both[i:i + 1], one, atol=1e-6)


def test_train_and_eval_compute_the_same_function(tiny_model):
    inp = torch.rand(1, 3, 6, 7) * 2 - 1
    coord, cell = _queries(1, 15, 16)
    with torch.no_grad():
        ev = tiny_model(inp, coord, cell)
        tiny_model.train()
        try:
            tr = tiny_model(inp, coord, cell)
        finally:
            tiny_model.eval()
    assert torch.allclose(ev, tr, atol=1e-6)


def test_gradients_flow_to_every_trainable_parameter(tiny_model):
    tiny_model.train()
    try:
        inp = torch.rand(2, 3, 6, 6) * 2 - 1
        idx = torch.randperm(18 * 18)[:200]
        coord, cell = _queries(2, 18, 18)
        out = tiny_model(inp, coord[:, idx], cell[:, idx])
        out.abs().mean().backward()
        for name, p in tiny_model.named_parameters():
            if p.requires_grad:
                assert p.grad is not None and p.grad.abs().sum() > 0, name
    finally:
        tiny_model.zero_grad(set_to_none=True)
        tiny_model.eval()


def test_no_state_left_on_the_module(tiny_model):
    before = {k: id(v) for k, v in vars(tiny_model).items()}
    inp = torch.rand(1, 3, 5, 5)
    coord, cell = _queries(1, 10, 10)
    with torch.no_grad():
        tiny_model(inp, coord, cell)
    assert {k: id(v) for k, v in vars(tiny_model).items()} == before


def test_lmliif_latent_in_bands_equals_whole_image():
    m = models.make(spec("lmliif", TINY)).eval()
    inp = torch.rand(2, 3, 13, 9) * 2 - 1
    coord, cell = _queries(2, 30, 21)
    with torch.no_grad():
        whole = m(inp, coord, cell)
        m.latent_band_cells = 9 * 4  # 4-row bands
        try:
            banded = m(inp, coord, cell)
        finally:
            del m.latent_band_cells
    assert torch.allclose(whole, banded, atol=1e-5)


def test_modulated_mlp_matches_the_layer_by_layer_formula():
    torch.manual_seed(1)
    mlp = models.make({"name": "lmmlp", "args": {"in_dim": 5, "out_dim": 3, "hidden_dim": 4, "hidden_depth": 3}})
    x, mod = torch.randn(10, 5), torch.randn(10, mlp.mod_dim)
    h = x
    for l in range(3):
        lin = mlp.layers[2 * l]
        s, t = mod[:, 4 * l: 4 * l + 4], mod[:, 12 + 4 * l: 12 + 4 * l + 4]
        h = torch.relu((lin(h)) * (1 + s) + t)
    assert torch.allclose(mlp(x, mod), mlp.layers[-1](h), atol=1e-5)


def test_ltes_add_the_bilinear_residual():
    """A zeroed LTE/LM-LTE output layer leaves exactly the bilinear upsampling of the input."""
    for name in ("lte", "lmlte"):
        m = models.make(spec(name, TINY)).eval()
        with torch.no_grad():
            m.imnet.layers[-1].weight.zero_()
            m.imnet.layers[-1].bias.zero_()
            inp = torch.rand(1, 3, 5, 6)
            coord, cell = _queries(1, 12, 13)
            out = m(inp, coord, cell)
            assert torch.allclose(out, Q.sample_bilinear(inp, coord), atol=1e-6)


def test_source_has_no_hard_coded_cuda():
    root = Path(__file__).resolve().parents[1]
    for path in list((root / "models").rglob("*.py")) + list((root / "utils").rglob("*.py")):
        assert not re.search(r"\.cuda\(", path.read_text()), path


# --- CMSR ----------------------------------------------------------------------------------
def _lm(name: str) -> torch.nn.Module:
    torch.manual_seed(3)
    return models.make(spec(name, TINY)).eval()


def test_scale2mod_levels_follow_the_official_rules():
    t = Scale2Mod({2: {1: 0.34, 1.5: 0.4, 2: 1}, 8: {1: 0.33, 2: 0.38, 4: 0.56, 6: 0.6, 8: 1},
                   12: {1: 0.32, 2: 0.39, 4: 0.54, 6: 1, 12: 1}})
    assert t.levels(8.0) == ([1.0, 2.0, 4.0, 6.0, 8.0], [0.0, 0.33, 0.38, 0.56, 0.6, 1.0])
    assert t.levels(12.0) == ([1.0, 2.0, 4.0, 6.0], [0.0, 0.32, 0.39, 0.54, 1.0])
    assert t.levels(10.0)[0] == [1.0, 2.0, 4.0, 6.0]   # first row with target >= 10 is 12
    assert t.levels(20.0)[0] == [1.0, 2.0, 4.0, 6.0, 12.0]  # beyond the last row: the last row


@pytest.mark.parametrize("name", ["lmliif", "lmlte"])
def test_cmsr_always_returns_the_target_size(name):
    m = _lm(name)
    rnd = random.Random(0)
    inp = torch.rand(1, 3, 6, 7) * 2 - 1
    for trial in range(12):
        th, tw = rnd.randint(25, 80), rnd.randint(29, 90)  # any size beyond x4, asymmetric too
        ds = sorted(rnd.sample([1, 1.5, 2, 3, 4, 6, 8, 12], rnd.randint(1, 4)))
        thr = sorted(rnd.random() for _ in ds)
        if trial % 3 == 0:
            thr = [0.0] * len(ds)          # top levels empty: everything on the coarsest grid
        if trial % 3 == 1:
            thr = [10.0] * len(ds)
        table = {rnd.choice([6, 8, 12, 16]): dict(zip(ds, thr, strict=True))}
        coord, cell = _queries(1, th, tw)
        stats = {}
        with torch.no_grad():
            out = m(inp, coord, cell, cmsr=CMSR(Scale2Mod(table)), stats=stats)
        assert out.shape == (1, th * tw, 3), (table, th, tw)
        assert torch.isfinite(out).all()
        assert 0.0 <= stats["cmsr_skipped_fraction"] <= 1.0


def test_cmsr_renders_everything_at_full_scale_when_thresholds_are_zero():
    """Negative thresholds select no pixel below the target scale: everything renders at the
    target scale, equal to plain decoding except in the border band where the official level
    grid (a bilinear resize of the LR centres) clamps to the outermost LR centres (kept quirk)."""
    m = _lm("lmliif")
    inp = torch.rand(1, 3, 5, 6) * 2 - 1
    coord, cell = _queries(1, 40, 48)  # x8
    cmsr = CMSR(Scale2Mod({8: {1: -1.0, 2: -1.0, 4: -1.0}}))
    with torch.no_grad():
        stats = {}
        a = m(inp, coord, cell, cmsr=cmsr, stats=stats)
        # CMSR renders with the cell clipped at the training range: cell * max(8 / 4, 1)
        b = m.decode(m.prepare(inp, cell), coord, cell * 2)
    inside = ((coord[0, :, 0].abs() <= axis_coords(5)[-1]) & (coord[0, :, 1].abs() <= axis_coords(6)[-1]))
    assert inside.sum() > 0.5 * inside.numel()
    assert torch.allclose(a[:, inside], b[:, inside], atol=1e-6)
    assert not torch.allclose(a, b, atol=1e-6)
    assert stats["cmsr_skipped_fraction"] == pytest.approx(0.0)


def test_cmsr_skips_more_with_looser_thresholds_and_is_off_within_training_range():
    m = _lm("lmliif")
    inp = torch.rand(1, 3, 6, 6) * 2 - 1
    coord, cell = _queries(1, 72, 72)  # x12
    with torch.no_grad():
        lat = m.prepare(inp, cell)
        mu = lat.complexity
        lo, hi = mu.min().item(), mu.max().item()
        fractions = []
        for t in (lo - 1, (lo + hi) / 2, hi + 1):
            stats = {}
            m(inp, coord, cell, cmsr=CMSR(Scale2Mod({12: {1: t}})), stats=stats)
            fractions.append(stats["cmsr_skipped_fraction"])
        assert fractions[0] == pytest.approx(0.0)
        assert fractions[0] < fractions[1] < fractions[2]
        assert fractions[2] == pytest.approx(1 - 1 / 144)
        stats = {}
        c4, ce4 = _queries(1, 24, 24)  # x4: inside the training range, CMSR stays off
        plain = m(inp, c4, ce4, cmsr=False)
        assert torch.equal(m(inp, c4, ce4, cmsr=CMSR(Scale2Mod({4: {1: 10.0}})), stats=stats), plain)
        assert stats == {}


def test_cmsr_batch_equals_single_images():
    m = _lm("lmlte")
    inp = torch.rand(2, 3, 5, 5) * 2 - 1
    coord, cell = _queries(2, 45, 45)
    cmsr = CMSR(Scale2Mod({9: {1: 0.2, 2: 0.3, 4: 0.4}}))
    with torch.no_grad():
        both = m(inp, coord, cell, cmsr=cmsr)
        for i in range(2):
            assert torch.allclose(both[i:i + 1], m(inp[i:i + 1], coord[:1], cell[:1], cmsr=cmsr), atol=1e-6)


def test_bad_scale2mod_tables_are_clear_errors(tmp_path):
    from utils.errors import UserError
    with pytest.raises(UserError, match="non-empty mapping"):
        Scale2Mod({})
    with pytest.raises(UserError, match="finite number"):
        Scale2Mod({8: {1: "x"}})
    p = tmp_path / "t.yaml"
    p.write_text("8: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        Scale2Mod.load(p)
    p.write_text("!!python/object/apply:os.system ['touch x']\n")
    with pytest.raises(UserError):
        Scale2Mod.load(p)
    p.write_text("- 1\n- 2\n")  # valid YAML, not a table: the error names the file
    with pytest.raises(UserError, match=r"t\.yaml: Scale2Mod table must be a non-empty mapping"):
        Scale2Mod.load(p)
    assert math.isfinite(Scale2Mod({8: {1: 0.3}}).levels(8.0)[1][1])
