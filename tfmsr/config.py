"""Experiment config: YAML with sections ``model``, ``data``, ``train``, ``cluster``; ``--set a.b=value`` overrides.

    model: {name: shared_bottom, params: {bottom: [256, 128], tower: [64]}}
    data:  {batch_size: 1024, shuffle_buffer: 20000}
    train: {epochs: 3, learning_rate: 0.001, checkpoint_every: 200, early_stopping_patience: 2}

Every key is checked against ``DEFAULTS`` (model params against the model's own defaults), so a typo is
an error naming the file and the key, never a silently ignored setting.
"""
from __future__ import annotations

import copy
from typing import Iterable, Optional

import yaml

from tfmsr.models.base import ConfigError, get_class

DEFAULTS = {
    "model": {"name": "dnn", "params": {}},
    "data": {"batch_size": 1024, "shuffle_buffer": 20_000, "eval_batch_size": 4096},
    "train": {
        "epochs": 3,
        "steps_per_epoch": None,      # default: ceil(train rows / batch_size)
        "learning_rate": 0.001,
        "optimizer": "adam",
        "checkpoint_every": 500,      # steps between fault-tolerance backups
        "early_stopping_patience": 2, # epochs without validation AUC gain (0: off)
        "log_every": 100,             # steps between progress lines
        "seed": 0,
        "validate": True,             # per-scenario validation metrics each epoch
    },
    "cluster": {
        "strategy": "auto",           # under TF_CONFIG: auto (ps if the cluster has ps, else multi_worker) | ps
                                      # | multi_worker | local (ignore TF_CONFIG)
        "partitioner": "min_size",    # ps: min_size (a variable > min_shard_bytes: ceil(bytes / min_shard_bytes)
                                      # shards) | fixed (every variable >= min_shard_bytes: `partitions` shards)
        "partitions": None,           # most shards per variable (default: number of parameter servers)
        "min_shard_bytes": 262_144,
        "evaluator_split": "valid",   # the split the evaluator role scores each new checkpoint on
    },
}
STRATEGIES = ("auto", "ps", "multi_worker", "local")
PARTITIONERS = ("min_size", "fixed")
OPTIMIZERS = ("adam", "adagrad", "sgd", "rmsprop")


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


def load_config(path: Optional[str] = None, overrides: Iterable[str] = (), raw: Optional[dict] = None) -> dict:
    """Read ``path`` (or ``raw``), apply ``--set`` overrides, validate, fill defaults."""
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
        raise ConfigError(f"{source}: expected a mapping with sections {', '.join(DEFAULTS)}")
    _deep_update(raw, parse_overrides(overrides))
    cfg = _merge(DEFAULTS, raw, "", source)
    cls = get_class(cfg["model"]["name"])
    try:
        cfg["model"]["params"] = cls.resolve(cfg["model"]["params"] or {})
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    t, d = cfg["train"], cfg["data"]
    if t["optimizer"] not in OPTIMIZERS:
        raise ConfigError(f"{source}: train.optimizer '{t['optimizer']}' (expected one of {', '.join(OPTIMIZERS)})")
    for section, key in (("data", "batch_size"), ("train", "epochs"), ("train", "checkpoint_every"),
                         ("train", "log_every")):
        v = cfg[section][key]
        if not isinstance(v, int) or v < 1:
            raise ConfigError(f"{source}: {section}.{key} must be a positive integer, got {v!r}")
    if not isinstance(t["learning_rate"], (int, float)) or t["learning_rate"] <= 0:
        raise ConfigError(f"{source}: train.learning_rate must be > 0, got {t['learning_rate']!r}")
    if d["shuffle_buffer"] < 1:
        raise ConfigError(f"{source}: data.shuffle_buffer must be >= 1")
    c = cfg["cluster"]
    for key, allowed in (("strategy", STRATEGIES), ("partitioner", PARTITIONERS)):
        if c[key] not in allowed:
            raise ConfigError(f"{source}: cluster.{key} '{c[key]}' (expected one of {', '.join(allowed)})")
    for key in ("partitions", "min_shard_bytes"):
        v = c[key]
        if not (v is None and key == "partitions") and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"{source}: cluster.{key} must be a positive integer, got {v!r}")
    return cfg


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
