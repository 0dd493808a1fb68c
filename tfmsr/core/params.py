"""Typed model parameters (DESIGN section 7): each model declares a dataclass ``Params`` (fields inherited
from its base's, the annotation is the type, the default the default); :func:`build_params` makes one from a
config mapping, refusing unknown keys and checking every value against its field's annotation in one place.

Annotations understood: ``bool`` (true/false only), ``int`` (an integer, not a boolean), ``float`` (any
number), ``str``, ``Literal[...]`` (a named choice), ``List[...]``, ``Dict[..., ...]``, ``Optional`` /
``Union`` of those, and ``Any``. Value checks beyond the type (ranges, choices that depend on each other) are
a model's ``Params.check``, which raises :func:`refuse`.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
from numbers import Integral, Real
from typing import Any, Dict, Literal, Mapping, Union, get_args, get_origin, get_type_hints

from tfmsr.core.errors import ConfigError


# an initializer by Keras name (``glorot_uniform``) or spelled out with its scale (``{normal: 0.05}``)
Initializer = Union[str, Dict[str, float]]


@dataclasses.dataclass
class Params:
    """Base of every model's parameter dataclass."""

    def check(self) -> None:
        """Value checks beyond the annotations (ranges, dependent choices): :func:`refuse` on the first bad one."""

    def to_dict(self) -> dict:
        """The plain nested dict of the values (what ``run.yaml`` stores; fresh lists, never shared)."""
        return dataclasses.asdict(self)


def default(value):
    """The field of a mutable default (``hidden: List[int] = default([256, 128])``): each instance gets a copy."""
    return dataclasses.field(default_factory=lambda: copy.deepcopy(value))


def refuse(key: str, message: str) -> ConfigError:
    """The ConfigError of a bad parameter value, carrying ``.key`` (so the config reader names its origin)."""
    err = ConfigError(message)
    err.key = key
    return err


def _integer(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


_SCALARS = {bool: (lambda v: isinstance(v, bool), "true or false"), int: (_integer, "an integer"),
            float: (_number, "a number"), str: (lambda v: isinstance(v, str), "a string"),
            type(None): (lambda v: v is None, "null"), Any: (lambda v: True, "anything")}


def conforms(value, tp) -> bool:
    """Whether ``value`` (as YAML gives it) is of annotation ``tp``."""
    if tp in _SCALARS:
        return _SCALARS[tp][0](value)
    origin, args = get_origin(tp), get_args(tp)
    if origin is Union:
        return any(conforms(value, a) for a in args)
    if origin is Literal:
        return isinstance(value, str) and value in args
    if origin is list:
        return isinstance(value, (list, tuple)) and all(conforms(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(conforms(k, args[0]) and conforms(v, args[1])
                                               for k, v in value.items())
    raise TypeError(f"parameter annotation {tp!r} is not supported by tfmsr.core.params")


def _plural(text: str) -> str:
    """``an integer`` -> ``integers``, ``a list of integers`` -> ``lists of integers``."""
    head, _, rest = text.partition(" ")
    if head not in ("a", "an"):
        return text
    word, _, tail = rest.partition(" ")
    return f"{word}s" + (f" {tail}" if tail else "")


def describe(tp) -> str:
    """What a value of annotation ``tp`` must be, for messages (``a list of integers``, ``a string or null``)."""
    if tp in _SCALARS:
        return _SCALARS[tp][1]
    origin, args = get_origin(tp), get_args(tp)
    if origin is Union:
        return " or ".join(describe(a) for a in args)
    if origin is Literal:
        names = [str(a) for a in args]
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" or {names[-1]}"
    if origin is list:
        return "a list" if args[0] is Any else f"a list of {_plural(describe(args[0]))}"
    if origin is dict:
        return "a mapping" if args[1] is Any else f"a mapping of {_plural(describe(args[0]))} to " \
                                                  f"{_plural(describe(args[1]))}"
    raise TypeError(f"parameter annotation {tp!r} is not supported by tfmsr.core.params")


@functools.lru_cache(maxsize=None)
def fields_of(cls: type) -> Dict[str, dataclasses.Field]:
    """Field name -> field (``.type`` resolved to the annotation object) of a Params dataclass."""
    hints = get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        f.type = hints[f.name]
        out[f.name] = f
    return out


def default_of(f: dataclasses.Field):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def build_params(cls: type, raw: Mapping, where: str) -> Params:
    """``cls(**raw)``: unknown keys refused (listing the known ones), every value checked against its
    field's annotation; ``where`` (``model 'dnn'``) opens each message. Values are deep copies, so neither
    the caller's config nor a later Keras wrapping of a list reaches the other."""
    fields = fields_of(cls)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown parameter(s) {unknown} (known: {', '.join(sorted(fields))})")
    for key, value in raw.items():
        f = fields[key]
        if not conforms(value, f.type):
            raise refuse(key, f"{where}: parameter '{key}' must be {describe(f.type)} (like its default "
                              f"{default_of(f)!r}), got {value!r}")
    return cls(**copy.deepcopy(dict(raw)))
