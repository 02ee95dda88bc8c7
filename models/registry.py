"""The model registry: ``register(name)`` and ``make(spec, args=None, load_sd=False)``.

Names and constructor arguments follow the official LIIF/LTE/LMF specs, so their configs and
checkpoints build unchanged.
"""
from __future__ import annotations

from typing import Any, Mapping, TypeVar, overload

import torch.nn as nn

from utils.errors import CheckpointError, SpecError
from utils.registry import Registry

MODELS = Registry("model")
register = MODELS.register
names = MODELS.names
name_of = MODELS.name_of


M = TypeVar("M", bound=nn.Module)


@overload
def make(spec: Mapping[str, Any], args: Mapping[str, Any] | None = None, load_sd: bool = False) -> nn.Module: ...
@overload
def make(spec: Mapping[str, Any], args: Mapping[str, Any] | None = None, load_sd: bool = False, *,
         kind: type[M]) -> M: ...
def make(spec: Mapping[str, Any], args: Mapping[str, Any] | None = None, load_sd: bool = False, *,
         kind: type[nn.Module] = nn.Module) -> nn.Module:
    """Build the model a spec names; with ``load_sd`` load the spec's ``'sd'`` strictly.
    ``kind``: the class the part must be (an encoder, a render MLP), else a SpecError; it is
    also the type the caller gets."""
    model = MODELS.make(spec, args)
    if not isinstance(model, kind):
        raise SpecError(f"model {spec['name']!r} ({type(model).__name__}) cannot be used here "
                        f"(expected: {kind.__name__})")
    if load_sd:
        if "sd" not in spec:
            raise SpecError(f"model {spec['name']!r}: load_sd=True but the spec has no 'sd'")
        load_state_dict_strict(model, spec["sd"], what=f"model {spec['name']!r}")
    return model


def load_state_dict_strict(model: nn.Module, sd: Mapping[str, Any], what: str = "model") -> None:
    """``load_state_dict(strict=True)`` with a one-line summary instead of PyTorch's error wall."""
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{what}: state dict must be a mapping, got {type(sd).__name__}")
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    bad_shape = [k for k in own if k in sd and tuple(own[k].shape) != tuple(getattr(sd[k], 'shape', ()))]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) (e.g. {unexpected[0]})")
    if bad_shape:
        k = bad_shape[0]
        problems.append(f"{len(bad_shape)} shape mismatch(es) (e.g. {k}: checkpoint "
                        f"{tuple(getattr(sd[k], 'shape', ()))} vs model {tuple(own[k].shape)})")
    if problems:
        raise CheckpointError(f"state dict does not fit {what}: " + "; ".join(problems))
    model.load_state_dict(sd, strict=True)
