"""Upscale with a model exported by ``scripts/export_onnx.py``, without PyTorch.

Needs only ``onnxruntime``, ``numpy`` and ``Pillow`` (this module never imports torch). It runs
the three exported graphs the way :func:`models.inference.upsample` runs the model's stages:

* the encoder once on the normalised LR image;
* the latent graph on bands of about ``latent_band_cells`` LR cells (rows plus a one-row halo,
  cropped afterwards), into preallocated per-cell tables;
* the render graph on bands of whole output rows (about ``chunk`` queries each), whose
  coordinates are made on the fly, so memory beyond the output image is one band's worth.

Coordinates and cells are computed with the same float32 arithmetic as ``utils/coords.py``
(bit for bit), cells are enlarged beyond the training range as in the PyTorch path
(``max(s / scale_max, 1)`` per axis). CMSR is not run here: every query is rendered (the
folder's ``model.json`` records the model's Scale2Mod table for runners that implement it).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from utils.errors import UserError

FORMAT = "lmf-onnx"  # the ``format`` of model.json (models/onnx_export.py writes it)
FORMAT_VERSION = 1   # the layout of model.json and the graphs' inputs/outputs this runner reads
# what model.json must hold (models/onnx_export.py writes it; see docs/export.md)
_REQUIRED = ("graphs", "latent_outputs", "render_tables", "normalisation", "chunk", "latent_band_cells", "halo",
             "scale_max")


def axis_coords(n: int) -> np.ndarray:
    """Centres of ``n`` pixels along one axis in [-1, 1], float32 — as ``utils.coords.axis_coords``:
    the two constants are computed as Python floats and rounded to float32 once, then
    ``start + step * i`` in float32."""
    r = 1.0 / n
    return np.float32(-1.0 + r) + np.float32(2.0 * r) * np.arange(n, dtype=np.float32)


def clipped_cell(size: tuple[int, int], scale_hw: Sequence[float], scale_max: float) -> np.ndarray:
    """The query cell (2/H, 2/W) enlarged by max(s / scale_max, 1) per axis: float32 (2,)."""
    cell = np.array([2.0 / size[0], 2.0 / size[1]], dtype=np.float32)
    f = np.array([max(float(s) / scale_max, 1.0) for s in scale_hw], dtype=np.float32)
    return cell * f


def _session_options(ort, threads: int | None, arena: bool = True):
    opts = ort.SessionOptions()
    # the encoder and latent run once per image on large tensors: without onnxruntime's arena
    # their buffers go back to the system when done instead of staying reserved for the render
    opts.enable_cpu_mem_arena = arena
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only
    return opts


def read_meta(folder: Path) -> dict:
    """``folder``/model.json, checked: format, version and the keys a runner reads."""
    meta_path = folder / "model.json"
    if folder.is_file():
        raise UserError(f"{folder} is a file: pass the export folder (the one holding model.json)")
    if not folder.is_dir():
        raise UserError(f"ONNX model folder {folder} does not exist (export one with scripts/export_onnx.py)")
    if not meta_path.is_file():
        raise UserError(f"{folder} has no model.json: not a folder written by scripts/export_onnx.py")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {meta_path}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{meta_path} is not an {FORMAT} description (written by scripts/export_onnx.py)")
    if meta.get("version") != FORMAT_VERSION:
        raise UserError(f"{meta_path} has format version {meta.get('version')!r}; this runner reads version "
                        f"{FORMAT_VERSION}: export the model again with this code")
    missing = [k for k in _REQUIRED if k not in meta]
    graphs, norm = meta.get("graphs"), meta.get("normalisation")
    if not isinstance(graphs, dict) or not {"encoder", "latent", "render"} <= set(graphs):
        missing.append("graphs.encoder/latent/render")
    if not isinstance(norm, dict) or not {"inp_sub", "inp_div", "gt_sub", "gt_div"} <= set(norm):
        missing.append("normalisation.inp_sub/inp_div/gt_sub/gt_div")
    if missing:
        raise UserError(f"{meta_path} lacks {', '.join(dict.fromkeys(missing))}: export the model again")
    return meta


class OnnxUpscaler:
    """The exported graphs of one model (a folder written by ``scripts/export_onnx.py``).

    ``threads``: onnxruntime's intra-op threads (default: its own choice, all cores).
    ``chunk``: queries per render call (default: the folder's ``model.json``).
    """

    def __init__(self, folder: str | os.PathLike, threads: int | None = None, chunk: int | None = None) -> None:
        folder = Path(folder)
        meta = read_meta(folder)
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("the ONNX runner needs onnxruntime: pip install -r requirements-export.txt") from None
        self.meta = meta
        self.chunk = int(chunk or meta["chunk"])
        if self.chunk < 1:
            raise UserError("the render chunk must be a positive number of queries")
        self.sessions = {}
        for stage in ("encoder", "latent", "render"):
            path = folder / str(meta["graphs"][stage])
            if not path.is_file():
                raise UserError(f"{folder} is missing {path.name} (export the model again)")
            opts = _session_options(ort, threads, arena=stage == "render")
            try:
                self.sessions[stage] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime raises its own exception types for bad files
                msg = " ".join(str(e).split())[:200]
                raise UserError(f"cannot load {path}: {msg}") from None
        self._check_graphs(folder)
        norm = meta["normalisation"]
        self._inp = (np.asarray(norm["inp_sub"], np.float32), np.asarray(norm["inp_div"], np.float32))
        self._gt = (np.asarray(norm["gt_sub"], np.float32), np.asarray(norm["gt_div"], np.float32))

    def _check_graphs(self, folder: Path) -> None:
        """The three graphs take and give what model.json says (graphs of one export, not mixed)."""
        tables, latent_out = list(self.meta["render_tables"]), list(self.meta["latent_outputs"])
        if not tables or not set(tables) <= set(latent_out):
            raise UserError(f"{folder}/model.json: render_tables {tables} must be among latent_outputs "
                            f"{latent_out}: export the model again")
        expected = {"encoder": (["image"], ["feat"]),
                    "latent": (["feat", "image", "cell"], latent_out),
                    "render": (["image", "coord", "cell", *tables], ["rgb"])}
        for stage, (inputs, outputs) in expected.items():
            sess = self.sessions[stage]
            got = ([i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()])
            if got != (inputs, outputs):
                raise UserError(f"{folder}: {stage}.onnx does not belong with this model.json (inputs {got[0]}, "
                                f"outputs {got[1]}; expected {inputs}, {outputs}): export the model again")

    # -- the three stages -------------------------------------------------------------------
    def encode(self, image: np.ndarray) -> np.ndarray:
        """Normalised (1, 3, h, w) -> features (1, C, h, w)."""
        return self.sessions["encoder"].run(None, {"image": image})[0]

    def latent(self, feat: np.ndarray, image: np.ndarray, cell: np.ndarray) -> dict[str, np.ndarray]:
        """Per-cell tables of the whole LR grid, computed on row bands; ``cell`` (1, 1, 2)."""
        sess, meta = self.sessions["latent"], self.meta
        _, _, h, w = feat.shape
        band = max(1, int(meta["latent_band_cells"]) // w)
        halo = int(meta["halo"])
        wanted = list(meta["render_tables"])  # among the graph's outputs (checked when loading)
        tables: dict[str, np.ndarray] = {}
        for r0 in range(0, h, band):
            r1 = min(h, r0 + band)
            a0, a1 = max(0, r0 - halo), min(h, r1 + halo)
            outs = sess.run(wanted, {"feat": np.ascontiguousarray(feat[:, :, a0:a1]), "image": image, "cell": cell})
            for name, part in zip(wanted, outs, strict=True):
                axis = 2 if name == "mods" else 1  # (depth, 1, cells, 2hd) / (1, cells, C)
                if name not in tables:
                    shape = list(part.shape)
                    shape[axis] = h * w
                    tables[name] = np.empty(shape, dtype=part.dtype)
                keep = [slice(None)] * part.ndim
                keep[axis] = slice((r0 - a0) * w, (r1 - a0) * w)
                dest = [slice(None)] * part.ndim
                dest[axis] = slice(r0 * w, r1 * w)
                tables[name][tuple(dest)] = part[tuple(keep)]
        return tables

    def render(self, image: np.ndarray, tables: dict[str, np.ndarray], coord: np.ndarray,
               cell: np.ndarray) -> np.ndarray:
        """One chunk of queries (1, q, 2) -> RGB (1, q, 3) in the normalised space."""
        feeds = {"image": image, "coord": coord, "cell": cell}
        feeds.update({k: tables[k] for k in self.meta["render_tables"]})
        return self.sessions["render"].run(None, feeds)[0]

    # -- composition ------------------------------------------------------------------------
    def normalise(self, x: np.ndarray) -> np.ndarray:
        sub, div = self._inp
        return ((x - sub.reshape(1, -1, 1, 1)) / div.reshape(1, -1, 1, 1)).astype(np.float32)

    def predict(self, image: np.ndarray, coord: np.ndarray, cell: np.ndarray) -> np.ndarray:
        """The model's forward in its normalised space: image (1, 3, h, w), queries (1, Q, 2)
        -> (1, Q, 3), rendered in chunks of ``chunk`` queries (equal sizes, as the PyTorch path).
        The latent sees the first query's cell (all queries of an image share one)."""
        image = np.ascontiguousarray(image, dtype=np.float32)
        tables = self.latent(self.encode(image), image, np.ascontiguousarray(cell[:, :1], dtype=np.float32))
        q = coord.shape[1]
        n_chunks = max(1, -(-q // self.chunk))
        size = -(-q // n_chunks)
        out = np.empty((1, q, 3), dtype=np.float32)
        for s in range(0, q, size):
            out[:, s:s + size] = self.render(image, tables, np.ascontiguousarray(coord[:, s:s + size], dtype=np.float32),
                                             np.ascontiguousarray(cell[:, s:s + size], dtype=np.float32))
        return out

    def upsample(self, img: np.ndarray, size: tuple[int, int],
                 progress: Callable[[int], None] | None = None) -> np.ndarray:
        """``img`` (3, h, w) float32 in [0, 1] -> (3, H, W) float32 in [0, 1] for ``size`` = (H, W)."""
        out = np.empty((3, int(size[0]), int(size[1])), dtype=np.float32)
        for r0, rgb in self.upsample_bands(img, size):
            out[:, r0:r0 + rgb.shape[1]] = rgb
            if progress is not None:
                progress(rgb.shape[1])
        return out

    def upsample_bands(self, img: np.ndarray, size: tuple[int, int]) -> Iterator[tuple[int, np.ndarray]]:
        """:meth:`upsample` as bands of whole rows from top to bottom: (first row, (3, r, W)), so
        that a caller writing them away (:func:`upscale_file`) never holds the output image."""
        if not (isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[0] == 3
                and np.issubdtype(img.dtype, np.floating)):
            got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
            raise UserError(f"upsample takes a (3, h, w) float image in [0, 1], got {got} "
                            "(utils.images.array_to_float converts an (h, w, 3) uint8 array)")
        _, h, w = img.shape
        if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in size):
            raise UserError(f"the output size (H, W) must be two whole numbers >= 1, got {tuple(size)}")
        return self._bands(img, int(size[0]), int(size[1]))  # checked now, computed when iterated

    def _bands(self, img: np.ndarray, H: int, W: int) -> Iterator[tuple[int, np.ndarray]]:
        _, h, w = img.shape
        scale_hw = (H / h, W / w)
        cell = clipped_cell((H, W), scale_hw, float(self.meta["scale_max"]))
        image = np.ascontiguousarray(self.normalise(img[None].astype(np.float32, copy=False)))
        tables = self.latent(self.encode(image), image, cell.reshape(1, 1, 2))
        sub, div = self._gt
        rows_y, cols_x = axis_coords(H), axis_coords(W)
        band = max(1, self.chunk // W)
        for r0 in range(0, H, band):
            r1 = min(H, r0 + band)
            n = (r1 - r0) * W
            coord = np.empty((1, n, 2), dtype=np.float32)
            coord[0, :, 0] = np.repeat(rows_y[r0:r1], W)
            coord[0, :, 1] = np.tile(cols_x, r1 - r0)
            rgb = self.render(image, tables, coord, np.broadcast_to(cell, (1, n, 2)).copy())[0]
            rgb = rgb * div + sub  # back to [0, 1] (per channel)
            yield r0, np.clip(rgb, 0, 1).reshape(r1 - r0, W, 3).transpose(2, 0, 1)


def upscale_file(model: OnnxUpscaler, src, dst: str | os.PathLike,
                 size: tuple[int, int] | Callable[[int, int], tuple[int, int]],
                 progress: Callable[[int], None] | None = None) -> None:
    """Read ``src`` (a file or a PIL image), upscale to ``size`` = (H, W) (or ``size(h, w)`` -> (H, W))
    and write ``dst`` band by band (a PNG is never held in memory: :func:`utils.images.write_bands`).
    Grayscale and alpha are handled as by ``models.inference.upscale_file``, with the same numpy
    helpers: the colour hidden under fully transparent pixels is filled from the visible ones first
    (:func:`utils.images.fill_transparent`), grayscale sources give grayscale and the alpha channel
    is upscaled with Pillow's bicubic filter."""
    from utils import images

    if isinstance(src, (str, os.PathLike)) and Path(dst).exists() and Path(dst).resolve() == Path(src).resolve():
        raise UserError(f"the output {os.fspath(dst)} is the input image: choose another output file")
    arr, alpha, gray = images.open_array(src)  # (h, w, 3) uint8, or float32 in [0, 1] for 16-bit files
    img = images.array_to_float(arr)
    if callable(size):
        size = size(arr.shape[0], arr.shape[1])
    if alpha is not None:
        img = images.fill_transparent(img, alpha)
    bands = model.upsample_bands(img, size)  # the image and the size are checked before the file is opened
    images.write_bands(dst, size, bands, alpha, gray, progress=progress)
