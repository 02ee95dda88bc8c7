"""Optional fused CPU kernel for the render MLP (``kernels/render16.c``), loaded through ctypes.

The kernel is compiled on first use with the system C compiler (``cc -O3 -march=native``,
well under a second) into a per-user cache, keyed by the source, the compiler and the CPU, and
reused afterwards. Without a compiler, or with ``LMF_FAST_RENDER=0``, or for anything the kernel
does not cover (autograd, non-CPU tensors, non-fp32, hidden width != 16), the caller falls back
to the plain PyTorch path, which computes the same function (tests compare the two).

Threads: ctypes releases the GIL during the call, so the rows are split over a small thread
pool of ``torch.get_num_threads()`` workers.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator
from pathlib import Path

import torch

HIDDEN = 16
_SOURCE = Path(__file__).with_name("kernels") / "render16.c"
_MIN_ROWS_PER_THREAD = 4096
FUSED_BSIZE = 1 << 20  # default query chunk of decoders whose render runs here (output only: 12 MB)

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_failed = False
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_pid = 0
_disabled = threading.local()


def _cache_dir() -> Path:
    """``$LMF_CACHE_DIR`` itself (the built kernel goes directly into it), else
    ``$XDG_CACHE_HOME/lmf-sr`` or ``~/.cache/lmf-sr``; if that cannot be created (read-only
    home), a per-user folder in the system temp dir."""
    own = os.environ.get("LMF_CACHE_DIR")
    if own:
        folder = Path(os.path.expanduser(own))
    else:
        folder = Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "lmf-sr"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    folder = Path(tempfile.gettempdir()) / f"lmf-sr-{user}"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def _cpu_id() -> str:
    """Something that changes when the CPU's instruction set does (the build uses -march=native)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _build() -> ctypes.CDLL:
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (cc/gcc/clang)")
    flags = ["-O3", "-march=native", "-shared", "-fPIC", "-fno-math-errno"]
    if sys.platform == "darwin" and platform.machine() == "arm64":
        flags[1] = "-mcpu=native"
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join([cc, *flags, _cpu_id(), platform.platform()]).encode()).hexdigest()[:16]
    suffix = ".dll" if sys.platform == "win32" else ".so"
    target = _cache_dir() / f"render16-{key}{suffix}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=suffix)
        os.close(fd)
        try:
            libs = [] if sys.platform == "win32" else ["-lm"]
            proc = subprocess.run([cc, *flags, "-o", tmp, str(_SOURCE), *libs], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{cc} failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
            os.replace(tmp, target)  # atomic: concurrent processes never load a half-written file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(target))
    fn = lib.lmf_render16
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    fn.argtypes = [i64, i64, ptr, ptr, i64, ptr, i64, i64, ptr, ptr, i64, ptr, ptr, ptr]
    fn.restype = ctypes.c_int
    fn = lib.lmf_query16
    fn.argtypes = [i64, ptr, i64, ptr, i64, i64, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr,
                   ctypes.c_float, i64, ptr, i64, i64, ptr, ptr, i64, ptr, ptr, ptr]
    fn.restype = ctypes.c_int
    fn = lib.lmf_lte16
    fn.argtypes = [i64, ptr, i64, ptr, i64, i64, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr,
                   ctypes.c_float, ptr, i64, i64, ptr, i64, i64, ptr, ptr, i64, ptr, ptr, ptr]
    fn.restype = ctypes.c_int
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None when it is disabled or cannot be built (warned once)."""
    global _lib, _failed
    if _lib is not None or _failed:
        return _lib
    with _lock:
        if _lib is None and not _failed:
            if os.environ.get("LMF_FAST_RENDER", "1") == "0":
                _failed = True
            else:
                try:
                    _lib = _build()
                except Exception as exc:  # any build/load problem: fall back to PyTorch, say so once
                    _failed = True
                    warnings.warn(f"fused render kernel unavailable, using PyTorch ({exc})", stacklevel=3)
    return _lib


@contextmanager
def disabled() -> Iterator[None]:
    """Use the PyTorch path inside this block (this thread), e.g. to count FLOPs or compare."""
    before = getattr(_disabled, "on", False)
    _disabled.on = True
    try:
        yield
    finally:
        _disabled.on = before


def usable(x: torch.Tensor, tables: torch.Tensor, hidden_dim: int) -> bool:
    """Whether the kernel can compute this render call (else use the PyTorch path)."""
    return (hidden_dim == HIDDEN and not getattr(_disabled, "on", False) and tables.device.type == "cpu" and x.device.type == "cpu" and x.dtype == torch.float32
            and tables.dtype == torch.float32 and tables.stride(-1) == 1
            and not (torch.is_grad_enabled() and (x.requires_grad or tables.requires_grad))
            and library() is not None)


def _executor(n: int) -> ThreadPoolExecutor:
    """The worker pool (rebuilt when the thread count changes, and in a forked child, where the
    parent's threads do not exist)."""
    global _pool, _pool_size, _pool_pid
    if _pool is None or _pool_size != n or _pool_pid != os.getpid():
        with _lock:
            if _pool is None or _pool_size != n or _pool_pid != os.getpid():
                if _pool is not None and _pool_pid == os.getpid():
                    _pool.shutdown(wait=False)
                _pool = ThreadPoolExecutor(n, thread_name_prefix="lmf-render")
                _pool_size, _pool_pid = n, os.getpid()
    return _pool


def _weights(x: torch.Tensor, w0: torch.Tensor, hidden: list[torch.Tensor], w_out: torch.Tensor,
             b_out: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Kernel layout of the MLP weights: transposed, output layer zero-padded to 16 channels."""
    out_dim = w_out.shape[0]
    if out_dim > HIDDEN:
        raise ValueError(f"fused render: out_dim {out_dim} > {HIDDEN}")
    w0t = w0.detach().t().contiguous()
    wht = (torch.stack([w.detach().t() for w in hidden]) if hidden else x.new_zeros(1, HIDDEN, HIDDEN)).contiguous()
    woutt = x.new_zeros(HIDDEN, HIDDEN)
    woutt[:, :out_dim] = w_out.detach().t()
    bout = x.new_zeros(HIDDEN)
    bout[:out_dim] = b_out.detach()
    return w0t, wht, woutt, bout


def num_threads() -> int:
    """Kernel threads: as many as PyTorch's intra-op threads."""
    return torch.get_num_threads()


def _parallel(n: int, run, rows_per_item: int = 1) -> None:
    """Call ``run(start, stop)`` on about equal parts of range(n), one per thread."""
    threads = max(1, min(num_threads(), n * rows_per_item // _MIN_ROWS_PER_THREAD))
    if threads == 1:
        run(0, n)
        return
    # many small pieces taken in turn: a thread slowed down (e.g. by PyTorch's OpenMP workers
    # still spinning after the previous op) just takes fewer pieces
    pieces = threads * 8 if n * rows_per_item >= threads * 8 * _MIN_ROWS_PER_THREAD else threads
    step = -(-n // pieces)
    list(_executor(threads).map(lambda s: run(s, min(n, s + step)), range(0, n, step)))


@torch.no_grad()
def render16(x: torch.Tensor, tables: torch.Tensor, index: torch.Tensor | None,
             w0: torch.Tensor, hidden: list[torch.Tensor], w_out: torch.Tensor,
             b_out: torch.Tensor) -> torch.Tensor:
    """Fused render: x (N, in) fp32; tables (depth, M, 32) ``[a_l | c_l]``; index (N,) rows of
    the tables (None: row i uses table row i); w0 (16, in); hidden: W_1..W_{depth-1} (16, 16);
    w_out (out, 16), b_out (out,). Returns (N, out)."""
    lib = library()
    assert lib is not None
    n, in_dim = x.shape
    depth, out_dim = tables.shape[0], w_out.shape[0]
    x = x.detach().contiguous()
    index = (torch.arange(n) if index is None else index).to(torch.int64).contiguous()
    w0t, wht, woutt, bout = _weights(x, w0, hidden, w_out, b_out)
    out = x.new_empty(n, out_dim)
    tables = tables.detach()

    def run(start: int, stop: int) -> None:
        lib.lmf_render16(stop - start, in_dim, x.data_ptr() + start * in_dim * 4, index.data_ptr() + start * 8,
                         depth, tables.data_ptr(), tables.stride(0), tables.stride(1), w0t.data_ptr(),
                         wht.data_ptr(), out_dim, woutt.data_ptr(), bout.data_ptr(),
                         out.data_ptr() + start * out_dim * 4)

    _parallel(n, run)
    return out


@torch.no_grad()
def query16(coord: torch.Tensor, cell: torch.Tensor | None, tables: torch.Tensor, h: int, w: int,
            local_ensemble: bool, w0: torch.Tensor, hidden: list[torch.Tensor], w_out: torch.Tensor,
            b_out: torch.Tensor) -> torch.Tensor:
    """The whole per-query path of LM-LIIF/LM-CiaoSR in one kernel: look-up of the K nearest
    cells (bit-exact to :func:`query.locate` through :func:`query.axis_thresholds`), MLP input
    [relative coord, (relative cell)], modulated render, ensemble blend.

    coord, cell (B, Q, 2) (cell None: no cell input); tables (depth, B, h*w, 32).
    Returns (B, Q, out). Nothing per neighbour is materialised: memory is the output only.
    """
    lib = library()
    assert lib is not None
    b, q, _ = coord.shape
    coord = _float_rows(coord)
    cell = None if cell is None else _float_rows(cell.expand(b, q, 2))
    call = _QueryCall(coord, h, w, local_ensemble, tables, w0, hidden, w_out, b_out)
    for i in range(b):
        cl = cell[i] if cell is not None else coord[i]

        def run(start: int, stop: int, i: int = i, cl: torch.Tensor = cl) -> None:
            lib.lmf_query16(*call.head(i, start, stop), cl.data_ptr() + start * cl.stride(0) * 4, cl.stride(0),
                            int(cell is not None), *call.lookup, *call.tail(i, start))

        _parallel(q, run, rows_per_item=call.k)
    return call.out


def _float_rows(t: torch.Tensor) -> torch.Tensor:
    """Detached float32 with unit stride along the last dim (what the kernels index)."""
    t = t.detach().float()
    return t if t.stride(-1) == 1 else t.contiguous()


class _QueryCall:
    """Arguments shared by the query kernels: the queries, the look-up tables of
    :func:`query.locate`, the render tables and MLP weights, and the output (B, Q, out)."""

    def __init__(self, coord: torch.Tensor, h: int, w: int, local_ensemble: bool, tables: torch.Tensor,
                 w0: torch.Tensor, hidden: list[torch.Tensor], w_out: torch.Tensor, b_out: torch.Tensor) -> None:
        from . import query as Q  # local: query does not need this module

        self.coord, self.tables = coord, tables.detach()
        v = 2 if local_ensemble else 1
        self.k = v * v
        self._keep = (Q.axis_thresholds(h), Q.axis_thresholds(w), Q.axis_coords(h), Q.axis_coords(w),
                      Q.axis_shifts(h, local_ensemble), Q.axis_shifts(w, local_ensemble))
        clamp = float(torch.tensor(Q.CLAMP, dtype=torch.float32))
        self.lookup = (v, h, w, *(t.data_ptr() for t in self._keep), clamp)
        self.weights = _weights(coord, w0, hidden, w_out, b_out)
        self.out = coord.new_empty(coord.shape[0], coord.shape[1], w_out.shape[0])

    def head(self, i: int, start: int, stop: int) -> tuple:
        c = self.coord
        return stop - start, c[i].data_ptr() + start * c.stride(1) * 4, c.stride(1)

    def tail(self, i: int, start: int) -> tuple:
        t, (w0t, wht, woutt, bout), out = self.tables, self.weights, self.out
        return (t.shape[0], t[:, i].data_ptr(), t.stride(0), t.stride(2), w0t.data_ptr(), wht.data_ptr(),
                out.shape[-1], woutt.data_ptr(), bout.data_ptr(), out[i].data_ptr() + start * out.shape[-1] * 4)


LTE_MAX_INPUT = 128


@torch.no_grad()
def lte16(coord: torch.Tensor, phase: torch.Tensor, code: torch.Tensor, tables: torch.Tensor, h: int, w: int,
          local_ensemble: bool, w0: torch.Tensor, hidden: list[torch.Tensor], w_out: torch.Tensor,
          b_out: torch.Tensor) -> torch.Tensor:
    """LM-LTE's per-query path in one kernel: look-up (as :func:`query.locate`), Fourier input
    ``coef * [cos(pi phi), sin(pi phi)]`` from each neighbour's [coef | freq] row of ``code``
    (B, h*w, 2*in), modulated render, blend. coord (B, Q, 2); phase (B, Q, in/2) or (B, 1, in/2)."""
    lib = library()
    assert lib is not None
    b, q, _ = coord.shape
    m2 = code.shape[-1] // 2
    coord, code = _float_rows(coord), _float_rows(code)
    phase = _float_rows(phase.expand(b, phase.shape[1], m2 // 2))
    phase_sq = phase.stride(1) if phase.shape[1] > 1 else 0
    call = _QueryCall(coord, h, w, local_ensemble, tables, w0, hidden, w_out, b_out)
    for i in range(b):
        def run(start: int, stop: int, i: int = i) -> None:
            rc = lib.lmf_lte16(*call.head(i, start, stop), phase[i].data_ptr() + start * phase_sq * 4, phase_sq,
                               m2, *call.lookup, code[i].data_ptr(), code.stride(1), *call.tail(i, start))
            if rc != 0:
                raise ValueError(f"fused LTE render: input width {m2} not supported")

        _parallel(q, run, rows_per_item=call.k)
    return call.out
