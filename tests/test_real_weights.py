"""The official LIIF EDSR-baseline release (tensors saved on a CUDA device, optimizer state,
epoch) works everywhere a checkpoint is taken, and gives its published Set5 x4 figure."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import torch
from PIL import Image

from conftest import DATA, ROOT, SHARED, need

import models
from models import distill

LIIF = SHARED / "weights" / "liif_edsr-baseline_official.pth"


def _run(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "LMF_DATA": str(DATA)}
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_test_py_reproduces_the_official_set5_x4_psnr():
    need(LIIF), need(DATA / "benchmark" / "Set5")
    res = _run("test.py", "--config", "configs/test/test-set5.yaml", "--model", LIIF, "--scales", "4")
    assert res.returncode == 0, res.stderr
    mean = re.search(r"^mean\s+x4\s+([0-9.]+)", res.stdout, re.M)
    assert mean, res.stdout
    # the official LIIF test.py on this file prints 32.2587 (benchmark-4: Y, shave 4)
    assert abs(float(mean.group(1)) - 32.2587) <= 0.0005, res.stdout


def test_load_model_demo_and_init_from_take_the_release_as_is(tmp_path):
    need(LIIF)
    ckpt = torch.load(LIIF, map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "epoch"} <= set(ckpt) and ckpt["epoch"] == 1000
    model = models.load_model(LIIF)
    assert type(model).__name__ == "LIIF" and not model.training
    # as a training initialisation: the encoder of an LM-LIIF from the LIIF release
    spec = {"name": "lmliif", "args": {
        "encoder_spec": {"name": "edsr-baseline", "args": {"no_upsampling": True}},
        "imnet_spec": {"name": "lmmlp", "args": {"out_dim": 3, "hidden_dim": 16, "hidden_depth": 6}},
        "hypernet_spec": {"name": "mlp", "args": {"out_dim": 208, "hidden_list": [208]}}, "mod_input": True}}
    student = models.make(spec)
    n = distill.init_from(student, str(LIIF), ["encoder"])
    assert n == len(model.encoder.state_dict())
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(student.encoder.state_dict()[k], v), k
    # demo.py with --model
    img = tmp_path / "in.png"
    Image.new("RGB", (24, 20), (200, 40, 90)).save(img)
    res = _run("demo.py", "--input", img, "--scale", "2.5", "--output", tmp_path / "out.png", "--model", LIIF)
    assert res.returncode == 0, res.stderr
    assert Image.open(tmp_path / "out.png").size == (60, 50)
