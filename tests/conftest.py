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

torch.set_num_threads(min(2, torch.get_num_threads()))


def need(path: Path) -> Path:
    """Skip the calling test when a shared file/folder is absent (a user's fresh clone)."""
    if not path.exists():
        pytest.skip(f"needs {path} (the project's shared fixtures/data; absent in a fresh clone)")
    return path
