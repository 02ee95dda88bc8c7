"""A stand-in for CUDA on a CPU-only machine, strict where PyTorch is strict.

The project's CUDA bugs so far were not in the arithmetic but in how the code talks to
``torch.cuda``: an index-less ``torch.device("cuda")`` handed to ``torch.cuda.set_device`` (which
PyTorch refuses), a device index past ``device_count()``, a memory query on the wrong device.
None of that shows on a CPU build, where the CUDA branch is never taken. :class:`FakeCuda` makes
the CUDA branch run here:

* ``torch.cuda.is_available()`` is True and ``device_count()`` is ``count``; ``set_device``,
  ``current_device``, ``synchronize``, ``mem_get_info``, the memory statistics, ``Event``,
  ``device(...)`` and ``get_device_name/properties`` parse their device argument with PyTorch's
  own parser (``torch.cuda._utils._get_device_index``), so an index-less device is refused by
  ``set_device`` exactly as on a GPU, and an ordinal past the count raises PyTorch's
  "invalid device ordinal";
* a torch-function mode moves every tensor the program places on ``cuda``/``cuda:N`` to the CPU
  instead, after the same checks (the program keeps its ``cuda:N`` device objects, so every
  ``device.type == "cuda"`` branch is taken), and records where each placement asked to go;
* ``Tensor.cuda()``/``Module.cuda()`` raise: the project passes devices, it never hard-codes one;
* NCCL process groups become gloo ones (after checking that the process set its device first,
  as NCCL needs), and DDP's ``device_ids`` are checked against the current device and dropped.

Used in-process by :meth:`FakeCuda.install` (pytest's monkeypatch undoes it) and in subprocesses
(``torchrun``, the entry scripts, gpu_check) through :data:`SITE_DIR`, a ``sitecustomize`` that
installs it when ``LMF_FAKE_CUDA=<count>[,<free GiB>]`` is set.
"""
from __future__ import annotations

import os
import time
import types
from pathlib import Path
from typing import Any

import torch
from torch.cuda._utils import _get_device_index
from torch.overrides import TorchFunctionMode

ENV = "LMF_FAKE_CUDA"
SITE_DIR = Path(__file__).resolve().parent / "fake_cuda_site"
GiB = 2**30


