"""train.py after an interrupt: what it says is true, and the command it names works.

A run interrupted before its first epoch ends has written a log, its config and TensorBoard
files but no checkpoint. It must say so, ``--resume`` must say that there is nothing to resume
and that the plain command starts over, and the plain command must then start over in that folder
(the dead end this replaces: each of the two commands sent the user to the other). A run
interrupted later names its last completed epoch and ``--resume``, which continues from it.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helpers import smooth_images, tiny_train_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def train_mod(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import train

    return train


def _config(tmp: Path, epochs: int) -> Path:
    cfg = tiny_train_config(smooth_images(tmp / "data"), epochs, batch=4)
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _interrupt_in_epoch(monkeypatch, train_mod, epoch: int) -> None:
    """Ctrl-C part-way through ``epoch`` (after its first iteration would have run)."""
    real = train_mod.train_epoch

    def cut(*args, **kwargs):
        if args[7] == epoch:  # train_epoch(model, loader, optimizer, cfg, device, amp, log, epoch, ...)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_epoch", cut)


def _main(train_mod, args: list[str], capsys) -> tuple[int, str, str]:
    rc = train_mod.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_interrupted_in_the_first_epoch_says_so_and_the_named_command_starts_over(tmp_path, monkeypatch, train_mod,
                                                                                  capsys):
    cfg = _config(tmp_path, epochs=2)
    args = ["--config", cfg, "--save-root", tmp_path / "save", "--name", "run", "--device", "cpu"]
    run = tmp_path / "save" / "run"
    with monkeypatch.context() as m:
        _interrupt_in_epoch(m, train_mod, 1)
        rc, _, err = _main(train_mod, args, capsys)
    assert rc == 130
    assert "before the first checkpoint" in err and "nothing was saved" in err and "without --resume" in err, err
    assert (run / "log.txt").is_file() and not list(run.glob("epoch-*.pth"))

    rc, _, err = _main(train_mod, [*args, "--resume"], capsys)  # what a user tries first
    assert rc == 2
    line = err.strip()
    assert line.startswith("error: nothing to resume") and "completed no epoch" in line and "without --resume" in line

    rc, out, err = _main(train_mod, args, capsys)  # the command both messages name: it works
    assert rc == 0, err
    assert "starting over" in out and "epoch 2/2" in out
    assert (run / "epoch-last.pth").is_file()
    log = (run / "log.txt").read_text()
    assert log.count("model: ") == 2 and "starting over" in log  # the first attempt's log is kept, continued


def test_interrupted_later_names_the_epoch_and_resume_continues(tmp_path, monkeypatch, train_mod, capsys):
    cfg = _config(tmp_path, epochs=3)
    args = ["--config", cfg, "--save-root", tmp_path / "save", "--name", "run", "--device", "cpu"]
    with monkeypatch.context() as m:
        _interrupt_in_epoch(m, train_mod, 2)
        rc, _, err = _main(train_mod, args, capsys)
    assert rc == 130
    assert "epoch 1 is the last completed one" in err and "--resume" in err, err

    rc, _, err = _main(train_mod, args, capsys)  # a run with a checkpoint is still never started over silently
    assert rc == 2 and "--resume" in err

    rc, out, err = _main(train_mod, [*args, "--resume"], capsys)
    assert rc == 0, err
    assert "resumed from epoch 1" in out and "epoch 3/3" in out


def test_resume_of_a_run_that_does_not_exist_says_so(tmp_path, train_mod, capsys):
    cfg = _config(tmp_path, epochs=1)
    rc, _, err = _main(train_mod, ["--config", cfg, "--save-root", tmp_path / "save", "--name", "nope",
                                   "--device", "cpu", "--resume"], capsys)
    assert rc == 2 and "there is no such run" in err and not (tmp_path / "save" / "nope").exists()
