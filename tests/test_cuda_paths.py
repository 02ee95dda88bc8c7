"""The CUDA path of every entry point, run on the CPU against a strict stand-in for torch.cuda.

On a CPU build the ``device.type == "cuda"`` branches never run, which is how a crash of every
entry script on every GPU (an index-less device handed to ``torch.cuda.set_device``) passed CI.
Here ``tests/fake_cuda.py`` makes them run: ``torch.cuda`` says a GPU is there and checks its
arguments as PyTorch does, and tensors placed on ``cuda:N`` are kept on the CPU instead. Each
test runs an entry point with its default device, the way a GPU user meets it first.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import fake_cuda
from fake_cuda import FakeCuda
from helpers import smooth_images, tiny_train_config
from utils.cli import pick_device
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "shapes.png"
# DataLoader(pin_memory=True) warns that the stand-in has no real accelerator to pin for
pytestmark = pytest.mark.filterwarnings("ignore:.pin_memory. argument")


@pytest.fixture
def gpu(monkeypatch):
    """One fake GPU, installed in this process for the test."""
    fake = FakeCuda(count=1).install(monkeypatch)
    yield fake
    fake.uninstall()


# --- the stand-in is as strict as PyTorch ----------------------------------------------------------
def test_the_stand_in_refuses_what_pytorch_refuses(gpu):
    with pytest.raises(ValueError, match="specified index"):
        torch.cuda.set_device(torch.device("cuda"))  # PyTorch's own message, from PyTorch's parser
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        torch.cuda.set_device(torch.device("cuda:1"))
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        torch.zeros(2, device="cuda:1")
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        torch.cuda.mem_get_info(torch.device("cuda", 3))
    with pytest.raises(AssertionError, match="cuda()"):
        torch.zeros(2).cuda()
    x = torch.zeros(2, device=torch.device("cuda", 0))
    assert x.device == torch.device("cuda", 0) and x.is_cuda and gpu.placements == [0]
    assert (x + 1).device.type == "cuda" and x.cpu().device.type == "cpu" and x.to("cpu").device.type == "cpu"
    assert torch.cuda.mem_get_info("cuda:0") == (gpu.free, gpu.total)


def test_the_stand_in_enforces_cudas_device_rules(gpu):
    x = torch.zeros(3, device="cuda")
    with pytest.raises(RuntimeError, match="same device"):
        x + torch.ones(3)                        # a CPU tensor with a GPU tensor
    with pytest.raises(RuntimeError, match="same device"):
        torch.cat([x, torch.ones(3)])
    assert (x + torch.tensor(2.0)).is_cuda      # a 0-dim CPU tensor is allowed, as in PyTorch
    with pytest.raises(TypeError, match="Tensor.cpu"):
        x.numpy()
    assert x.cpu().numpy().shape == (3,)
    m = torch.nn.Linear(3, 2).to(torch.device("cuda", 0))
    assert m.weight.is_cuda and m(x).is_cuda
    with pytest.raises(RuntimeError, match="same device"):
        m(torch.ones(3))
    m(x).sum().backward()
    assert m.weight.grad.is_cuda
    torch.optim.Adam(m.parameters()).step()    # optimizer state follows its parameters


def test_real_pytorch_refuses_an_index_less_device_too():
    # the stand-in's refusal is PyTorch's: the CPU build raises the same error in set_device
    with pytest.raises(ValueError, match="specified index"):
        torch.cuda.set_device(torch.device("cuda"))


# --- the device picker --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["auto", "cuda", "cuda:0"])
def test_pick_device_returns_an_indexed_current_device(gpu, name):
    dev = pick_device(name)
    assert dev == torch.device("cuda", 0) and dev.index == 0
    assert gpu.set_device_calls == [0]


def test_pick_device_refuses_an_absent_gpu_and_a_wrong_rank(monkeypatch):
    FakeCuda(count=2).install(monkeypatch).uninstall()  # the functions stay patched, tensors unaffected
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    assert pick_device("auto", local_rank=1) == torch.device("cuda", 1)
    with pytest.raises(UserError, match="2 CUDA device"):
        pick_device("cuda:2")
    with pytest.raises(UserError, match="LOCAL_RANK 2 needs cuda:2"):
        pick_device("auto", local_rank=2)
    with pytest.raises(UserError, match="under torchrun"):
        pick_device("cuda:0", local_rank=1)


def test_pick_device_without_cuda_is_one_line():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(UserError, match="CUDA is not available"):
        pick_device("cuda")


# --- every entry point with its default device ---------------------------------------------------
def test_demo_default_device(gpu, tmp_path, capsys):
    import demo

    out = tmp_path / "x2.png"
    assert demo.main(["--input", str(SAMPLE), "--scale", "2", "--output", str(out)]) == 0
    assert "cuda:0" in capsys.readouterr().out  # the demo says which device auto chose
    assert gpu.set_device_calls == [0] and set(gpu.placements) == {0}
    gpu.uninstall()
    ref = tmp_path / "cpu.png"
    assert demo.main(["--input", str(SAMPLE), "--scale", "2", "--output", str(ref), "--device", "cpu"]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(ref)))


def test_test_script_default_device(gpu, tmp_path, capsys):
    import test as test_script

    res = tmp_path / "r.json"
    code = test_script.main(["--config", str(ROOT / "configs/test/test-samples.yaml"), "--model",
                             str(ROOT / "weights/lmliif_edsr-b_cpu.pth"), "--scales", "2", "--limit", "1",
                             "--out", str(res)])
    assert code == 0
    assert "on cuda:0" in capsys.readouterr().out
    assert gpu.set_device_calls == [0] and set(gpu.placements) == {0}
    assert json.loads(res.read_text())["means"]


def _train_setup(tmp_path: Path) -> Path:
    data = smooth_images(tmp_path / "data", n=4, size=32)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_train_config(data, epochs=1, batch=2, repeat=1)))
    return cfg


def test_train_default_device_one_process(gpu, tmp_path, monkeypatch):
    import train

    for var in ("LOCAL_RANK", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    cfg = _train_setup(tmp_path)
    assert train.main(["--config", str(cfg), "--name", "run", "--save-root", str(tmp_path / "save")]) == 0
    assert gpu.set_device_calls == [0] and set(gpu.placements) == {0}
    assert (tmp_path / "save" / "run" / "epoch-last.pth").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_train_default_device_under_torchrun_variables(tmp_path):
    """What torchrun gives each process (LOCAL_RANK & co.): NCCL on the process's own GPU."""
    cfg = _train_setup(tmp_path)
    env = {**fake_cuda.env_for(count=1), "LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    p = subprocess.run([sys.executable, "train.py", "--config", str(cfg), "--name", "ddp", "--save-root",
                        str(tmp_path / "save")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    log = (tmp_path / "save" / "ddp" / "log.txt").read_text()
    assert "cuda:0" in log


def test_hub_default_and_cuda_device(gpu, tmp_path):
    sys.path.insert(0, str(ROOT))
    model = torch.hub.load(str(ROOT), "lmliif", source="local", device="cuda")
    assert gpu.set_device_calls == [0]
    img = model.upscale(str(SAMPLE), scale=2)
    assert img.size == tuple(2 * v for v in Image.open(SAMPLE).size)


def test_hub_cuda_without_cuda_is_one_line():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match="CUDA is not available"):
        torch.hub.load(str(ROOT), "lmliif", source="local", device="cuda")


