"""Optional fused CPU kernel for the render MLP (``kernels/render16.c``), loaded through ctypes,
and CMSR's level merge and resampling (``kernels/cmsr.c``, the same library).

The kernel is compiled on first use with the system C compiler (``cc -O3 -march=native``,
well under a second) into a per-user cache, keyed by the source, the compiler and the CPU, and
reused afterwards. Without a compiler, or with ``LMF_FAST_RENDER=0``, or for anything the kernel
does not cover (autograd, non-CPU tensors, non-fp32, hidden width != 16), the caller falls back
to the plain PyTorch path, which computes the same function (tests compare the two).

Threads: ctypes releases the GIL during the call, so the rows are split over a small thread
pool of ``torch.get_num_threads()`` workers.
"""
from __future__ import annotations

import atexit
import ctypes
import hashlib
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.switch import ThreadSwitch

HIDDEN = 16
_SOURCE = Path(__file__).with_name("kernels") / "render16.c"
_SOURCES = (_SOURCE, _SOURCE.with_name("cmsr.c"))  # compiled into one library
_MIN_ROWS_PER_THREAD = 4096
LTE_MAX_INPUT = 128  # widest Fourier input of the LM-LTE kernel
FUSED_BSIZE = 1 << 20  # default query chunk of decoders whose render runs here (output only: 12 MB)

_lock = threading.Lock()
_lib: _Library | None = None
_failed = False
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_pid = 0
_disabled = ThreadSwitch()


def _cache_dir() -> Path:
    """Where the compiled kernel is kept: ``$LMF_CACHE_DIR`` itself (the library goes directly
    into it), else ``$XDG_CACHE_HOME/lmf-sr`` or ``~/.cache/lmf-sr``; if that cannot be used,
    ``<system temp>/lmf-sr-<uid>``.

    A folder is used only if it is a real folder (not a link) owned by this user and writable by
    no one else: the library in it is loaded into this process, so anyone who could write there
    could run code as this user (e.g. by creating ``/tmp/lmf-sr-<uid>`` first). When neither
    folder qualifies the kernel is built in a fresh private temp folder, removed at exit.
    """
    own = os.environ.get("LMF_CACHE_DIR")
    first = Path(os.path.expanduser(own)) if own else \
        Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "lmf-sr"
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    for folder in (first, Path(tempfile.gettempdir()) / f"lmf-sr-{user}"):
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            continue
        if private_folder(folder):
            return folder
    return _fresh_private_dir()


def private_folder(folder: Path) -> bool:
    """A real folder, owned by this user, not writable by group or others, writable by us."""
    try:
        st = os.lstat(folder)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return False
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return False
    return os.access(folder, os.W_OK)


_private_dir: Path | None = None


def _fresh_private_dir() -> Path:
    global _private_dir
    if _private_dir is None:
        _private_dir = Path(tempfile.mkdtemp(prefix="lmf-sr-"))  # mode 0700, a new name
        atexit.register(shutil.rmtree, _private_dir, ignore_errors=True)
    return _private_dir


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


