"""Fused render for the GPU: one Triton kernel per LMF decoder for the whole per-query path.

The kernels do what ``kernels/render16.c`` does on the CPU (and compute the same function as the
PyTorch path of :meth:`ModulatedMLP.render_at` / :meth:`LMLTE.render`): the query engine's
look-up of the K nearest LR cells (exact to :func:`query.locate`, through
:func:`query.axis_thresholds`), the MLP input, the modulated 16-wide MLP (per-cell ``[a_l | c_l]``
tables, ``relu((W_l h) * a_l + c_l)``) and the local-ensemble blend, in one pass: a block of
queries keeps its 16-wide activations in registers through every layer, and nothing per
neighbour goes through GPU memory. Eager PyTorch instead launches a gather, a matmul and a
multiply-add per layer per chunk, each a pass over memory.

Used when ``triton`` is installed and the tensors are on a CUDA device (fp32, or bf16/fp16
tables from autocast, computed in fp32), without autograd; ``LMF_TRITON_RENDER=0`` turns it
off. Anything else takes the PyTorch path. With ``TRITON_INTERPRET=1`` Triton runs the kernels
on the CPU (slowly, for tests): :func:`on_cpu` routes CPU tensors here for that purpose.

Matmuls use ``input_precision="ieee"`` (no TF32): results match the fp32 PyTorch path to float
rounding (tests: 2e-5).
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
from contextlib import AbstractContextManager

import torch

from utils.switch import ThreadSwitch

from . import query as Q
from .fast_render import HIDDEN, LTE_MAX_INPUT, forced_off, kernel_weights

_on_cpu = ThreadSwitch()  # see on_cpu()
_lock = threading.Lock()
_kernels: dict | None = None
_import_error: str | None = None
_TABLE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "off")


def unavailable_reason() -> str | None:
    """Why the Triton kernels cannot be used at all (None: they can)."""
    if os.environ.get("LMF_TRITON_RENDER", "1") == "0":
        return "LMF_TRITON_RENDER=0"
    kernels()
    return _import_error


def on_cpu() -> AbstractContextManager[None]:
    """Within this block (this thread), CPU tensors also go through the Triton kernels, which
    needs ``TRITON_INTERPRET=1`` (set before the kernels are first built): how the kernels'
    exactness is tested on a machine without a GPU."""
    return _on_cpu.on()


def usable(hidden_dim: int, mods: torch.Tensor, *inputs: torch.Tensor | None, in_width: int = 0) -> bool:
    """Whether the Triton kernel can compute a render call (the GPU counterpart of
    :func:`fast_render.use_kernel`, same arguments): ``mods`` the folded modulation tables,
    ``inputs`` the per-query tensors (coordinates, cells; None ones are ignored), ``in_width``
    LM-LTE's Fourier input width. Else the caller takes its next path."""
    dev = mods.device.type
    if dev != "cuda" and not (dev == "cpu" and _on_cpu):
        return False  # the CPU path pays one attribute look-up, nothing else
    grad = torch.is_grad_enabled()
    tensors = [t for t in inputs if t is not None]
    return (hidden_dim == HIDDEN and in_width <= LTE_MAX_INPUT and not forced_off()
            and mods.dtype in _TABLE_DTYPES and mods.stride(-1) == 1 and not (grad and mods.requires_grad)
            and all(t.device == mods.device and t.dtype == torch.float32 and not (grad and t.requires_grad)
                    for t in tensors)
            and unavailable_reason() is None)


def kernels() -> dict | None:
    """The jitted kernels (built on first use), or None if ``triton`` cannot be imported."""
    global _kernels, _import_error
    if _kernels is not None or _import_error is not None:
        return _kernels
    with _lock:
        if _kernels is None and _import_error is None:
            try:
                _kernels = _build()
            except ImportError as exc:
                _import_error = f"triton is not installed ({exc})"
    return _kernels


def _build() -> dict:
    from . import triton_kernels  # needs triton; TRITON_INTERPRET is read at this import

    return {"query": triton_kernels.query_kernel}


@functools.lru_cache(maxsize=64)
def _axis_tables(n: int, local_ensemble: bool, device: str) -> tuple[torch.Tensor, ...]:
    """Thresholds, cell centres (as the CPU kernel uses them) and shifts of one axis, on ``device``."""
    return (Q.axis_thresholds(n).to(device), Q.axis_coords(n).to(device),
            Q.axis_shifts(n, local_ensemble).to(device))


