"""Device switch (LMF_TEST_DEVICE), exact-fp32 settings, and the encoder's bf16 precision."""
from __future__ import annotations

import pytest
import torch

import models
from models.decoder import set_precision
from utils import devices


def test_test_device_reads_the_env_and_refuses_what_is_not_there(monkeypatch):
    monkeypatch.delenv(devices.TEST_DEVICE_ENV, raising=False)
    assert devices.test_device() == torch.device("cpu")
    monkeypatch.setenv(devices.TEST_DEVICE_ENV, "tpu")
    with pytest.raises(ValueError, match="LMF_TEST_DEVICE"):
        devices.test_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv(devices.TEST_DEVICE_ENV, "cuda")
        with pytest.raises(ValueError, match="CUDA is not available"):
            devices.test_device()


def test_no_tf32_turns_off_both_matmul_and_cudnn():
    # conftest already called it; the golden tests rely on both flags being off on CUDA
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is False


def test_wall_timer_measures_a_call():
    import time

    t = devices.WallTimer(torch.device("cpu"))(lambda: time.sleep(0.01))
    assert 0.009 <= t < 1.0


@torch.no_grad()
def test_bf16_encoder_changes_only_the_encoder():
    torch.manual_seed(0)
    spec = {"name": "lmliif", "args": {
        "encoder_spec": {"name": "edsr-baseline", "args": {"no_upsampling": True, "n_resblocks": 2, "n_feats": 16}},
        "imnet_spec": {"name": "lmmlp", "args": {"out_dim": 3, "hidden_dim": 16, "hidden_depth": 3}},
        "hypernet_spec": {"name": "mlp", "args": {"hidden_list": [32]}}, "mod_input": True}}
    model = models.make(spec).eval()
    inp = torch.rand(1, 3, 12, 10) * 2 - 1
    ref = model.encode(inp)
    assert set_precision(model, "bf16") is model
    feat = model.encode(inp)
    assert feat.dtype == torch.float32 and feat.is_contiguous()
    rel = ((feat - ref).abs().max() / ref.abs().max()).item()
    assert 0 < rel < 3e-2  # bf16 rounding: different, but close
    lat = model.latent(feat, inp, torch.full((1, 1, 2), 0.1))
    assert lat.mods.dtype == torch.float32  # the decoder stays fp32
    set_precision(model, "fp32")
    assert torch.equal(model.encode(inp), ref)
    with pytest.raises(ValueError, match="precision"):
        set_precision(model, "fp16")


@torch.no_grad()
@pytest.mark.parametrize("name", ["lmliif", "lmlte", "liif"])
def test_bf16_latent_stage_as_on_cuda(monkeypatch, name):
    """On CUDA precision bf16 runs the latent stage under autocast too; the same code path runs
    here on the CPU by adding the CPU to the devices it applies to. Its tables come back fp32,
    the render stays fp32, and the output stays close to fp32's."""
    from models import decoder

    torch.manual_seed(0)
    enc = {"name": "edsr-baseline", "args": {"no_upsampling": True, "n_resblocks": 1, "n_feats": 16}}
    args = {"encoder_spec": enc}
    if name == "liif":
        args["imnet_spec"] = {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [32, 32]}}
    else:
        args["imnet_spec"] = {"name": "lmmlp", "args": {"out_dim": 3, "hidden_dim": 16, "hidden_depth": 2}}
        args["hypernet_spec"] = {"name": "mlp", "args": {"hidden_list": [32]}}
    if name == "lmliif":
        args["mod_input"] = True
    model = models.make({"name": name, "args": args}).eval()
    inp = torch.rand(1, 3, 9, 11) * 2 - 1
    coord = torch.rand(1, 50, 2) * 2 - 1
    cell = torch.full((1, 50, 2), 2 / 30)
    ref = model(inp, coord, cell)
    monkeypatch.setattr(decoder, "BF16_LATENT_DEVICES", ("cuda", "cpu"))
    set_precision(model, "bf16")
    calls = []
    real_latent = model.latent
    monkeypatch.setattr(model, "latent", lambda *a: calls.append(torch.is_autocast_enabled("cpu")) or real_latent(*a))
    lat = model.prepare(inp, cell[:, :1])
    assert calls == [True]  # the latent stage ran under autocast
    for t in (lat.rows, lat.mods, lat.complexity):
        assert t is None or t.dtype == torch.float32
    out = model(inp, coord, cell)
    assert out.dtype == torch.float32
    assert 0 < (out - ref).abs().max().item() < 0.05
