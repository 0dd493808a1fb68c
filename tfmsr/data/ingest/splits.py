"""Which split (0 train, 1 valid, 2 test) each row goes to, for the four ``split.by`` rules.

* ``user_time``: each user's events by (time, input order): the last ``floor(n * test)`` to test, the
  ``floor(n * valid)`` before them to valid, the rest to train, every user keeping >= 1 train row (the
  MovieLens protocol of datasets/README.md; ``split_sizes`` is the converter's own function).
* ``global_time``: time >= ``test_from`` -> test, >= ``valid_from`` -> valid, else train.
* ``hash``: a fixed pseudo-random draw from the key's **raw value** (the same key always lands in the same
  split, on every day and whatever the input order).
* ``column``: a column naming each row's split; a value not listed is an error naming where it appears.
"""
from __future__ import annotations

from typing import List

import numpy as np
import pandas as pd

from tfmsr.data.convert._common import hash_unit
from tfmsr.data.convert.movielens import split_sizes
from tfmsr.data.ingest.sequences import Timeline
from tfmsr.data.ingest.spec import SPLITS, SplitSpec
from tfmsr.data.ingest.vocab import Coder
from tfmsr.data.pipeline import DataError


def by_user_time(tl: Timeline, valid: float, test: float) -> np.ndarray:
    """Split per row in the timeline's sorted order."""
    n_train, n_valid, _ = split_sizes(tl.count, valid, test)
    return np.where(tl.rank < n_train, 0, np.where(tl.rank < n_train + n_valid, 1, 2)).astype(np.int8)


def by_global_time(time: np.ndarray, s: SplitSpec) -> np.ndarray:
    out = np.zeros(len(time), np.int8)
    if s.valid_from is not None:
        out[time >= s.valid_from] = 1
    out[time >= s.test_from] = 2
    return out


def hash_units(coder: Coder, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per code, from the hash of its raw value."""
    values = coder.values()
    if not len(values):
        return np.zeros(0)
    h = pd.util.hash_array(values if values.dtype.kind == "i" else values.astype(str).astype(object))
    return hash_unit(h, seed)


def by_hash(units: np.ndarray, codes: np.ndarray, s: SplitSpec) -> np.ndarray:
    u = np.where(codes >= 0, units[np.maximum(codes, 0)], 0.999999)
    return np.where(u < s.test, 2, np.where(u < s.test + s.valid, 1, 0)).astype(np.int8)


def column_table(s: SplitSpec, coder: Coder, files: List[str], column: str) -> np.ndarray:
    """Code -> split index of a split column; an unlisted value is an error naming its first row."""
    index = {str(v): SPLITS.index(sp) for sp, vals in s.values.items() for v in vals}
    out = np.zeros(len(coder), np.int8)
    for code, v in enumerate(coder.values().tolist()):
        if str(v) not in index:
            raise DataError(f"{coder.where(code, files)}: column '{column}' value {v!r} names no split "
                            f"(split.values maps {', '.join(f'{k}: {vs}' for k, vs in s.values.items())})")
        out[code] = index[str(v)]
    return out
