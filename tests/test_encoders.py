"""Encoders: official parameter counts, state-dict layout, output shapes and SwinIR padding/masks."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import models
from models.encoders.swinir import DropPath, pad_to_multiple, shifted_window_mask
from utils.errors import SpecError

FIXTURE = "/work/shared/fixtures/official/liif.pth"


def _enc(name: str, **args) -> torch.nn.Module:
    return models.make({"name": name, "args": {"no_upsampling": True, **args}})


@pytest.fixture(scope="module")
def edsr_b() -> torch.nn.Module:
    torch.manual_seed(0)
    return _enc("edsr-baseline").eval()


@pytest.fixture(scope="module")
def rdn() -> torch.nn.Module:
    torch.manual_seed(0)
    return _enc("rdn").eval()


@pytest.fixture(scope="module")
def swinir() -> torch.nn.Module:
    torch.manual_seed(0)
    return _enc("swinir").eval()


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ----------------------------------------------------------------------------- parameter counts

def test_param_counts(edsr_b, rdn, swinir):
    assert _n_params(edsr_b) == 1_220_440
    assert _n_params(rdn) == 21_973_952
    assert _n_params(swinir) == 11_603_044


def test_edsr_meanshift_frozen_and_counted(edsr_b):
    frozen = [n for n, p in edsr_b.named_parameters() if not p.requires_grad]
    assert sorted(frozen) == ["add_mean.bias", "add_mean.weight", "sub_mean.bias", "sub_mean.weight"]
    assert sum(p.numel() for p in edsr_b.parameters() if not p.requires_grad) == 24
    mean = torch.tensor([0.4488, 0.4371, 0.4040])
    torch.testing.assert_close(edsr_b.sub_mean.bias, -mean)
    torch.testing.assert_close(edsr_b.add_mean.bias, mean)
    torch.testing.assert_close(edsr_b.sub_mean.weight.view(3, 3), torch.eye(3))


# ----------------------------------------------------------------------------- state-dict layout

def _shapes(m: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def test_edsr_baseline_keys(edsr_b):
    want = {"sub_mean.weight": (3, 3, 1, 1), "sub_mean.bias": (3,),
            "add_mean.weight": (3, 3, 1, 1), "add_mean.bias": (3,),
            "head.0.weight": (64, 3, 3, 3), "head.0.bias": (64,),
            "body.16.weight": (64, 64, 3, 3), "body.16.bias": (64,)}
    for i in range(16):
        for j in (0, 2):
            want[f"body.{i}.body.{j}.weight"] = (64, 64, 3, 3)
            want[f"body.{i}.body.{j}.bias"] = (64,)
    assert _shapes(edsr_b) == want
    assert len(want) == 72


def test_rdn_keys(rdn):
    want = {"SFENet1.weight": (64, 3, 3, 3), "SFENet1.bias": (64,),
            "SFENet2.weight": (64, 64, 3, 3), "SFENet2.bias": (64,),
            "GFF.0.weight": (64, 1024, 1, 1), "GFF.0.bias": (64,),
            "GFF.1.weight": (64, 64, 3, 3), "GFF.1.bias": (64,)}
    for i in range(16):
        for c in range(8):
            want[f"RDBs.{i}.convs.{c}.conv.0.weight"] = (64, 64 + 64 * c, 3, 3)
            want[f"RDBs.{i}.convs.{c}.conv.0.bias"] = (64,)
        want[f"RDBs.{i}.LFF.weight"] = (64, 576, 1, 1)
        want[f"RDBs.{i}.LFF.bias"] = (64,)
    assert _shapes(rdn) == want
    assert len(want) == 296
    assert len(list(rdn.buffers())) == 0


def test_swinir_keys(swinir):
    want = {"conv_first.weight": (180, 3, 3, 3), "conv_first.bias": (180,),
            "patch_embed.norm.weight": (180,), "patch_embed.norm.bias": (180,),
            "norm.weight": (180,), "norm.bias": (180,),
            "conv_after_body.weight": (180, 180, 3, 3), "conv_after_body.bias": (180,),
            "conv_before_upsample.0.weight": (64, 180, 3, 3), "conv_before_upsample.0.bias": (64,)}
    for i in range(6):
        want[f"layers.{i}.conv.weight"] = (180, 180, 3, 3)
        want[f"layers.{i}.conv.bias"] = (180,)
        for j in range(6):
            p = f"layers.{i}.residual_group.blocks.{j}."
            want.update({p + "norm1.weight": (180,), p + "norm1.bias": (180,),
                         p + "attn.relative_position_bias_table": (225, 6),
                         p + "attn.relative_position_index": (64, 64),
                         p + "attn.qkv.weight": (540, 180), p + "attn.qkv.bias": (540,),
                         p + "attn.proj.weight": (180, 180), p + "attn.proj.bias": (180,),
                         p + "norm2.weight": (180,), p + "norm2.bias": (180,),
                         p + "mlp.fc1.weight": (360, 180), p + "mlp.fc1.bias": (360,),
                         p + "mlp.fc2.weight": (180, 360), p + "mlp.fc2.bias": (180,)})
            if j % 2 == 1:
                want[p + "attn_mask"] = (36, 64, 64)
    assert _shapes(swinir) == want


def test_swinir_buffers_match_official_definition(swinir):
    blk = swinir.layers[0].residual_group.blocks[1]
    # relative position index: (dy + 7) * 15 + (dx + 7) for tokens i, j in an 8x8 window
    idx = torch.arange(64)
    dy = idx.div(8, rounding_mode="floor")[:, None] - idx.div(8, rounding_mode="floor")[None, :]
    dx = (idx % 8)[:, None] - (idx % 8)[None, :]
    assert torch.equal(blk.attn.relative_position_index, (dy + 7) * 15 + (dx + 7))
    assert torch.equal(blk.attn_mask, shifted_window_mask(48, 48, 8, 4))
    assert swinir.layers[0].residual_group.blocks[0].attn_mask is None


def test_state_dict_round_trip_strict(swinir):
    torch.manual_seed(1)
    other = _enc("swinir").eval()
    other.load_state_dict(swinir.state_dict(), strict=True)
    x = torch.randn(1, 3, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(other(x), swinir(x), rtol=0, atol=0)


@pytest.mark.skipif(not os.path.exists(FIXTURE), reason="official fixture not available")
def test_edsr_loads_official_encoder_weights():
    ck = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    enc = {k[len("encoder."):]: v for k, v in ck["model"]["sd"].items() if k.startswith("encoder.")}
    m = models.make(ck["model"]["args"]["encoder_spec"])
    m.load_state_dict(enc, strict=True)


# ----------------------------------------------------------------------------- outputs

@pytest.mark.parametrize("which", ["edsr_b", "rdn", "swinir"])
def test_output_shape_odd_size(which, request):
    m = request.getfixturevalue(which)
    assert m.out_dim == 64
    x = torch.randn(2, 3, 13, 17)
    with torch.no_grad():
        y = m(x)
    assert y.shape == (2, 64, 13, 17)
    assert torch.isfinite(y).all()


def test_edsr_meanshift_not_applied():
    torch.manual_seed(0)
    m = _enc("edsr-baseline", n_resblocks=2).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        y0 = m(x)
        m.sub_mean.bias.fill_(5.0)
        m.add_mean.bias.fill_(-5.0)
        assert torch.equal(m(x), y0)


def test_edsr_variants_and_upsampling():
    full = _enc("edsr", n_resblocks=2)
    assert full.out_dim == 256 and full.body[0].res_scale == 0.1
    up = models.make({"name": "edsr-baseline", "args": {"n_resblocks": 1}})  # official default: upsample x2
    assert up.out_dim == 3
    assert {k for k in up.state_dict() if k.startswith("tail")} == {
        "tail.0.0.weight", "tail.0.0.bias", "tail.1.weight", "tail.1.bias"}
    assert up(torch.randn(1, 3, 5, 6)).shape == (1, 3, 10, 12)
    up4 = models.make({"name": "edsr-baseline", "args": {"n_resblocks": 1, "scale": 4}})
    assert up4(torch.randn(1, 3, 5, 6)).shape == (1, 3, 20, 24)
    up3 = models.make({"name": "edsr-baseline", "args": {"n_resblocks": 1, "scale": 3}})
    assert up3(torch.randn(1, 3, 5, 6)).shape == (1, 3, 15, 18)


def test_rdn_config_a_and_upsampling():
    a = _enc("rdn", RDNconfig="A")
    assert len(a.RDBs) == 20 and len(a.RDBs[0].convs) == 6
    assert a.RDBs[0].convs[5].conv[0].weight.shape == (32, 64 + 5 * 32, 3, 3)
    up = models.make({"name": "rdn", "args": {"RDNconfig": "A", "scale": 4}})
    assert up.out_dim == 3
    assert up(torch.randn(1, 3, 4, 5)).shape == (1, 3, 16, 20)


# ----------------------------------------------------------------------------- SwinIR specifics

def test_pad_to_multiple():
    x = torch.randn(1, 3, 13, 17)
    assert torch.equal(pad_to_multiple(x, 8), F.pad(x, (0, 7, 0, 3), mode="reflect"))
    assert pad_to_multiple(x[..., :8, :16], 8).shape == (1, 3, 8, 16)
    for h, w in [(1, 1), (2, 3), (3, 9)]:  # pads larger than the image
        y = pad_to_multiple(torch.randn(1, 3, h, w), 8)
        assert y.shape[-2] % 8 == 0 and y.shape[-1] % 8 == 0


def test_swinir_internal_padding_consistent(swinir):
    torch.manual_seed(2)
    x = torch.randn(1, 3, 13, 17)
    xp = F.pad(x, (0, 7, 0, 3), mode="reflect")  # what the official test.py feeds (16 x 24)
    with torch.no_grad():
        y = swinir(x)
        yp = swinir(xp)
    assert yp.shape == (1, 64, 16, 24)
    torch.testing.assert_close(y, yp[..., :13, :17], rtol=1e-5, atol=1e-6)


def test_swinir_tiny_input(swinir):
    with torch.no_grad():
        assert swinir(torch.randn(1, 3, 3, 5)).shape == (1, 64, 3, 5)


def test_shifted_mask_semantics():
    """Two tokens of a shifted window may attend iff neither or both wrapped around (per axis)."""
    h, w, ws, s = 16, 24, 8, 4
    mask = shifted_window_mask(h, w, ws, s)
    assert mask.shape == ((h // ws) * (w // ws), ws * ws, ws * ws)
    rows = torch.arange(h)[:, None].expand(h, w)
    cols = torch.arange(w)[None, :].expand(h, w)
    wrap = ((rows >= h - s).long() * 2 + (cols >= w - s).long()).float()  # in shifted coordinates
    from models.encoders.swinir import window_partition
    lab = window_partition(wrap[None, :, :, None], ws).view(-1, ws * ws)
    allowed = lab[:, :, None] == lab[:, None, :]
    assert torch.equal(mask == 0, allowed)
    assert set(mask.unique().tolist()) == {0.0, -100.0}


def test_swinir_forward_ignores_stored_mask():
    """The stored 48x48 mask is only for checkpoints; the forward computes the right one."""
    torch.manual_seed(3)
    m = _enc("swinir", depths=[2], num_heads=[6]).eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        y0 = m(x)
        m.layers[0].residual_group.blocks[1].attn_mask.fill_(123.0)
        assert torch.equal(m(x), y0)


def test_swinir_eval_deterministic_train_droppath(swinir):
    torch.manual_seed(4)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        a, b = swinir(x), swinir(x)
        assert torch.equal(a, b)
        swinir.train()
        try:
            torch.manual_seed(5)
            t1, t2 = swinir(x), swinir(x)
        finally:
            swinir.eval()
    assert not torch.equal(t1, t2)
    rates = [blk.drop_path.drop_prob for layer in swinir.layers for blk in layer.residual_group.blocks]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.1, 36))


def test_swinir_train_equals_eval_without_droppath():
    torch.manual_seed(6)
    m = _enc("swinir", depths=[2, 2], num_heads=[6, 6], drop_path_rate=0.0)
    x = torch.randn(1, 3, 8, 16)
    with torch.no_grad():
        m.train()
        t = m(x)
        m.eval()
        torch.testing.assert_close(m(x), t, rtol=0, atol=0)


def test_swinir_init(swinir):
    blk = swinir.layers[0].residual_group.blocks[0]
    w = blk.mlp.fc1.weight
    assert abs(w.std().item() - 0.02) < 0.002 and w.abs().max().item() <= 2.0
    assert torch.count_nonzero(blk.mlp.fc1.bias) == 0
    assert torch.equal(blk.norm1.weight, torch.ones(180)) and torch.count_nonzero(blk.norm1.bias) == 0


def test_swinir_float64():
    torch.manual_seed(7)
    m = _enc("swinir", depths=[2], num_heads=[6]).double().eval()
    with torch.no_grad():
        y = m(torch.randn(1, 3, 10, 9, dtype=torch.float64))
    assert y.dtype == torch.float64 and y.shape == (1, 64, 10, 9)


def test_droppath_unit():
    torch.manual_seed(8)
    dp = DropPath(0.5).train()
    x = torch.ones(64, 3, 2)
    y = dp(x)
    per_sample = y.view(64, -1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()  # whole samples dropped or kept
    assert 0 < (per_sample[:, 0] == 0).sum() < 64
    assert torch.equal(dp.eval()(x), x)


# ----------------------------------------------------------------------------- argument checking

@pytest.mark.parametrize("name", ["edsr-baseline", "edsr", "rdn", "swinir"])
def test_unknown_arg_is_spec_error(name):
    with pytest.raises(SpecError, match="bogus_arg"):
        models.make({"name": name, "args": {"no_upsampling": True, "bogus_arg": 1}})


def test_swinir_rejects_upsampling():
    with pytest.raises(SpecError):
        models.make({"name": "swinir", "args": {"no_upsampling": False}})