def _build() -> _Library:
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (cc/gcc/clang)")
    flags = ["-O3", "-march=native", "-shared", "-fPIC", "-fno-math-errno"]
    if sys.platform == "darwin" and platform.machine() == "arm64":
        flags[1] = "-mcpu=native"
    source = b"".join(path.read_bytes() for path in _SOURCES)
    key = hashlib.sha256(source + " ".join([cc, *flags, _cpu_id(), platform.platform()]).encode()).hexdigest()[:16]
    suffix = ".dll" if sys.platform == "win32" else ".so"
    target = _cache_dir() / f"render16-{key}{suffix}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=suffix)
        os.close(fd)
        try:
            libs = [] if sys.platform == "win32" else ["-lm"]
            proc = subprocess.run([cc, *flags, "-o", tmp, *map(str, _SOURCES), *libs], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{cc} failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
            os.replace(tmp, target)  # atomic: concurrent processes never load a half-written file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return _bind(ctypes.CDLL(str(target)))


# --- the typed binding ----------------------------------------------------------------------------
# The C prototypes are the single declaration of every entry point's arguments: they are read
# from the source, and calls pass arguments by name, so a renamed, added or reordered parameter
# is a TypeError here instead of silently corrupted memory. Pointer arguments take tensors
# (dtype checked; a view's data_ptr includes its offset, so no pointer arithmetic by hand).
_SCALARS = {"int64_t": (ctypes.c_int64, int), "float": (ctypes.c_float, float)}
_POINTEES = {"float": torch.float32, "int64_t": torch.int64}
_PROTOTYPE = re.compile(r"^int\s+(lmf_\w+)\s*\(([^)]*)\)", re.M)
_PARAM = re.compile(r"^(?:const\s+)?(int64_t|float)\s*(\*?)\s*(\w+)$")
_ERRORS = {1: (ValueError, "input width not supported"),
           2: (IndexError, "a cell index is outside the tables (or the h x w grid does not fit them)"),
           3: (ValueError, "an argument is out of range")}


@dataclass(frozen=True)
class _Param:
    name: str
    ctype: type
    dtype: torch.dtype | None  # the tensor dtype of a pointer argument; None for a scalar


def signatures(source: str) -> dict[str, tuple[_Param, ...]]:
    """``{entry point: parameters}`` from the C prototypes ``int lmf_*(...)`` of ``source``."""
    out = {}
    for name, params in _PROTOTYPE.findall(source):
        parsed = []
        for text in params.split(","):
            m = _PARAM.match(" ".join(text.split()))
            if m is None:
                raise RuntimeError(f"{name}: cannot bind parameter {text.strip()!r}")
            base, star, pname = m.groups()
            parsed.append(_Param(pname, ctypes.c_void_p, _POINTEES[base]) if star
                          else _Param(pname, _SCALARS[base][0], None))
        out[name] = tuple(parsed)
    return out


class Kernel:
    """One entry point of the compiled kernel, called with keyword arguments named as in C."""

    def __init__(self, lib: ctypes.CDLL, name: str, params: tuple[_Param, ...]) -> None:
        self.name, self.params = name, params
        self.fn = getattr(lib, name)
        self.fn.argtypes = [p.ctype for p in params]
        self.fn.restype = ctypes.c_int

    def __call__(self, **kwargs) -> None:
        names = [p.name for p in self.params]
        if set(kwargs) != set(names):
            missing, extra = sorted(set(names) - set(kwargs)), sorted(set(kwargs) - set(names))
            raise TypeError(f"{self.name}: missing arguments {missing}, unknown arguments {extra}")
        values = [self._value(p, kwargs[p.name]) for p in self.params]
        rc = self.fn(*values)
        if rc != 0:
            cls, what = _ERRORS.get(rc, (RuntimeError, f"error code {rc}"))
            raise cls(f"fused render kernel {self.name}: {what}")

    def _value(self, p: _Param, v):
        if p.dtype is None:
            return _SCALARS["float" if p.ctype is ctypes.c_float else "int64_t"][1](v)
        if not isinstance(v, torch.Tensor) or v.dtype != p.dtype or v.device.type != "cpu":
            raise TypeError(f"{self.name}: {p.name} must be a CPU {p.dtype} tensor, got "
                            f"{type(v).__name__ if not isinstance(v, torch.Tensor) else (v.dtype, v.device.type)}")
        return v.data_ptr()


class _Library:
    """The kernel's entry points as attributes (``lib.lmf_render16(n=..., ...)``)."""

    def __init__(self, lib: ctypes.CDLL, source: str) -> None:
        self._lib = lib  # keeps the shared object loaded
        self._kernels = {name: Kernel(lib, name, params) for name, params in signatures(source).items()}

    def __getattr__(self, name: str) -> "Kernel":
        try:
            return self.__dict__["_kernels"][name]
        except KeyError:
            raise AttributeError(f"the render kernel has no entry point {name!r}") from None


def _bind(lib: ctypes.CDLL) -> _Library:
    return _Library(lib, "\n".join(path.read_text() for path in _SOURCES))


def library() -> _Library | None:
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


def disabled() -> AbstractContextManager[None]:
    """Use the PyTorch path inside this block (this thread), e.g. to count FLOPs or compare."""
    return _disabled.on()


def forced_off() -> bool:
    """Whether this thread is inside :func:`disabled` (every fused kernel, CPU or GPU, is off)."""
    return bool(_disabled)


def use_kernel(hidden_dim: int, mods: torch.Tensor, *inputs: torch.Tensor | None, in_width: int = 0) -> bool:
    """The one decision between the fused kernel and the PyTorch path of a render call.

    ``mods`` are the folded modulation tables, ``inputs`` the per-query tensors of the call
    (None ones are ignored), ``in_width`` the width of a computed MLP input (LM-LTE's Fourier
    input, at most :data:`LTE_MAX_INPUT`). The kernel runs for hidden width 16, fp32 CPU
    tensors, without autograd, unless it is turned off (``LMF_FAST_RENDER=0``, :func:`disabled`)
    or cannot be built.
    """
    tensors = [mods, *(t for t in inputs if t is not None)]
    return (hidden_dim == HIDDEN and in_width <= LTE_MAX_INPUT and not forced_off()
            and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            and mods.stride(-1) == 1
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
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


def kernel_weights(x: torch.Tensor, w0: torch.Tensor, hidden: list[torch.Tensor], w_out: torch.Tensor,
                   b_out: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Kernel layout of the MLP weights (C and Triton kernels): transposed, output layer
    zero-padded to 16 channels."""
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
    w_out (out, 16), b_out (out,). Returns (N, out). An index outside [0, M) is an IndexError."""
    lib = library()
    assert lib is not None
    n, in_dim = x.shape
    x = x.detach().contiguous()
    index = (torch.arange(n) if index is None else index).to(torch.int64).contiguous()
    w0t, wht, woutt, bout = kernel_weights(x, w0, hidden, w_out, b_out)
    out = x.new_empty(n, w_out.shape[0])
    tables = tables.detach()

    def run(start: int, stop: int) -> None:
        lib.lmf_render16(n=stop - start, in_dim=in_dim, x=x[start:stop], index=index[start:stop],
                         n_cells=tables.shape[1], depth=tables.shape[0], tables=tables,
                         layer_stride=tables.stride(0), cell_stride=tables.stride(1), w0t=w0t, wht=wht,
                         out_dim=out.shape[1], woutt=woutt, bout=bout, out=out[start:stop])

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
    cells = None if cell is None else _float_rows(cell.expand(b, q, 2))
    call = _QueryCall(coord, h, w, local_ensemble, tables, w0, hidden, w_out, b_out)
    for i in range(b):
        cl = cells[i] if cells is not None else coord[i]  # (not read without a cell input)

        def run(start: int, stop: int, i: int = i, cl: torch.Tensor = cl) -> None:
            lib.lmf_query16(cell=cl[start:stop], cell_sq=cl.stride(0), use_cell=int(cells is not None),
                            **call.args(i, start, stop))

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
        self.lookup = dict(V=v, h=h, w=w, th_r=Q.axis_thresholds(h), th_c=Q.axis_thresholds(w),
                           cen_r=Q.axis_coords(h), cen_c=Q.axis_coords(w), shift_r=Q.axis_shifts(h, local_ensemble),
                           shift_c=Q.axis_shifts(w, local_ensemble),
                           clamp=float(torch.tensor(Q.CLAMP, dtype=torch.float32)))
        w0t, wht, woutt, bout = kernel_weights(coord, w0, hidden, w_out, b_out)
        self.weights = dict(w0t=w0t, wht=wht, woutt=woutt, bout=bout)
        self.out = coord.new_empty(coord.shape[0], coord.shape[1], w_out.shape[0])

    def args(self, i: int, start: int, stop: int) -> dict:
        """The arguments of queries [start, stop) of image ``i`` that both kernels take."""
        t, c = self.tables, self.coord
        return dict(q=stop - start, coord=c[i, start:stop], coord_sq=c.stride(1), **self.lookup,
                    n_cells=t.shape[2], depth=t.shape[0], tables=t[:, i], layer_stride=t.stride(0),
                    cell_stride=t.stride(2), out_dim=self.out.shape[-1], out=self.out[i, start:stop],
                    **self.weights)



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
            lib.lmf_lte16(phase=phase[i, start:stop] if phase_sq else phase[i], phase_sq=phase_sq, m2=m2,
                          code=code[i], code_stride=code.stride(1), **call.args(i, start, stop))

        _parallel(q, run, rows_per_item=call.k)
    return call.out


# --- CMSR (models.cmsr): the final resampling and the per-level merge -----------------------------
# The kernels keep images pixel by pixel, 4 floats a pixel (r, g, b, 0): (h, w, 4) tensors.
def cmsr_pixels(img: torch.Tensor) -> torch.Tensor:
    """One image (1, 3, h, w) -> the kernels' layout (h, w, 4), float32."""
    px = img.new_zeros(img.shape[2], img.shape[3], 4, dtype=torch.float32)
    px[..., :3] = img.detach()[0].permute(1, 2, 0)
    return px


@torch.no_grad()
def cmsr_sample(px: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
    """``query.sample_bilinear`` of one image in the kernels' layout ``px`` (ih, iw, 4) at coord
    (1, Q, 2) (row, col) -> (1, Q, 3), to the bit, without the flipped copy of the coordinates."""
    lib = library()
    assert lib is not None
    px = px.detach().contiguous()
    pts = _float_rows(coord[0])
    n = pts.shape[0]
    out = pts.new_empty(n, 3)

    def run(start: int, stop: int) -> None:
        lib.lmf_cmsr_sample(n=stop - start, coord=pts[start:stop], coord_sq=pts.stride(0), ih=px.shape[0],
                            iw=px.shape[1], img=px, out=out[start:stop])

    _parallel(n, run)
    return out.unsqueeze(0)


@torch.no_grad()
def cmsr_merge(prev: torch.Tensor, grid: torch.Tensor, lr_row: torch.Tensor, mask: torch.Tensor,
               first: torch.Tensor, pred: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """One CMSR level (qh, qw, 4) in the kernels' layout: the points that ``mask`` (LR rows x qw,
    nonzero = rendered; level row r reads mask row ``lr_row[r]``) marks take the rows of ``pred``
    (N, 3) in row-major order (level row r's first one is ``first[r]``), every other point the
    bilinear sample of ``prev`` (ph, pw, 4) at the level grid ``grid`` (1, 2, qh, qw) (x, y
    planes), as ``grid_sample`` computes it. ``out``: where to write it (float32, at least
    qh * qw * 4 elements, not overlapping ``prev``), else a new tensor."""
    lib = library()
    assert lib is not None
    prev = prev.detach().contiguous()
    qh, qw, gx, gy, lr_row, mask, first = _level_inputs(grid, lr_row, mask, first)
    pred = pred.detach().float().contiguous()
    if out is None:
        out = prev.new_empty(qh, qw, 4)
    else:
        out = out.view(-1)[:qh * qw * 4].view(qh, qw, 4)
    flat = out.view(-1)

    def run(start: int, stop: int) -> None:
        lib.lmf_cmsr_merge(n_rows=stop - start, qw=qw, gx=gx[start * qw:], gy=gy[start * qw:],
                           lr_row=lr_row[start:stop], mask_rows=mask.shape[0], mask_w=mask.shape[1], mask=mask,
                           first=first[start:stop], n_pred=pred.shape[0], pred=pred, ph=prev.shape[0],
                           pw=prev.shape[1], prev=prev, out=flat[start * qw * 4:])

    _parallel(qh, run, rows_per_item=max(1, qw))
    return out


@torch.no_grad()
def cmsr_points(grid: torch.Tensor, lr_row: torch.Tensor, mask: torch.Tensor, first: torch.Tensor,
                n: int) -> torch.Tensor:
    """The (row, col) coordinates (1, n, 2) of the ``n`` points of a CMSR level that ``mask``
    marks (arguments as in :func:`cmsr_merge`), row-major: the level grid at ``nonzero`` of the
    full-size mask, without making it."""
    lib = library()
    assert lib is not None
    qh, qw, gx, gy, lr_row, mask, first = _level_inputs(grid, lr_row, mask, first)
    pts = gx.new_empty(n, 2)
    # one thread: a light pass (~1 ms per million level points) that the pool only slows down
    lib.lmf_cmsr_points(n_rows=qh, qw=qw, gx=gx, gy=gy, lr_row=lr_row, mask_rows=mask.shape[0], mask_w=mask.shape[1],
                        mask=mask, first=first, n_pts=n, pts=pts)
    return pts.unsqueeze(0)


def _level_inputs(grid: torch.Tensor, lr_row: torch.Tensor, mask: torch.Tensor, first: torch.Tensor) -> tuple:
    """A level's arguments as the kernels read them: (qh, qw, the grid's x and y planes flat,
    lr_row, mask as float32, first), contiguous."""
    g = grid.detach()[0].float().contiguous()
    qh, qw = g.shape[1:]
    return (qh, qw, g[0].view(-1), g[1].view(-1), lr_row.to(torch.int64).contiguous(),
            mask.detach().float().contiguous(), first.to(torch.int64).contiguous())


def cmsr_axis(coords: torch.Tensor, size: int) -> tuple[torch.Tensor, ...]:
    """The bilinear set-up along one axis of ``size`` pixels for ``coords`` (n,) in [-1, 1]:
    (first neighbour, step to the second (0 or 1), its weight 1 - f, the second's weight f)."""
    lib = library()
    assert lib is not None
    c = coords.detach().float().contiguous()
    n = c.shape[0]
    i0, step = torch.empty(n, dtype=torch.int64), torch.empty(n, dtype=torch.int64)
    lo, hi = torch.empty(n), torch.empty(n)
    lib.lmf_cmsr_axis(n=n, c=c, size=size, i0=i0, step=step, lo=lo, hi=hi)
    return i0, step, lo, hi


@torch.no_grad()
def cmsr_sample_planes(px: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, mul: torch.Tensor,
                       add: torch.Tensor, out: torch.Tensor) -> None:
    """:func:`cmsr_sample` at the separable grid of row coordinates ``rows`` (H,) x column
    coordinates ``cols`` (W,), each sample v written as ``clamp(v * mul + add, 0, 1)`` (mul, add:
    (3,) per channel) into ``out`` (3, H, W) (contiguous): the bits of sampling ``make_coord``'s
    grid and then scaling, shifting and clamping the (H*W, 3) result, without either."""
    lib = library()
    assert lib is not None
    px = px.detach().contiguous()
    H, W = out.shape[1:]
    if not out.is_contiguous() or out.shape[0] != 3 or rows.shape[0] != H or cols.shape[0] != W:
        raise ValueError("cmsr_sample_planes: out must be a contiguous (3, H, W) tensor for H rows and W columns")
    ry, cx = cmsr_axis(rows, px.shape[0]), cmsr_axis(cols, px.shape[1])
    mul, add = mul.detach().float().contiguous(), add.detach().float().contiguous()
    flat = out.view(-1)

    def run(start: int, stop: int) -> None:
        lib.lmf_cmsr_sample_planes(n_rows=stop - start, W=W, r0=ry[0][start:], r_step=ry[1][start:],
                                   r_lo=ry[2][start:], r_hi=ry[3][start:], c0=cx[0], c_step=cx[1], c_lo=cx[2],
                                   c_hi=cx[3], ih=px.shape[0], iw=px.shape[1], img=px, mul=mul, add=add,
                                   plane=H * W, out=flat[start * W:])

    _parallel(H, run, rows_per_item=max(1, W))