class _PlaceOnCpu(TorchFunctionMode):
    """Every tensor placed on a (valid) CUDA device goes to the CPU; placements are recorded."""

    def __init__(self, fake: "FakeCuda") -> None:
        super().__init__()
        self.fake = fake

    def _map(self, value: Any) -> Any:
        if isinstance(value, str) and (value == "cuda" or value.startswith("cuda:")):
            value = torch.device(value)
        if isinstance(value, torch.device) and value.type == "cuda":
            index = self.fake.current if value.index is None else value.index
            self.fake.check_ordinal(index)
            self.fake.placements.append(index)
            return torch.device("cpu")
        return value

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if func is torch.device:  # device objects stay what the program asked for
            return func(*args, **kwargs)
        if name == "cuda":
            raise AssertionError("Tensor.cuda()/Module.cuda() called: the device must come from the inputs or --device")
        if name == "pin_memory":  # pinned memory needs a real accelerator; on the stand-in it is a no-op
            return args[0]
        args = tuple(self._map(a) for a in args)
        kwargs = {k: self._map(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


class _Event:
    """torch.cuda.Event with wall-clock times (milliseconds, as CUDA events report)."""

    def __init__(self, enable_timing: bool = False, **_: Any) -> None:
        self.enable_timing, self.t = enable_timing, None

    def record(self, stream: Any = None) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        if self.t is None:
            raise RuntimeError("event synchronized before it was recorded")

    def query(self) -> bool:
        return self.t is not None

    def elapsed_time(self, end: "_Event") -> float:
        if not (self.enable_timing and end.enable_timing):
            raise RuntimeError("Both events must be created with argument 'enable_timing=True'.")
        if self.t is None or end.t is None:
            raise RuntimeError("Both events must be recorded before calculating elapsed time.")
        return (end.t - self.t) * 1000.0


class FakeCuda:
    """``count`` fake GPUs with ``free_gib`` free of ``total_gib`` each (see the module docstring)."""

    def __init__(self, count: int = 1, free_gib: float = 60.0, total_gib: float = 80.0) -> None:
        self.count, self.free, self.total = count, int(free_gib * GiB), int(total_gib * GiB)
        self.current = 0
        self.set_device_calls: list[int] = []
        self.placements: list[int] = []
        self.mode = _PlaceOnCpu(self)
        self.active = False

    # --- what PyTorch checks --------------------------------------------------------------
    def check_ordinal(self, index: int) -> None:
        if not 0 <= index < self.count:
            raise RuntimeError("CUDA error: invalid device ordinal\nCUDA kernel errors might be asynchronously "
                               "reported at some other API call")

    def index(self, device: Any = None, optional: bool = True) -> int:
        """PyTorch's own parsing of a device argument, then the ordinal check."""
        i = _get_device_index(device, optional=optional)
        i = self.current if i < 0 else i
        self.check_ordinal(i)
        return i

    # --- the torch.cuda functions ---------------------------------------------------------
    def set_device(self, device: Any) -> None:
        i = _get_device_index(device)  # optional=False, as torch.cuda.set_device: "cuda" is refused
        if i >= 0:
            self.check_ordinal(i)
            self.current = i
            self.set_device_calls.append(i)

    def functions(self) -> dict[str, Any]:
        fake = self

        class device:  # noqa: N801 (torch.cuda.device is a class used as a context manager)
            def __init__(self, dev: Any) -> None:
                self.idx, self.prev = fake.index(dev), fake.current

            def __enter__(self) -> None:
                self.prev, fake.current = fake.current, self.idx

            def __exit__(self, *exc: Any) -> None:
                fake.current = self.prev

        def props(dev: Any = None) -> types.SimpleNamespace:
            fake.index(dev)
            return types.SimpleNamespace(name="Fake CUDA GPU", total_memory=fake.total, major=9, minor=0,
                                         multi_processor_count=132)

        def check(device: Any = None) -> None:
            fake.index(device)

        def zero(device: Any = None) -> int:
            fake.index(device)
            return 0

        def mem_get_info(device: Any = None) -> tuple[int, int]:
            fake.index(device)
            return fake.free, fake.total

        return {
            "is_available": lambda: True,
            "device_count": lambda: fake.count,
            "set_device": fake.set_device,
            "current_device": lambda: fake.current,
            "synchronize": check,
            "mem_get_info": mem_get_info,
            "memory_allocated": zero,
            "max_memory_allocated": zero,
            "memory_reserved": zero,
            "reset_peak_memory_stats": check,
            "empty_cache": lambda: None,
            "get_device_name": lambda device=None: props(device).name,
            "get_device_properties": props,
            "get_device_capability": lambda device=None: (props(device).major, props(device).minor),
            "is_bf16_supported": lambda including_emulation=True: True,
            "Event": _Event,
            "device": device,
        }

    # --- distributed ------------------------------------------------------------------------
    def _wrap_distributed(self, setattr_) -> None:
        import torch.distributed as dist
        import torch.nn.parallel as parallel

        real_init, real_ddp = dist.init_process_group, parallel.DistributedDataParallel
        fake = self

        def init_process_group(backend: str | None = None, *args: Any, **kwargs: Any) -> Any:
            if backend == "nccl":
                if not fake.set_device_calls:
                    raise RuntimeError("NCCL process group created before torch.cuda.set_device: "
                                       "every rank would use GPU 0")
                backend = "gloo"
            return real_init(backend, *args, **kwargs)

        class DistributedDataParallel(real_ddp):  # type: ignore[misc, valid-type]
            def __init__(self, module: Any, device_ids: Any = None, *args: Any, **kwargs: Any) -> None:
                if device_ids is not None:
                    ids = [_get_device_index(d, optional=True) for d in device_ids]
                    if ids != [fake.current]:
                        raise RuntimeError(f"DDP device_ids {device_ids} but this process's device is cuda:{fake.current}")
                super().__init__(module, None, *args, **kwargs)

        setattr_(dist, "init_process_group", init_process_group)
        setattr_(parallel, "DistributedDataParallel", DistributedDataParallel)
        setattr_(torch.nn.parallel.distributed, "DistributedDataParallel", DistributedDataParallel)

    # --- switching it on --------------------------------------------------------------------
    def install(self, monkeypatch: Any) -> "FakeCuda":
        """In-process, undone by pytest's ``monkeypatch`` (the mode is left at its teardown)."""
        for name, fn in self.functions().items():
            monkeypatch.setattr(torch.cuda, name, fn)
        self._wrap_distributed(monkeypatch.setattr)
        self.mode.__enter__()
        self.active = True
        return self

    def uninstall(self) -> None:
        """Tensors stay where they are placed from now on (the patched functions stay)."""
        if self.active:
            self.mode.__exit__(None, None, None)
            self.active = False

    def install_for_process(self) -> None:
        """For the life of this process (sitecustomize)."""
        for name, fn in self.functions().items():
            setattr(torch.cuda, name, fn)
        self._wrap_distributed(setattr)
        self.mode.__enter__()


def env_for(count: int = 1, free_gib: float = 60.0) -> dict[str, str]:
    """Environment for a subprocess that runs under the stand-in."""
    path = os.pathsep.join(p for p in (str(SITE_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, ENV: f"{count},{free_gib}", "PYTHONPATH": path}
