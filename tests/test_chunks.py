"""Query chunks sized from the device's free memory on CUDA (checked here against a stand-in
GPU), unchanged on the CPU; and the live-bytes meter the sizing relies on."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import models
from fake_cuda import FakeCuda
from models import fast_render
from models import query as Q
from models.decoder import probe_queries
from utils.memory import LiveBytes

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["liif", "lte", "lmliif", "lmlte", "lmciaosr"]


def _model(name: str):
    torch.manual_seed(0)
    spec = yaml.safe_load((ROOT / f"configs/train/train_edsr-baseline-{name}.yaml").read_text())["model"]
    return models.make(spec).eval()


def _latent(model, h=12, w=10):
    inp = torch.rand(1, 3, h, w) * 2 - 1
    with torch.no_grad():
        return model.prepare(inp, torch.full((1, 1, 2), 2 / (4 * h)))


def test_live_bytes_counts_what_is_alive():
    with LiveBytes() as m:
        a = torch.empty(1000, dtype=torch.float32)        # 4000 B
        b = torch.empty(500, dtype=torch.float64)         # 4000 B
        v = a.view(10, 100)                                # a view: no new storage
        del b
        c = torch.empty(250, dtype=torch.float32)         # 1000 B
    assert m.peak == 8000 and m.now == 5000
    del a, v, c


@pytest.mark.parametrize("name", NAMES)
def test_cpu_chunks_are_the_decoders_defaults(name):
    model = _model(name)
    lat = _latent(model)
    expected = model.default_bsize
    if name.startswith("lm") and model.render_mlp.fused(lat.mods, in_width=model.fused_input_width):
        expected = fast_render.FUSED_BSIZE
    assert model.chunk_size(lat) == expected


CUDA0 = torch.device("cuda", 0)


def _cuda_chunk(model, lat) -> int:
    """What ``model.chunk_size`` decides for a latent on cuda:0 (the stand-in keeps tensors on
    the CPU, so the device is given as the program's own device objects carry it)."""
    return Q.device_chunk(model.default_bsize, lambda: model.query_bytes(lat), CUDA0)


@pytest.mark.parametrize("name", ["liif", "lte"])
def test_cuda_chunks_fit_the_free_memory_and_the_cap(monkeypatch, name):
    model = _model(name)
    lat = _latent(model)
    per_query = model.query_bytes(lat)
    assert per_query > 1000  # a 256-wide MLP on 4 neighbours: kilobytes per query
    fake = FakeCuda(count=1, free_gib=1.0).install(monkeypatch)
    fake.uninstall()  # keep the torch.cuda functions; tensors stay where they are
    small = _cuda_chunk(model, lat)
    budget = int(Q.CHUNK_FREE_FRACTION * fake.free)
    assert model.default_bsize < small <= budget // per_query
    # the chunk really fits: its measured peak stays within the budget
    coord, cell = probe_queries(lat, small)
    with torch.no_grad(), LiveBytes() as m:
        model.query(lat, coord, cell)
    assert m.peak <= budget * 1.05, (m.peak, budget)
    assert m.peak >= 0.5 * budget  # and it uses the memory it may use (the point of sizing)
    # more free memory: larger chunks, up to the cap
    fake.free = 64 << 30
    large = _cuda_chunk(model, lat)
    assert large > 5 * small
    assert large * per_query <= Q.CHUNK_MEMORY_CAP


def test_cuda_chunks_never_below_the_default(monkeypatch):
    model = _model("liif")
    lat = _latent(model)
    FakeCuda(count=1, free_gib=0.001).install(monkeypatch).uninstall()
    assert _cuda_chunk(model, lat) == model.default_bsize


def test_an_explicit_bsize_still_decides(monkeypatch):
    model = _model("liif")
    lat = _latent(model)
    FakeCuda(count=1, free_gib=64).install(monkeypatch).uninstall()
    seen = []
    real = model.query
    monkeypatch.setattr(model, "query", lambda la, c, ce: seen.append(c.shape[1]) or real(la, c, ce))
    coord, cell = probe_queries(lat, 1000)
    model.decode(lat, coord, cell, bsize=300)
    assert max(seen) <= 300
