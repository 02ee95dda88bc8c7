"""Python use from outside the repository: torch.hub entry points and the README's snippet."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT

BUNDLED = ROOT / "weights" / "lmliif_edsr-b_cpu.pth"


def _snippet(tag: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- snippet: {tag} .*?-->\s*```python\n(.*?)```", text, re.S)
    assert m, f"README.md has no snippet {tag!r}"
    return m.group(1)


@pytest.mark.skipif(not BUNDLED.exists(), reason="needs the bundled model weights/lmliif_edsr-b_cpu.pth")
def test_readme_hub_snippet_runs_from_outside_the_repository(tmp_path):
    code = _snippet("python-hub")
    assert 'REPO = "path/to/this/clone"' in code
    code = code.replace('"path/to/this/clone"', repr(str(ROOT)))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "shapes_x4.png") as im, Image.open(ROOT / "samples" / "shapes.png") as src:
        assert im.size == (src.width * 4, src.height * 4) and im.mode == "RGB"


@pytest.mark.skipif(not BUNDLED.exists(), reason="needs the bundled model weights/lmliif_edsr-b_cpu.pth")
def test_hub_lmliif_is_the_bundled_model():
    import models

    hub = torch.hub.load(str(ROOT), "lmliif", source="local")
    ref = models.load_model(BUNDLED)
    assert not hub.training and type(hub) is type(ref)
    sd, sd_ref = hub.state_dict(), ref.state_dict()
    assert sd.keys() == sd_ref.keys() and all(torch.equal(sd[k], sd_ref[k]) for k in sd)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (9, 11), dtype=np.uint8))  # grayscale
    out = hub.upscale(img, size=(25, 20))                 # (H, W)
    assert out.mode == "L" and out.size == (20, 25)       # PIL: (W, H)


def test_hub_other_entry_points_build_untrained_or_refuse_other_models(tmp_path):
    from utils.errors import UserError

    m = torch.hub.load(str(ROOT), "liif", source="local")
    assert type(m).__name__ == "LIIF" and not m.training
    if BUNDLED.exists():
        with pytest.raises(UserError, match="'lmliif' model, not 'lte'"):
            torch.hub.load(str(ROOT), "lte", source="local", checkpoint=str(BUNDLED))
