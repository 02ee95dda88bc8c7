"""Datasets and SR wrappers, built from ``{'name': ..., 'args': ...}`` specs as in the configs.

A config names an inner dataset (``image-folder``, ``paired-image-folders``) and a wrapper
(``sr-implicit-downsampled``, ``sr-implicit-paired``); the inner one is built first and passed
to the wrapper as its ``dataset`` argument (:func:`make_dataset` does both).
"""
from __future__ import annotations

from typing import Any, Mapping

from utils.registry import Registry

DATASETS = Registry("dataset")
register = DATASETS.register


def make(spec: Mapping[str, Any], args: Mapping[str, Any] | None = None) -> Any:
    """Build the dataset a spec names; ``args`` override/extend the spec's args."""
    return DATASETS.make(spec, args)


def make_dataset(dataset_spec: Mapping[str, Any],
                 wrapper_spec: Mapping[str, Any] | None = None) -> Any:
    """Build ``dataset_spec``, then wrap it with ``wrapper_spec`` (if given)."""
    ds = make(dataset_spec)
    if wrapper_spec is None:
        return ds
    return make(wrapper_spec, args={"dataset": ds})


from datasets import image_folder, wrappers  # noqa: E402,F401  (registers the names)
from datasets.resize import resize_bicubic  # noqa: E402,F401
