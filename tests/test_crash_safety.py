"""Crash safety of training: SIGKILL at random moments (and during a checkpoint write), resume
until done, and get bit-identical weights to an uninterrupted run.

After every kill, ``epoch-last.pth`` either does not exist yet (killed before the first save) or
loads with ``torch.load(weights_only=True)``; a temporary file left by a write that the kill cut
short never breaks resuming (train.py removes such files when it starts).
"""
from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from helpers import smooth_images, tiny_train_config

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
EPOCHS = 6


def _config(tmp: Path) -> Path:
    data = smooth_images(tmp / "data")
    cfg = tiny_train_config(data, EPOCHS, repeat=30, milestones=(3,), seed=5, epoch_save=2)
    cfg["train_dataset"]["dataset"]["args"]["cache"] = "in_memory"
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cmd(cfg: Path, save: Path, name: str, resume: bool) -> list[str]:
    cmd = [sys.executable, "train.py", "--config", str(cfg), "--save-root", str(save), "--name", name,
           "--device", "cpu"]
    if resume:
        return cmd + ["--resume"]
    # killed before its first checkpoint: the folder holds that attempt's log, so starting again
    # is an explicit --overwrite (train.py refuses to reuse a run folder silently)
    return cmd + ["--overwrite"] if (save / name).is_dir() else cmd


def _temps(run: Path) -> list[Path]:
    return list(run.glob(".tmp-*.pth")) if run.is_dir() else []


def _started(log: Path, n_before: int) -> bool:
    """The process got as far as building the model (its 'model:' log line)."""
    return log.exists() and log.read_text().count("model: ") > n_before


def test_sigkill_at_random_moments_then_resume_gives_identical_weights(tmp_path):
    cfg = _config(tmp_path)
    save = tmp_path / "save"
    # the uninterrupted run; also measures how long training proper takes (after start-up)
    full = subprocess.Popen(_cmd(cfg, save, "full", False), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and full.poll() is None and not _started(save / "full" / "log.txt", 0):
        time.sleep(0.01)
    t0 = time.time()
    _, full_err = full.communicate(timeout=300)
    assert full.returncode == 0, full_err
    t_train = time.time() - t0

    run = save / "cut"
    log = run / "log.txt"
    last = run / "epoch-last.pth"
    rng = random.Random(20240607)  # fixed: the same kill moments every time
    # five kills: random delays after training has started, one of them "during a checkpoint write"
    plan = ["random", "random", "during_write", "random", "random"]
    seen_epoch, caught_in_write = 0, False
    for i, how in enumerate(plan):
        resume = last.exists()
        if i == 3:  # a stray temporary file like the one a killed write leaves must not break resuming
            (run / ".tmp-planted.pth").write_bytes(b"PK\x03\x04 half a checkpoint")
        n_before = log.read_text().count("model: ") if log.exists() else 0
        proc = subprocess.Popen(_cmd(cfg, save, "cut", resume), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not _started(log, n_before):
            time.sleep(0.01)
        if how == "random":
            time.sleep(rng.uniform(0.0, 0.35 * t_train))
        else:  # poll for save_atomic's temporary file and kill while it is there
            deadline = time.time() + 60
            while time.time() < deadline and proc.poll() is None:
                if any(p.name != ".tmp-planted.pth" for p in _temps(run)):
                    caught_in_write = True
                    break
                time.sleep(0.0002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        err = proc.stderr.read()
        proc.stderr.close()
        assert proc.returncode in (-signal.SIGKILL, 0) and "Traceback" not in err, err
        if last.exists():
            ck = torch.load(last, weights_only=True)  # never a partial file
            assert 1 <= ck["epoch"] <= EPOCHS
            assert ck["epoch"] >= seen_epoch  # progress is never lost
            seen_epoch = ck["epoch"]
        print(f"kill {i + 1} ({how}, {'resumed' if resume else 'fresh'}): epoch-last {'epoch ' + str(seen_epoch) if last.exists() else 'absent'}, "
              f"temporary files {[p.name for p in _temps(run)]}")
    print(f"a kill landed while a checkpoint was being written: {caught_in_write}")

    for _ in range(3):  # resume until finished
        r = subprocess.run(_cmd(cfg, save, "cut", last.exists()), cwd=ROOT, env=ENV, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        if torch.load(last, weights_only=True)["epoch"] == EPOCHS:
            break
    assert not _temps(run), _temps(run)  # stale temporary files were cleaned up
    assert re.search(r"removed \d+ temporary file\(s\) left by an interrupted checkpoint write", log.read_text())

    for fname in ("epoch-last.pth", "epoch-best.pth", "epoch-2.pth", "epoch-4.pth", "epoch-6.pth"):
        a = torch.load(save / "full" / fname, weights_only=True)
        b = torch.load(run / fname, weights_only=True)
        assert a["epoch"] == b["epoch"], fname
        assert a["model"]["sd"].keys() == b["model"]["sd"].keys()
        for k in a["model"]["sd"]:
            assert torch.equal(a["model"]["sd"][k], b["model"]["sd"][k]), (fname, k)
        assert a["best_val"] == b["best_val"], fname


_WRITER = r"""
import sys, torch
sys.path.insert(0, sys.argv[2])
from utils.checkpoint import save_atomic
save_atomic({"v": torch.full((4,), 1.0)}, sys.argv[1])
print("first", flush=True)
big = torch.ones(48 * 2**20 // 4)  # 48 MiB: the write takes long enough to be caught
while True:
    save_atomic({"v": torch.full((4,), 2.0), "big": big}, sys.argv[1])
"""


def test_save_atomic_killed_mid_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "epoch-last.pth"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target), str(ROOT)], env=ENV,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "first"
        deadline = time.time() + 60
        partial = []
        while time.time() < deadline and not partial:
            # mid-write: the temporary file exists, holds some bytes, and the target is still version 1
            partial = [p for p in tmp_path.glob(".tmp-*.pth") if p.stat().st_size > 0] \
                if target.stat().st_size < 2**20 else []
            time.sleep(0.0005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert partial, "never saw a write in progress"
    ck = torch.load(target, weights_only=True)
    assert torch.equal(ck["v"], torch.full((4,), 1.0)) or ck["big"].numel() == 48 * 2**20 // 4


def test_epoch_last_is_written_after_the_other_checkpoints(tmp_path, monkeypatch):
    """epoch-last.pth is the commit point: a crash between two writes of one epoch must leave
    epoch-last at the previous epoch, so that resuming rewrites epoch-best / epoch-N identically."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_lmf_train_order", ROOT / "train.py")
    train = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = train
    spec.loader.exec_module(train)
    cfg_path = _config(tmp_path)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg.update(epoch_max=2, max_iters_per_epoch=1, epoch_save=1)
    cfg_path.write_text(yaml.safe_dump(cfg))
    written: list[str] = []
    real = train.save_atomic
    monkeypatch.setattr(train, "save_atomic", lambda obj, path: (written.append(Path(path).name), real(obj, path)))
    assert train.main(["--config", str(cfg_path), "--save-root", str(tmp_path / "save"), "--name", "o",
                       "--device", "cpu"]) == 0
    for epoch in (1, 2):
        names = written[: written.index("epoch-last.pth") + 1]
        del written[: len(names)]
        assert names[-1] == "epoch-last.pth" and f"epoch-{epoch}.pth" in names, names
    assert written == []
