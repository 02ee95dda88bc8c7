"""What every LR feature encoder is to the decoders."""
from __future__ import annotations

import torch.nn as nn


class Encoder(nn.Module):
    """(B, 3, h, w) LR image -> (B, out_dim, h, w) features (no upsampling in this project)."""

    out_dim: int
