"""Checks a training run makes before it writes anything to its model dir (DESIGN section 7): a mistake
found there leaves no run dir behind that would force ``--overwrite`` on the next try."""
from __future__ import annotations

from typing import Optional

import tensorflow as tf

from tfmsr.core.checks import config_diff, shown_diff
from tfmsr.features import Schema
from tfmsr.ranking.models import get_class


def check_buildable(cfg: dict, schema: Schema, stats: Optional[dict] = None) -> None:
    """Construct the model once in a throw-away graph, so the checks of its ``__init__`` (a parameter value,
    a feature group the model needs) raise their ConfigError now; no variable or layer name of the real
    model is touched."""
    with tf.Graph().as_default():
        get_class(cfg["model"]["name"])(schema, cfg["model"]["params"], stats=stats)


def differences(what: str, old, new) -> str:
    """``"config (train.epochs: 3 -> 4)"``: what differs between an unfinished run and this one."""
    diff = config_diff(old, new) if isinstance(old, dict) and isinstance(new, dict) else [f"{old!r} -> {new!r}"]
    return f"{what} ({shown_diff(diff)})"
