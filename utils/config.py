"""YAML configs: safe loading and validation against a schema, with errors that name the file,
the key path and what is allowed.

Specs (``{'name', 'args'}``) are checked against the registries the caller passes in: a key
``model``/``*_spec`` names a model, ``dataset``/``wrapper`` a dataset. Numbers written like
``1e-4`` (which YAML 1.1 reads as a string) are accepted where a float is expected.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from utils.errors import SpecError, UserError
from utils.registry import Registry


class ConfigError(UserError):
    """A config file is unreadable or does not match its schema."""


@dataclass(frozen=True)
class Field:
    kind: Any                       # type or tuple of types; 'spec' for a component spec
    required: bool = False
    default: Any = None
    schema: Mapping[str, "Field"] | None = None   # for nested mappings
    registry: str | None = None     # for kind == 'spec': which registry names it
    item: Any = None                # element type for lists
    choices: tuple | None = None
    minimum: float | None = None    # numbers: smallest allowed value
    injected: tuple = ()            # spec args the code supplies (a wrapper's inner dataset)
    help: str = ""


def _type_name(kind: Any) -> str:
    if kind == "spec":
        return "a spec {name, args}"
    if isinstance(kind, tuple):
        return " or ".join(_type_name(k) for k in kind)
    return {dict: "a mapping", list: "a list", str: "a string", int: "an integer", float: "a number",
            bool: "true/false"}.get(kind, getattr(kind, "__name__", str(kind)))


def _coerce(value: Any, kind: Any) -> tuple[bool, Any]:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    for k in kinds:
        if k is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return True, float(value)
            if isinstance(value, str):
                try:
                    return True, float(value)
                except ValueError:
                    pass
        elif k is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return True, value
        elif k is bool:
            if isinstance(value, bool):
                return True, value
        elif isinstance(value, k):
            return True, value
    return False, value


class Validator:
    def __init__(self, path: str, registries: Mapping[str, Registry] | None = None) -> None:
        self.path = path
        self.registries = dict(registries or {})

    def fail(self, key: str, msg: str) -> None:
        raise ConfigError(f"{self.path}: {key}: {msg}" if key else f"{self.path}: {msg}")

    def mapping(self, data: Any, schema: Mapping[str, Field], key: str = "") -> dict:
        if not isinstance(data, Mapping):
            self.fail(key, f"expected a mapping, got {type(data).__name__}")
        out = {}
        for k, v in data.items():
            sub = f"{key}.{k}" if key else str(k)
            if k not in schema:
                hint = difflib.get_close_matches(str(k), list(schema), n=1)
                did = f" (did you mean {hint[0]!r}?)" if hint else ""
                self.fail(sub, f"unknown key{did}; allowed: {', '.join(schema)}")
            out[k] = self.value(v, schema[k], sub)
        for k, f in schema.items():
            if k not in out:
                if f.required:
                    self.fail(f"{key}.{k}" if key else k, f"missing required key ({_type_name(f.kind)})")
                if f.default is not None:
                    out[k] = f.default
        return out

    def value(self, v: Any, f: Field, key: str) -> Any:
        if f.kind == "spec":
            return self.spec(v, f.registry or "model", key, f.injected)
        if v is None and not f.required:
            return None
        ok, v2 = _coerce(v, f.kind)
        if not ok:
            self.fail(key, f"expected {_type_name(f.kind)}, got {v!r:.60}")
        if f.choices is not None and v2 not in f.choices:
            self.fail(key, f"{v2!r} is not allowed; allowed: {', '.join(map(str, f.choices))}")
        if f.minimum is not None and isinstance(v2, (int, float)) and not v2 >= f.minimum:
            self.fail(key, f"must be at least {f.minimum:g}, got {v2!r}")
        if f.schema is not None:
            v2 = self.mapping(v2, f.schema, key)
        if f.item is not None:
            items = []
            for i, x in enumerate(v2):
                ok, x2 = _coerce(x, f.item)
                if not ok:
                    self.fail(f"{key}[{i}]", f"expected {_type_name(f.item)}, got {x!r:.60}")
                items.append(x2)
            v2 = items
        return v2

    def spec(self, v: Any, registry: str, key: str, injected: tuple = (), nested: bool = False) -> dict:
        if not isinstance(v, Mapping) or "name" not in v:
            self.fail(key, "expected a spec {name: ..., args: {...}}")
        extra = set(v) - {"name", "args", "sd"}
        if extra:
            self.fail(f"{key}.{sorted(extra)[0]}", "unknown key; allowed: name, args")
        reg = self.registries.get(registry)
        args = v.get("args") or {}
        if not isinstance(args, Mapping):
            self.fail(f"{key}.args", f"expected a mapping, got {type(args).__name__}")
        if reg is not None:
            try:
                reg.lookup(v["name"])
                reg.check_args(v["name"], {**{k: None for k in injected}, **args}, allow_missing=nested)
            except SpecError as e:
                self.fail(key, str(e))
            args = dict(args)
            for k, a in args.items():
                if isinstance(a, Mapping) and "name" in a and set(a) <= {"name", "args"}:  # a nested spec
                    args[k] = self.spec(a, "model", f"{key}.args.{k}", nested=True)
        return {"name": v["name"], "args": dict(args)}


def read_yaml(path: str | os.PathLike, what: str = "config") -> Any:
    """``yaml.safe_load`` a file (never runs code), with one-line errors that call it ``what``."""
    path = os.fspath(path)
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} path is a directory: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        problem = getattr(e, "problem", None) or (first[0] if first else "invalid YAML")
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None


REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_VAR = "LMF_DATA"


def data_root() -> Path:
    """Where the configs' ``${LMF_DATA}`` points: ``$LMF_DATA`` if set (``~`` expanded, relative
    paths taken from the current directory), else ``load/`` in the repository."""
    env = os.environ.get(DATA_VAR)
    return Path(os.path.expanduser(env)).absolute() if env else REPO_ROOT / "load"


def expand_data_root(data: Any) -> Any:
    """Replace ``${LMF_DATA}`` in every string of a loaded config by :func:`data_root`."""
    token = "${" + DATA_VAR + "}"
    if isinstance(data, str):
        return data.replace(token, str(data_root())) if token in data else data
    if isinstance(data, Mapping):
        return {k: expand_data_root(v) for k, v in data.items()}
    if isinstance(data, list):
        return [expand_data_root(v) for v in data]
    return data


def load_config(path: str | os.PathLike, schema: Mapping[str, Field],
                registries: Mapping[str, Registry] | None = None) -> dict:
    """Read and validate a YAML config; return it with defaults filled in and ``${LMF_DATA}``
    replaced by the data root."""
    data = read_yaml(path)
    if data is None:
        raise ConfigError(f"{os.fspath(path)}: the config is empty")
    return Validator(os.fspath(path), registries).mapping(expand_data_root(data), schema)


# --- schemas of the project's configs --------------------------------------------------------
SPEC_DATASET = Field("spec", required=True, registry="dataset")
DATASET = {
    "dataset": SPEC_DATASET,
    "wrapper": Field("spec", registry="dataset", injected=("dataset",)),
    "batch_size": Field(int, default=1, minimum=1),
}
_NORM_PART = {"sub": Field(list, item=float, default=[0.5]), "div": Field(list, item=float, default=[0.5])}
DATA_NORM = {"inp": Field(dict, schema=_NORM_PART, default={"sub": [0.5], "div": [0.5]}),
             "gt": Field(dict, schema=_NORM_PART, default={"sub": [0.5], "div": [0.5]})}
_DEFAULT_NORM = {"inp": {"sub": [0.5], "div": [0.5]}, "gt": {"sub": [0.5], "div": [0.5]}}

TRAIN = {
    "train_dataset": Field(dict, required=True, schema=DATASET),
    "val_dataset": Field(dict, schema=DATASET),
    "data_norm": Field(dict, schema=DATA_NORM, default=_DEFAULT_NORM),
    "eval_type": Field(str),
    "eval_bsize": Field(int, minimum=1),
    "model": Field("spec", required=True, registry="model"),
    "optimizer": Field(dict, required=True, schema={
        "name": Field(str, required=True, choices=("adam", "adamw", "sgd")),
        "args": Field(dict, schema={"lr": Field(float, required=True, minimum=0), "weight_decay": Field(float),
                                    "betas": Field(list, item=float), "momentum": Field(float),
                                    "fused": Field(bool, help="the fused implementation (default: true)"),
                                    "foreach": Field(bool)}),
    }),
    "epoch_max": Field(int, required=True, minimum=1),
    "multi_step_lr": Field(dict, schema={"milestones": Field(list, item=int, required=True),
                                         "gamma": Field(float, default=0.5)}),
    "epoch_val": Field(int, minimum=1),
    "epoch_save": Field(int, minimum=1),
    "resume": Field(str, help="official key; ignored (use --resume)"),
    "seed": Field(int, default=0),
    "num_workers": Field(int, default=4, minimum=0),
    "max_iters_per_epoch": Field(int, minimum=1, help="cap on iterations per epoch (small CPU runs)"),
    "max_minutes": Field(float, minimum=0, help="stop (after saving) once this much wall time has passed"),
    "scale_max": Field(float, default=4.0, help="training scale range for validation cell clipping"),
    "cosine_lr": Field(dict, schema={"eta_min": Field(float, default=0.0, minimum=0)},
                       help="cosine decay of the learning rate over all epoch_max epochs' iterations"),
    "warmup_iters": Field(int, minimum=1, help="linear learning-rate warm-up over the first N iterations"),
    "iter_save": Field(int, minimum=1, help="also write epoch-last.pth every N iterations within an epoch "
                       "(a resume continues from there)"),
    "init_from": Field(dict, schema={
        "checkpoint": Field(str, required=True),
        "modules": Field(list, item=str, required=True, help="parameter-name prefixes, e.g. [encoder]"),
    }, help="copy these submodules' weights from another checkpoint before training"),
    "freeze": Field(dict, schema={
        "modules": Field(list, item=str, required=True),
        "epochs": Field(int, minimum=0, help="frozen for the first N epochs; leave out: for good"),
    }),
    "teacher": Field(dict, schema={
        "checkpoint": Field(str, required=True),
        "weight": Field(float, default=1.0, minimum=0, help="L1 to the teacher's RGB"),
        "gt_weight": Field(float, default=0.0, minimum=0, help="L1 to the HR pixels"),
        "cache": Field(bool, default=False, help="draw the training samples once and cache the teacher's "
                       "RGB (and the frozen encoder's features) per sample"),
    }),
}

TEST = {
    "test_dataset": Field(dict, required=True, schema=DATASET),
    "data_norm": Field(dict, schema=DATA_NORM, default=_DEFAULT_NORM),
    "eval_type": Field(str),
    "eval_bsize": Field(int, minimum=1),
}
