"""The learning rate as a function of the training position (epoch, iteration).

Nothing is stepped or stored: the rate of any iteration follows from the config and where the
run is, so a run resumed anywhere, even in the middle of an epoch, continues on exactly the
curve it left.

* ``multi_step_lr`` (the official recipes): constant within an epoch; after each milestone epoch
  the rate is multiplied by ``gamma`` (one multiplication per milestone passed, as PyTorch's
  MultiStepLR stepped once per epoch does it, so the values are bit-identical to it).
* ``cosine_lr``: a cosine from the base rate to ``eta_min`` over all ``epoch_max x iterations``
  iterations, moving every iteration. At the first iteration of each epoch it equals the
  per-epoch cosine (PyTorch's CosineAnnealingLR with ``T_max = epoch_max``).
* ``warmup_iters``: the first N iterations scale that rate linearly, (i + 1) / N.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["learning_rate"]


def learning_rate(cfg: Mapping[str, Any], base: float, epoch: int, it: int, iters_per_epoch: int) -> float:
    """The rate of iteration ``it`` (0-based) of epoch ``epoch`` (1-based)."""
    lr = base
    ms, cos = cfg.get("multi_step_lr"), cfg.get("cosine_lr")
    if ms:
        for milestone in ms["milestones"]:
            if milestone <= epoch - 1:
                lr *= ms["gamma"]
    step = (epoch - 1) * iters_per_epoch + it  # iterations done before this one
    if cos:
        total = cfg["epoch_max"] * iters_per_epoch
        eta_min = cos.get("eta_min", 0.0)
        lr = eta_min + (base - eta_min) * (1 + math.cos(math.pi * min(step, total) / total)) / 2
    warmup = cfg.get("warmup_iters")
    if warmup and step < warmup:
        lr *= (step + 1) / warmup
    return lr
