"""LR feature encoders (registered by name; all used with no upsampling, out_dim 64)."""
from . import edsr, rdn, swinir  # noqa: F401  (importing registers the encoders)
from .edsr import EDSR, EDSRBaseline  # noqa: F401
from .rdn import RDN  # noqa: F401
from .swinir import SwinIR  # noqa: F401
from .base import Encoder  # noqa: F401
