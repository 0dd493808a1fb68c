"""Value checks shared by the configs (DESIGN section 7): model parameters typed by their defaults, where a
value came from (the config file or ``--set``), and what differs between two configs.

A model parameter is checked against the type of its default: a boolean default takes only true/false, a
number any number (not a boolean), a list of numbers a list of numbers (of integers when the default's
are integers), a list of names a list of strings, a string a string (or null: "off"; or a mapping, the
spelled-out form of a named choice such as an initializer ``{normal: 0.05}``). Defaults that are null or
mappings take any value (the model checks them itself).
"""
from __future__ import annotations

from numbers import Integral, Real
from typing import Iterable, List, Optional

from tfmsr.core.errors import ConfigError


def _number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def _integer(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _expected(default) -> Optional[str]:
    """What a value must be, judged by its default (None: anything)."""
    if isinstance(default, bool):
        return "true or false"
    if _integer(default) or _number(default):
        return "a number"
    if isinstance(default, str):
        return "a string (or a mapping)"
    if isinstance(default, (list, tuple)):
        if default and all(_integer(v) for v in default):
            return "a list of integers"
        if default and all(_number(v) for v in default):
            return "a list of numbers"
        if default and all(isinstance(v, str) for v in default):
            return "a list of strings"
        return "a list"
    return None


_OK = {
    "true or false": lambda v: isinstance(v, bool),
    "a number": _number,
    "a string (or a mapping)": lambda v: v is None or isinstance(v, (str, dict)),
    "a list of integers": lambda v: isinstance(v, (list, tuple)) and all(_integer(x) for x in v),
    "a list of numbers": lambda v: isinstance(v, (list, tuple)) and all(_number(x) for x in v),
    "a list of strings": lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
    "a list": lambda v: isinstance(v, (list, tuple)),
}


def check_param_types(kind: str, name: str, defaults: dict, params: dict) -> None:
    """Raise one ConfigError (with ``.key`` = the parameter) for the first value of ``params`` whose type does
    not match its default's (``kind`` and ``name`` name the model in the message)."""
    for key, value in params.items():
        want = _expected(defaults.get(key))
        if want is not None and not _OK[want](value):
            err = ConfigError(f"{kind} '{name}': parameter '{key}' must be {want} (like its default "
                              f"{defaults[key]!r}), got {value!r}")
            err.key = key
            raise err


def origin(source: str, overrides: Iterable[str], dotted: str) -> str:
    """``--set KEY=VALUE`` when that override set ``dotted`` (or a key inside it), else ``source``."""
    for pair in overrides or ():
        key = pair.split("=", 1)[0].strip()
        if key == dotted or key.startswith(dotted + ".") or dotted.startswith(key + "."):
            return f"--set {pair}"
    return source


def config_diff(old, new, prefix: str = "") -> List[str]:
    """``["train.epochs: 3 -> 4", ...]``: every key whose value differs between two nested configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += config_diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def shown_diff(diff: List[str], most: int = 5) -> str:
    """``config_diff`` lines for a message: the first ``most``, then how many more."""
    return "; ".join(diff[:most]) + (f"; and {len(diff) - most} more" if len(diff) > most else "")
