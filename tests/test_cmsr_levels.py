"""CMSR's level choice cannot change with the last bits of a device's arithmetic.

The level a point is rendered at is decided by the modulation mean of its LR cell. That cell used
to come from float arithmetic (the level grid's coordinates, bilinearly resized, then a nearest
look-up), which picks another cell on some points of large images and either cell at exact
ties: on another device, another level. It now comes from the grid sizes in integers
(``models.cmsr.level_cells``). The level grids' coordinates themselves are made by the CPU's
resize on every device (``models.cmsr.level_grid``): many lie exactly on LR centres, where the
official ensemble weights are singular, so their last bit changes the colour. These tests pin
that down on the CPU: the exact rule, the selection unchanged when coordinates move by an ulp,
the golden outputs unchanged when the modulation means do, the GPU's difference reproduced by
a resize rounded otherwise, and the grid made on the CPU under a CUDA stand-in.
"""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import models
from models import cmsr as C
from models import query as Q
from utils.coords import make_cell, make_coord

TINY = Path(__file__).resolve().parent / "fixtures" / "official-tiny"


def _exact_cell(i: int, n: int, q: int) -> int:
    """Nearest of n cells to point i of q (bilinear resize of the centres, align_corners=False),
    by rational arithmetic; an exact tie goes to the lower cell."""
    s = Fraction(2 * i + 1, 2 * q) * n - Fraction(1, 2)  # source position, centres at 0..n-1
    s = max(s, Fraction(0))
    lower = int(s)  # floor, s >= 0
    frac = s - lower
    return lower if frac <= Fraction(1, 2) else min(lower + 1, n - 1)


@pytest.mark.parametrize("n, q", [(1, 1), (1, 7), (5, 5), (12, 18), (12, 30), (7, 17), (16, 96),
                                  (2051, 3076), (2609, 6522), (2989, 7472)])
def test_level_cells_are_the_exact_nearest_cells(n, q):
    got = C.level_cells(n, q).tolist()
    assert got == [_exact_cell(i, n, q) for i in range(q)]


def _float_cells(n: int, q: int) -> torch.Tensor:
    """The former float rule: resize the centres, then look up the nearest cell."""
    centres = make_coord((n, 1), flatten=False).permute(2, 0, 1).unsqueeze(0)
    pts = F.interpolate(centres, size=(q, 1), mode="bilinear", align_corners=False)
    return Q.nearest_cell(pts.permute(0, 2, 3, 1).reshape(1, q, 2), n, 1)[0].view(-1)


def test_the_float_rule_differs_only_where_the_last_bits_decide():
    """Where the float rule is not at a tie and its coordinate is not within float error of a
    border, it agrees with the integer rule (so official outputs are kept); at ties it picks
    either cell, by the rounding of the resize."""
    for n, q in [(12, 72), (16, 96), (12, 30), (13, 19), (200, 300)]:
        exact, old = C.level_cells(n, q), _float_cells(n, q)
        i = torch.arange(q)
        tie = ((2 * i + 1) * n) % (2 * q) == 0
        assert torch.equal(exact[~tie], old[~tie])
        assert ((exact[tie] - old[tie]).abs() <= 1).all()
    i = torch.arange(30)
    assert (((2 * i + 1) * 12) % 60 == 0).any()  # a 12-cell axis at decode scale 2.5 has ties


def _tiny_case(key: str):
    manifest = json.loads((TINY / "manifest.json").read_text())
    case = next(c for c in manifest["cases"] if c["key"] == key)
    exp = torch.load(TINY / "expected.pt", weights_only=True)
    ckpt = torch.load(TINY / f"{case['model']}.pth", weights_only=True)
    table = yaml.safe_load((TINY / case["cmsr"]["s2m_table_file"]).read_text())
    model = models.load_model(ckpt, cmsr_spec={"mse_threshold": 2e-5, "s2m_tables": table})
    return model, exp["input"], exp[case["coord_key"]], exp[case["cell_key"]], exp[key]


def _tie_table_model():
    """A tiny LM-LIIF whose table renders x8 through decode scale 2.5 (level grids with exact
    ties between cells) with thresholds at the quartiles of its modulation means."""
    model, inp, _, _, _ = _tiny_case("lmliif_cmsr_96x128")
    h, w = inp.shape[-2:]
    cell = make_cell((8 * h, 8 * w)).unsqueeze(0)
    with torch.no_grad():
        mu = model.prepare(inp, cell * 2).need_complexity().flatten()
    q1, q2 = torch.quantile(mu, torch.tensor([0.25, 0.5])).tolist()
    model.cmsr = C.CMSR(C.Scale2Mod({8: {1: q1, 2.5: q2, 8: 1}}))
    return model, inp, make_coord((8 * h, 8 * w)).unsqueeze(0), cell


def _selections(monkeypatch) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    real = C.selects

    def selects(*args, **kwargs):
        seen.append(real(*args, **kwargs).clone())
        return seen[-1]
    monkeypatch.setattr(C, "selects", selects)
    return seen


