"""Base class of the LIIF-family models: encoder -> per-LR-cell latent -> per-query render.

Every decoder splits its work into three stages that the benchmarks time separately:

* :meth:`encode` — the encoder on the (normalised) LR image, once;
* :meth:`latent` — per-LR-cell work (feature unfolding, LTE projections, LMF's latent MLP and
  the folding of modulations), once, independent of the number of queries;
* :meth:`render` — per-query work for one chunk of queries, through the shared query engine.

No per-call state is kept on the module: the latent is returned and passed along explicitly.
This module knows nothing of CMSR: multi-scale rendering (:mod:`models.cmsr`) sits above it
and uses :meth:`prepare`, :meth:`query`, :meth:`decode` and :meth:`chunk_size`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn as nn

from . import query as Q
from utils.cli import PRECISIONS
from utils.profile import phase

from .encoders.base import Encoder


@dataclass
class Latent:
    """Per-LR-cell state of one forward pass."""

    inp: torch.Tensor                       # (B, 3, h, w) normalised LR input
    rows: torch.Tensor | None = None        # (B, h*w, C) per-cell rows gathered per query
    mods: torch.Tensor | None = None        # (depth, B, h*w, 2*hd) folded modulation tables (LMF)
    complexity: torch.Tensor | None = None  # (B, 1, h, w) mean |shift modulation| (CMSR's measure)

    @property
    def hw(self) -> tuple[int, int]:
        return self.inp.shape[-2], self.inp.shape[-1]

    def need_rows(self) -> torch.Tensor:
        return self._need(self.rows, "per-cell rows")

    def need_mods(self) -> torch.Tensor:
        return self._need(self.mods, "modulation tables")

    def need_complexity(self) -> torch.Tensor:
        return self._need(self.complexity, "complexity map (LMF decoders only)")

    @staticmethod
    def _need(value: torch.Tensor | None, what: str) -> torch.Tensor:
        if value is None:  # a latent made by another decoder than the one that reads it
            raise ValueError(f"this latent has no {what}")
        return value

    def as_float(self) -> "Latent":
        """The same latent with every table in fp32 (after a latent stage under autocast)."""
        def f(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.float()
        return Latent(self.inp, f(self.rows), f(self.mods), f(self.complexity))

    def image(self, i: int) -> "Latent":
        """The latent of image ``i`` of the batch."""
        return Latent(self.inp[i:i + 1], None if self.rows is None else self.rows[i:i + 1],
                      None if self.mods is None else self.mods[:, i:i + 1],
                      None if self.complexity is None else self.complexity[i:i + 1])


class ImplicitDecoder(nn.Module):
    """Common forward/decoding logic; subclasses implement ``latent`` and ``render``."""

    residual = False          # add the bilinear LR residual (LTE, LM-LTE)
    default_bsize = Q.DEFAULT_BSIZE

    def __init__(self, encoder_spec: Mapping[str, Any]) -> None:
        super().__init__()
        from .registry import make  # late import: the registry module imports nothing from here

        self.encoder = make(encoder_spec, kind=Encoder)

    #: "fp32" (default) or "bf16"; see :func:`set_precision`.
    precision = "fp32"

    # -- stages ---------------------------------------------------------------------------
    def encode(self, inp: torch.Tensor) -> torch.Tensor:
        if self.precision == "bf16" and not _autocast_on(inp.device.type):
            # channels-last: oneDNN's bf16 convolutions are fastest in NHWC (measured in
            # docs/gpu.md: autocast alone gains little on the CPU, with NHWC ~2-3x)
            with torch.autocast(inp.device.type, dtype=torch.bfloat16):
                feat = self.encoder(inp.contiguous(memory_format=torch.channels_last))
            return feat.float().contiguous()
        return self.encoder(inp)

    def latent(self, feat: torch.Tensor, inp: torch.Tensor, cell: torch.Tensor) -> Latent:
        raise NotImplementedError

    def render(self, lat: Latent, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Per-query prediction (B, q, 3) for one chunk, without the LR residual."""
        raise NotImplementedError

    # -- composition ----------------------------------------------------------------------
    def prepare(self, inp: torch.Tensor, cell: torch.Tensor, feat: torch.Tensor | None = None) -> Latent:
        """Encoder (unless its output ``feat`` is given) and latent stage."""
        if feat is None:
            with phase("encoder"):
                feat = self.encode(inp)
        dev = inp.device.type
        with phase("latent"):
            if self.precision == "bf16" and dev in BF16_LATENT_DEVICES and not _autocast_on(dev):
                # on a GPU the per-cell MLPs are worth bf16 too; their tables go back to fp32 for the render
                with torch.autocast(dev, dtype=torch.bfloat16):
                    lat = self.latent(feat, inp, cell)
                return lat.as_float()
            return self.latent(feat, inp, cell)

    def query(self, lat: Latent, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        out = self.render(lat, coord, cell)
        if self.residual:
            out = out + Q.sample_bilinear(lat.inp, coord)
        return out

    def decode(self, lat: Latent, coord: torch.Tensor, cell: torch.Tensor, bsize: int | None = None) -> torch.Tensor:
        """All queries of ``coord``/``cell`` (B, Q, 2) -> (B, Q, 3), in chunks of ``bsize``."""
        check_queries(lat.inp, coord, cell)
        if self.training and bsize is None:
            return self.query(lat, coord, cell)
        with phase("render"):
            return Q.stream(lambda c, ce: self.query(lat, c, ce), coord, cell, bsize or self.chunk_size(lat))

    def chunk_size(self, lat: Latent) -> int:
        """Queries per chunk when the caller gives no ``bsize``: the decoder's default on the CPU,
        sized from the free memory on CUDA (:func:`query.device_chunk`; bounds per-chunk memory)."""
        return Q.device_chunk(self.default_bsize, lambda: self.query_bytes(lat), lat.inp.device)

    def query_bytes(self, lat: Latent) -> int:
        """Bytes of intermediates per query of :meth:`query` with this latent, measured (not
        estimated) on a small probe on the latent's device: the growth of the peak between two
        probe sizes, so fixed costs cancel. Remembered per decoder, device and latent width."""
        key = (lat.inp.device.type, lat.inp.shape[0], None if lat.rows is None else lat.rows.shape[-1])
        cache = self.__dict__.setdefault("_query_bytes", {})
        if key not in cache:
            from utils.memory import LiveBytes

            peaks = []
            for q in (256, 1280):
                coord, cell = probe_queries(lat, q)
                with torch.no_grad(), LiveBytes() as m:
                    self.query(lat, coord, cell)
                peaks.append(m.peak)
            cache[key] = max(1, (peaks[1] - peaks[0]) // 1024)
        return cache[key]

    def forward(self, inp: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor,
                bsize: int | None = None, *, feat: torch.Tensor | None = None) -> torch.Tensor:
        """``inp`` (B, 3, h, w) normalised; ``coord``/``cell`` (B, Q, 2) -> RGB (B, Q, 3).

        ``feat``: the encoder's output for ``inp`` when the caller already has it (training with
        a frozen, cached encoder); the encoder is then not run."""
        check_queries(inp, coord, cell)
        return self.decode(self.prepare(inp, cell, feat), coord, cell, bsize)


#: devices where precision "bf16" also runs the latent stage in bf16 (on the CPU it is not faster)
BF16_LATENT_DEVICES = ("cuda",)


def _autocast_on(device_type: str) -> bool:
    """Whether autocast is already on (the caller's precision then applies to the encoder)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def set_precision(model: nn.Module, precision: str) -> nn.Module:
    """Run ``model`` in ``precision`` ("fp32", the default, or "bf16"); returns the model.

    bf16: the encoder runs under bfloat16 autocast on a channels-last input (oneDNN's and cuDNN's
    fastest bf16 layout) and returns fp32 features; on CUDA the latent stage (per-LR-cell MLPs)
    runs under bf16 autocast too, its tables returned in fp32. The render (per-query MLP) always
    stays fp32. The PSNR cost and the speed-up are measured in the README and docs/gpu.md.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not isinstance(model, ImplicitDecoder):
        raise ValueError(f"precision {precision}: not an LIIF-family model ({type(model).__name__})")
    model.precision = precision
    return model


def probe_queries(lat: Latent, q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``q`` queries spread over the image (deterministic: no random state is touched), with
    the cell of a x4 output, for probes of a latent."""
    b = lat.inp.shape[0]
    h, w = lat.hw
    t = torch.linspace(-0.999, 0.999, q, device=lat.inp.device)
    coord = torch.stack([t, t.flip(0)], dim=-1).unsqueeze(0).expand(b, q, 2)
    cell = torch.tensor([2 / (4 * h), 2 / (4 * w)], device=lat.inp.device).expand(b, q, 2)
    return coord, cell


def check_queries(inp: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor) -> None:
    if inp.dim() != 4:
        raise ValueError(f"inp must be (B, C, h, w), got shape {tuple(inp.shape)}")
    if coord.dim() != 3 or coord.shape[-1] != 2 or coord.shape[0] != inp.shape[0]:
        raise ValueError(f"coord must be (B, Q, 2) with B = {inp.shape[0]}, got {tuple(coord.shape)}")
    if cell.shape != coord.shape:
        raise ValueError(f"cell must have the shape of coord {tuple(coord.shape)}, got {tuple(cell.shape)}")


def latent_cell(cell: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The cell that LMF's latent MLP sees, per image: (B, 1, 2) in LR-cell units.

    The official code reads the cells of the first h*w queries as per-LR-cell cells; the
    queries of one image share one cell, so we use the first query's cell for the whole image
    (same numbers, no Q >= h*w requirement).
    """
    return Q.rel_cell(cell[:, :1, :], h, w)


def unfold3x3(feat: torch.Tensor) -> torch.Tensor:
    """3x3 zero-padded neighbourhood of every cell, channel-major (c*9 + k): (B, 9C, h, w)."""
    b, c, h, w = feat.shape
    return torch.nn.functional.unfold(feat, 3, padding=1).view(b, c * 9, h, w)


def conv_linear(feat: torch.Tensor, linear: torch.nn.Linear, unfold: bool,
                extra: torch.Tensor | None = None) -> torch.Tensor:
    """``linear`` applied to every cell's [3x3-unfolded feature, extra] -> (B, h*w, out).

    A Linear over channel-major 3x3 unfolded features *is* a 3x3 convolution with the weight
    viewed as (out, C, 3, 3); running it as one is several times faster than unfold + matmul
    and never materialises the 9x larger unfolded map. ``extra`` (B, 1, e) are per-image
    inputs appended after the feature (LMF's relative cell): they fold into a per-image bias.
    """
    c = feat.shape[1]
    k = 3 if unfold else 1
    weight = linear.weight[:, : c * k * k].reshape(-1, c, k, k)
    out = as_table(torch.nn.functional.conv2d(feat, weight, padding=k // 2))
    bias: torch.Tensor = linear.bias
    if extra is not None:
        bias = bias + extra @ linear.weight[:, c * k * k:].t()
    return out + bias


def as_table(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) map -> (B, h*w, C) per-cell rows."""
    return x.flatten(2).transpose(1, 2).contiguous()
