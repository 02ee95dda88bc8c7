"""The fused CPU render kernel computes the same function as the PyTorch render path."""
from __future__ import annotations

import os

import pytest
import torch

from models import fast_render
from models.mlp import ModulatedMLP

pytestmark = pytest.mark.skipif(fast_render.library() is None,
                                reason="fused render kernel not available (no C compiler?)")


def pytorch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_render, "usable", lambda *a, **k: False)


def reference(m: ModulatedMLP, x, folded, index, w0=None):
    """Plain per-layer evaluation of relu((W x) * a + c), independent of ModulatedMLP.render."""
    hd = m.hidden_dim
    w0 = m.hidden(0).weight if w0 is None else w0
    rows = torch.arange(x.shape[0]) if index is None else index
    h = x
    for l in range(m.hidden_depth):
        w = w0 if l == 0 else m.hidden(l).weight
        ac = folded[l][rows]
        h = torch.relu((h @ w.t()) * ac[:, :hd] + ac[:, hd:])
    return m.layers[-1](h)


@pytest.mark.parametrize("in_dim,out_dim,depth,n", [(4, 3, 6, 1), (4, 3, 6, 7), (4, 3, 6, 10007),
                                                     (16, 3, 8, 4099), (2, 3, 6, 33), (4, 16, 1, 50)])
@torch.no_grad()
def test_kernel_matches_layerwise_reference(in_dim, out_dim, depth, n):
    torch.manual_seed(in_dim * 100 + depth)
    m = ModulatedMLP(in_dim, out_dim, 16, depth)
    cells = 97
    folded = m.fold(torch.randn(cells, m.mod_dim) * 0.5)
    x = torch.randn(n, in_dim)
    index = torch.randint(0, cells, (n,))
    assert fast_render.usable(x, folded, 16)
    out = m.render(x, folded, index)
    assert out.shape == (n, out_dim)
    torch.testing.assert_close(out, reference(m, x, folded, index), rtol=0, atol=2e-5)


@torch.no_grad()
def test_kernel_threads_strides_and_layer0_weight(monkeypatch):
    torch.manual_seed(1)
    m = ModulatedMLP(20, 3, 16, 6)
    cells = 300
    folded = m.fold(torch.randn(cells, m.mod_dim))
    # a strided view of the tables (every other cell), as a batch slice would give
    tables = torch.cat([folded, folded], dim=1)[:, ::2]
    assert not tables.is_contiguous()
    x = torch.randn(50000, 4)  # enough rows to be split over threads
    index = torch.randint(0, cells, (50000,))
    w0 = m.hidden(0).weight[:, 16:]
    torch.set_num_threads(2)
    fast = m.render(x, tables, index, layer0_weight=w0)
    pytorch_path(monkeypatch)
    slow = m.render(x, tables, index, layer0_weight=w0)
    torch.testing.assert_close(fast, slow, rtol=0, atol=2e-5)
    # without index: row i uses table row i
    x20 = torch.randn(cells, 20)
    torch.testing.assert_close(m.render(x20, folded), reference(m, x20, folded, None), rtol=0, atol=2e-5)


