"""Models: a registry of encoders, decoders (LIIF, LTE, LM-LIIF, LM-LTE, LM-CiaoSR) and their MLPs."""
from .registry import load_state_dict_strict, make, names, register  # noqa: F401
from .loading import load_model  # noqa: F401
from .decoder import set_precision  # noqa: F401
from . import encoders, mlp, liif, lte, lmliif, lmlte, lmciaosr  # noqa: F401  (register components)
