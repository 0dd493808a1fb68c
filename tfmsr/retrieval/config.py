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
"""
from __future__ import annotations

from typing import Iterable, Optional

from tfmsr.core.config import check_values, read_config
from tfmsr.core.errors import ConfigError
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


def load_config(path: Optional[str] = None, overrides: Iterable[str] = (), raw: Optional[dict] = None) -> dict:
    """Read ``path`` (or ``raw``), apply ``--set`` overrides, validate, fill defaults."""
    cfg, source, cls = read_config(path, overrides, raw, DEFAULTS, get_class)
    t, pre = cfg["train"], cfg["pretrain"]
    check_values(cfg, source, choices=[("train.optimizer", OPTIMIZERS)])
    if t["mode"] not in MODES:
        raise ConfigError(f"{source}: train.mode '{t['mode']}' (expected mix or single)")
    if t["mode"] == "single" and cls.supports_pretrain:
        raise ConfigError(f"{source}: '{cls.model_name}' is a multi-scenario model; train.mode must be mix")
    if pre["enabled"] and not cls.supports_pretrain:
        raise ConfigError(f"{source}: pretrain.enabled: '{cls.model_name}' has no pre-training stage")
    if not set(pre["sides"]) <= {"user", "item"} or not pre["sides"]:
        raise ConfigError(f"{source}: pretrain.sides must be a non-empty subset of [user, item], got {pre['sides']}")
    patience = t["early_stopping_patience"]
    if not isinstance(patience, int) or isinstance(patience, bool) or patience < 0:
        raise ConfigError(f"{source}: train.early_stopping_patience must be an integer >= 0, got {patience!r}")
    if patience and t["validation_split"] in ("train", cfg["eval"]["split"]):
        raise ConfigError(f"{source}: train.validation_split '{t['validation_split']}' must be a held-out split "
                          f"other than train and eval.split ('{cfg['eval']['split']}')")
    check_values(cfg, source, positive_ints=["data.batch_size", "data.eval_batch_size", "pretrain.batch_size",
                                             "pretrain.epochs", "train.epochs", "eval.k"],
                 positive_numbers=["pretrain.learning_rate", "train.learning_rate"])
    return cfg
