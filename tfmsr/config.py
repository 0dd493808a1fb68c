"""Experiment config: YAML with sections ``model``, ``data``, ``train``, ``cluster``; ``--set a.b=value`` overrides.

    model: {name: shared_bottom, params: {bottom: [256, 128], tower: [64]}}
    data:  {batch_size: 1024, shuffle_buffer: 20000}
    train: {epochs: 3, learning_rate: 0.001, checkpoint_every: 200, early_stopping_patience: 2}

Every key is checked against ``DEFAULTS`` (model params against the model's own defaults), so a typo is
an error naming the file and the key, never a silently ignored setting.
"""
from __future__ import annotations

import copy
from typing import Callable, Iterable, Optional, Sequence, Tuple

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


def read_config(path: Optional[str], overrides: Iterable[str], raw: Optional[dict], defaults: dict,
                get_model_class: Callable[[str], type]) -> Tuple[dict, str, type]:
    """Read ``path`` (or ``raw``), apply ``--set`` overrides, check every key against ``defaults`` and
    resolve ``model.params`` with the model class's ``resolve``; returns (config, source, model class).
    Shared by the ranking config (below) and the retrieval config (``tfmsr.retrieval.config``)."""
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
    _deep_update(raw, parse_overrides(overrides))
    cfg = _merge(defaults, raw, "", source)
    cls = get_model_class(cfg["model"]["name"])
    try:
        cfg["model"]["params"] = cls.resolve(cfg["model"]["params"] or {})
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg, source, cls


def check_values(cfg: dict, source: str, choices: Sequence[Tuple[str, Sequence[str]]] = (),
                 positive_ints: Sequence[str] = (), positive_numbers: Sequence[str] = (),
                 optional: Sequence[str] = ()) -> None:
    """Check ``section.key`` values: one of the ``choices``, positive integers, numbers > 0; a key in
    ``optional`` may also be None. The first bad value raises a ConfigError naming the file and key."""
    def value(dotted):
        section, key = dotted.split(".")
        return cfg[section][key]

    for dotted, allowed in choices:
        if value(dotted) not in allowed:
            raise ConfigError(f"{source}: {dotted} '{value(dotted)}' (expected one of {', '.join(allowed)})")
    for keys, ok, want in ((positive_ints, lambda v: isinstance(v, int) and v >= 1, "a positive integer"),
                           (positive_numbers, lambda v: isinstance(v, (int, float)) and v > 0, "> 0")):
        for dotted in keys:
            v = value(dotted)
            if (v is None and dotted in optional) or (ok(v) and not isinstance(v, bool)):
                continue
            raise ConfigError(f"{source}: {dotted} must be {want}, got {v!r}")


def load_config(path: Optional[str] = None, overrides: Iterable[str] = (), raw: Optional[dict] = None) -> dict:
    """Read ``path`` (or ``raw``), apply ``--set`` overrides, validate, fill defaults."""
    cfg, source, _ = read_config(path, overrides, raw, DEFAULTS, get_class)
    check_values(cfg, source, choices=[("train.optimizer", OPTIMIZERS)],
                 positive_ints=["data.batch_size", "train.epochs", "train.checkpoint_every", "train.log_every"],
                 positive_numbers=["train.learning_rate"])
    if cfg["data"]["shuffle_buffer"] < 1:
        raise ConfigError(f"{source}: data.shuffle_buffer must be >= 1")
    check_values(cfg, source, choices=[("cluster.strategy", STRATEGIES), ("cluster.partitioner", PARTITIONERS)],
                 positive_ints=["cluster.partitions", "cluster.min_shard_bytes"], optional=["cluster.partitions"])
    return cfg


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
