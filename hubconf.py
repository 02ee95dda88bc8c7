"""torch.hub entry points: load this repository's models from anywhere.

    import torch
    model = torch.hub.load("path/to/this/repo", "lmliif", source="local")   # bundled demo weights
    model.upscale(PIL.Image.open("photo.png"), scale=4).save("photo_x4.png")

Entry points (each a function below; ``torch.hub.load(REPO, NAME, source="local", **kwargs)``):

* ``lmliif(pretrained=True, checkpoint=None, encoder="edsr-baseline", device="cpu", cmsr=False,
  precision="fp32")``:
  LM-LIIF; by default the bundled demo model ``weights/lmliif_edsr-b_cpu.pth`` (``cmsr=True``
  switches CMSR on with its bundled Scale2Mod table).
* ``lmlte``, ``lmciaosr``, ``liif``, ``lte``: ``(checkpoint=None, encoder="edsr-baseline", device="cpu",
  precision="fp32")``.

``device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (``cuda`` is the current GPU; an absent one is
a one-line error). ``precision="bf16"`` runs the encoder (and on CUDA the latent stage) in
bfloat16: faster where the hardware has bf16, at the PSNR cost measured in the README.

With ``checkpoint`` (a path to a checkpoint of that model, official LIIF/LTE/LMF layout or ours)
the weights are loaded safely (``weights_only=True``); without one, the model is built untrained
from the official recipe ``configs/train/train_<encoder>-<name>.yaml`` (``encoder``:
``edsr-baseline``, ``rdn`` or ``swinir``), e.g. to train or fine-tune it yourself. Every model
returned is in eval mode and has ``model.upscale(image, scale=None, size=None)``: a file path or
PIL image in, a PIL image out (alpha and grayscale kept; ``scale`` a factor or (sy, sx), ``size`` (H, W)).
"""
from pathlib import Path as _Path

dependencies = ["torch", "numpy", "yaml", "PIL"]

_ROOT = _Path(__file__).resolve().parent
_BUNDLED = _ROOT / "weights" / "lmliif_edsr-b_cpu.pth"
_BUNDLED_CMSR = _ROOT / "weights" / "cmsr_lmliif_edsr-b_cpu.yaml"


def _upscale(model, image, scale=None, size=None, **kwargs):
    """``model.upscale``: an image file path or PIL image -> upscaled PIL image (``scale``: one
    factor or (sy, sx); ``size``: (height, width)); alpha and grayscale are kept. Other keyword
    arguments go to :func:`models.inference.upscale_image` (``bsize``, ``cmsr``, ``stats``,
    ``progress``)."""
    from models.inference import upscale_image
    from utils.images import to_pil

    return to_pil(upscale_image(model, image, scale, size, **kwargs))


def _with_upscale(model):
    import types

    model.upscale = types.MethodType(_upscale, model)
    return model


def _load(name, checkpoint=None, encoder="edsr-baseline", device="cpu", cmsr_spec=None, precision="fp32"):
    import models
    from utils.cli import PRECISIONS, pick_device
    from utils.errors import UserError

    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    dev = pick_device(str(device), flag="device")  # "cuda" -> this process's current GPU, with its index
    return _with_upscale(models.set_precision(_build(name, checkpoint, encoder, dev, cmsr_spec), precision))


def _build(name, checkpoint, encoder, device, cmsr_spec):
    import models
    from utils.checkpoint import load_checkpoint
    from utils.config import TRAIN, load_config
    from utils.errors import UserError

    if checkpoint is not None:
        ckpt = load_checkpoint(checkpoint)
        got = (ckpt.get("model") or {}).get("name") if isinstance(ckpt.get("model"), dict) else None
        if got != name:
            raise UserError(f"{checkpoint} holds a {got!r} model, not {name!r}; use the entry point {got!r}")
        return models.load_model(ckpt, device=device, cmsr_spec=cmsr_spec)
    recipe = _ROOT / "configs" / "train" / f"train_{encoder}-{name}.yaml"
    if not recipe.exists():
        raise UserError(f"no recipe for encoder {encoder!r} and model {name!r} ({recipe.name}); "
                        "encoders: edsr-baseline, rdn, swinir")
    import datasets  # noqa: F401  (registers the dataset names the recipe's validation names)
    from datasets import DATASETS
    from models.registry import MODELS

    spec = load_config(recipe, TRAIN, {"model": MODELS, "dataset": DATASETS})["model"]
    if cmsr_spec is not None:
        spec["args"]["cmsr_spec"] = cmsr_spec
    return models.make(spec).to(device).eval()


def lmliif(pretrained=True, checkpoint=None, encoder="edsr-baseline", device="cpu", cmsr=False, precision="fp32"):
    """LM-LIIF (LMF). Default: the bundled demo model (EDSR-baseline, trained on the CPU; see
    weights/README.md). ``pretrained=False``: untrained from the official recipe; ``checkpoint``:
    your own weights. ``cmsr=True`` (bundled model only) uses the bundled Scale2Mod table."""
    spec = {"s2m_tables": str(_BUNDLED_CMSR)} if cmsr else None
    if cmsr and (checkpoint is not None or not pretrained):
        raise ValueError("cmsr=True uses the bundled model's table; for other weights build a table with "
                         "scripts/init_cmsr.py and load with models.load_model(path, cmsr_spec=...)")
    if checkpoint is None and pretrained:
        if encoder != "edsr-baseline":
            raise ValueError("the bundled model uses encoder='edsr-baseline'; pass pretrained=False or a checkpoint")
        checkpoint = _BUNDLED
    return _load("lmliif", checkpoint, encoder, device, spec, precision)


def lmlte(checkpoint=None, encoder="edsr-baseline", device="cpu", precision="fp32"):
    """LM-LTE (LMF): your checkpoint, or untrained from the official recipe."""
    return _load("lmlte", checkpoint, encoder, device, precision=precision)


def lmciaosr(checkpoint=None, encoder="edsr-baseline", device="cpu", precision="fp32"):
    """LM-CiaoSR (LMF): your checkpoint, or untrained from the official recipe."""
    return _load("lmciaosr", checkpoint, encoder, device, precision=precision)


def liif(checkpoint=None, encoder="edsr-baseline", device="cpu", precision="fp32"):
    """LIIF: your checkpoint (e.g. the official LIIF release), or untrained from the official recipe."""
    return _load("liif", checkpoint, encoder, device, precision=precision)


def lte(checkpoint=None, encoder="edsr-baseline", device="cpu", precision="fp32"):
    """LTE: your checkpoint (e.g. the official LTE release), or untrained from the official recipe."""
    return _load("lte", checkpoint, encoder, device, precision=precision)
