"""Small training set-ups shared by the training tests (synthetic data, a tiny LM-LIIF)."""
from __future__ import annotations

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
