"""Shared test helpers: where ../shared is, and skipping cleanly when it is absent."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("LMF_SHARED", ROOT.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "official"
DATA = SHARED / "data"
if DATA.is_dir():  # the shipped configs read ${LMF_DATA}: point it at the project's shared copy
    os.environ.setdefault("LMF_DATA", str(DATA))

torch.set_num_threads(min(2, torch.get_num_threads()))

from utils.devices import no_tf32, test_device  # noqa: E402

# Device of the device-aware tests (golden, Triton, train/resume): $LMF_TEST_DEVICE, default cpu.
# On CUDA, exact fp32 needs TF32 off for matmuls *and* cuDNN convolutions (PyTorch allows TF32
# in cuDNN convolutions by default): without that the golden outputs are off by ~1e-3.
try:
    DEVICE = test_device()
except ValueError as exc:
    pytest.exit(f"error: {exc}", returncode=2)
no_tf32()


def need(path: Path) -> Path:
    """Skip the calling test when a shared file/folder is absent (a user's fresh clone)."""
    if not path.exists():
        pytest.skip(f"needs {path} (the project's shared fixtures/data; absent in a fresh clone)")
    return path