@pytest.mark.parametrize("name", ["lmliif", "lmliif-noens", "lmlte", "lmlte-plain"])
@torch.no_grad()
def test_blended_render_matches_pytorch_path(name, monkeypatch):
    """Whole decoders, batch of 2, non-square LR, odd query count: kernel == layer-by-layer."""
    import models
    torch.manual_seed(3)
    enc = {"name": "edsr-baseline", "args": {"no_upsampling": True, "n_feats": 8, "n_resblocks": 1}}
    imnet = {"name": "lmmlp", "args": {"out_dim": 3, "hidden_dim": 16, "hidden_depth": 6}}
    if name.startswith("lmliif"):
        spec = {"name": "lmliif", "args": {"encoder_spec": enc, "imnet_spec": imnet, "mod_input": True,
                "local_ensemble": name == "lmliif",
                "hypernet_spec": {"name": "mlp", "args": {"hidden_list": [32]}}}}
    elif name == "lmlte":
        spec = {"name": "lmlte", "args": {"encoder_spec": enc, "imnet_spec": imnet, "hidden_dim": 16, "mod_input": True,
                "hypernet_spec": {"name": "mlp", "args": {"hidden_list": [32]}}}}
    else:  # no compact code: the Fourier input is 32 wide; no cell input, no ensemble
        spec = {"name": "lmlte", "args": {"encoder_spec": enc, "imnet_spec": imnet, "hidden_dim": 32,
                "mod_input": False, "cell_decode": False, "local_ensemble": False,
                "hypernet_spec": {"name": "mlp", "args": {"hidden_list": [32]}}}}
    model = models.make(spec).eval()
    for p in model.parameters():  # random, not default-initialised, so every term matters
        p.add_(torch.randn_like(p) * 0.1)
    inp = torch.randn(2, 3, 13, 17)
    coord = (torch.rand(2, 1001, 2) * 2 - 1)
    cell = torch.rand(2, 1001, 2) * 0.2
    fast = model(inp, coord, cell)
    pytorch_path(monkeypatch)
    slow = model(inp, coord, cell)
    torch.testing.assert_close(fast, slow, rtol=0, atol=2e-5)


def test_not_used_when_gradients_are_needed():
    m = ModulatedMLP(4, 3, 16, 6)
    folded = m.fold(torch.randn(10, m.mod_dim))  # requires grad through the bias
    x = torch.randn(8, 4)
    assert folded.requires_grad and not fast_render.usable(x, folded, 16)
    out = m.render(x, folded, torch.zeros(8, dtype=torch.long))
    out.sum().backward()
    assert m.hidden(3).weight.grad is not None
    with torch.no_grad():
        assert fast_render.usable(x, folded, 16)
    assert not fast_render.usable(x.double(), folded.double(), 16)
    assert not fast_render.usable(x, folded, 32)


def test_build_failure_falls_back_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setattr(fast_render, "_lib", None)
    monkeypatch.setattr(fast_render, "_failed", False)
    monkeypatch.setattr(fast_render, "_compiler", lambda: None)
    with pytest.warns(UserWarning, match="fused render kernel unavailable"):
        assert fast_render.library() is None
    assert fast_render.library() is None  # decided once, no second warning
    m = ModulatedMLP(4, 3, 16, 6)
    with torch.no_grad():
        folded = m.fold(torch.randn(10, m.mod_dim))
        x, index = torch.randn(8, 4), torch.randint(0, 10, (8,))
        torch.testing.assert_close(m.render(x, folded, index), reference(m, x, folded, index))


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setattr(fast_render, "_lib", None)
    monkeypatch.setattr(fast_render, "_failed", False)
    monkeypatch.setenv("LMF_FAST_RENDER", "0")
    assert fast_render.library() is None


