"""How many training samples per second a config's data pipeline delivers.

:func:`samples_per_second` builds a ``train_dataset`` mapping (dataset + wrapper + batch_size)
the way training does and times it either alone (items read one by one in this process: the
cost of one worker) or through a ``torch.utils.data.DataLoader`` with N worker processes and
the default collate (adds batching and the transfer from the workers).
"""
from __future__ import annotations

import math
import random
import time
from typing import Any, Callable, Mapping

import numpy as np
from torch.utils.data import DataLoader, Dataset

import datasets

__all__ = ["samples_per_second"]


def samples_per_second(train_spec: Mapping[str, Any], workers: int, n_samples: int, seed: int = 0,
                       wrap: Callable[[Dataset], Dataset] | None = None) -> float:
    """Samples/s of ``train_spec`` (a config's ``train_dataset``) over ``n_samples`` items.

    ``workers`` 0: the items alone, read in this process (no batching), after a few warm-up
    items; Python's and NumPy's global RNGs are seeded with ``seed`` for the run and restored
    after it. ``workers`` >= 1: a DataLoader with that many workers and the spec's
    ``batch_size``, each worker's RNGs seeded from ``seed`` and its id; the clock starts once
    every worker has delivered a batch (process start-up and the first batch are not timed) and
    ``n_samples`` is rounded up to whole batches. ``wrap(dataset)`` may replace the built
    dataset (e.g. train.py's per-item seeding) to time it too. Items are indices 0, 1, ... in
    order, modulo the dataset's length.
    """
    if workers < 0 or n_samples < 1:
        raise ValueError(f"need workers >= 0 and n_samples >= 1, got {workers}, {n_samples}")
    ds = datasets.make_dataset(train_spec["dataset"], train_spec.get("wrapper"))
    if wrap is not None:
        ds = wrap(ds)
    if workers == 0:
        return _alone(ds, n_samples, seed)
    return _loader(ds, int(train_spec["batch_size"]), workers, n_samples, seed)


def _alone(ds: Any, n_samples: int, seed: int) -> float:
    states = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        n, warm = len(ds), min(5, n_samples)
        for i in range(warm):
            ds[i % n]
        t0 = time.perf_counter()
        for i in range(warm, warm + n_samples):
            ds[i % n]
        return n_samples / (time.perf_counter() - t0)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])


def _seed_worker(seed: int) -> Callable[[int], None]:
    def init(worker_id: int) -> None:
        random.seed(seed * 1000 + worker_id)
        np.random.seed(seed * 1000 + worker_id)

    return init


def _loader(ds: Any, batch: int, workers: int, n_samples: int, seed: int) -> float:
    timed = math.ceil(n_samples / batch)
    indices = [i % len(ds) for i in range((workers + timed) * batch)]
    loader = DataLoader(ds, batch_size=batch, sampler=indices, num_workers=workers,
                        worker_init_fn=_seed_worker(seed))
    it = iter(loader)
    for _ in range(workers):  # warm-up: every worker started and has produced one batch
        next(it)
    t0 = time.perf_counter()
    for _ in it:
        pass
    return timed * batch / (time.perf_counter() - t0)
