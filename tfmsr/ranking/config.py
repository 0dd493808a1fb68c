"""Ranking experiment config: YAML with sections ``model``, ``data``, ``train``, ``cluster``; ``--set a.b=value`` overrides.

    model: {name: shared_bottom, params: {bottom: [256, 128], tower: [64]}}
    data:  {batch_size: 1024, shuffle_buffer: 20000}
    train: {epochs: 3, learning_rate: 0.001, checkpoint_every: 200, early_stopping_patience: 2}

Every key is checked against ``DEFAULTS`` (model params against the model's own defaults), so a typo is
an error naming the file and the key, never a silently ignored setting (reading: ``tfmsr.core.config``).
"""
from __future__ import annotations

from typing import Iterable, Optional

from tfmsr.core.checks import origin
from tfmsr.core.config import check_values, read_config
from tfmsr.core.errors import ConfigError
from tfmsr.data.guards import POLICIES
from tfmsr.ranking.models.base import get_class

DEFAULTS = {
    "model": {"name": "dnn", "params": {}},
    "data": {"batch_size": 1024, "shuffle_buffer": 20_000, "eval_batch_size": 4096,
             "non_finite": "error",       # a NaN / inf numeric value: error | zero (replace, count) | count (skip, count)
             "cache": "auto"},            # local training: parse the rows once, epochs from memory: true | false
                                          # | auto (when they fit: tfmsr.data.pipeline.cache_fits)
    "train": {
        "epochs": 3,
        "steps_per_epoch": None,      # default: ceil(train rows / batch_size)
        "learning_rate": 0.001,
        "optimizer": "adam",
        "checkpoint_every": 500,      # steps between fault-tolerance backups
        "early_stopping_patience": 2, # epochs without validation AUC gain (0: off)
        "log_every": 100,             # steps between progress lines
        "steps_per_execution": 1,     # local training: steps per tf.function call (less overhead per step);
                                      # callbacks run after each call: a progress line at the first call end at
                                      # or past its step, a backup every checkpoint_every // N calls
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


def load_config(path: Optional[str] = None, overrides: Iterable[str] = (), raw: Optional[dict] = None) -> dict:
    """Read ``path`` (or ``raw``), apply ``--set`` overrides, validate, fill defaults."""
    cfg, source, _ = read_config(path, overrides, raw, DEFAULTS, get_class)
    check_values(cfg, source, choices=[("train.optimizer", OPTIMIZERS), ("data.non_finite", POLICIES)],
                 positive_ints=["data.batch_size", "data.shuffle_buffer", "data.eval_batch_size", "train.epochs",
                                "train.steps_per_epoch", "train.checkpoint_every", "train.log_every",
                                "train.steps_per_execution"],
                 positive_numbers=["train.learning_rate"], non_negative_ints=["train.seed", "train.early_stopping_patience"],
                 booleans=["train.validate"], optional=["train.steps_per_epoch"], overrides=overrides)
    if not (isinstance(cfg["data"]["cache"], bool) or cfg["data"]["cache"] == "auto"):
        raise ConfigError(f"{origin(source, overrides, 'data.cache')}: data.cache must be true, false or auto, "
                          f"got {cfg['data']['cache']!r}")
    check_values(cfg, source, choices=[("cluster.strategy", STRATEGIES), ("cluster.partitioner", PARTITIONERS)],
                 positive_ints=["cluster.partitions", "cluster.min_shard_bytes"], optional=["cluster.partitions"],
                 overrides=overrides)
    return cfg
