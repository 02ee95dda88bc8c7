"""Small training set-ups shared by the training tests (synthetic data, a tiny LM-LIIF)."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import numpy as np
from PIL import Image

def tiny_lmliif() -> dict:
    """A fresh spec (tests mutate it) of a tiny LM-LIIF: 1 residual block, 8 channels."""
    return {"name": "lmliif", "args": {
        "encoder_spec": {"name": "edsr-baseline", "args": {"no_upsampling": True, "n_resblocks": 1, "n_feats": 8}},
        "imnet_spec": {"name": "lmmlp", "args": {"out_dim": 3, "hidden_dim": 8, "hidden_depth": 2}},
        "hypernet_spec": {"name": "mlp", "args": {"out_dim": 40, "hidden_list": [16]}},
        "mod_input": True}}


def smooth_images(folder: Path, n: int = 6, size: int = 40) -> Path:
    """``n`` smooth random RGB PNGs (bicubic-upsampled noise: SR-like content, not pure noise)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        base = rng.random((size // 4, size // 4, 3))
        Image.fromarray((base * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC).save(folder / f"img{i}.png")
    return folder


def tiny_train_config(data: Path, epochs: int, batch: int = 4, repeat: int = 2, milestones: tuple = (2,),
                      seed: int = 3, **over) -> dict:
    """A train.py config of the tiny LM-LIIF on the images in ``data`` (validated every epoch on
    two of them); ``over`` sets or replaces top-level keys."""
    image_folder = {"name": "image-folder", "args": {"root_path": str(data)}}
    cfg = {
        "train_dataset": {
            "dataset": {**image_folder, "args": {**image_folder["args"], "repeat": repeat}},
            "wrapper": {"name": "sr-implicit-downsampled",
                        "args": {"inp_size": 8, "scale_max": 3, "augment": True, "sample_q": 50}},
            "batch_size": batch},
        "val_dataset": {
            "dataset": {**image_folder, "args": {**image_folder["args"], "first_k": 2}},
            "wrapper": {"name": "sr-implicit-downsampled", "args": {"scale_min": 2}},
            "batch_size": 1},
        "eval_type": "benchmark-2",
        "model": tiny_lmliif(),
        "optimizer": {"name": "adam", "args": {"lr": 1e-3}},
        "epoch_max": epochs,
        "multi_step_lr": {"milestones": list(milestones), "gamma": 0.5},
        "epoch_val": 1,
        "num_workers": 0,
        "seed": seed,
    }
    cfg.update(over)
    return cfg


def kill_when_logged(cmd: list[str], log: Path, marker: str, env: dict, cwd: Path, timeout: float = 120) -> None:
    """Start ``cmd``, wait until ``log`` contains ``marker`` (at most ``timeout`` s), then SIGKILL it."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and not (log.exists() and marker in log.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