def test_inference_api_on_a_cuda_model(gpu):
    import models
    from models.inference import upscale_image

    dev = pick_device("auto")
    model = models.load_model(ROOT / "weights/lmliif_edsr-b_cpu.pth", device=dev)
    out = upscale_image(model, SAMPLE, scale=1.5)
    assert out.shape[0] == 3 and set(gpu.placements) == {0}


def test_gpu_check_dry_run_under_the_stand_in(tmp_path):
    """gpu_check's own default (--device cuda) on a machine that has a GPU: every subprocess
    sees the stand-in, so the run-time device paths of the steps are exercised here."""
    env = fake_cuda.env_for(count=1)
    p = subprocess.run([sys.executable, "scripts/gpu_check.py", "--quick", "--steps", "env,devices",
                        "--out", str(tmp_path / "g")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    summary = (tmp_path / "g" / "summary.md").read_text()
    assert p.returncode == 0, summary + p.stderr[-2000:]
    assert "FAILED" not in summary, summary


def test_gpu_check_on_a_cpu_only_machine_says_so_and_fails(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    env = {k: v for k, v in os.environ.items() if k != fake_cuda.ENV}
    p = subprocess.run([sys.executable, "scripts/gpu_check.py", "--out", str(tmp_path / "g")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "CUDA is not available" in p.stderr and "--device cpu" in p.stderr
