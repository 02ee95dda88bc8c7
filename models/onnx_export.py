"""Export a decoder's inference stages as three ONNX graphs (needs the optional ``onnx`` and
``onnxscript`` packages; ``requirements-export.txt``).

The graphs are the model's own stages, traced from the plain PyTorch path (the fused CPU render
kernel is switched off while exporting; it is not an ONNX operator):

* ``encoder.onnx``  — normalised LR image (1, 3, h, w) -> feature map (1, C, h, w);
* ``latent.onnx``   — a band of feature rows (1, C, hb, w), the LR image (1, 3, h, w; only its
  size is read: the latent's cell is measured in LR cells) and the latent cell (1, 1, 2) ->
  per-cell tables of the band (``rows`` (1, hb*w, C'), LMF's folded modulations ``mods``
  (depth, 1, hb*w, 2*hd) and CMSR's ``complexity`` (1, 1, hb, w), whichever the model has);
* ``render.onnx``   — LR image, a chunk of queries ``coord``/``cell`` (1, q, 2) and the tables
  -> RGB (1, q, 3) in the normalised space (LR residual included).

Every size (h, w, band height, query count) is dynamic. The latent graph works on row bands
with a one-row halo (3x3 neighbourhoods) so that a runner can bound its memory on large images
the way the PyTorch path does; ``utils/onnx_runner.py`` runs the three graphs without torch.
A ``model.json`` beside them holds what a runner needs (see :func:`export`).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.nn as nn

from utils.errors import UserError
from utils.onnx_runner import FORMAT, FORMAT_VERSION

from . import fast_render
from .cmsr import TRAINING_SCALE
from .decoder import ImplicitDecoder, Latent
from .lm import LMDecoder

MIN_OPSET = 18          # GridSample (16) with the exporter's lowest well-supported opset
DEFAULT_OPSET = 18
EXPORTABLE = ("liif", "lte", "lmliif", "lmlte")
LATENT_BAND_CELLS = 1 << 16  # cells per latent band in the runner (as LM-LIIF's PyTorch latent)
HALO = 1                     # feature rows above/below a band (3x3 unfolding / convolutions)
# queries per render call: the non-fused render keeps per-neighbour rows of each query alive
DEFAULT_CHUNK = {"liif": 8192, "lte": 8192, "lmliif": 65536, "lmlte": 32768}


def model_name(model: nn.Module) -> str:
    from .registry import name_of

    return name_of(model) or type(model).__name__


def check_request(model: nn.Module, opset: int) -> str:
    """The model's registered name, or a UserError if this model or opset cannot be exported."""
    name = model_name(model)
    if name not in EXPORTABLE:
        raise UserError(f"model {name!r} cannot be exported to ONNX (exportable: {', '.join(EXPORTABLE)})")
    if opset < MIN_OPSET:
        raise UserError(f"opset {opset} is not supported: the graphs need opset {MIN_OPSET} or newer "
                        "(GridSample, dynamic shapes)")
    return name


def _latent_fields(model: ImplicitDecoder, lat: Latent) -> list[str]:
    """The per-cell tables this model's render reads (``rows``, ``mods``: whichever it has)."""
    fields = []
    if lat.rows is not None:
        fields.append("rows")
    if lat.mods is not None:
        fields.append("mods")
    return fields


class _Encoder(nn.Module):
    def __init__(self, model: ImplicitDecoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode(image)


class _LatentStage(nn.Module):
    def __init__(self, model: ImplicitDecoder, fields: list[str], complexity: bool) -> None:
        super().__init__()
        self.model, self.fields, self.complexity = model, fields, complexity

    def forward(self, feat: torch.Tensor, image: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, ...]:
        lat = self.model.latent(feat, image, cell)
        out = [getattr(lat, f) for f in self.fields]
        if self.complexity:
            out.append(lat.complexity)
        return tuple(out)


class _RenderStage(nn.Module):
    def __init__(self, model: ImplicitDecoder, fields: list[str]) -> None:
        super().__init__()
        self.model, self.fields = model, fields

    def forward(self, image: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor,
                *tables: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.fields, tables, strict=True))
        return self.model.query(Latent(inp=image, rows=named.get("rows"), mods=named.get("mods")), coord, cell)


@contextlib.contextmanager
def _one_latent_band(model: ImplicitDecoder) -> Iterator[None]:
    """One band per latent call in the graph (the runner does the banding): an LMF decoder's own
    loop over bands would otherwise be traced at the example size."""
    if not isinstance(model, LMDecoder):
        yield
        return
    own = "latent_band_cells" in vars(model)
    saved = model.latent_band_cells
    model.latent_band_cells = None
    try:
        yield
    finally:
        if own:
            model.latent_band_cells = saved
        else:
            del model.latent_band_cells


def _export(module: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
            dynamic_shapes: tuple, opset: int, verbose: bool) -> None:
    sink = io.StringIO()
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(sink)
    log = logging.getLogger("torch.onnx")  # e.g. "torchvision is not installed" (not needed here)
    level = log.level
    try:
        with quiet, warnings.catch_warnings():
            if not verbose:
                warnings.simplefilter("ignore")
                log.setLevel(logging.ERROR)
            # optimize=False: the exporter's graph optimiser drops the look-up's "+ 1e-9" (it
            # takes the constant for zero), which turns the ensemble weights of 1-pixel-wide
            # images into NaN; onnxruntime optimises the graph itself when it loads it
            torch.onnx.export(module.eval(), args, str(path), dynamo=True, external_data=False, optimize=False,
                              input_names=input_names, output_names=output_names,
                              dynamic_shapes=dynamic_shapes, opset_version=opset, verbose=verbose)
    finally:
        log.setLevel(level)
    _check_dynamic(path, input_names, dynamic_shapes)


