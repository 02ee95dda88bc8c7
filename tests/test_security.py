"""A checkpoint or config must never run code: malicious pickles and YAML tags are refused."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


class _Boom:
    """Unpickling this would run ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_checkpoint(tmp: Path, marker: Path) -> Path:
    path = tmp / "evil.pth"
    torch.save({"model": {"name": "lmliif", "args": {}, "sd": _Boom(marker)}, "epoch": 1}, path)
    return path


def _evil_pickle(tmp: Path, marker: Path) -> Path:
    path = tmp / "evil.pkl.pth"
    with open(path, "wb") as f:
        pickle.dump(_Boom(marker), f)
    return path


@pytest.mark.parametrize("maker", [_evil_checkpoint, _evil_pickle])
def test_library_refuses_malicious_checkpoints(tmp_path, maker):
    import models
    from utils.errors import UserError

    marker = tmp_path / "PWNED"
    path = maker(tmp_path, marker)
    with pytest.raises(UserError, match="refusing to load|not a readable"):
        models.load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize("maker", [_evil_checkpoint, _evil_pickle])
@pytest.mark.parametrize("script", ["demo", "test", "train"])
def test_entry_scripts_refuse_malicious_checkpoints(tmp_path, script, maker):
    marker = tmp_path / "PWNED"
    ckpt = maker(tmp_path, marker)
    img = tmp_path / "in.png"
    from PIL import Image
    Image.new("RGB", (8, 8), (120, 30, 200)).save(img)
    if script == "demo":
        args = ["demo.py", "--input", str(img), "--scale", "2", "--output", str(tmp_path / "o.png"), "--model", str(ckpt)]
    elif script == "test":
        cfg = tmp_path / "t.yaml"
        cfg.write_text(f"test_dataset:\n  dataset: {{name: image-folder, args: {{root_path: {tmp_path}}}}}\n"
                       "  wrapper: {name: sr-implicit-downsampled, args: {scale_min: 2}}\n")
        args = ["test.py", "--config", str(cfg), "--model", str(ckpt)]
    else:
        args = ["train.py", "--resume", str(ckpt), "--save-root", str(tmp_path / "save")]
    r = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, r.stderr
    assert not marker.exists()


def test_yaml_with_python_tags_is_refused(tmp_path):
    from models.cmsr import Scale2Mod
    from utils.config import TRAIN, ConfigError, load_config
    from utils.errors import UserError

    marker = tmp_path / "PWNED"
    payload = f"!!python/object/apply:os.system ['touch {marker}']\n"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"epoch_max: {payload}")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(cfg, TRAIN)
    table = tmp_path / "table.yaml"
    table.write_text(payload)
    with pytest.raises(UserError):
        Scale2Mod.load(table)
    r = subprocess.run([sys.executable, "train.py", "--config", str(cfg), "--save-root", str(tmp_path / "s")],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    assert not marker.exists()


def test_source_uses_only_safe_loaders():
    torch_load, yaml_load, yaml_unsafe = "torch." + "load(", "yaml." + "load(", "yaml." + "unsafe_load"
    for path in [*ROOT.glob("*.py"), *ROOT.glob("models/**/*.py"), *ROOT.glob("utils/*.py"),
                 *ROOT.glob("datasets/*.py"), *ROOT.glob("scripts/*.py")]:
        text = path.read_text()
        for line in text.splitlines():
            if torch_load in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"
            assert yaml_load not in line and yaml_unsafe not in line, f"{path}: {line.strip()}"
            assert "pickle.load" not in line, f"{path}: {line.strip()}"
