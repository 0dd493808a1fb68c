"""Retrieval experiment config: YAML with sections ``model``, ``data``, ``pretrain``, ``train``, ``eval``.

    model:    {name: sass, params: {dim: 32, layers: 3, gate: sass}}
    data:     {batch_size: 512}
    pretrain: {enabled: true, epochs: 2}          # SASS Sec. 4.1 (false = SASS-Base)
    train:    {epochs: 20, mode: mix, early_stopping_patience: 2}
              # mode single: one model per scenario (Table 2 columns); fine-tuning stops after 2 epochs
              # without a better validation HR@K and keeps the best epoch's weights (0: every epoch)
    eval:     {k: 20, split: test}

Keys are checked against ``DEFAULTS`` and model params against the retrieval model's defaults, so a typo
is an error naming the file and the key (the same rules as ``tfmsr.ranking.config`` for ranking models).
Every value is checked against the kind of its default (``KINDS``) before anything is written; a value
given by ``--set`` is blamed on that ``--set``; ``refused_rerun`` says which key differs when a finished
run is not retrained.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional

from tfmsr.core.checks import config_diff, origin, shown_diff
from tfmsr.core.config import check_values, read_config
from tfmsr.core.errors import ConfigError
from tfmsr.core.rundir import RunDir
from tfmsr.retrieval.models.base import get_class

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
        "on_warm_start": False,       # with --warm-start: pre-train again (default: fine-tune the warm weights only)
    },
    "train": {
        "epochs": 5,
        "learning_rate": 0.001,
        "optimizer": "adam",
        "seed": 0,
        "mode": "mix",                 # mix: one model on all scenarios; single: one model per scenario
        "early_stopping_patience": 0,  # epochs without a better validation HR@K before fine-tuning stops (0: off)
        "validation_split": "valid",   # the split early stopping ranks (eval.k, over all its queries)
    },
    "eval": {"k": 20, "split": "test", "exclude_train_positives": True},
}
OPTIMIZERS = ("adam", "adagrad", "sgd", "rmsprop")
MODES = ("mix", "single")
SIDES = ("user", "item")
# the kind of every value of DEFAULTS (model.params: the model's own defaults, checked by read_config)
KINDS = {
    "positive_ints": ["data.batch_size", "data.eval_batch_size", "pretrain.batch_size", "pretrain.epochs",
                      "train.epochs", "eval.k"],
    "positive_numbers": ["pretrain.learning_rate", "train.learning_rate"],
    "non_negative_ints": ["train.seed", "train.early_stopping_patience"],
    "booleans": ["pretrain.enabled", "pretrain.on_warm_start", "eval.exclude_train_positives"],
    "strings": ["model.name", "train.validation_split", "eval.split", "pretrain.pairs"],
    "choices": [("train.optimizer", OPTIMIZERS), ("train.mode", MODES)],
    "subsets": [("pretrain.sides", SIDES)],
}
OPTIONAL = ("pretrain.pairs",)


def load_config(path: Optional[str] = None, overrides: Iterable[str] = (), raw: Optional[dict] = None) -> dict:
    """Read ``path`` (or ``raw``), apply ``--set`` overrides, check every value (``KINDS``), fill defaults."""
    cfg, source, cls = read_config(path, overrides, raw, DEFAULTS, get_class)
    check_values(cfg, source, choices=KINDS["choices"], positive_ints=KINDS["positive_ints"],
                 positive_numbers=KINDS["positive_numbers"], non_negative_ints=KINDS["non_negative_ints"],
                 booleans=KINDS["booleans"], overrides=overrides)
    _check_strings_and_sides(cfg, source, overrides)
    t, pre = cfg["train"], cfg["pretrain"]

    def fail(dotted: str, message: str):
        raise ConfigError(f"{origin(source, overrides, dotted)}: {message}")

    if t["mode"] == "single" and cls.supports_pretrain:
        fail("train.mode", f"'{cls.model_name}' is a multi-scenario model; train.mode must be mix")
    if pre["enabled"] and not cls.supports_pretrain:
        fail("pretrain.enabled", f"pretrain.enabled: '{cls.model_name}' has no pre-training stage")
    if t["early_stopping_patience"] and t["validation_split"] in ("train", cfg["eval"]["split"]):
        fail("train.validation_split", f"train.validation_split '{t['validation_split']}' must be a held-out split "
                                       f"other than train and eval.split ('{cfg['eval']['split']}')")
    return cfg


def _check_strings_and_sides(cfg: dict, source: str, overrides: Iterable[str]) -> None:
    """The string values (a name; ``OPTIONAL`` ones may be null) and ``pretrain.sides`` (a non-empty list,
    a subset of ``SIDES``): a ConfigError naming the file or the ``--set`` and the key."""
    def value(dotted):
        section, key = dotted.split(".")
        return cfg[section][key]

    for dotted in KINDS["strings"]:
        v = value(dotted)
        if not (isinstance(v, str) and v) and not (v is None and dotted in OPTIONAL):
            raise ConfigError(f"{origin(source, overrides, dotted)}: {dotted} must be a non-empty string"
                              f"{' or null' if dotted in OPTIONAL else ''}, got {v!r}")
    for dotted, allowed in KINDS["subsets"]:
        v = value(dotted)
        if not (isinstance(v, list) and v and all(isinstance(x, str) and x in allowed for x in v)):
            raise ConfigError(f"{origin(source, overrides, dotted)}: {dotted} must be a non-empty list of "
                              f"{', '.join(allowed)}, got {v!r}")


def refused_rerun(model_dir: str, cfg: dict, data_dir: str) -> str:
    """The message of a re-run refused because ``model_dir`` holds a finished run: which config keys (and
    data dir) differ from that run's ``run.yaml``, or that none does."""
    before = RunDir(model_dir).read() if RunDir(model_dir).exists else {}
    diff = config_diff(before["config"], cfg) if isinstance(before.get("config"), dict) else []
    parts = [f"config ({shown_diff(diff)})"] if diff else []
    if before.get("data") and before["data"] != os.path.abspath(data_dir):
        parts.append(f"data dir ({before['data']} -> {os.path.abspath(data_dir)})")
    what = f"with a different {' and '.join(parts)}" if parts else "of the same config and data"
    return f"{model_dir}: holds a finished run {what}; pass --overwrite to retrain"
