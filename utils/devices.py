"""Device helpers shared by the tests and benchmarks: exact fp32 on CUDA, and timers.

Exactness on CUDA: by default PyTorch lets cuDNN convolutions use TF32 (10-bit mantissa inputs
on Ampere and later) while fp32 matmuls do not; either one would put the outputs ~1e-3 away
from the official fp32 outputs, past the 1e-4 golden tolerance. :func:`no_tf32` turns both off.
"""
from __future__ import annotations

import os
import time
from typing import Callable

import torch

TEST_DEVICE_ENV = "LMF_TEST_DEVICE"


def no_tf32() -> None:
    """Full fp32 for CUDA matmuls *and* cuDNN convolutions (no effect on the CPU)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def test_device() -> torch.device:
    """The device the device-aware tests run on: ``$LMF_TEST_DEVICE`` (default ``cpu``).

    Raises ValueError (a one-line reason) for a device this machine does not have.
    """
    name = os.environ.get(TEST_DEVICE_ENV, "cpu").strip() or "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{TEST_DEVICE_ENV}={name!r} is not a device (cpu, cuda, cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{TEST_DEVICE_ENV}={name}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{TEST_DEVICE_ENV}={name}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise ValueError(f"{TEST_DEVICE_ENV}={name}: only cpu and cuda are supported")
    return dev


class Timer:
    """Seconds of one call of ``fn`` on ``device``; ``name`` says how they are measured."""

    name = ""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, fn: Callable[[], object]) -> float:
        raise NotImplementedError


class WallTimer(Timer):
    """Seconds of one call of ``fn`` by the wall clock (CPU)."""

    name = "wall clock"

    def __call__(self, fn: Callable[[], object]) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t


class CudaEventTimer(Timer):
    """Seconds of one call of ``fn`` on the GPU, measured with CUDA events (no host-side gaps:
    the time between the two events recorded on the current stream)."""

    name = "CUDA events"

    def __call__(self, fn: Callable[[], object]) -> float:
        with torch.cuda.device(self.device):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0


TIMERS: dict[str, type[Timer]] = {"cpu": WallTimer, "cuda": CudaEventTimer}
