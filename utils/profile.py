"""Where a program's wall time goes: named phases, timed only when a program asks (``--profile``).

A program opens a :class:`Profile` for its whole run (``with Profile(device) as prof:``) and marks
its own steps (``with phase("reading"):``); the models mark theirs (encoder, latent, render, CMSR
bookkeeping) with the same :func:`phase`, which costs one context-variable look-up when no
profile is open. Phases nest: a phase's time excludes the phases inside it, so the rows add up
to the wall time (the rest is "other"). On CUDA each phase boundary synchronises the device, so
that work queued by one phase is not counted in the next: a profiled run is a little slower
than an unprofiled one, and says so.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_current: contextvars.ContextVar["Profile | None"] = contextvars.ContextVar("lmf_profile", default=None)

#: the phases that are the model's own work (the rest is the program around it)
MODEL_PHASES = ("encoder", "latent", "render", "cmsr bookkeeping")


@dataclass
class _Frame:
    start: float
    children: float = 0.0  # time spent in the phases inside this one


class Profile:
    """Exclusive wall time per phase name, for one run (see the module docstring)."""

    def __init__(self, device: Any = None) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._stack: list[_Frame] = []
        self._token: contextvars.Token | None = None
        self.start = self.stop = 0.0

    @property
    def on_cuda(self) -> bool:
        """Whether the device (a torch.device or its name) is a CUDA one."""
        return str(getattr(self.device, "type", self.device)).startswith("cuda")

    def _sync(self) -> None:
        if self.on_cuda:
            import torch

            torch.cuda.synchronize(self.device)

    def __enter__(self) -> "Profile":
        self._token = _current.set(self)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._sync()
        self.stop = time.perf_counter()
        if self._token is not None:
            _current.reset(self._token)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._sync()
        frame = _Frame(time.perf_counter())
        self._stack.append(frame)
        try:
            yield
        finally:
            self._sync()
            self._stack.pop()
            spent = time.perf_counter() - frame.start
            self.add(name, spent - frame.children)
            if self._stack:
                self._stack[-1].children += spent

    def begin_at(self, start: float, name: str = "start-up") -> None:
        """Count the wall time from ``start`` (e.g. :func:`process_start`) and put what passed
        before the profile opened under ``name``."""
        self.add(name, max(0.0, self.start - start))
        self.start = min(self.start, start)

    def add(self, name: str, seconds: float) -> None:
        """Count ``seconds`` under ``name``."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1

    @property
    def wall(self) -> float:
        return (self.stop or time.perf_counter()) - self.start

    def model_seconds(self) -> float:
        return sum(self.seconds.get(n, 0.0) for n in MODEL_PHASES)

    def report(self, title: str = "time breakdown") -> str:
        """A table: each phase's seconds and share of the wall time, then model vs wall."""
        wall = self.wall
        rows = dict(self.seconds)
        rows["other"] = max(0.0, wall - sum(rows.values()))
        sync = ", CUDA-synchronised" if self.on_cuda else ""
        lines = [f"# {title} (wall {wall:.2f} s{sync})"]
        for name, secs in rows.items():
            lines.append(f"#   {name:<18} {secs:8.3f} s {100 * secs / wall if wall else 0:5.1f} %")
        model = self.model_seconds()
        if model > 0:
            lines.append(f"#   model ({' + '.join(MODEL_PHASES)}) {model:.3f} s; wall / model = {wall / model:.2f}")
        return "\n".join(lines)


def process_start() -> float:
    """``time.perf_counter()`` at the moment this process was started (the interpreter's own
    start-up and the imports included), from /proc on Linux (10 ms resolution); elsewhere the
    first call of this function."""
    global _fallback_start
    now = time.perf_counter()
    try:
        with open("/proc/self/stat") as f:
            started_ticks = float(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time in ticks
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return now - max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        if _fallback_start is None:
            _fallback_start = now
        return _fallback_start


_fallback_start: float | None = None


def phase(name: str) -> contextlib.AbstractContextManager[None]:
    """Time the block as ``name`` in the open profile, if any (else a no-op). Code being
    compiled by ``torch.compile`` is never timed (the compiler cannot trace the look-up)."""
    prof = None if _compiling() else _current.get()
    return contextlib.nullcontext() if prof is None else prof.phase(name)


def _compiling() -> bool:
    torch = sys.modules.get("torch")  # this module does not import torch itself
    return torch is not None and torch.compiler.is_compiling()


def active() -> Profile | None:
    return _current.get()
