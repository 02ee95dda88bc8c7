"""A name -> class registry, so that YAML configs and checkpoints can name components.

A *spec* is ``{'name': str, 'args': dict}`` (optionally ``'sd'``: a state dict), the layout the
official LIIF/LTE/LMF code uses in configs and checkpoints. Models and datasets each own one
``Registry``; both validate names and arguments the same way.
"""
from __future__ import annotations

import copy
import difflib
import inspect
from typing import Any, Callable, Mapping

from utils.errors import SpecError


class Registry:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type] = {}

    def register(self, name: str) -> Callable[[type], type]:
        """Class decorator: make ``name`` usable in specs."""

        def deco(cls: type) -> type:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.kind} name {name!r} is already taken by {self._classes[name].__name__}")
            self._classes[name] = cls
            return cls

        return deco

    def names(self) -> list[str]:
        return sorted(self._classes)

    def name_of(self, obj: object) -> str | None:
        """The name an instance's class is registered under (None if it is not registered)."""
        for name, cls in self._classes.items():
            if type(obj) is cls:
                return name
        return None

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def lookup(self, name: str) -> type:
        """The class registered under ``name``, or a SpecError listing what exists."""
        if name not in self._classes:
            hint = difflib.get_close_matches(str(name), self._classes, n=1)
            did = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise SpecError(f"unknown {self.kind} {name!r}{did}; known: {', '.join(self.names())}")
        return self._classes[name]

    def accepted_args(self, name: str) -> list[str]:
        params = inspect.signature(self.lookup(name)).parameters  # the constructor's, without self
        return [p for p in params if p != "self" and params[p].kind not in
                (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]

    def check_args(self, name: str, args: Mapping[str, Any], allow_missing: bool = False) -> None:
        """Raise SpecError for an argument the constructor does not take, or (unless
        ``allow_missing``: nested specs whose parent supplies some args) a missing required one."""
        params = inspect.signature(self.lookup(name)).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        allowed = self.accepted_args(name)
        for key in args:
            if key not in allowed:
                raise SpecError(f"{self.kind} {name!r} has no argument {key!r}; allowed: {', '.join(allowed)}")
        missing = [p for p in allowed if params[p].default is inspect.Parameter.empty and p not in args]
        if missing and not allow_missing:
            raise SpecError(f"{self.kind} {name!r} is missing required argument(s): {', '.join(missing)}")

    def make(self, spec: Mapping[str, Any], args: Mapping[str, Any] | None = None) -> Any:
        """Build the component a spec names; ``args`` override the spec's own args."""
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise SpecError(f"a {self.kind} spec must be a mapping with a 'name' key, got {spec!r:.80}")
        name = spec["name"]
        cls = self.lookup(name)
        spec_args = spec.get("args") or {}
        if not isinstance(spec_args, Mapping):
            raise SpecError(f"{self.kind} {name!r}: 'args' must be a mapping, got {type(spec_args).__name__}")
        all_args = copy.deepcopy(dict(spec_args))
        if args:
            all_args.update(args)
        self.check_args(name, all_args)
        return cls(**all_args)
