"""Build a model from a checkpoint file or dict (official layout or ours)."""
from __future__ import annotations

import os
from typing import Any, Mapping

import torch

from utils.checkpoint import load_checkpoint, model_spec
from utils.errors import CheckpointError, SpecError

from .decoder import ImplicitDecoder, set_precision
from .registry import make


def load_model(source: str | os.PathLike | Mapping[str, Any], device: torch.device | str = "cpu",
               cmsr_spec: Mapping[str, Any] | str | None = None, eval_mode: bool = True,
               precision: str = "fp32") -> ImplicitDecoder:
    """Load ``source`` (a path or a loaded checkpoint dict) onto ``device``.

    ``cmsr_spec`` (official dict or a table path) switches CMSR on for LMF models; ``precision``
    "bf16" runs the encoder (and on CUDA the latent stage) in bfloat16 (:func:`set_precision`).
    """
    path = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "checkpoint"
    ckpt = load_checkpoint(source, map_location="cpu") if isinstance(source, (str, os.PathLike)) else source
    spec = model_spec(ckpt, path)
    if cmsr_spec is not None:
        spec["args"]["cmsr_spec"] = cmsr_spec
    try:
        model = make(spec, load_sd=True, kind=ImplicitDecoder)
    except (SpecError, CheckpointError) as e:  # unknown name/argument, state dict that does not fit
        raise CheckpointError(f"{path}: {e}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:  # args of the wrong type
        msg = " ".join(str(e).split()) or type(e).__name__
        raise CheckpointError(f"{path}: cannot build model {spec['name']!r} from the checkpoint's args "
                              f"({type(e).__name__}: {msg[:160]})") from None
    model = model.to(device)
    set_precision(model, precision)
    return model.eval() if eval_mode else model