@pytest.mark.parametrize("direction", [2.0, -2.0])
def test_selection_unchanged_when_level_coordinates_move_by_an_ulp(monkeypatch, direction):
    model, inp, coord, cell = _tie_table_model()
    seen = _selections(monkeypatch)
    with torch.no_grad():
        model(inp, coord, cell)
        base = list(seen)
        seen.clear()
        real = C.level_grid
        monkeypatch.setattr(C, "level_grid", lambda *a: torch.nextafter(real(*a), torch.tensor(direction)))
        model(inp, coord, cell)
    assert len(base) == 3 and 0 < sum(int(m.sum()) for m in base[:2]) < sum(m.numel() for m in base[:2])
    assert all(torch.equal(a, b) for a, b in zip(base, seen, strict=True))


def _resize_rounded_once(h: int, w: int, qh: int, qw: int) -> torch.Tensor:
    """The level grid as a resize with other rounding makes it (float64, then rounded once):
    what a GPU's fused multiply-adds do to the last bit."""
    centres = make_coord((h, w), flatten=False).permute(2, 0, 1).unsqueeze(0).double()
    grid = F.interpolate(centres, size=(qh, qw), mode="bilinear", align_corners=False).float()
    return grid.flip(1)  # (1, 2, qh, qw): x plane, y plane, as level_grid


@pytest.mark.parametrize("key", ["lmliif_cmsr_72x96", "lmliif_cmsr_96x128", "lmliif_cmsr_144x192"])
def test_a_resize_rounded_otherwise_reproduces_the_gpu_difference(monkeypatch, key):
    """The cause of the first GPU run's CMSR difference (0.05-0.08 on these three cases): level
    points exactly on LR centres, where the official ensemble weights are singular, moved by the
    last bit of the resize. Why the grid is made by the CPU's resize on every device."""
    model, inp, coord, cell, ref = _tiny_case(key)
    monkeypatch.setattr(C, "level_grid", _resize_rounded_once)
    with torch.no_grad():
        out = model(inp, coord, cell)
    assert 0.04 < (out - ref).abs().max().item() < 0.1


def test_the_level_grid_is_made_on_the_cpu_on_a_gpu(monkeypatch):
    """On a (stand-in) CUDA device the official golden output is kept and the resize that makes
    the level grids only ever sees CPU tensors."""
    from fake_cuda import FakeCuda

    fake = FakeCuda().install(monkeypatch)
    devices = []
    real = F.interpolate

    def interpolate(x, *args, **kwargs):
        devices.append(x.device.type)
        return real(x, *args, **kwargs)
    monkeypatch.setattr(C.F, "interpolate", interpolate)
    model, inp, coord, cell, ref = _tiny_case("lmliif_cmsr_72x96")
    dev = torch.device("cuda", 0)
    model.to(dev)
    try:
        with torch.no_grad():
            out = model(inp.to(dev), coord.to(dev), cell.to(dev))
        assert out.device.type == "cuda"
        out = out.cpu()
    finally:
        fake.uninstall()
    assert devices and set(devices) == {"cpu"}
    assert (out - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("key", ["lmliif_cmsr_72x96", "lmliif_cmsr_96x128", "lmliif_cmsr_144x192"])
def test_golden_output_unchanged_when_modulation_means_move_by_an_ulp(monkeypatch, key):
    """The golden CMSR cases that differed on CUDA: their modulation means are far (in ulps)
    from every threshold, so an ulp either way keeps every level and the official output."""
    model, inp, coord, cell, ref = _tiny_case(key)
    real_latent = type(model).latent
    for direction in (2.0, -2.0):
        def latent(self, *args, _d=direction, **kwargs):
            lat = real_latent(self, *args, **kwargs)
            lat.complexity = torch.nextafter(lat.complexity, torch.full_like(lat.complexity, _d))
            return lat
        monkeypatch.setattr(type(model), "latent", latent)
        with torch.no_grad():
            out = model(inp, coord, cell)
        assert (out - ref).abs().max().item() <= 1e-4


def test_level_grid_is_the_resized_centres_in_x_y_order():
    h, w, qh, qw = 12, 16, 48, 64
    centres = make_coord((h, w), flatten=False).permute(2, 0, 1).unsqueeze(0)
    rows_cols = F.interpolate(centres, size=(qh, qw), mode="bilinear", align_corners=False)
    assert torch.equal(C.level_grid(h, w, qh, qw), rows_cols.flip(1))


def test_calibration_and_rendering_read_the_same_cells():
    """init_cmsr bins target pixels by the modulation mean of the same integer cells: a target
    grid of H x W points is a level grid."""
    h, H = 12, 96
    centres = make_coord((H,))
    nearest = Q.axis_cell(centres.view(1, -1), h).view(-1)
    assert torch.equal(C.level_cells(h, H), nearest)  # integer scale: no ties, the same cells
