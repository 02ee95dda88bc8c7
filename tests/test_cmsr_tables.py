"""Building Scale2Mod tables (models.cmsr_calibration.calibrate_row, scripts/init_cmsr.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import models
from models.cmsr import CMSR, Scale2Mod
from models.cmsr_calibration import calibrate_row
from utils.coords import make_cell, make_coord

ROOT = Path(__file__).resolve().parents[1]
TINY = {"name": "lmliif", "args": {
    "encoder_spec": {"name": "edsr-baseline", "args": {"no_upsampling": True, "n_resblocks": 1, "n_feats": 8}},
    "imnet_spec": {"name": "lmmlp", "args": {"out_dim": 3, "hidden_dim": 8, "hidden_depth": 3}},
    "hypernet_spec": {"name": "mlp", "args": {"out_dim": 56, "hidden_list": [32]}},
    "mod_input": True}}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.make(TINY).eval()


def test_row_is_monotone_and_ends_with_the_target():
    m = _model()
    lrs = [torch.rand(1, 3, 6, 7) * 2 - 1, torch.rand(1, 3, 5, 5) * 2 - 1]
    row = calibrate_row(m, lrs, 8.0, mse_threshold=1e-3)
    assert list(row) == [1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0]
    values = list(row.values())
    assert values[-1] == 1.0
    assert all(a <= b for a, b in zip(values[:-2], values[1:-1], strict=True))
    assert all(v >= 0 for v in values)


def test_threshold_extremes():
    m = _model()
    lrs = [torch.rand(1, 3, 6, 6) * 2 - 1]
    mu_max = m.prepare(lrs[0], make_cell((48, 48)).unsqueeze(0) * 2).complexity.max().item()
    loose = calibrate_row(m, lrs, 8.0, mse_threshold=1e9)
    assert loose[1.0] >= mu_max  # everything may render on the LR grid
    strict = calibrate_row(m, lrs, 8.0, mse_threshold=-1.0)
    assert all(v == 0.0 for d, v in strict.items() if d < 8)  # nothing may: render all at x8
    # with the strict table CMSR renders every pixel at full resolution
    coord, cell = make_coord((48, 48)).unsqueeze(0), make_cell((48, 48)).unsqueeze(0)
    stats = {}
    with torch.no_grad():
        m(lrs[0], coord, cell, cmsr=CMSR(Scale2Mod({8: strict})), stats=stats)
    assert stats["cmsr_skipped_fraction"] == 0.0


def test_init_cmsr_script_writes_an_official_format_table(tmp_path):
    m = _model()
    ckpt = tmp_path / "m.pth"
    torch.save({"model": {**TINY, "sd": m.state_dict()}}, ckpt)
    data = tmp_path / "hr"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((48, 56, 3)) * 255).astype(np.uint8)).save(data / f"{i}.png")
    out = tmp_path / "table.yaml"
    out.write_text("2: {1: 0.3, 2: 1}\n")  # an existing row for another scale is kept
    r = subprocess.run([sys.executable, "scripts/init_cmsr.py", "--model", str(ckpt), "--data", str(data),
                        "--scales", "6,8", "--mse", "1e-3", "--out", str(out), "--overwrite"],  # rows added to it
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    table = yaml.safe_load(out.read_text())
    assert set(table) == {2, 6, 8, "checkpoint"}
    assert table[8][8] == 1 and table[6][6] == 1
    assert Scale2Mod(table).levels(8.0)[0][0] == 1.0


def _table_for(m: torch.nn.Module | None) -> dict:
    from utils.checkpoint import state_dict_digest

    rows = {8: {1: 0.0, 2: 0.3, 4: 0.6, 8: 1.0}}
    if m is not None:
        rows["checkpoint"] = state_dict_digest(m.state_dict())
    return rows


def test_table_records_its_checkpoint_and_refuses_other_weights(tmp_path):
    from models.inference import upsample
    from utils.errors import UserError

    m = _model()
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(_table_for(m)))
    img = torch.rand(1, 3, 6, 7)
    stats: dict = {}
    upsample(m, img, (48, 56), cmsr=CMSR.from_spec(str(path)), stats=stats)  # its own weights: fine
    assert "cmsr_skipped_fraction" in stats
    other = _model()
    with torch.no_grad():
        other.encoder.head[0].weight.add_(0.01)   # other weights, same architecture
    with pytest.raises(UserError, match=r"t\.yaml was built for other weights.*init_cmsr"):
        upsample(other, img, (48, 56), cmsr=CMSR.from_spec(str(path)))
    # an explicit override, and official tables without a record, are used as they are
    upsample(other, img, (48, 56), cmsr=CMSR.from_spec({"s2m_tables": str(path), "allow_other_checkpoint": True}))
    upsample(other, img, (48, 56), cmsr=CMSR(Scale2Mod(_table_for(None))))


def test_bundled_table_matches_the_bundled_model():
    path, table = ROOT / "weights" / "lmliif_edsr-b_cpu.pth", ROOT / "weights" / "cmsr_lmliif_edsr-b_cpu.yaml"
    if not path.exists():
        pytest.skip("bundled model absent")
    t = Scale2Mod.load(table)
    assert t.checkpoint is not None
    CMSR(t).check_model(models.load_model(path))


def test_cmsr_where_it_does_nothing_says_so():
    from models.inference import upsample

    m = _model()
    cmsr = CMSR(Scale2Mod(_table_for(m)))
    stats: dict = {}
    upsample(m, torch.rand(1, 3, 6, 7), (18, 21), cmsr=cmsr, stats=stats)       # x3: inside the training range
    assert "x3" in stats["cmsr_note"] and "beyond x4" in stats["cmsr_note"]
    assert "cmsr_skipped_fraction" not in stats
    one_level = CMSR(Scale2Mod({6: {6: 1.0}}))
    stats = {}
    upsample(m, torch.rand(1, 3, 6, 7), (36, 42), cmsr=one_level, stats=stats)   # x6, the table renders all at x6
    assert "no coarser level" in stats["cmsr_note"]
