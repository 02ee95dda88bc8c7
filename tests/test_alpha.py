"""Colour hidden under fully transparent pixels must not leak into the upscaled edge (issue: a
green/magenta rim around a hard circular mask)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT

BUNDLED = ROOT / "weights" / "lmliif_edsr-b_cpu.pth"


def _disc_over_green(n: int = 48) -> Image.Image:
    """A grey-ish textured disc (alpha 255) on saturated green that is fully transparent."""
    yy, xx = np.mgrid[0:n, 0:n]
    inside = (yy - n / 2 + 0.5) ** 2 + (xx - n / 2 + 0.5) ** 2 <= (n * 0.35) ** 2
    rgb = np.zeros((n, n, 3), np.uint8)
    rgb[...] = (0, 255, 0)                                   # hidden colour
    tex = (110 + 40 * np.sin(xx / 3.0) * np.cos(yy / 4.0)).astype(np.uint8)
    rgb[inside] = np.stack([tex, tex, tex], -1)[inside]     # visible grey texture
    alpha = np.where(inside, 255, 0).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


def _green_excess(rgba: np.ndarray, min_alpha: int = 1) -> int:
    rgb = rgba[..., :3].astype(np.int32)
    excess = rgb[..., 1] - np.maximum(rgb[..., 0], rgb[..., 2])
    return int(((excess > 30) & (rgba[..., 3] >= min_alpha)).sum())


def test_fill_transparent_takes_colour_from_visible_neighbours():
    from utils.images import fill_transparent

    rgb = torch.zeros(3, 4, 5)
    rgb[1] = 1.0                       # green everywhere ...
    rgb[:, 1:3, 1:3] = 0.25            # ... except a visible grey 2x2 block
    alpha = np.zeros((4, 5), np.uint8)
    alpha[1:3, 1:3] = 255
    out = fill_transparent(rgb, alpha)
    assert torch.allclose(out, torch.full_like(out, 0.25))       # every hidden pixel gets the grey
    alpha[0, 0] = 128                  # partly visible pixels keep their own colour
    out = fill_transparent(rgb, alpha)
    assert torch.equal(out[:, 0, 0], rgb[:, 0, 0])
    assert torch.equal(fill_transparent(rgb, np.zeros((4, 5), np.uint8)), rgb)  # nothing visible: unchanged


def test_fill_transparent_numpy_equals_tensor():
    """One implementation (numpy) serves the PyTorch path (tensors) and the ONNX runner (arrays)."""
    from utils.images import fill_transparent

    rng = np.random.default_rng(3)
    for h, w in ((1, 7), (9, 13), (32, 31)):
        rgb = rng.random((3, h, w), dtype=np.float32)
        alpha = (rng.integers(0, 256, (h, w)) * (rng.random((h, w)) > 0.75)).astype(np.uint8)
        alpha.flat[0] = 200  # at least one visible pixel
        out = fill_transparent(rgb, alpha)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32
        assert np.array_equal(fill_transparent(torch.from_numpy(rgb), alpha).numpy(), out)
        assert np.array_equal(out[:, alpha > 0], rgb[:, alpha > 0])


@pytest.mark.skipif(not BUNDLED.exists(), reason="needs the bundled model weights/lmliif_edsr-b_cpu.pth")
def test_rgba_upscale_has_no_fringe_from_hidden_colour(tmp_path):
    import models
    from models.inference import upscale_image
    from utils.images import to_pil

    src = _disc_over_green()
    path = tmp_path / "disc.png"
    src.save(path)
    ref = np.asarray(src.resize((192, 192), Image.BICUBIC))   # Pillow premultiplies: no fringe
    assert _green_excess(ref) == 0
    model = models.load_model(BUNDLED)
    out = to_pil(upscale_image(model, path, scale=4))
    assert out.mode == "RGBA" and out.size == (192, 192)
    assert _green_excess(np.asarray(out)) == 0
    # the hidden colour never matters for what is visible
    alt = np.asarray(src).copy()
    alt[alt[..., 3] == 0, :3] = (255, 0, 255)
    out2 = np.asarray(to_pil(upscale_image(model, Image.fromarray(alt, "RGBA"), scale=4)))
    vis = np.asarray(out)[..., 3] > 0
    assert np.abs(np.asarray(out)[vis].astype(int) - out2[vis].astype(int)).max() <= 1
