"""train.py: exact resume after SIGKILL, DDP (gloo, CPU) equals one process, clear errors.

The single-process runs take their device from ``LMF_TEST_DEVICE`` (default cpu); the DDP test
is about gloo and stays on the CPU.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import DEVICE
from helpers import kill_when_logged, smooth_images, tiny_train_config

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _config(tmp: Path, epochs: int = 4, batch: int = 4, **over) -> Path:
    data = smooth_images(tmp / "data")
    cfg = tiny_train_config(data, epochs, batch=batch, **over)
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(*args: str, timeout: int = 240, torchrun: int = 0) -> subprocess.CompletedProcess:
    if "--device" not in args:
        args = (*args, "--device", "cpu" if torchrun else str(DEVICE))
    cmd = [sys.executable, "train.py", *args]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}",
               "train.py", *args]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]["sd"]


def test_kill_and_resume_gives_the_same_weights(tmp_path):
    cfg = _config(tmp_path, epochs=5)
    full = _train("--config", str(cfg), "--name", "full", "--save-root", str(tmp_path / "save"))
    assert full.returncode == 0, full.stderr
    assert "val: psnr=" in full.stdout

    # the same run, killed with SIGKILL once it has saved epoch 2, then resumed
    cmd = [sys.executable, "train.py", "--config", str(cfg), "--name", "cut", "--save-root", str(tmp_path / "save"),
           "--device", str(DEVICE)]
    kill_when_logged(cmd, tmp_path / "save" / "cut" / "log.txt", "epoch 2/5", ENV, ROOT)
    last = tmp_path / "save" / "cut" / "epoch-last.pth"
    saved_epoch = torch.load(last, weights_only=True)["epoch"]
    assert 2 <= saved_epoch <= 5
    res = _train("--config", str(cfg), "--name", "cut", "--save-root", str(tmp_path / "save"), "--resume")
    assert res.returncode == 0, res.stderr
    if saved_epoch < 5:
        assert f"resumed from epoch {saved_epoch}" in res.stdout
    a, b = _weights(tmp_path / "save" / "full" / "epoch-last.pth"), _weights(last)
    assert a.keys() == b.keys()
    for k in a:
        if DEVICE.type == "cpu":
            assert torch.equal(a[k], b[k]), k
        else:  # CUDA backward passes accumulate with atomics: same run, last-bit differences
            assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), (k, (a[k] - b[k]).abs().max())
    # the official layout is kept, and the checkpoint loads for inference
    import models
    assert models.load_model(last) is not None


def test_two_process_ddp_equals_one_process(tmp_path):
    cfg = _config(tmp_path, epochs=2, batch=4)
    one = _train("--config", str(cfg), "--name", "one", "--save-root", str(tmp_path / "save"))
    assert one.returncode == 0, one.stderr
    two = _train("--config", str(cfg), "--name", "two", "--save-root", str(tmp_path / "save"), torchrun=2)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "replicas in sync: yes" in two.stdout
    a, b = _weights(tmp_path / "save" / "one" / "epoch-last.pth"), _weights(tmp_path / "save" / "two" / "epoch-last.pth")
    # same global batches and samples; only the float summation order of the gradient differs
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), (k, (a[k] - b[k]).abs().max())


@pytest.mark.parametrize("case", ["missing_folder", "typo", "wrong_type", "not_checkpoint", "no_config"])
def test_errors_are_one_clear_line(tmp_path, case):
    cfg = _config(tmp_path, epochs=1)
    args = ["--config", str(cfg), "--save-root", str(tmp_path / "save")]
    data = yaml.safe_load(cfg.read_text())
    expect = ""
    if case == "missing_folder":
        data["train_dataset"]["dataset"]["args"]["root_path"] = str(tmp_path / "nope")
        expect = "nope"
    elif case == "typo":
        data["epoch_maxx"] = 3
        expect = "epoch_maxx"
    elif case == "wrong_type":
        data["epoch_max"] = "ten"
        expect = "epoch_max"
    elif case == "not_checkpoint":
        bad = tmp_path / "bad.pth"
        bad.write_text("not a checkpoint")
        args += ["--resume", str(bad)]
        expect = "bad.pth"
    elif case == "no_config":
        args = ["--save-root", str(tmp_path / "save")]
        expect = "--config"
    cfg.write_text(yaml.safe_dump(data))
    r = _train(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_bf16_autocast_trains_and_fp16_is_refused_on_the_cpu(tmp_path):
    cfg = _config(tmp_path, epochs=1)
    r = _train("--config", str(cfg), "--save-root", str(tmp_path / "save"), "--name", "bf16", "--amp", "bf16")
    assert r.returncode == 0, r.stderr[-2000:]
    sd = _weights(tmp_path / "save" / "bf16" / "epoch-last.pth")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in sd.values())  # fp32 master weights
    if DEVICE.type == "cpu":
        r = _train("--config", str(cfg), "--save-root", str(tmp_path / "save"), "--name", "fp16", "--amp", "fp16",
                   "--device", "cpu")
        assert r.returncode == 2 and "fp16 needs a CUDA device" in r.stderr


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def test_existing_run_is_refused_without_resume_and_nothing_changes(tmp_path):
    cfg = _config(tmp_path, epochs=1)
    save = tmp_path / "save"
    args = ["--config", str(cfg), "--save-root", str(save), "--device", "cpu"]
    r = _train(*args)                                     # the default name: _cfg
    assert r.returncode == 0, r.stderr
    run = save / "_cfg"
    best = (run / "epoch-best.pth").read_bytes()
    before = _snapshot(run)
    r = _train(*args)                                     # the same command again, by accident
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(run) in lines[0], r.stderr
    assert all(w in lines[0] for w in ("--resume", "--name", "--overwrite")), lines[0]
    assert _snapshot(run) == before                       # not one byte, not one timestamp changed
    assert (run / "epoch-best.pth").read_bytes() == best
    # starting over is possible, explicitly; it does not keep the old run's files around
    (run / "notes.txt").write_text("mine")
    r = _train(*args, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert (run / "notes.txt").read_text() == "mine"     # files that are not the run's are left alone
    assert (run / "log.txt").read_text().count("model: ") == 1


def test_failed_start_leaves_no_run_folder(tmp_path):
    cfg = _config(tmp_path, epochs=1)
    data = yaml.safe_load(cfg.read_text())
    data["train_dataset"]["dataset"]["args"]["root_path"] = str(tmp_path / "missing")
    cfg.write_text(yaml.safe_dump(data))
    r = _train("--config", str(cfg), "--save-root", str(tmp_path / "save"), "--name", "new", "--device", "cpu")
    assert r.returncode == 2 and "missing" in r.stderr
    assert not (tmp_path / "save" / "new").exists()


def test_progress_shows_speed_and_eta_and_resume_never_logs_a_step_twice(tmp_path):
    from utils.tb_events import read_scalars

    cfg = _config(tmp_path, epochs=2, epoch_save=1)
    save = tmp_path / "save"
    args = ["--config", str(cfg), "--save-root", str(save), "--name", "r", "--device", "cpu"]
    r = _train(*args)
    assert r.returncode == 0, r.stderr
    iter_lines = [ln for ln in r.stdout.splitlines() if "iterations, loss=" in ln]
    assert iter_lines and all("s/it" in ln and "epoch ETA" in ln for ln in iter_lines), r.stdout
    epoch_lines = [ln for ln in r.stdout.splitlines() if ln.startswith("epoch ")]
    assert len(epoch_lines) == 2 and all("s/it" in ln and "ETA" in ln for ln in epoch_lines), r.stdout
    run = save / "r"
    first = read_scalars(str(run / "tensorboard"))
    # a crash after epoch 2 had logged but before its checkpoint was committed
    (run / "epoch-last.pth").write_bytes((run / "epoch-1.pth").read_bytes())
    r = _train(*args, "--resume")
    assert r.returncode == 0, r.stderr
    events = read_scalars(str(run / "tensorboard"))
    keys = [(tag, step) for tag, step, _ in events]
    assert len(keys) == len(set(keys)), "a TensorBoard step was written twice"
    assert sorted(keys) == sorted((tag, step) for tag, step, _ in first)  # the same steps, each once


def test_kill_within_an_epoch_and_resume_gives_the_same_weights_and_curve(tmp_path):
    """iter_save writes epoch-last.pth within epochs; a run killed after such a save resumes at
    that iteration: the same weights (bit-identical on the CPU), the same per-iteration learning
    rates (cosine with warm-up) and the same epoch losses as a run that was never stopped."""
    cfg_path = _config(tmp_path, epochs=3, repeat=20, iter_save=10,  # 6 images x 20 / batch 4: 30 iterations
                       warmup_iters=15, cosine_lr={"eta_min": 1e-5})
    cfg = yaml.safe_load(cfg_path.read_text())
    del cfg["multi_step_lr"]
    cfg_path.write_text(yaml.safe_dump(cfg))
    save = tmp_path / "save"
    full = _train("--config", str(cfg_path), "--name", "full", "--save-root", str(save))
    assert full.returncode == 0, full.stderr
    assert "saved epoch-last.pth at epoch 2, iteration 10/30" in full.stdout

    cmd = [sys.executable, "train.py", "--config", str(cfg_path), "--name", "cut", "--save-root", str(save),
           "--device", str(DEVICE)]
    kill_when_logged(cmd, save / "cut" / "log.txt", "saved epoch-last.pth at epoch 2, iteration 10/30", ENV, ROOT)
    last = save / "cut" / "epoch-last.pth"
    ck = torch.load(last, weights_only=True)
    assert ck["epoch"] == 1 and ck["epoch_iters"] in (10, 20), "the kill came after epoch 2 ended"
    within = last.read_bytes()
    res = _train("--config", str(cfg_path), "--name", "cut", "--save-root", str(save), "--resume")
    assert res.returncode == 0, res.stderr
    assert f"resumed from epoch 1 and {ck['epoch_iters']} iterations of epoch 2" in res.stdout
    a, b = _weights(save / "full" / "epoch-last.pth"), _weights(last)
    for k in a:
        if DEVICE.type == "cpu":
            assert torch.equal(a[k], b[k]), k
        else:
            assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), (k, (a[k] - b[k]).abs().max())

    def epoch_lines(text: str) -> list[str]:  # "epoch E/3, train: loss=..., lr=..." without the timing
        return [ln.split(", val:")[0] for ln in text.splitlines() if ln.startswith("epoch ")]
    cut_log = (save / "cut" / "log.txt").read_text()
    assert epoch_lines(cut_log) == epoch_lines(full.stdout)  # same epoch losses and final rates

    from utils.tb_events import read_scalars
    def losses(run: str) -> list[tuple[int, float]]:
        return sorted((step, v) for tag, step, v in read_scalars(str(save / run / "tensorboard")) if tag == "loss/train")
    cut, ref = losses("cut"), losses("full")
    assert [s for s, _ in cut] == list(range(1, 91))  # every iteration logged once
    if DEVICE.type == "cpu":
        assert cut == ref  # the same loss at every iteration
    # the position counts batches of the epoch's order: another batch size is refused, nothing changes
    other = save / "other"
    other.mkdir()
    (other / "epoch-last.pth").write_bytes(within)
    cfg["train_dataset"]["batch_size"] = 2
    cfg_path.write_text(yaml.safe_dump(cfg))
    r = _train("--config", str(cfg_path), "--name", "other", "--save-root", str(save), "--resume")
    assert r.returncode == 2 and "iterations of batch 4 per epoch" in r.stderr and "batch 2" in r.stderr, r.stderr
    assert sorted(p.name for p in other.iterdir()) == ["epoch-last.pth"]
    # a completed run resumed: nothing to do, nothing written
    files = {p.name: p.stat().st_mtime_ns for p in (save / "cut").iterdir()}
    r = _train("--config", str(cfg_path), "--name", "cut", "--save-root", str(save), "--resume")
    assert r.returncode == 0 and "nothing to do: the run in" in r.stdout and "raise epoch_max" in r.stdout, r.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (save / "cut").iterdir()} == files


def test_workers_that_live_across_epochs_draw_each_epochs_samples(tmp_path):
    """The loader's workers persist; the epoch travels with each key, so epoch 2's samples through
    two persistent workers are those that one process draws for epoch 2 (and skipping resumes
    the same order part-way)."""
    import train

    data = smooth_images(tmp_path / "data")
    spec = tiny_train_config(data, 2)["train_dataset"]

    def epoch_batches(workers: int, epoch: int, skip: int = 0) -> list[torch.Tensor]:
        loader = train.make_loader(spec, True, 3, 1, 0, workers, torch.device("cpu"))
        out = []
        for e in range(1, epoch + 1):
            loader.sampler.set_epoch(e)
            loader.sampler.skip = skip if e == epoch else 0
            out = [b["gt"] for b in loader]
        return out

    alone = epoch_batches(0, 2)
    assert len(alone) == 3
    assert all(torch.equal(a, b) for a, b in zip(alone, epoch_batches(2, 2), strict=True))
    first_epoch = epoch_batches(0, 1)
    assert not torch.equal(first_epoch[0], alone[0])  # the epochs differ
    skipped = epoch_batches(2, 2, skip=spec["batch_size"])  # one batch done before a resume
    assert all(torch.equal(a, b) for a, b in zip(alone[1:], skipped, strict=True))


def test_compiled_training_step_trains_like_the_eager_one(tmp_path):
    """--compile (torch.compile, one graph: the profile's phase marks are skipped while compiling)
    gives the eager run's weights up to float reordering."""
    cfg = _config(tmp_path, epochs=1, val_dataset=None, max_iters_per_epoch=3)
    save = tmp_path / "save"
    eager = _train("--config", str(cfg), "--name", "eager", "--save-root", str(save), "--device", "cpu")
    assert eager.returncode == 0, eager.stderr
    comp = _train("--config", str(cfg), "--name", "comp", "--save-root", str(save), "--device", "cpu",
                  "--compile", timeout=600)
    assert comp.returncode == 0, comp.stderr[-3000:]
    a, b = _weights(save / "eager" / "epoch-last.pth"), _weights(save / "comp" / "epoch-last.pth")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), (k, (a[k] - b[k]).abs().max())


def test_step_losses_are_read_in_batches_and_name_the_first_bad_iteration():
    """The losses stay on the device until read; a read checks them in order, so a NaN is reported
    at its own iteration (counted from a resumed position too), and the mean covers the epoch."""
    import train

    log = train.Log(None)
    losses = train.StepLosses(log, epoch=3, n_iter=100, every=3)
    assert not losses.add(torch.tensor(1.0)) and not losses.add(torch.tensor(2.0))
    assert losses.add(torch.tensor(3.0))  # the third: time to read
    losses.read()
    assert losses.count == 3 and losses.mean == 2.0
    resumed = train.StepLosses(log, epoch=3, n_iter=100, total=30.0, count=10)
    for v in (1.0, float("nan"), float("inf")):
        resumed.add(torch.tensor(v))
    with pytest.raises(train.NonFinite, match=r"loss became nan at epoch 3, iteration 12$"):
        resumed.read()

