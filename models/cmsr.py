"""CMSR — Controllable Multi-Scale Rendering (LMF paper, Sec. 3.4).

LR cells whose modulations are small (low mean |shift modulation| = "simple" content) are
rendered on a coarser grid and bilinearly upsampled; only complex cells are rendered at the
target resolution. A Scale2Mod (S2M) table says, per target scale, up to which modulation mean
each decode scale is accurate enough (built offline for an MSE threshold).

Our version follows the official selection and merge rules exactly (so official tables give the
official outputs) but always returns the target size and handles batches.

This module sits above the decoders: it uses only their interface (``prepare``, ``query``,
``decode``, ``chunk_size`` and the latent's ``complexity``), and :func:`render` /
:func:`choose` are the one place that decides whether CMSR renders a call. Building tables is
in :mod:`models.cmsr_calibration`.
"""
from __future__ import annotations

import math
import os
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from utils.config import read_yaml
from utils.coords import axis_coords, make_coord
from utils.errors import UserError
from utils.profile import phase

from . import fast_render
from . import query as Q

from .decoder import check_queries

if TYPE_CHECKING:  # pragma: no cover
    from .decoder import ImplicitDecoder, Latent

# CMSR acts only beyond the training range (scales up to x4), and the decode levels' cells are
# clipped by max(d / TRAINING_SCALE, 1) as inference clips the target's.
TRAINING_SCALE = 4


