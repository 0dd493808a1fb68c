"""Registries of model classes by name, and the ``defaults`` / ``resolve`` mixin of a registered class."""
from __future__ import annotations

import copy
from typing import Callable, Dict

from tfmsr.core.checks import check_param_types
from tfmsr.core.errors import ConfigError


class Registry:
    """Model classes by name: ``register(name)`` (a class decorator that also sets ``model_name``),
    ``available()`` (name -> first docstring line) and ``get(name)``; ``load_all`` imports the modules
    that register. ``kind`` names the registry in errors ("model", "retrieval model")."""

    def __init__(self, kind: str, load_all: Callable[[], None]):
        self.kind, self._load_all = kind, load_all
        self._classes: Dict[str, type] = {}

    def register(self, name: str):
        def wrap(cls):
            if name in self._classes:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            cls.model_name = name
            self._classes[name] = cls
            return cls

        return wrap

    def available(self) -> Dict[str, str]:
        self._load_all()
        return {n: (c.__doc__ or "").strip().splitlines()[0] for n, c in sorted(self._classes.items())}

    def get(self, name: str) -> type:
        self._load_all()
        if name not in self._classes:
            raise ConfigError(f"unknown {self.kind} '{name}' (available: {', '.join(sorted(self._classes))})")
        return self._classes[name]


class Parametrized:
    """Mixin of a registered model class: ``defaults`` (merged along the MRO) and ``resolve(params)``,
    which refuses unknown keys, naming ``kind`` and the model."""

    kind = "model"
    model_name = "base"
    defaults: dict = {}

    @classmethod
    def all_defaults(cls) -> dict:
        merged = {}
        for klass in reversed(cls.__mro__):
            merged.update(getattr(klass, "defaults", {}) or {})
        return merged

    @classmethod
    def resolve(cls, params: dict) -> dict:
        defaults = cls.all_defaults()
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise ConfigError(f"{cls.kind} '{cls.model_name}': unknown parameter(s) {unknown} "
                              f"(known: {', '.join(sorted(defaults))})")
        check_param_types(cls.kind, cls.model_name, defaults, params)
        # copies: Keras wraps the lists of a model's params in place, which must never reach the class
        # defaults (nor the caller's config, written to run.yaml)
        return copy.deepcopy({**defaults, **params})
