"""Safe checkpoint I/O: ``torch.load(weights_only=True)`` only, atomic writes, clear errors.

Layout (official LIIF/LTE/LMF): ``{'model': {'name', 'args', 'sd'}, 'optimizer': {...},
'epoch': int}``; our training adds resume state next to it. A checkpoint can never run code:
anything that is not plain tensors/containers is refused by the weights-only unpickler.
"""
from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from typing import Any, Mapping

import torch

from utils.atomic import write_atomic
from utils.errors import CheckpointError

# arguments that released official configs carried but that the constructors never took
LEGACY_MODEL_ARGS = ("mixed_le",)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint file safely; raise CheckpointError with one clear line otherwise."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint path is a directory: {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    if not head:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (it is an empty, zero-byte file)")
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # zip (torch >= 1.6) / pickle protocol 2+
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (neither a zip archive nor a "
                              f"pickle; first bytes {head!r})")
    try:
        with warnings.catch_warnings():  # torch's warnings about foreign pickles: we report our own line
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"refusing to load {path}: it is not a plain-weights checkpoint "
                              f"(weights_only load failed: {_unpickling_reason(e)[:160]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError,
            ImportError, TypeError, KeyError, IndexError, MemoryError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        msg = msg.split(". ")[0].rstrip(".")  # torch appends paragraphs of advice
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({msg[:160]}; "
                              "truncated or corrupted?)") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a checkpoint: expected a dict, got {type(ckpt).__name__}")
    return ckpt


# boilerplate lines of torch's weights_only error (the reason is on another line)
_TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation",
                      "WeightsUnpickler error")


def _unpickling_reason(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(_TORCH_BOILERPLATE)]
    return (useful or lines or [type(e).__name__])[0]


def model_spec(ckpt: Mapping[str, Any], path: str = "checkpoint") -> dict:
    """The ``{'name', 'args', 'sd'}`` model spec of a checkpoint, with legacy args dropped."""
    spec = ckpt.get("model")
    if not isinstance(spec, Mapping) or not {"name", "args", "sd"} <= set(spec):
        raise CheckpointError(f"{path} has no model spec: expected ckpt['model'] = "
                              "{'name', 'args', 'sd'} (the LIIF/LTE/LMF layout)")
    args = {k: v for k, v in dict(spec["args"] or {}).items() if k not in LEGACY_MODEL_ARGS}
    return {"name": spec["name"], "args": args, "sd": spec["sd"]}


def state_dict_digest(sd: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names, dtypes, shapes and values (hex): which weights these are,
    independent of the file they came in (official layout, ours, re-saved, on another device)."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`utils.atomic.write_atomic`: a crash at any moment leaves
    either the old file or the new one, never a partial file."""
    write_atomic(path, lambda f: torch.save(obj, f), "checkpoint")
