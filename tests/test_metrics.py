"""PSNR (reference calc_psnr semantics) and SSIM on small hand-checkable images."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from utils.errors import UserError
from utils.metrics import parse_eval_type, psnr, ssim

Y_DIFF = (65.738 + 129.057 + 25.064) / 256


def test_parse_eval_type():
    assert parse_eval_type(None) == (0, False)
    assert parse_eval_type("benchmark-4") == (4, True)
    assert parse_eval_type("benchmark", scale=3) == (3, True)
    assert parse_eval_type("div2k-2") == (8, False)
    for bad in ["urban-4", "benchmark-x"]:
        with pytest.raises(UserError):
            parse_eval_type(bad)


@pytest.mark.parametrize("d", [0.1, 0.01, 0.25])
def test_psnr_constant_difference(d):
    hr = torch.full((3, 20, 20), 0.5)
    sr = hr + d
    dd = float(torch.tensor(0.5 + d) - torch.tensor(0.5))  # the float32 difference
    assert psnr(sr, hr) == pytest.approx(-10 * math.log10(dd ** 2), abs=1e-4)
    assert psnr(sr, hr, "div2k-2") == pytest.approx(-10 * math.log10(dd ** 2), abs=1e-4)
    assert psnr(sr, hr, "benchmark-2") == pytest.approx(-10 * math.log10((dd * Y_DIFF) ** 2), abs=1e-3)


def test_psnr_shave_ignores_border():
    hr = torch.rand(3, 32, 32)
    sr = hr.clone()
    sr[:, :4, :] = 0  # differs in the top 4 rows only
    assert math.isfinite(psnr(sr, hr))
    assert psnr(sr, hr, "benchmark-4") == math.inf
    assert math.isfinite(psnr(sr, hr, "benchmark-3"))
    sr = hr.clone()
    sr[:, 7, 10] += 0.5  # div2k-2 shaves 2 + 6 = 8 rows
    assert psnr(sr, hr, "div2k-2") == math.inf
    sr[:, 8, 10] += 0.5
    assert math.isfinite(psnr(sr, hr, "div2k-2"))
    with pytest.raises(ValueError):
        psnr(hr, hr, "benchmark-16")


def test_psnr_batch_is_per_image_and_matches_reference_formula():
    torch.manual_seed(0)
    hr = torch.rand(3, 3, 24, 24)
    sr = (hr + 0.05 * torch.randn_like(hr)).clamp(0, 1)
    for et, scale in [(None, 1), ("benchmark-4", 4), ("div2k-3", 3)]:
        out = psnr(sr, hr, et)
        assert isinstance(out, torch.Tensor) and out.shape == (3,)
        for i in range(3):
            diff = sr[i:i + 1] - hr[i:i + 1]  # the reference, run with batch size 1
            if et and et.startswith("benchmark"):
                w = diff.new_tensor([65.738, 129.057, 25.064]).view(1, 3, 1, 1) / 256
                diff = diff.mul(w).sum(dim=1)
            shave = 0 if et is None else (scale if et.startswith("benchmark") else scale + 6)
            valid = diff[..., shave:-shave, shave:-shave] if shave else diff
            ref = -10 * torch.log10(valid.pow(2).mean())
            assert out[i].item() == ref.item()
            assert psnr(sr[i], hr[i], et) == ref.item()
    assert psnr(sr, hr, "benchmark", scale=4).tolist() == psnr(sr, hr, "benchmark-4").tolist()


def test_psnr_identical_is_inf():
    x = torch.rand(3, 8, 8)
    assert psnr(x, x) == math.inf


def luma(v: float) -> float:
    return 16 / 255 + v * (65.481 + 128.553 + 24.966) / 255


def test_ssim_identical_and_constant_images():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 20, 20)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)  # float32 in, float32 out
    assert torch.allclose(ssim(x.double(), x.double()), torch.ones(2, dtype=torch.float64), atol=1e-12)
    a, b = 0.3, 0.7  # constant gray images: sigma = 0, SSIM = (2 ya yb + C1) / (ya^2 + yb^2 + C1)
    ya, yb = luma(a), luma(b)
    expect = (2 * ya * yb + 1e-4) / (ya ** 2 + yb ** 2 + 1e-4)
    got = ssim(torch.full((3, 16, 16), a, dtype=torch.float64), torch.full((3, 16, 16), b, dtype=torch.float64))
    assert got == pytest.approx(expect, abs=1e-12)


def test_ssim_single_window_by_hand():
    """An 11x11 image has exactly one window: the weighted-moment formula, written out."""
    rng = np.random.default_rng(3)
    x = rng.random((1, 11, 11))
    y = np.clip(x + 0.1 * rng.standard_normal((1, 11, 11)), 0, 1)
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    mx, my = (w * x[0]).sum(), (w * y[0]).sum()
    vx = (w * (x[0] - mx) ** 2).sum()
    vy = (w * (y[0] - my) ** 2).sum()
    cxy = (w * (x[0] - mx) * (y[0] - my)).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    expect = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    got = ssim(torch.from_numpy(x), torch.from_numpy(y))  # one channel = already Y
    assert got == pytest.approx(expect, abs=1e-12)
    assert ssim(torch.from_numpy(y), torch.from_numpy(x)) == pytest.approx(got, abs=1e-12)


def test_ssim_shave_and_errors():
    torch.manual_seed(1)
    hr = torch.rand(3, 40, 40)
    sr = hr.clone()
    sr[:, :, -4:] = 0
    assert ssim(sr, hr) < 0.99
    assert ssim(sr, hr, "benchmark-4") == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError):
        ssim(hr[:, :20, :20], hr[:, :20, :20], "benchmark-5")  # 10x10 left: smaller than the window
    with pytest.raises(ValueError):
        ssim(hr, hr[:, :39])


def test_ssim_in_float32_is_within_1e6_of_float64():
    """SSIM is computed in float32 for float32 inputs (fast on GPUs and the host): on photo-like
    images (smooth structure, texture, flat areas, 8-bit values) it stays within 1e-6 of float64."""
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 240), torch.linspace(0, 1, 320), indexing="ij")
    base = torch.stack([0.5 + 0.4 * torch.sin(7 * xx + 3 * yy), 0.3 + 0.2 * torch.cos(11 * yy), 0.6 * xx * yy])
    base[:, 100:160, 50:120] = 0.42  # a flat patch: variances near 0, where float32 cancels most
    hr = ((base + 0.08 * torch.rand(3, 240, 320)).clamp(0, 1) * 255).round() / 255
    for noise in (0.005, 0.03, 0.1):
        sr = (hr + noise * torch.randn_like(hr)).clamp(0, 1)
        ref = ssim(sr.double(), hr.double(), "benchmark-4")
        assert abs(ssim(sr, hr, "benchmark-4") - ref) < 1e-6