def _number(x: Any, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise UserError(f"Scale2Mod table: {what} must be a finite number, got {x!r}")
    return float(x)


CHECKPOINT_KEY = "checkpoint"  # the table's record of the weights it was built for


class Scale2Mod:
    """Target scale -> {decode scale: upper bound on the modulation mean}, keys ascending.

    The thresholds are only meaningful for the weights they were calibrated on; a table made by
    ``scripts/init_cmsr.py`` records them as ``checkpoint: <sha256 of the state dict>``
    (:func:`utils.checkpoint.state_dict_digest`), and CMSR refuses to use it with other weights
    unless told to (``CMSR(..., allow_other_checkpoint=True)``). Tables without the record (the
    official ones) cannot be checked and are used as they are.
    """

    def __init__(self, rows: Mapping[Any, Mapping[Any, Any]], checkpoint: str | None = None,
                 source: str | None = None) -> None:
        if not isinstance(rows, Mapping) or not rows:
            raise UserError("Scale2Mod table must be a non-empty mapping target scale -> {decode scale: threshold}")
        rows = dict(rows)
        recorded = rows.pop(CHECKPOINT_KEY, None)
        if recorded is not None and not (isinstance(recorded, str) and len(recorded) == 64):
            raise UserError(f"Scale2Mod table: {CHECKPOINT_KEY!r} must be the 64-digit sha256 of a state dict")
        self.checkpoint = checkpoint or recorded
        self.source = source
        if not rows:
            raise UserError("Scale2Mod table has no rows (target scale -> {decode scale: threshold})")
        parsed: dict[float, dict[float, float]] = {}
        for target, row in rows.items():
            t = _number(target, "a target scale")
            if not isinstance(row, Mapping) or not row:
                raise UserError(f"Scale2Mod table: row {target!r} must be a non-empty mapping decode scale -> threshold")
            entries = {}
            for d, thr in row.items():
                d_ = _number(d, f"decode scale in row {target!r}")
                if d_ <= 0:
                    raise UserError(f"Scale2Mod table: decode scale {d!r} in row {target!r} must be > 0")
                entries[d_] = _number(thr, f"threshold of decode scale {d!r} in row {target!r}")
            parsed[t] = dict(sorted(entries.items()))
        self.rows = dict(sorted(parsed.items()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Scale2Mod":
        data = read_yaml(path, "Scale2Mod table")
        try:
            return cls(data, source=os.fspath(path))
        except UserError as e:  # say which file: the message alone does not
            raise UserError(f"{os.fspath(path)}: {e}") from None

    def to_dict(self) -> dict[float, dict[float, float]]:
        """The rows (without the checkpoint record)."""
        return {k: dict(v) for k, v in self.rows.items()}

    def row_for(self, scale: float) -> dict[float, float]:
        """The first row whose target is >= scale, else the largest (official rule)."""
        for target, row in self.rows.items():
            if target >= scale:
                return row
        return row

    def levels(self, scale: float) -> tuple[list[float], list[float]]:
        """Decode scales d_0 < ... < d_{L-1} and bounds [0, t(d_0), ..., t(d_{L-1})]."""
        decode, bounds = [], [0.0]
        for d, t in self.row_for(scale).items():
            if d >= scale:
                break
            decode.append(d)
            bounds.append(t)
        if bounds[-1] < 1:
            decode.append(scale)
            bounds.append(1.0)
        return decode, bounds


def level_cells(n: int, q: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The LR cell (long, (q,)) of each of the q points along one axis of a decode level's grid.

    A level's points are the LR cell centres bilinearly resized to q points (the official
    rule): point i lies at source position s = (i + 1/2) n/q - 1/2 between the centres of cells
    floor(s) and floor(s) + 1, so its nearest cell is floor(s + 1/2) = floor((2i + 1) n / (2q)).
    Computed here in integers, so the cell, and with it the modulation mean that picks the
    point's level, cannot depend on the last bits of a device's float arithmetic (the float
    path, resize then nearest look-up, picks another cell for some points of large images, and
    either cell at exact ties). An exact tie (s + 1/2 an integer: only when n/q is not the
    inverse of an integer) goes to the lower cell: ceil(x) - 1 is floor(x) except at integers.
    """
    i = torch.arange(q, device=device, dtype=torch.int64)
    return ((2 * i + 1) * n - 1) // (2 * q)


def level_grid(h: int, w: int, qh: int, qw: int) -> torch.Tensor:
    """The coordinates of a decode level's qh x qw points on an h x w LR grid as two planes
    (1, 2, qh, qw): x (column) then y (row), ``grid_sample``'s order; computed on the CPU whatever
    the device (the caller moves them).

    The official rule: the LR cell centres bilinearly resized. Many of these points lie exactly
    on LR centres (every point of a level at the LR size, lattices at odd levels, the clamped
    border band), and there the official local-ensemble weights are singular: all four areas are
    0, so each neighbour gets 1/4, while a point one ulp away gives its own cell nearly all the
    weight, a colour change of up to ~0.25. Whether a resized point is exactly a centre depends
    on the rounding of the resize (a GPU's fused multiply-adds round otherwise than the CPU), so
    the grid is made by the CPU's resize on every device: the official outputs, the same bits.
    (The resize treats channels alike, so resizing (x, y) gives the bits of (y, x) swapped. The
    grid is not separable to the bit: a row's x values vary in the last bit from row to row.)
    """
    centres = make_coord((h, w), flatten=False).flip(-1).permute(2, 0, 1).unsqueeze(0)
    return F.interpolate(centres, size=(qh, qw), mode="bilinear", align_corners=False, antialias=False)


@dataclass
class LevelPoints:
    """The points a level renders, from its LR cells' selection without a full-size mask:
    ``mask`` (h, qw): the selection along the level's columns, row ``lr_row[r]`` (qh,) being level
    row r's; ``first`` (qh,): the rank of level row r's first rendered point (row-major order);
    ``count``: how many points are rendered."""

    mask: torch.Tensor
    lr_row: torch.Tensor
    first: torch.Tensor
    count: int

    def index(self) -> torch.Tensor:
        """The rendered points' flat indices (N,), row-major (through the full-size mask)."""
        return torch.nonzero(self.mask[self.lr_row].view(-1)).view(-1)


def level_points(cells: torch.Tensor, qh: int, qw: int) -> LevelPoints:
    """The rendered points of a qh x qw level whose LR cells ``cells`` (h, w, bool) are selected:
    level rows with the same LR row (``level_cells``) select the same columns."""
    return levels_points([(cells, qh, qw)])[0]


def levels_points(levels: Sequence[tuple[torch.Tensor, int, int]]) -> list[LevelPoints]:
    """:func:`level_points` of several levels (cells, qh, qw), their counts read together: one
    wait for the device instead of one per level."""
    parts = []
    for cells, qh, qw in levels:
        h, w = cells.shape
        lr_row = level_cells(h, qh, cells.device)
        mask = cells[:, level_cells(w, qw, cells.device)]
        n_row = mask.sum(1)[lr_row]
        ends = torch.cumsum(n_row, 0)
        parts.append((mask, lr_row, ends - n_row, ends[-1]))
    counts = torch.stack([p[3] for p in parts]).tolist() if parts else []
    return [LevelPoints(mask, lr_row, first, int(n)) for (mask, lr_row, first, _), n in zip(parts, counts, strict=True)]


def selects(mu: torch.Tensor, i: int, first: int, last: int, bounds: list[float]) -> torch.Tensor:
    """Which modulation means ``mu`` level ``i`` renders (the official rule, kept so that
    official tables give official outputs):
    the finest level takes ``mu >= T_i`` (checked first, so a single level takes everything),
    the coarsest ``mu <= T_{i+1}``, the others ``T_i <= mu <= T_{i+1}`` (as |mu - mid| <= r)."""
    if i == last:
        return mu >= bounds[i]
    if i == first:
        return mu <= bounds[i + 1]
    lo, hi = bounds[i], bounds[i + 1]
    return (mu - (hi + lo) / 2).abs() <= (hi - lo) / 2


@dataclass
class CMSR:
    """CMSR settings: the S2M table (and the MSE threshold it was built for, informative)."""

    table: Scale2Mod
    mse_threshold: float | None = None
    allow_other_checkpoint: bool = False
    # the weights last found to match the table: (weak reference, data pointer, version) each
    _matched: list | None = field(default=None, init=False, repr=False, compare=False)

    def check_model(self, model: "ImplicitDecoder") -> None:
        """Refuse a table recorded for other weights than ``model``'s (unless allowed).

        The weights' digest (hashing every value, ~5 ms for the bundled model) is skipped when
        they are the very tensors last found to match, unchanged (same objects, storage and
        in-place version counters)."""
        if self.table.checkpoint is None or self.allow_other_checkpoint:
            return
        from utils.checkpoint import state_dict_digest

        tensors = [t for m in model.modules() for d in (m._parameters, m._buffers) for t in d.values() if t is not None]
        seen = self._matched
        if seen is not None and len(seen) == len(tensors) and all(
                ref() is t and ptr == t.data_ptr() and ver == t._version for (ref, ptr, ver), t in zip(seen, tensors, strict=True)):
            return
        digest = state_dict_digest(model.state_dict())
        if digest == self.table.checkpoint:
            self._matched = [(weakref.ref(t), t.data_ptr(), t._version) for t in tensors]
        else:
            name = self.table.source or "the Scale2Mod table"
            raise UserError(f"{name} was built for other weights (state dict sha256 {self.table.checkpoint[:12]}..., "
                            f"this model {digest[:12]}...): build one for this model with scripts/init_cmsr.py, "
                            "or allow it explicitly (allow_other_checkpoint)")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | str | os.PathLike | "CMSR") -> "CMSR":
        """The official ``cmsr_spec``: {'mse_threshold', 's2m_tables': {...}, 'log'?}, or a path."""
        if isinstance(spec, CMSR):
            return spec
        if isinstance(spec, (str, os.PathLike)):
            return cls(Scale2Mod.load(spec))
        if not isinstance(spec, Mapping):
            raise UserError(f"cmsr_spec must be a mapping, got {type(spec).__name__}")
        unknown = set(spec) - {"mse_threshold", "s2m_tables", "log", "updating_scale", "allow_other_checkpoint"}
        if unknown:
            raise UserError(f"cmsr_spec: unknown key(s) {sorted(unknown)}; allowed: mse_threshold, s2m_tables, log, "
                            "allow_other_checkpoint")
        if "updating_scale" in spec:
            raise UserError("cmsr_spec: 'updating_scale' (table generation inside the model) is not "
                            "supported; build tables with the table-generation script")
        if "s2m_tables" not in spec:
            raise UserError("cmsr_spec: missing 's2m_tables'")
        tables = spec["s2m_tables"]
        table = tables if isinstance(tables, Scale2Mod) else (
            Scale2Mod.load(tables) if isinstance(tables, (str, os.PathLike)) else Scale2Mod(tables))
        thr = spec.get("mse_threshold")
        return cls(table, None if thr is None else float(thr), bool(spec.get("allow_other_checkpoint", False)))

    # ------------------------------------------------------------------------------------
    def decode(self, model: "ImplicitDecoder", lat: "Latent", coord: torch.Tensor, bsize: int,
               stats: dict | None = None) -> torch.Tensor:
        """Render (B, Q, 3) at ``coord`` with multi-scale rendering, image by image.

        ``stats`` receives the fraction of render queries done / skipped relative to rendering
        all Q queries (the official log's "valid mask" divides by (S/d)² instead, which is not
        a cost; we report plain query counts).
        """
        self.check_model(model)
        outs, rendered = [], 0.0
        for i in range(coord.shape[0]):
            with phase("cmsr bookkeeping"):  # the level renders inside it count as "render"
                levels = self._levels_one(model, lat.image(i), coord.shape[1], bsize)
                outs.append(levels.sample(coord[i:i + 1]))
            rendered += levels.cost
        _record(stats, rendered, coord.shape[0] * coord.shape[1])
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)  # one image: no full-size copy

    def decode_image(self, model: "ImplicitDecoder", lat: "Latent", size: tuple[int, int], bsize: int,
                     stats: dict | None = None, sub: Sequence[float] = (0.5,),
                     div: Sequence[float] = (0.5,)) -> torch.Tensor:
        """:meth:`decode` at every pixel centre of an (H, W) = ``size`` image (``make_coord``'s
        grid), as the image (B, 3, H, W) ``clamp(rgb * div + sub, 0, 1)`` (per-channel ``sub``,
        ``div``: the inverse of the network's normalisation). The same bits as :meth:`decode`
        followed by those operations; on fp32 CPU tensors with the kernel the final resampling
        writes the image directly (row and column set-ups, no (H*W, 2) coordinate grid, no
        (H*W, 3) intermediate)."""
        self.check_model(model)
        H, W = int(size[0]), int(size[1])
        b, dev = lat.inp.shape[0], lat.inp.device
        out = torch.empty(b, 3, H, W, dtype=lat.inp.dtype, device=dev)
        rendered = 0.0
        for i in range(b):
            with phase("cmsr bookkeeping"):  # the level renders inside it count as "render"
                levels = self._levels_one(model, lat.image(i), H * W, bsize)
                levels.write_image(out[i], H, W, sub, div)
            rendered += levels.cost
        _record(stats, rendered, b * H * W)
        return out

    def _levels_one(self, model: "ImplicitDecoder", lat: "Latent", q: int, bsize: int) -> "_Levels":
        """One image's levels for ``q`` target queries, coarse to fine: each level renders the
        points whose LR cell it selects and takes every other point from the coarser result,
        bilinearly resampled. Returns the finest level, to be resampled onto the target."""
        h, w = lat.hw
        dev = lat.inp.device
        scale = math.sqrt(q / h / w)
        decode_scales, bounds = self.table.levels(scale)
        n_levels = len(decode_scales)
        mu = lat.need_complexity().view(h, w)
        active = [i for i in range(n_levels) if decode_scales[i] >= 1]
        first, last = (active[0], active[-1]) if active else (0, -1)
        cost = 0.0
        ret = lat.inp  # (1, 3, h, w): start from the LR image
        done = None  # (level, qh, qw) of the finest level rendered
        px = fast_render.cmsr_pixels(ret) if _fused(ret) else None  # the kernels' layout (h, w, 4)
        # a level point is rendered when its LR cell is selected: the choice is made on the LR
        # grid and spread to the level's points by their cells (integers, see level_cells)
        shapes = [(int(h * decode_scales[i]), int(w * decode_scales[i])) for i in active]
        sels = levels_points([(selects(mu, i, first, last, bounds), qh, qw) for i, (qh, qw) in zip(active, shapes, strict=True)])
        cost += sum(sel.count for sel in sels)
        # (level, qh, qw, its points) of the levels that render some
        levels = [(i, qh, qw, sel) for i, (qh, qw), sel in zip(active, shapes, sels, strict=True) if sel.count > 0]
        # the kernel path writes the levels alternately into two buffers, the finest level's size
        # and the next one's: fewer fresh pages to fault in than a new image per level
        sizes = sorted((qh * qw * 4 for _, qh, qw, _ in levels), reverse=True)
        buffers = [torch.empty(n, dtype=torch.float32) for n in sizes[:2]] if px is not None else []
        for k, (i, qh, qw, sel) in enumerate(levels):
            d = decode_scales[i]
            grid = level_grid(h, w, qh, qw).to(dev)  # (1, 2, qh, qw): x plane, y plane
            if px is not None:
                pts = fast_render.cmsr_points(grid, sel.lr_row, sel.mask, sel.first, sel.count)
            else:
                idx = sel.index()  # each point once: the merge writes no index twice
                planes = grid.view(2, qh * qw)
                pts = torch.stack([planes[1, idx], planes[0, idx]], dim=-1).unsqueeze(0)  # (row, col)
            cell = torch.tensor([[[2 / qh, 2 / qw]]], dtype=pts.dtype, device=dev) * max(d / TRAINING_SCALE, 1)
            with phase("render"):
                pred = Q.stream(lambda c, ce: model.query(lat, c, ce), pts, cell.expand_as(pts), bsize)  # a view: one cell
            del pts
            # the coarser result resampled onto this level, the rendered points written over it
            if px is not None:
                target = buffers[(len(levels) - 1 - k) % 2]  # the finest level in the larger buffer
                px = fast_render.cmsr_merge(px, grid, sel.lr_row, sel.mask, sel.first, pred[0], out=target)
            else:
                up = F.grid_sample(ret, grid.permute(0, 2, 3, 1), mode="bilinear", padding_mode="border",
                                   align_corners=False)
                flat = up.view(1, 3, qh * qw)
                flat[:, :, idx] = pred.to(flat.dtype).transpose(1, 2)
                ret = flat.view(1, 3, qh, qw)
            del grid, pred
            done = (i, qh, qw)
        # is the finest level the target grid itself?
        exact = done is not None and done[0] == n_levels - 1 and decode_scales[-1] >= scale and done[1] * done[2] == q
        return _Levels(ret, px, exact, cost)


@dataclass
class _Levels:
    """One image's finest CMSR level: ``img`` (1, 3, qh, qw) on the PyTorch path, or ``px`` (qh,
    qw, 4) in the kernels' layout; ``exact``: it is the target grid itself (no resampling);
    ``cost``: the points rendered."""

    img: torch.Tensor
    px: torch.Tensor | None
    exact: bool
    cost: float

    def sample(self, coord: torch.Tensor) -> torch.Tensor:
        """The level at the target coordinates ``coord`` (1, Q, 2) -> (1, Q, 3)."""
        q = coord.shape[1]
        if self.exact:
            return self.px.view(1, q, 4)[..., :3] if self.px is not None else self.img.view(1, 3, q).transpose(1, 2)
        if self.px is not None:
            return fast_render.cmsr_sample(self.px, coord)
        return Q.sample_bilinear(self.img, coord)

    def write_image(self, out: torch.Tensor, H: int, W: int, sub: Sequence[float], div: Sequence[float]) -> None:
        """``clamp(sample * div + sub, 0, 1)`` at ``make_coord((H, W))`` written to ``out`` (3, H, W)."""
        dev = out.device
        mul = torch.tensor(list(div), dtype=torch.float32).expand(3)
        add = torch.tensor(list(sub), dtype=torch.float32).expand(3)
        if self.px is not None and not self.exact and out.dtype == torch.float32 and out.is_contiguous():
            fast_render.cmsr_sample_planes(self.px, axis_coords(H), axis_coords(W), mul, add, out)
            return
        rgb = self.sample(make_coord((H, W), device=dev).unsqueeze(0))[0]
        rgb = rgb * mul.to(dev, rgb.dtype) + add.to(dev, rgb.dtype)  # as models.inference.denormalise
        out.copy_(rgb.clamp_(0, 1).view(H, W, 3).permute(2, 0, 1))


def _record(stats: dict | None, rendered: float, q_total: int) -> None:
    """The rendered / skipped fractions of ``q_total`` queries into ``stats``."""
    if stats is not None:
        stats["cmsr_rendered_fraction"] = rendered / q_total
        stats["cmsr_skipped_fraction"] = 1.0 - rendered / q_total


def _fused(img: torch.Tensor) -> bool:
    """Whether the level merges and the final resampling run in the fused CPU kernel
    (:mod:`models.fast_render`; the same bits as ``grid_sample`` on AVX2/AVX-512 builds of
    PyTorch): fp32 CPU images, kernel built and not turned off; else the PyTorch path."""
    return (img.device.type == "cpu" and img.dtype == torch.float32 and not fast_render.forced_off()
            and fast_render.library() is not None)


# --- the one decision and the rendering entry point ------------------------------------------
def choose(model: "ImplicitDecoder", lat: "Latent", n_queries: int, cmsr: CMSR | bool | None = None) -> CMSR | None:
    """The CMSR that renders ``n_queries`` queries per image of ``lat``, if any.

    ``cmsr``: None/True = the model's own (its official ``cmsr_spec``), False = off, or a CMSR.
    It acts only in eval mode, for models with modulations (``lat.complexity``), beyond the
    training range (Q > 4² h w, strictly).
    """
    own = getattr(model, "cmsr", None)
    chosen = own if cmsr is None or cmsr is True else (cmsr or None)
    h, w = lat.hw
    if chosen is None or lat.complexity is None or model.training or n_queries <= TRAINING_SCALE ** 2 * h * w:
        return None
    return chosen


def decode(model: "ImplicitDecoder", lat: "Latent", coord: torch.Tensor, cell: torch.Tensor,
           bsize: int | None = None, cmsr: CMSR | bool | None = None, stats: dict | None = None) -> torch.Tensor:
    """``model.decode`` with multi-scale rendering where :func:`choose` says so."""
    check_queries(lat.inp, coord, cell)
    active = choose(model, lat, coord.shape[1], cmsr)
    if active is None:
        return model.decode(lat, coord, cell, bsize)
    return active.decode(model, lat, coord, bsize or model.chunk_size(lat), stats)


def render(model: "ImplicitDecoder", inp: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor,
           bsize: int | None = None, cmsr: CMSR | bool | None = None, stats: dict | None = None,
           feat: torch.Tensor | None = None) -> torch.Tensor:
    """The forward pass (normalised ``inp`` (B, 3, h, w); coord/cell (B, Q, 2) -> (B, Q, 3)) with
    CMSR where it applies; ``stats`` receives the skipped-render fraction; ``feat`` the encoder's
    output when the caller has it."""
    check_queries(inp, coord, cell)
    return decode(model, model.prepare(inp, cell, feat), coord, cell, bsize, cmsr, stats)
