"""Retrieval experiment config: YAML with sections ``model``, ``data``, ``pretrain``, ``train``, ``eval``.

    model:    {name: sass, params: {dim: 32, layers: 3, gate: sass}}
    data:     {batch_size: 512}
    pretrain: {enabled: true, epochs: 2}          # SASS Sec. 4.1 (false = SASS-Base)
    train:    {epochs: 5, mode: mix}              # mode single: one model per scenario (Table 2 columns)
    eval:     {k: 20, split: test}

Keys are checked against ``DEFAULTS`` and model params against the retrieval model's defaults, so a typo
is an error naming the file and the key (the same rules as ``tfmsr.config`` for ranking models).
"""
from __future__ import annotations

import copy
from typing import Iterable, Optional

import yaml

from tfmsr.config import _deep_update, _merge, parse_overrides
from tfmsr.models.base import ConfigError
from tfmsr.retrieval.base import get_class

DEFAULTS = {
    "model": {"name": "sass", "params": {}},
    "data": {"batch_size": 512, "eval_batch_size": 1024},
    "pretrain": {
        "enabled": False,
        "epochs": 2,
        "batch_size": 512,
        "learning_rate": 0.001,
        "pairs": None,                 # pair shards dir (default: MODEL_DIR/pairs, derived from the train split)
        "sides": ["user", "item"],     # contrastive tasks: user pairs and/or item pairs
    },
    "train": {
        "epochs": 5,
        "learning_rate": 0.001,
        "optimizer": "adam",
        "seed": 0,
        "mode": "mix",                 # mix: one model on all scenarios; single: one model per scenario
    },
    "eval": {"k": 20, "split": "test", "exclude_train_positives": True},
}
OPTIMIZERS = ("adam", "adagrad", "sgd", "rmsprop")
MODES = ("mix", "single")


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
    t, pre = cfg["train"], cfg["pretrain"]
    if t["optimizer"] not in OPTIMIZERS:
        raise ConfigError(f"{source}: train.optimizer '{t['optimizer']}' (expected one of {', '.join(OPTIMIZERS)})")
    if t["mode"] not in MODES:
        raise ConfigError(f"{source}: train.mode '{t['mode']}' (expected mix or single)")
    if t["mode"] == "single" and cls.supports_pretrain:
        raise ConfigError(f"{source}: '{cls.model_name}' is a multi-scenario model; train.mode must be mix")
    if pre["enabled"] and not cls.supports_pretrain:
        raise ConfigError(f"{source}: pretrain.enabled: '{cls.model_name}' has no pre-training stage")
    if not set(pre["sides"]) <= {"user", "item"} or not pre["sides"]:
        raise ConfigError(f"{source}: pretrain.sides must be a non-empty subset of [user, item], got {pre['sides']}")
    for section, key in (("data", "batch_size"), ("data", "eval_batch_size"), ("pretrain", "batch_size"),
                         ("pretrain", "epochs"), ("train", "epochs"), ("eval", "k")):
        v = cfg[section][key]
        if not isinstance(v, int) or v < 1:
            raise ConfigError(f"{source}: {section}.{key} must be a positive integer, got {v!r}")
    for section in ("pretrain", "train"):
        lr = cfg[section]["learning_rate"]
        if not isinstance(lr, (int, float)) or lr <= 0:
            raise ConfigError(f"{source}: {section}.learning_rate must be > 0, got {lr!r}")
    return cfg


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