def _check_dynamic(path: Path, input_names: list[str], dynamic_shapes: tuple) -> None:
    """Every axis declared dynamic is still dynamic in the graph: the exporter may instead fix it
    to the example size (code that specialises on the input size, e.g. a window partition), which
    gives a graph that runs at that one size only."""
    import onnx

    declared: list[dict | None] = []
    for d in dynamic_shapes:  # a nested tuple holds the axes of the render stage's *tables
        declared.extend(d if isinstance(d, tuple) else [d])
    inputs = {i.name: i.type.tensor_type.shape.dim for i in onnx.load(str(path), load_external_data=False).graph.input}
    for name, axes in zip(input_names, declared, strict=True):
        for ax in axes or {}:
            dim = inputs[name][ax]
            if not dim.dim_param:
                raise UserError(f"the exporter fixed axis {ax} of {path.stem}'s input {name!r} to {dim.dim_value} "
                                "(the model's code depends on the example size there); this model cannot be "
                                "exported with dynamic sizes")


def _export_graphs(model: ImplicitDecoder, folder: Path, image: torch.Tensor, feat: torch.Tensor,
                   cell: torch.Tensor, coord: torch.Tensor, qcell: torch.Tensor, fields: list[str],
                   tables: list[torch.Tensor], has_complexity: bool, opset: int, verbose: bool) -> None:
    Dh, Dw, Dhb, Dq, Dn = (torch.export.Dim(n, min=1) for n in ("h", "w", "band", "q", "n"))
    table_dims = {"rows": {1: Dn}, "mods": {2: Dn}}
    with torch.no_grad(), fast_render.disabled():
        _export(_Encoder(model), (image,), folder / "encoder.onnx", ["image"], ["feat"],
                ({2: Dh, 3: Dw},), opset, verbose)
        _export(_LatentStage(model, fields, has_complexity), (feat, image, cell), folder / "latent.onnx",
                ["feat", "image", "cell"], fields + (["complexity"] if has_complexity else []),
                ({2: Dhb, 3: Dw}, {2: Dh, 3: Dw}, None), opset, verbose)
        _export(_RenderStage(model, fields), (image, coord, qcell, *tables), folder / "render.onnx",
                ["image", "coord", "cell", *fields], ["rgb"],
                ({2: Dh, 3: Dw}, {1: Dq}, {1: Dq}, tuple(table_dims[f] for f in fields)), opset, verbose)


def export(model: ImplicitDecoder, folder: str | os.PathLike, opset: int = DEFAULT_OPSET,
           chunk: int | None = None, cmsr_table: Mapping[float, Mapping[float, float]] | None = None,
           source: str | None = None, verbose: bool = False) -> dict[str, Any]:
    """Write ``encoder.onnx``, ``latent.onnx``, ``render.onnx`` and ``model.json`` into ``folder``.

    ``model`` must be in eval mode on the CPU. ``chunk``: queries per render call (default per
    model). ``cmsr_table``: a Scale2Mod table to record (default: the model's own, if any).
    Returns the JSON metadata.
    """
    name = check_request(model, opset)
    folder = Path(folder)
    model = model.eval().cpu()
    b, h, w, hb, q = 1, 7, 9, 5, 50  # example sizes only; every one of them is dynamic
    g = torch.Generator().manual_seed(0)
    image = torch.rand(b, 3, h, w, generator=g) * 2 - 1
    cell = torch.tensor([[[2 / (3 * h), 2 / (3 * w)]]])
    coord = torch.rand(b, q, 2, generator=g) * 2 - 1
    qcell = cell.expand(b, q, 2).contiguous()

    with torch.no_grad(), fast_render.disabled():
        feat = model.encode(image)
        lat = model.latent(feat[:, :, :hb], image, cell)
        fields = _latent_fields(model, lat)
        has_complexity = lat.complexity is not None
        tables = [getattr(lat, f) for f in fields]

    with _one_latent_band(model):
        _export_graphs(model, folder, image, feat[:, :, :hb], cell, coord, qcell, fields, tables, has_complexity,
                       opset, verbose)

    if cmsr_table is None and isinstance(model, LMDecoder) and model.cmsr is not None:
        cmsr_table = model.cmsr.table.to_dict()
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": name,
        "encoder": model_name(model.encoder),
        "source": source,
        "graphs": {"encoder": "encoder.onnx", "latent": "latent.onnx", "render": "render.onnx"},
        "latent_outputs": fields + (["complexity"] if has_complexity else []),
        "render_tables": fields,
        "feat_dim": int(feat.shape[1]),
        "normalisation": {"inp_sub": [0.5], "inp_div": [0.5], "gt_sub": [0.5], "gt_div": [0.5]},
        "chunk": int(chunk or DEFAULT_CHUNK[name]),
        "latent_band_cells": LATENT_BAND_CELLS,
        "halo": HALO,
        "scale_max": float(TRAINING_SCALE),
        "training_scale_range": [1.0, float(TRAINING_SCALE)],
        "cmsr": None if cmsr_table is None else
        {"s2m_tables": {str(k): {str(d): t for d, t in v.items()} for k, v in cmsr_table.items()}},
        "opset": int(opset),
        "exported_with": {"torch": torch.__version__},
    }
    (folder / "model.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta
