"""Host memory: how much an upscaling will need (a model fitted to measured peaks) and how much
this machine can give it now, so that a too-large output is refused with one line up front
instead of being killed by the kernel's out-of-memory killer part-way (no message, no file).

The model, per way of running (PyTorch with an LMF decoder in fp32 or bf16, with CMSR, PyTorch
with another decoder such as LIIF, onnxruntime)::

    peak RSS = base + per_in * h*w + per_query * min(H*W, band) (+ held * H*W)

``base`` is the interpreter, the libraries and the model; ``per_in`` the encoder and latent
tables on the h x w input; ``per_query`` the work of one band of rows, whose size (``band``
queries) the renderer fixes (4 chunks in PyTorch, one in onnxruntime), so it stops growing once
the output is larger than a band. What is held for the whole output: nothing for a PNG, which is
written band by band as it is rendered (``utils.images.ImageWriter``); 4 bytes a pixel for other
formats (an 8-bit Pillow image encoded at the end); 2 for an alpha channel (resized whole); and
CMSR decodes the whole output grid at once (its ``per_query`` applies to every pixel).

The numbers were chosen from the peak RSS of ``demo.py`` runs measured by
``scripts/bench_memory.py`` to cover every one of them (table and fit: docs/memory.md); tests/test_memory.py
checks them against fresh measurements. Torch-free: ``demo.py --onnx`` uses it without PyTorch.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from utils.errors import UserError

GiB = 2 ** 30
MiB = 2 ** 20


@dataclass(frozen=True)
class Cost:
    """Bytes: base + per_in * input pixels + per_query * min(output pixels, band queries)."""
    base: float
    per_in: float
    per_query: float
    whole_grid: bool = False  # CMSR: the whole output grid is one band


# chosen from the measurements in docs/memory.md (scripts/bench_memory.py): every measured peak is
# covered (estimate / peak 1.04-1.36); onnxruntime's render arena (~65536 queries a call) and LIIF's
# chunk intermediates do not grow with the output, so they are part of ``base`` there
COSTS = {
    "torch-lm-fp32": Cost(base=500 * MiB, per_in=1500.0, per_query=55.0),
    "torch-lm-bf16": Cost(base=500 * MiB, per_in=1500.0, per_query=55.0),
    "torch-lm-cmsr": Cost(base=500 * MiB, per_in=1500.0, per_query=70.0, whole_grid=True),
    "torch-other": Cost(base=700 * MiB, per_in=4300.0, per_query=50.0),
    "onnx": Cost(base=880 * MiB, per_in=1000.0, per_query=0.0),
}
HELD_IMAGE = 4.0   # bytes an output pixel for formats other than PNG (an 8-bit Pillow image)
HELD_ALPHA = 2.0   # bytes an output pixel for an alpha channel (its resize, then the array)
SAFETY = 0.9       # of the available memory an upscaling may plan to use
# queries of one band in PyTorch: models.inference.upsample_bands renders 4 chunks of rows a band,
# a chunk being --bsize, else the decoder's default (fast_render.FUSED_BSIZE for the fused LMF
# render, 8192 for the others); tests/test_memory.py checks these against the code
TORCH_BAND_CHUNKS = 4
LM_CHUNK = 1 << 20
OTHER_CHUNK = 8192


def path_kind(onnx: bool = False, lm: bool = True, precision: str = "fp32", cmsr: bool = False) -> str:
    """The key of :data:`COSTS` for a way of running (``lm``: an LMF decoder, e.g. LM-LIIF)."""
    if onnx:
        return "onnx"
    if not lm:
        return "torch-other"
    return "torch-lm-cmsr" if cmsr else f"torch-lm-{precision}"


def band_queries(kind: str, chunk: int | None = None) -> int:
    """Queries of one band for ``kind``; ``chunk``: --bsize (or the ONNX export's chunk)."""
    if kind == "onnx":
        return int(chunk or 65536)
    default = OTHER_CHUNK if kind == "torch-other" else LM_CHUNK
    return TORCH_BAND_CHUNKS * int(chunk or default)


def estimate(in_hw: tuple[int, int], out_hw: tuple[int, int], kind: str, fmt_streamed: bool = True,
             alpha: bool = False, chunk: int | None = None) -> float:
    """The peak RSS in bytes of upscaling an ``in_hw`` image to ``out_hw`` (both (H, W))."""
    c = COSTS[kind]
    in_px, out_px = in_hw[0] * in_hw[1], out_hw[0] * out_hw[1]
    rendered = out_px if c.whole_grid else min(out_px, band_queries(kind, chunk) + out_hw[1])
    held = (0.0 if fmt_streamed else HELD_IMAGE) + (HELD_ALPHA if alpha else 0.0)
    return c.base + c.per_in * in_px + c.per_query * rendered + held * out_px


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available() -> int | None:
    """Bytes this process can still use without swapping or being killed: the kernel's
    MemAvailable, within the container's (cgroup v2 or v1) limit less its current use; the
    physical memory where neither is known; None if nothing can be read (then nothing is refused)."""
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        cap, used = _read_int(Path(limit)), _read_int(Path(usage))
        if cap is not None and used is not None and cap < 2 ** 60:  # "max" / a huge number = no limit
            found.append(max(0, cap - used))
    if not found:
        try:
            found.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            return None
    return min(found)


def check_fits(in_hw: tuple[int, int], out_hw: tuple[int, int], kind: str, fmt_streamed: bool = True,
               alpha: bool = False, chunk: int | None = None, avail: int | None = None) -> None:
    """Refuse with one line (UserError) an upscaling whose estimated peak exceeds what is
    available (``avail``, default :func:`available`), naming the largest output of the same shape
    that fits."""
    avail = available() if avail is None else avail
    if avail is None:
        return
    need = estimate(in_hw, out_hw, kind, fmt_streamed, alpha, chunk)
    budget = SAFETY * avail
    if need <= budget:
        return
    (H, W), (h, w) = out_hw, in_hw
    what = f"output {W}x{H} would need about {need / GiB:.1f} GiB of memory, more than the {avail / GiB:.1f} GiB available"
    if estimate(in_hw, (1, 1), kind, fmt_streamed, alpha, chunk) > budget:
        raise UserError(f"{what}; even a tiny output of the {w}x{h} input needs more: use a smaller input image")
    lo, hi = 0.0, 1.0  # the largest k with an output of k*H x k*W that fits (the estimate grows with k)
    for _ in range(40):
        mid = (lo + hi) / 2
        fits = estimate(in_hw, (max(1, math.floor(H * mid)), max(1, math.floor(W * mid))), kind, fmt_streamed,
                        alpha, chunk) <= budget
        lo, hi = (mid, hi) if fits else (lo, mid)
    Hm, Wm = max(1, math.floor(H * lo)), max(1, math.floor(W * lo))
    s = math.floor(min(Hm / h, Wm / w) * 100) / 100
    hint = "" if fmt_streamed else "; a .png output is written as it is rendered and needs less"
    raise UserError(f"{what}; the largest that fits is about {Wm}x{Hm} (--scale {s:g} or --size {Wm}x{Hm}){hint}")