def test_cache_is_reused(monkeypatch, tmp_path):
    monkeypatch.setenv("LMF_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(fast_render, "_lib", None)
    monkeypatch.setattr(fast_render, "_failed", False)
    assert fast_render.library() is not None
    built = list(tmp_path.iterdir())  # LMF_CACHE_DIR is the folder itself
    assert len(built) == 1 and built[0].name.startswith("render16-")
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(fast_render, "_lib", None)
    assert fast_render.library() is not None
    assert built[0].stat().st_mtime_ns == stamp and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("n", [1, 2, 3, 7, 24, 90, 161, 1000])
def test_axis_thresholds_reproduce_the_lookup(n):
    """cell(x) = #{j >= 1: t[j] <= x} for random x and for the floats at and around every t[j]."""
    from models import query as Q

    t = Q.axis_thresholds(n)
    assert t.shape == (n,) and t[0] == float("-inf") and bool((t[1:] > t[:-1]).all())
    fin = t[1:]
    below = torch.nextafter(fin, torch.full_like(fin, -2.0))
    above = torch.nextafter(fin, torch.full_like(fin, 2.0))
    x = torch.cat([torch.rand(5000) * 2 - 1, fin, below, above, torch.nextafter(below, torch.full_like(fin, -2.0))])
    x = x.clamp(-Q.CLAMP, Q.CLAMP)
    expect = Q.axis_cell(x.view(1, -1), n).view(-1)
    assert torch.equal((t.view(1, -1) <= x.view(-1, 1)).sum(1) - 1, expect)


@pytest.mark.parametrize("local_ensemble", [True, False])
@pytest.mark.parametrize("with_cell", [True, False])
@torch.no_grad()
def test_fused_queries_match_pytorch_path_on_cell_borders(local_ensemble, with_cell, monkeypatch):
    """render_at: queries exactly on / next to the look-up thresholds, batch of 2, h != w."""
    from models import query as Q

    torch.manual_seed(4)
    m = ModulatedMLP(4 if with_cell else 2, 3, 16, 6)
    for p in m.parameters():
        p.add_(torch.randn_like(p) * 0.2)
    h, w = 7, 12
    tables = m.fold(torch.randn(2 * h * w, m.mod_dim)).view(6, 2, h * w, 32)
    rows = torch.cat([Q.axis_thresholds(h)[1:], Q.axis_coords(h), torch.rand(40) * 2 - 1])
    cols = torch.cat([Q.axis_thresholds(w)[1:], Q.axis_coords(w), torch.rand(40) * 2 - 1])
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1).view(1, -1, 2)
    for eps in (0.0, 1e-7, -1e-7, 1e-6 - 1e-9):
        coord = torch.cat([grid + eps, grid.flip(1) - eps]).clamp(-1, 1)
        cell = torch.rand(2, coord.shape[1], 2) * 0.3 if with_cell else None
        fused = m.render_at(coord, tables, (h, w), local_ensemble, cell)
        with fast_render.disabled():
            plain = m.render_at(coord, tables, (h, w), local_ensemble, cell)
        torch.testing.assert_close(fused, plain, rtol=0, atol=2e-5)


def test_read_only_cache_falls_back_to_temp(monkeypatch, tmp_path):
    monkeypatch.setenv("LMF_CACHE_DIR", str(tmp_path / "home-cache"))
    monkeypatch.setattr(fast_render.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if "home-cache" in str(p) else real_access(p, mode))
    folder = fast_render._cache_dir()
    assert folder.parent == tmp_path / "tmp" and folder.name.startswith("lmf-sr-") and folder.is_dir()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_kernel_works_in_a_forked_child():
    """A child forked after the parent used the kernel's thread pool gets a pool of its own
    (the parent's worker threads do not exist in the child: reusing the pool would hang)."""
    import pickle

    m = ModulatedMLP(4, 3, 16, 6)
    with torch.no_grad():
        folded = m.fold(torch.randn(50, m.mod_dim))
        x, index = torch.randn(40000, 4), torch.randint(0, 50, (40000,))
        torch.set_num_threads(2)
        expect = m.render(x, folded, index)
    assert fast_render._pool is not None and fast_render._pool_pid == os.getpid()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no PyTorch intra-op parallelism here (OpenMP is not fork-safe)
        code = 1
        try:
            torch.set_num_threads(1)  # PyTorch ops stay single-threaded; the kernel still uses 2
            fast_render.num_threads = lambda: 2
            with torch.no_grad():
                got = m.render(x, folded, index)
            ok = fast_render._pool_pid == os.getpid() and bool(abs(got.numpy() - expect.numpy()).max() < 1e-6)
            os.write(write, pickle.dumps(ok))
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    import select
    ready, _, _ = select.select([read], [], [], 60)
    if not ready:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    data = os.read(read, 1024)
    os.waitpid(pid, 0)
    assert pickle.loads(data) is True
