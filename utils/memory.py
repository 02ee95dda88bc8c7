"""Peak memory of tensors, measured the same way on every device.

:class:`LiveBytes` is a dispatch mode that sees every tensor a block of PyTorch code creates and
keeps a running total of the bytes of the storages still alive, so its ``peak`` is the most that
block held at once beyond what existed before it: the number a caching allocator has to find on
a GPU, measurable on the CPU too (where no allocator statistics exist). Views share their base's
storage and are counted once. It slows the block down (a Python call per operation): it is meant
for small probes and tests, not for the work itself.
"""
from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class LiveBytes(TorchDispatchMode):
    """``with LiveBytes() as m: ...`` then ``m.peak`` (bytes) and ``m.now`` (still alive)."""

    def __init__(self) -> None:
        super().__init__()
        self._refs: dict[int, list[int]] = {}  # storage address -> [bytes, live tensors on it]
        self.now = 0
        self.peak = 0

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0:
            return
        entry = self._refs.get(key)
        if entry is None:
            self._refs[key] = entry = [size, 0]
            self.now += size
            self.peak = max(self.peak, self.now)
        entry[1] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._refs.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self._refs[key]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self._track(t)
        return out