@functools.lru_cache(maxsize=64)
def _consts(h: int, w: int, local_ensemble: bool, device: str) -> torch.Tensor:
    """The kernel's constants (row shifts, column shifts, the coordinate clamp) on ``device``:
    made once per size, not per launch (each launch would add a host-to-device copy)."""
    sh_r, sh_c = _axis_tables(h, local_ensemble, device)[2], _axis_tables(w, local_ensemble, device)[2]
    clamp = torch.tensor([Q.CLAMP], dtype=torch.float32, device=device)
    return torch.cat([sh_r.expand(2), sh_c.expand(2), clamp])  # V = 1: the one shift twice


def _block() -> int:
    # the interpreter runs one program at a time in numpy: big blocks amortise its overhead
    return 4096 if interpreting() else 64


def _launch(coord: torch.Tensor, tables: torch.Tensor, h: int, w: int, local_ensemble: bool,
            w0: torch.Tensor, hidden: list[torch.Tensor], w_out: torch.Tensor, b_out: torch.Tensor,
            cell: torch.Tensor | None = None, phase: torch.Tensor | None = None,
            code: torch.Tensor | None = None) -> torch.Tensor:
    k = kernels()
    if k is None:
        raise RuntimeError(f"Triton render: {_import_error}")
    b, q, _ = coord.shape
    dev = coord.device
    coord = _rows(coord)
    th_r, cen_r, _ = _axis_tables(h, local_ensemble, str(dev))
    th_c, cen_c, _ = _axis_tables(w, local_ensemble, str(dev))
    consts = _consts(h, w, local_ensemble, str(dev))
    w0t, wht, woutt, bout = (t.float() for t in kernel_weights(coord, w0, hidden, w_out, b_out))
    out = coord.new_empty(b, q, w_out.shape[0])
    tables = tables.detach()
    lte = code is not None
    if code is not None:
        if phase is None:
            raise ValueError("Triton LTE render: the phase is required with the LTE code")
        m2 = code.shape[-1] // 2
        if m2 > LTE_MAX_INPUT or m2 % 2:
            raise ValueError(f"Triton LTE render: input width {m2} not supported")
        code = _rows(code)
        phase = _rows(phase.expand(b, phase.shape[1], m2 // 2))
        phase_sq = phase.stride(1) if phase.shape[1] > 1 else 0
        mp = max(16, 1 << (m2 // 2 - 1).bit_length())
        ph_args, code_args = (phase, phase.stride(0), phase_sq), (code, code.stride(0), code.stride(1), m2)
    else:
        mp = 16
        ph_args, code_args = (coord, 0, 0), (coord, 0, 0, 0)
    cell_args = (coord, 0, 0)
    if cell is not None:
        cell = _rows(cell.expand(b, q, 2))
        cell_args = (cell, cell.stride(0), cell.stride(1))
    block = _block()
    grid = (_cdiv(q, block), b)
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        k["query"][grid](coord, coord.stride(0), coord.stride(1), *cell_args, *ph_args, *code_args,
                         consts, th_r, th_c, cen_r, cen_c,
                         tables, tables.stride(0), tables.stride(1), tables.stride(2),
                         w0t, wht, woutt, bout, out, out.stride(0), q, h, w, tables.shape[0], out.shape[-1],
                         V=2 if local_ensemble else 1, LTE=lte, USE_CELL=cell is not None, MP=mp,
                         BLOCK=block, num_warps=4)
    return out


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """Detached float32 with unit stride along the last dim (what the kernel indexes)."""
    t = t.detach().float()
    return t if t.stride(-1) == 1 else t.contiguous()


@torch.no_grad()
def query16(coord: torch.Tensor, cell: torch.Tensor | None, tables: torch.Tensor, h: int, w: int,
            local_ensemble: bool, w0: torch.Tensor, hidden: list[torch.Tensor], w_out: torch.Tensor,
            b_out: torch.Tensor) -> torch.Tensor:
    """LM-LIIF / LM-CiaoSR per-query path (as :func:`fast_render.query16`): coord, cell (B, Q, 2)
    (cell None: no cell input); tables (depth, B, h*w, 32). Returns (B, Q, out) fp32."""
    return _launch(coord, tables, h, w, local_ensemble, w0, hidden, w_out, b_out, cell=cell)


@torch.no_grad()
def lte16(coord: torch.Tensor, phase: torch.Tensor, code: torch.Tensor, tables: torch.Tensor, h: int, w: int,
          local_ensemble: bool, w0: torch.Tensor, hidden: list[torch.Tensor], w_out: torch.Tensor,
          b_out: torch.Tensor) -> torch.Tensor:
    """LM-LTE's per-query path (as :func:`fast_render.lte16`): code (B, h*w, 2*in) [coef | freq]
    rows, phase (B, Q or 1, in/2). Returns (B, Q, out) fp32."""
    return _launch(coord, tables, h, w, local_ensemble, w0, hidden, w_out, b_out, phase=phase, code=code)
