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
* a torch-function mode keeps every tensor the program places on ``cuda``/``cuda:N`` on the CPU,
  after the same checks, but remembers it as a GPU tensor: its ``device`` says ``cuda:N`` (so
  every ``device.type == "cuda"`` branch is taken), what is computed from it is a GPU tensor
  too, and CUDA's rules are enforced — an operation mixing GPU and CPU tensors raises PyTorch's
  "Expected all tensors to be on the same device", ``.numpy()`` of a GPU tensor is refused;
* the Triton render is switched off (``LMF_TRITON_RENDER=0``, a configuration the first GPU run
  also used): its kernels would need a real GPU (or Triton's slow interpreter), so the render
  takes the eager CUDA path;
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
import weakref
from pathlib import Path
from typing import Any

import torch
from torch.cuda._utils import _get_device_index
from torch.overrides import TorchFunctionMode

ENV = "LMF_FAKE_CUDA"
SITE_DIR = Path(__file__).resolve().parent / "fake_cuda_site"
GiB = 2**30


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


# operations that may take tensors of two devices (copies between host and GPU)
_CROSS_DEVICE = {"to", "copy_", "cpu", "__setitem__", "set_", "__get__", "__set__", "numpy", "tolist", "item",
                 "_has_compatible_shallow_copy_type", "is_floating_point", "dim", "size", "__len__", "__repr__",
                 "__format__", "type", "is_complex", "element_size", "data_ptr", "untyped_storage"}


class _PlaceOnCpu(TorchFunctionMode):
    """Every tensor placed on a (valid) CUDA device goes to the CPU but is remembered as a GPU
    tensor: it reports ``device == cuda:N`` and ``is_cuda``, what is computed from it is a GPU
    tensor too, and CUDA's own rules hold: no operation mixes GPU tensors with CPU tensors (a
    0-dim CPU tensor excepted, as in PyTorch), ``.numpy()`` of a GPU tensor is refused."""

    def __init__(self, fake: "FakeCuda") -> None:
        super().__init__()
        self.fake = fake
        self.gpu: dict[int, int] = {}  # id(tensor) -> device index, while the tensor lives

    # -- which tensors are "on the GPU" ---------------------------------------------------
    def where(self, t: torch.Tensor) -> int | None:
        return self.gpu.get(id(t))

    def tag(self, out: Any, index: int) -> None:
        for t in _tensors(out):
            if id(t) not in self.gpu:
                weakref.finalize(t, self.gpu.pop, id(t), None)
            self.gpu[id(t)] = index

    def _map(self, value: Any) -> tuple[Any, int | None]:
        """A device argument -> (CPU in its place, the GPU index it named or None)."""
        if isinstance(value, str) and (value == "cuda" or value.startswith("cuda:")):
            value = torch.device(value)
        if isinstance(value, torch.device) and value.type == "cuda":
            index = self.fake.current if value.index is None else value.index
            self.fake.check_ordinal(index)
            self.fake.placements.append(index)
            return torch.device("cpu"), index
        return value, None

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if func is torch.device or name == "_parse_to":  # device objects stay what the program asked for
            return func(*args, **kwargs)
        if name == "cuda":
            raise AssertionError("Tensor.cuda()/Module.cuda() called: the device must come from the inputs or --device")
        if name == "pin_memory":  # pinned memory needs a real accelerator; on the stand-in it is a no-op
            return args[0]
        if name in ("__get__", "__set__"):
            return self._attribute(func, name, args, kwargs)
        if name == "numpy" and args and self.where(args[0]) is not None:
            raise TypeError(f"can't convert cuda:{self.where(args[0])} device type tensor to numpy. "
                            "Use Tensor.cpu() to copy the tensor to host memory first.")
        mapped_args, mapped_kwargs, target = [], {}, None
        for a in args:
            a, i = self._map(a)
            mapped_args.append(a)
            target = i if i is not None else target
        for k, v in kwargs.items():
            v, i = self._map(v)
            mapped_kwargs[k] = v
            target = i if i is not None else target
        inputs = [t for v in (*args, *kwargs.values()) for t in _tensors(v)]
        on = {self.where(t) for t in inputs if self.where(t) is not None}
        if name not in _CROSS_DEVICE:
            host = [t for t in inputs if self.where(t) is None and t.dim() > 0]
            if len(on) > 1 or (on and host):
                devs = sorted(f"cuda:{i}" for i in on) + (["cpu"] if host else [])
                raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two "
                                   f"devices, {devs[0]} and {devs[1]}! (in {name})")
        out = func(*mapped_args, **mapped_kwargs)
        if target is not None:
            if args and out is args[0] and self.where(out) != target:  # a copy to the GPU is a new tensor
                out = out.clone()
            self.tag(out, target)
        elif name == "cpu" or (name == "to" and _names_cpu(args, kwargs)):
            if out is args[0] and self.where(out) is not None:  # a copy to the host is a new tensor
                out = out.clone()
        elif on and name not in ("numpy", "tolist", "item", "__repr__", "__format__"):
            self.tag(out, next(iter(on)))
        return out

    def _attribute(self, func: Any, name: str, args: Any, kwargs: Any) -> Any:
        """Tensor attributes: ``device``/``is_cuda`` as on a GPU; ``.grad`` of a GPU tensor and
        ``param.data = gpu_tensor`` (Module.to) keep GPU tensors GPU tensors."""
        attr = getattr(getattr(func, "__self__", None), "__name__", "")
        t = args[0] if args else None
        index = self.where(t) if isinstance(t, torch.Tensor) else None
        if name == "__set__":
            out = func(*args, **kwargs)
            if attr == "data" and len(args) > 1 and self.where(args[1]) is not None:
                self.tag(t, self.where(args[1]))
            return out
        if index is not None and attr == "device":
            return torch.device("cuda", index)
        if index is not None and attr == "is_cuda":
            return True
        out = func(*args, **kwargs)
        if index is not None and attr in ("grad", "data", "T", "mT", "real", "imag"):
            self.tag(out, index)
        return out


def _names_cpu(args: Any, kwargs: Any) -> bool:
    for v in (*args[1:], *kwargs.values()):
        if isinstance(v, torch.device) and v.type == "cpu" or v == "cpu":
            return True
    return False


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
        monkeypatch.setenv("LMF_TRITON_RENDER", "0")
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
        os.environ["LMF_TRITON_RENDER"] = "0"
        self._wrap_distributed(setattr)
        self.mode.__enter__()


def env_for(count: int = 1, free_gib: float = 60.0) -> dict[str, str]:
    """Environment for a subprocess that runs under the stand-in."""
    path = os.pathsep.join(p for p in (str(SITE_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, ENV: f"{count},{free_gib}", "PYTHONPATH": path}
