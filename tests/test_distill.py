"""train.py transfer and distillation: init_from / freeze / teacher (with and without the cache)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

import models
from helpers import kill_when_logged, tiny_lmliif
from test_train import ENV, ROOT, _config, _train, _weights


def _teacher(tmp: Path) -> Path:
    """A tiny LIIF with the tiny LM-LIIF's encoder shape, random weights, official layout."""
    torch.manual_seed(11)
    spec = {"name": "liif", "args": {"encoder_spec": tiny_lmliif()["args"]["encoder_spec"],
                                     "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [16, 16]}}}}
    model = models.make(spec)
    path = tmp / "teacher.pth"
    torch.save({"model": {**spec, "sd": model.state_dict()}, "epoch": 7}, path)
    return path


def _distill_config(tmp: Path, epochs: int = 4, freeze_epochs: int | None = None, cache: bool = True,
                    **over) -> Path:
    teacher = str(_teacher(tmp))
    freeze = {"modules": ["encoder"]}
    if freeze_epochs is not None:
        freeze["epochs"] = freeze_epochs
    return _config(tmp, epochs=epochs, init_from={"checkpoint": teacher, "modules": ["encoder"]},
                   freeze=freeze, teacher={"checkpoint": teacher, "weight": 1.0, "gt_weight": 0.1, "cache": cache},
                   **over)


def _encoder(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if k.startswith("encoder.")}


def _losses(stdout: str) -> list[float]:
    return [float(x) for x in re.findall(r"train: loss=([0-9.]+)", stdout)]


@pytest.mark.parametrize("cache", [True, False])
def test_frozen_encoder_stays_bit_identical_and_distillation_loss_falls(tmp_path, cache):
    cfg = _distill_config(tmp_path, epochs=6, cache=cache, multi_step_lr=None,
                          optimizer={"name": "adam", "args": {"lr": 4e-3}})
    res = _train("--config", str(cfg), "--name", "d", "--save-root", str(tmp_path / "save"))
    assert res.returncode == 0, res.stderr
    assert "initialised" in res.stdout and ("caching" in res.stdout) == cache
    teacher = _encoder(torch.load(tmp_path / "teacher.pth", weights_only=True)["model"]["sd"])
    student = _encoder(_weights(tmp_path / "save" / "d" / "epoch-last.pth"))
    assert teacher.keys() == student.keys()
    for k in teacher:
        assert torch.equal(teacher[k], student[k]), k
    losses = _losses(res.stdout)
    assert len(losses) == 6 and losses[-1] < 0.75 * losses[0], losses


def test_freeze_for_the_first_epochs_only(tmp_path):
    cfg = _distill_config(tmp_path, epochs=3, freeze_epochs=1)
    res = _train("--config", str(cfg), "--name", "d", "--save-root", str(tmp_path / "save"),
                 )
    assert res.returncode == 0, res.stderr
    assert "cached features dropped" in res.stdout
    teacher = _encoder(torch.load(tmp_path / "teacher.pth", weights_only=True)["model"]["sd"])
    student = _encoder(_weights(tmp_path / "save" / "d" / "epoch-last.pth"))
    changed = [k for k in teacher if not torch.equal(teacher[k], student[k])]
    assert changed, "the encoder should train after epoch 1"


def test_kill_and_resume_with_a_cached_teacher_is_exact(tmp_path):
    cfg = _distill_config(tmp_path, epochs=5)
    save = str(tmp_path / "save")
    full = _train("--config", str(cfg), "--name", "full", "--save-root", save)
    assert full.returncode == 0, full.stderr
    cmd = [sys.executable, "train.py", "--config", str(cfg), "--name", "cut", "--save-root", save]
    kill_when_logged(cmd, tmp_path / "save" / "cut" / "log.txt", "epoch 2/5", ENV, ROOT)
    res = _train("--config", str(cfg), "--name", "cut", "--save-root", save, "--resume")
    assert res.returncode == 0, res.stderr
    a, b = _weights(tmp_path / "save" / "full" / "epoch-last.pth"), _weights(tmp_path / "save" / "cut" / "epoch-last.pth")
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("edit, expect", [
    (lambda c: c["teacher"].update(wieght=1.0), "teacher.wieght: unknown key (did you mean 'weight'?)"),
    (lambda c: c["freeze"].update(modules="encoder"), "freeze.modules: expected a list"),
    (lambda c: c["init_from"].update(modules=["decoder"]), "no parameters under 'decoder'"),
    (lambda c: c["teacher"].update(checkpoint="nope.pth"), "nope.pth"),
    (lambda c: c["optimizer"]["args"].update(lr=1e30), "training stopped"),
    (lambda c: c["train_dataset"]["wrapper"]["args"].pop("sample_q"), "teacher.cache needs training samples of one shape"),
])
def test_bad_distillation_config_is_one_line(tmp_path, edit, expect):
    path = _distill_config(tmp_path, epochs=2)
    cfg = yaml.safe_load(path.read_text())
    edit(cfg)
    path.write_text(yaml.safe_dump(cfg))
    res = _train("--config", str(path), "--name", "bad", "--save-root", str(tmp_path / "save"))
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert expect in err, err


def test_two_process_ddp_with_a_cached_teacher_equals_one_process(tmp_path):
    cfg = _distill_config(tmp_path, epochs=2)
    save = str(tmp_path / "save")
    one = _train("--config", str(cfg), "--name", "one", "--save-root", save)
    assert one.returncode == 0, one.stderr
    two = _train("--config", str(cfg), "--name", "two", "--save-root", save, torchrun=2)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "replicas in sync: yes" in two.stdout
    a, b = _weights(tmp_path / "save" / "one" / "epoch-last.pth"), _weights(tmp_path / "save" / "two" / "epoch-last.pth")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), (k, (a[k] - b[k]).abs().max())
