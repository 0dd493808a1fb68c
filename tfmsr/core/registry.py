"""Registries of model classes by name, and the typed-parameters mixin (``Params``, ``resolve``) of a
registered class."""
from __future__ import annotations

from typing import Callable, Dict, Type

from tfmsr.core import params as params_
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
    """Mixin of a registered model class: its parameter dataclass ``Params`` (``tfmsr.core.params``; a
    subclass declares its own, inheriting its base's fields), ``resolve(params)`` (the checked plain dict a
    config stores) and ``typed_params(params)`` (the dataclass a model reads, value checks run)."""

    kind = "model"
    model_name = "base"
    Params: Type[params_.Params] = params_.Params

    @classmethod
    def where(cls) -> str:
        """``model 'dnn'``: how messages name the model."""
        return f"{cls.kind} '{cls.model_name}'"

    @classmethod
    def all_defaults(cls) -> dict:
        """Every parameter's default, as a plain dict."""
        return cls.Params().to_dict()

    @classmethod
    def resolve(cls, params: dict) -> dict:
        """The plain dict of every parameter (defaults filled in) after the key and type checks of
        ``tfmsr.core.params.build_params`` (what ``run.yaml`` stores)."""
        return params_.build_params(cls.Params, params, cls.where()).to_dict()

    @classmethod
    def typed_params(cls, params: dict) -> params_.Params:
        """The model's ``Params`` from a config mapping: keys and types checked, then ``Params.check`` (the
        model's value checks; a refusal names the model and carries the key)."""
        typed = params_.build_params(cls.Params, params, cls.where())
        try:
            typed.check()
        except ConfigError as e:
            raise params_.refuse(getattr(e, "key", ""), f"{cls.where()}: {e}") from None
        return typed
