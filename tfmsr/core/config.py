"""Reading experiment configs: YAML sections merged over a family's defaults, ``--set a.b=value``
overrides, value checks, and ``--config NAME`` resolved to a config shipped in the package.

Every key is checked against the defaults (model params against the model's own defaults), so a typo is
an error naming the file and the key, never a silently ignored setting. The families' defaults live in
``tfmsr.ranking.config`` and ``tfmsr.retrieval.config``.
"""
from __future__ import annotations

import copy
import os
from typing import Callable, Iterable, Optional, Sequence, Tuple

import yaml

from tfmsr.core.checks import origin
from tfmsr.core.errors import ConfigError

PACKAGED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _merge(base: dict, new: dict, where: str, source: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in (new or {}).items():
        if key not in base:
            raise ConfigError(f"{source}: unknown key '{where}{key}' (known: {', '.join(sorted(base))})")
        if isinstance(base[key], dict) and key != "params":
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{where}{key}' must be a mapping")
            out[key] = _merge(base[key], value, f"{where}{key}.", source)
        else:
            out[key] = value
    return out


def parse_overrides(pairs: Iterable[str]) -> dict:
    """``["train.epochs=1", "model.params.hidden=[64, 32]"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. train.epochs=2")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _deep_update(a: dict, b: dict) -> dict:
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            _deep_update(a[k], v)
        else:
            a[k] = v
    return a


def resolve_path(path: Optional[str]) -> Optional[str]:
    """``path`` when it exists; else a bare name (``saml`` or ``saml.yaml``) of a config shipped in the
    package (``tfmsr/configs/``); else ``path`` unchanged (reading it names the missing file)."""
    if not path or os.path.exists(path) or os.sep in path:
        return path
    name = path if path.endswith((".yaml", ".yml")) else f"{path}.yaml"
    packaged = os.path.join(PACKAGED, name)
    return packaged if os.path.isfile(packaged) else path


def read_config(path: Optional[str], overrides: Iterable[str], raw: Optional[dict], defaults: dict,
                get_model_class: Callable[[str], type]) -> Tuple[dict, str, type]:
    """Read ``path`` (or ``raw``), apply ``--set`` overrides, check every key against ``defaults`` and
    resolve ``model.params`` with the model class's ``resolve``; returns (config, source, model class).
    Shared by the ranking config (``tfmsr.ranking.config``) and the retrieval config (``tfmsr.retrieval.config``)."""
    path = resolve_path(path)
    source = path or "<config>"
    if path:
        try:
            with open(path) as fh:
                raw = yaml.safe_load(fh) or {}
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
    raw = copy.deepcopy(raw or {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with sections {', '.join(defaults)}")
    _merge(defaults, parse_overrides(overrides), "", "--set")  # an unknown key given by --set names --set
    _deep_update(raw, parse_overrides(overrides))
    cfg = _merge(defaults, raw, "", source)
    cls = get_model_class(cfg["model"]["name"])
    try:
        cfg["model"]["params"] = cls.resolve(cfg["model"]["params"] or {})
    except ConfigError as e:
        raise ConfigError(f"{origin(source, overrides, 'model.params.' + getattr(e, 'key', ''))}: {e}") from None
    return cfg, source, cls


def check_values(cfg: dict, source: str, choices: Sequence[Tuple[str, Sequence[str]]] = (),
                 positive_ints: Sequence[str] = (), positive_numbers: Sequence[str] = (),
                 optional: Sequence[str] = (), non_negative_ints: Sequence[str] = (),
                 booleans: Sequence[str] = (), overrides: Iterable[str] = ()) -> None:
    """Check ``section.key`` values: one of the ``choices``, positive integers, numbers > 0, integers >= 0,
    true/false; a key in ``optional`` may also be None. The first bad value raises a ConfigError naming the
    file (or the ``--set`` of ``overrides`` that gave it) and the key."""
    def value(dotted):
        section, key = dotted.split(".")
        return cfg[section][key]

    for dotted, allowed in choices:
        if value(dotted) not in allowed:
            raise ConfigError(f"{origin(source, overrides, dotted)}: {dotted} '{value(dotted)}' "
                              f"(expected one of {', '.join(allowed)})")
    for keys, ok, want in ((positive_ints, lambda v: isinstance(v, int) and v >= 1, "a positive integer"),
                           (positive_numbers, lambda v: isinstance(v, (int, float)) and v > 0, "> 0"),
                           (non_negative_ints, lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
                           (booleans, None, "true or false")):
        for dotted in keys:
            v = value(dotted)
            if (v is None and dotted in optional) or (isinstance(v, bool) if ok is None else
                                                      (ok(v) and not isinstance(v, bool))):
                continue
            raise ConfigError(f"{origin(source, overrides, dotted)}: {dotted} must be {want}, got {v!r}")
