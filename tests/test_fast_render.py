"""The fused CPU render kernel computes the same function as the PyTorch render path."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from models import fast_render
from models.mlp import ModulatedMLP

pytestmark = pytest.mark.skipif(fast_render.library() is None,
                                reason="fused render kernel not available (no C compiler?)")


def pytorch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_render, "use_kernel", lambda *a, **k: False)


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
    assert fast_render.use_kernel(16, folded, x)
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
    assert folded.requires_grad and not fast_render.use_kernel(16, folded, x)
    out = m.render(x, folded, torch.zeros(8, dtype=torch.long))
    out.sum().backward()
    assert m.hidden(3).weight.grad is not None
    with torch.no_grad():
        assert fast_render.use_kernel(16, folded, x)
        assert not fast_render.use_kernel(16, folded.double(), x.double())
        assert not fast_render.use_kernel(32, folded, x)
        assert not fast_render.use_kernel(16, folded, x, in_width=fast_render.LTE_MAX_INPUT + 2)


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


# --- the binding checks what it is given ---------------------------------------------------------
def test_binding_is_read_from_the_c_prototypes():
    sigs = fast_render.signatures(fast_render._SOURCE.read_text())
    assert set(sigs) == {"lmf_render16", "lmf_query16", "lmf_lte16"}
    names = [p.name for p in sigs["lmf_render16"]]
    assert names[:5] == ["n", "in_dim", "x", "index", "n_cells"] and names[-1] == "out"
    q = {p.name: p for p in sigs["lmf_query16"]}
    assert q["coord"].dtype == torch.float32 and q["clamp"].dtype is None and q["n_cells"].dtype is None


def test_wrong_argument_names_or_types_are_refused_before_the_call():
    lib = fast_render.library()
    with pytest.raises(TypeError, match="missing arguments"):
        lib.lmf_render16(n=1)
    m = ModulatedMLP(4, 3, 16, 6)
    with torch.no_grad():
        folded = m.fold(torch.randn(10, m.mod_dim))
    w0t, wht, woutt, bout = fast_render.kernel_weights(torch.zeros(1), m.hidden(0).weight,
                                                       [m.hidden(l).weight for l in range(1, 6)],
                                                       m.layers[-1].weight, m.layers[-1].bias)
    args = dict(n=2, in_dim=4, x=torch.zeros(2, 4), index=torch.zeros(2, dtype=torch.int32), n_cells=10, depth=6,
                tables=folded, layer_stride=folded.stride(0), cell_stride=folded.stride(1), w0t=w0t, wht=wht,
                out_dim=3, woutt=woutt, bout=bout, out=torch.zeros(2, 3))
    with pytest.raises(TypeError, match="index must be a CPU torch.int64 tensor"):
        lib.lmf_render16(**args)


@pytest.mark.parametrize("bad", [10, -1, 1 << 40])
@torch.no_grad()
def test_out_of_range_cell_index_is_an_exception(bad):
    """The C code checks every cell index against the tables: an IndexError, not a wild read."""
    m = ModulatedMLP(4, 3, 16, 6)
    folded = m.fold(torch.randn(10, m.mod_dim))
    x = torch.randn(5, 4)
    index = torch.tensor([0, 3, bad, 9, 1])
    with pytest.raises(IndexError, match="cell index"):
        m.render(x, folded, index)


@torch.no_grad()
def test_grid_larger_than_the_tables_is_an_exception():
    m = ModulatedMLP(2, 3, 16, 6)
    tables = m.fold(torch.randn(4 * 5, m.mod_dim)).view(6, 1, 20, 32)
    coord = torch.rand(1, 7, 2) * 2 - 1
    with pytest.raises(IndexError):
        m.render_at(coord, tables, (5, 5), True)  # 25 cells > the 20 rows of the tables


def _fresh_build(monkeypatch, tmp_path, prepare) -> Path:
    """Build the kernel with LMF_CACHE_DIR and the temp dir under tmp_path, after ``prepare``
    planted something; return the folder the library was built in."""
    monkeypatch.setenv("LMF_CACHE_DIR", str(tmp_path / "home-cache"))
    monkeypatch.setattr(fast_render.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    monkeypatch.setattr(fast_render, "_private_dir", None)
    monkeypatch.setattr(fast_render, "_lib", None)
    monkeypatch.setattr(fast_render, "_failed", False)
    (tmp_path / "tmp").mkdir()
    prepare()
    folder = fast_render._cache_dir()
    assert fast_render.library() is not None
    return folder


@pytest.mark.parametrize("how", ["world_writable", "group_writable", "symlink"])
def test_planted_cache_folders_are_not_used(monkeypatch, tmp_path, how):
    """A cache folder that others can write to (or a link to one) is never used: the kernel is
    built in a fresh private temp folder instead."""
    uid = os.getuid()
    planted = [tmp_path / "home-cache", tmp_path / "tmp" / f"lmf-sr-{uid}"]  # LMF_CACHE_DIR is the folder itself

    def plant():
        elsewhere = tmp_path / "attacker"
        elsewhere.mkdir(mode=0o700)
        for p in planted:
            p.parent.mkdir(parents=True, exist_ok=True)
            if how == "symlink":
                p.symlink_to(elsewhere)
            else:
                p.mkdir()
                os.chmod(p, 0o777 if how == "world_writable" else 0o770)

    folder = _fresh_build(monkeypatch, tmp_path, plant)
    assert folder not in planted and folder.parent == tmp_path / "tmp" and folder.name.startswith("lmf-sr-")
    assert (folder.stat().st_mode & 0o777) == 0o700 and any(folder.iterdir())
    for p in planted:
        assert not any(p.iterdir()) if not p.is_symlink() else not any((tmp_path / "attacker").iterdir())


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to plant a foreign-owned folder")
def test_foreign_owned_cache_folder_is_not_used(monkeypatch, tmp_path):
    planted = [tmp_path / "home-cache", tmp_path / "tmp" / f"lmf-sr-{os.getuid()}"]

    def plant():
        for p in planted:
            p.mkdir(parents=True, mode=0o700)
            os.chown(p, 12345, 12345)

    folder = _fresh_build(monkeypatch, tmp_path, plant)
    assert folder not in planted and folder.name.startswith("lmf-sr-")
    assert all(not any(p.iterdir()) for p in planted)


def test_own_private_cache_folder_is_used(monkeypatch, tmp_path):
    folder = _fresh_build(monkeypatch, tmp_path, lambda: None)
    assert folder == tmp_path / "home-cache" and (folder.stat().st_mode & 0o077) == 0
