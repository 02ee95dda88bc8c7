#!/usr/bin/env python
"""Why the render kernel is a ctypes C kernel: LM-LIIF's per-query render on the CPU, three ways.

    python scripts/bench_render_backends.py [--lr 90x160] [--scale 4] [--repeats 5]

Times, in one run, the render of all H*W queries of an LM-LIIF-shaped model (16-wide modulated
MLP, depth 6, local ensemble, relative cell) from the same folded modulation tables:

* ``eager``: the PyTorch path (``query.locate`` + ``ModulatedMLP.render_blend``);
* ``torch.compile``: the same function compiled by TorchInductor (its first call, i.e. the
  compile time, is reported separately);
* ``fused``: the C kernel of ``models/fast_render.py`` (compiled with ``cc`` on first use).

It also checks that the three agree (max |diff|). Results are written up in docs/render-kernel.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models import fast_render  # noqa: E402
from models import query as Q  # noqa: E402
from models.mlp import ModulatedMLP  # noqa: E402
from utils.coords import make_cell, make_coord  # noqa: E402


def timed(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    times: list[float] = []
    out: torch.Tensor | None = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    if out is None:
        raise ValueError(f"--repeats must be at least 1, not {repeats}")
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lr", default="90x160", help="LR size HxW")
    ap.add_argument("--scale", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    h, w = (int(v) for v in args.lr.split("x"))
    H, W = round(h * args.scale), round(w * args.scale)
    torch.manual_seed(0)
    m = ModulatedMLP(4, 3, 16, 6).eval()
    with torch.no_grad():
        tables = m.fold(torch.randn(h * w, m.mod_dim) * 0.1).view(6, 1, h * w, 32)
    coord = make_coord((H, W)).unsqueeze(0)
    cell = make_cell((H, W)).unsqueeze(0)

    def eager(coord=coord, cell=cell):
        lk = Q.locate(coord, h, w, True)
        return m.render_blend(lk.rel_coord, tables, lk, Q.rel_cell(cell, h, w))

    def chunked(fn):
        return lambda: Q.stream(lambda c, ce: fn(c, ce), coord, cell, 65536)

    print(f"LM-LIIF render, LR {h}x{w} -> {H}x{W} ({H * W:,} queries), {torch.get_num_threads()} threads")
    with torch.no_grad():
        with fast_render.disabled():
            t_eager, ref = timed(chunked(eager), args.repeats)
            compiled = torch.compile(eager, dynamic=False)
            t0 = time.perf_counter()
            chunked(compiled)()
            t_compile = time.perf_counter() - t0
            t_comp, out_c = timed(chunked(compiled), args.repeats)
        t0 = time.perf_counter()
        assert fast_render.library() is not None, "no C compiler: the fused kernel is unavailable"
        t_build = time.perf_counter() - t0
        t_fused, out_f = timed(lambda: m.render_at(coord, tables, (h, w), True, cell), args.repeats)
    print(f"  eager PyTorch   {1e3 * t_eager:8.1f} ms")
    print(f"  torch.compile   {1e3 * t_comp:8.1f} ms   (first call incl. compilation {t_compile:.1f} s; "
          f"max |diff| {(out_c - ref).abs().max().item():.1e})")
    print(f"  fused C kernel  {1e3 * t_fused:8.1f} ms   (load/build {t_build:.2f} s; "
          f"max |diff| {(out_f - ref).abs().max().item():.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
