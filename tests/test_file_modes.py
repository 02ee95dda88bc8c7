"""Files the project writes follow the umask (checkpoints were 0600 while images were not)."""
from __future__ import annotations

import os
import stat

import pytest
import torch

from utils.checkpoint import save_atomic
from utils.images import save_image


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_checkpoints_and_images_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        save_atomic({"w": torch.zeros(2)}, tmp_path / "ck.pth")
        save_atomic({"w": torch.ones(2)}, tmp_path / "ck.pth")  # replacing keeps following it
        save_image(torch.zeros(3, 2, 2), tmp_path / "im.png")
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "ck.pth").stat().st_mode) == want
    assert stat.S_IMODE((tmp_path / "im.png").stat().st_mode) == want
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pth", "im.png"]
