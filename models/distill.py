"""Transfer and distillation for training: start from another checkpoint, freeze parts, learn
from a teacher model.

* :func:`init_from` copies the parameters under chosen prefixes (``encoder``, ``hypernet`` ...)
  from any loadable checkpoint into the model being trained.
* :func:`set_frozen` switches ``requires_grad`` off (or back on) for parameters under chosen
  prefixes; the optimizer keeps them, and Adam/SGD leave a parameter whose gradient is None
  untouched, so frozen weights stay bit-identical.
* :class:`Teacher` wraps a loaded model in eval mode and predicts RGB at the student's queries
  without gradients.
* :class:`CachedSamples` draws the training samples once and keeps, per sample, the teacher's
  RGB at its queries and — while the student's encoder is frozen — the encoder features. The
  teacher's wide per-query MLP and the encoder dominate a distillation step on the CPU; with both
  cached an epoch costs only the student's decoder.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence, Sized

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, default_collate

from utils.checkpoint import load_checkpoint, model_spec
from utils.errors import UserError

from .decoder import ImplicitDecoder
from .loading import load_model


def _matches(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def init_from(model: nn.Module, path: str, prefixes: Sequence[str]) -> int:
    """Copy the checkpoint's tensors under ``prefixes`` into ``model``; returns how many.

    Every prefix must match at least one key of both state dicts, and the shapes must agree.
    """
    ckpt = load_checkpoint(path, map_location="cpu")
    src = model_spec(ckpt, path).get("sd")
    if not isinstance(src, Mapping):
        raise UserError(f"{path}: the checkpoint holds no model state dict")
    own = model.state_dict()
    chosen = {}
    for p in prefixes:
        mine = [k for k in own if _matches(k, [p])]
        if not mine:
            raise UserError(f"init_from: the model has no parameters under {p!r}")
        missing = [k for k in mine if k not in src]
        if missing:
            raise UserError(f"init_from: {path} lacks {missing[0]} (and {len(missing) - 1} more) under {p!r}; "
                            "is it a checkpoint of a model with the same component?")
        for k in mine:
            if tuple(src[k].shape) != tuple(own[k].shape):
                raise UserError(f"init_from: {k} has shape {tuple(src[k].shape)} in {path} but "
                                f"{tuple(own[k].shape)} in the model")
            chosen[k] = src[k]
    with torch.no_grad():
        for k, v in chosen.items():
            own[k].copy_(v)
    return len(chosen)


def set_frozen(model: nn.Module, prefixes: Sequence[str], frozen: bool) -> int:
    """requires_grad = not frozen for the parameters under ``prefixes``; returns how many."""
    n = 0
    for name, p in model.named_parameters():
        if _matches(name, prefixes):
            p.requires_grad_(not frozen)
            n += 1
    if n == 0:
        raise UserError(f"freeze: the model has no parameters under {', '.join(map(repr, prefixes))}")
    return n


def all_frozen(model: nn.Module, prefix: str) -> bool:
    params = [p for n, p in model.named_parameters() if _matches(n, [prefix])]
    return bool(params) and not any(p.requires_grad for p in params)


class Teacher:
    """A loaded model in eval mode whose RGB at the student's queries is the target."""

    def __init__(self, path: str, device: torch.device) -> None:
        self.path = path
        self.model = load_model(path, device=device)
        for p in self.model.parameters():
            p.requires_grad_(False)

    def shares_encoder(self, student: ImplicitDecoder) -> bool:
        """True when the teacher's encoder has exactly the student's encoder weights (then the
        student's frozen features can serve the teacher too)."""
        mine = dict(student.encoder.state_dict())
        theirs = dict(self.model.encoder.state_dict())
        return bool(mine) and mine.keys() == theirs.keys() and all(
            mine[k].shape == theirs[k].shape and torch.equal(mine[k].to(theirs[k].device), theirs[k])
            for k in mine)

    @torch.no_grad()
    def predict(self, inp: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor,
                feat: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher RGB (B, Q, 3) in the normalised space; ``inp`` normalised."""
        m = self.model
        lat = m.latent(feat if feat is not None else m.encode(inp), inp, cell)
        return m.decode(lat, coord, cell)


_ONE_SHAPE = ("teacher.cache needs training samples of one shape (set inp_size and sample_q in the "
              "train_dataset wrapper)")


def _collate_same_shape(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    for s in samples[1:]:
        for k, v in s.items():
            if v.shape != samples[0][k].shape:
                raise UserError(_ONE_SHAPE + f" ({k}: {tuple(v.shape)} and {tuple(samples[0][k].shape)})")
    return default_collate(samples)


class CachedSamples(Dataset):
    """The samples of ``dataset`` drawn once, with the teacher's targets and, optionally, the
    frozen encoder's features (stored as float16 to halve the memory).

    Items are the wrapped dataset's dicts plus ``target`` (teacher RGB, normalised space) and
    ``feat``. The wrapped dataset must give samples of one shape (fixed ``inp_size`` and
    ``sample_q``), as training datasets do.
    """

    def __init__(self, dataset: Dataset, teacher: Teacher, student: ImplicitDecoder, device: torch.device,
                 norm: Mapping[str, Sequence[float]], cache_features: bool, batch_size: int = 16,
                 progress: Any = None) -> None:
        from .inference import normalise

        if not isinstance(dataset, Sized):
            raise TypeError("CachedSamples needs a dataset with a length")
        n = len(dataset)
        # filled in place, batch by batch: the peak memory is the cache itself, not twice it
        self.items: dict[str, torch.Tensor] = {}
        share = cache_features and teacher.shares_encoder(student)
        self.cache_features = cache_features
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=_collate_same_shape)
        was_training = student.training
        student.eval()
        with torch.no_grad():
            for i, batch in enumerate(loader):
                inp = normalise(batch["inp"].to(device), norm["sub"], norm["div"])
                coord, cell = batch["coord"].to(device), batch["cell"].to(device)
                feat = student.encode(inp) if cache_features else None
                target = teacher.predict(inp, coord, cell, feat=feat if share else None)
                parts = {**batch, "target": target.cpu()}
                if feat is not None:
                    parts["feat"] = feat.to(torch.float16).cpu()
                self._store(parts, i * batch_size, n)
                if progress is not None:
                    progress(min((i + 1) * batch_size, n), n)
        student.train(was_training)

    def _store(self, parts: Mapping[str, torch.Tensor], start: int, n: int) -> None:
        for k, v in parts.items():
            if k not in self.items:
                self.items[k] = v.new_empty((n, *v.shape[1:]))
            dest = self.items[k]
            if dest.shape[1:] != v.shape[1:]:
                raise UserError(_ONE_SHAPE + f" ({k}: {tuple(v.shape[1:])} after {tuple(dest.shape[1:])})")
            dest[start:start + len(v)] = v

    def drop_features(self) -> None:
        """Forget the cached features (the encoder is no longer frozen)."""
        self.items.pop("feat", None)
        self.cache_features = False

    def __len__(self) -> int:
        return len(self.items["inp"])

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        out = {k: v[idx] for k, v in self.items.items()}
        if "feat" in out:
            out["feat"] = out["feat"].float()
        return out


def frozen_prefixes(spec: Mapping[str, Any] | None, epoch: int) -> list[str]:
    """The prefixes frozen during ``epoch`` under a ``freeze`` config entry."""
    if not spec:
        return []
    until = spec.get("epochs")
    return list(spec["modules"]) if until is None or epoch <= until else []
