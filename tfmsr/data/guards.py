"""Value guards of the input graph (DESIGN section 7, "nothing silent"), with stock ops only.

The parser (``tfmsr.data.pipeline.make_parser``) runs them on every parsed batch, so training, evaluation
and every servable built from the parser check the same things:

    numeric feature not finite (NaN, +-inf)    data.non_finite: error (default) | zero | count
    label outside {0, 1} (NaN included)        error
    scenario outside [0, S)                    error

``data.non_finite`` (the ranking config; documented in the README):

    error   stop: the batch fails in the graph and ``read_errors`` names the file, the record and the feature
    zero    replace each non-finite value by 0.0 and count it
    count   leave the example out of the batch (training and evaluation alike) and count its non-finite values

The counts travel with the batch under ``COUNT_KEY`` (a scalar per batch); the model pops it before its
forward pass and sums it into the ``non_finite`` metric, which the progress lines, ``history.json`` and
the final JSON of ``tfmsr train`` show (as ``oov_ids``). Labels and scenarios have no replacement policy:
a wrong label or scenario is a broken record.

In the graph an error is an ``InvalidArgumentError`` whose message starts ``tfmsr guard:``; TensorFlow
does not know the file, so ``read_errors`` re-reads the shards (``diagnose``) and applies
``first_bad_value`` -- the same checks on NumPy -- to name the file, the record and the field.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from tfmsr.features import Schema

POLICIES = ("error", "zero", "count")
COUNT_KEY = "__non_finite__"
SHARD_KEY = "__shard__"  # per-row index of a training row's shard (``make_dataset(tag_shards=True)``), also popped
PREFIX = "tfmsr guard:"


def _checked(tensor: tf.Tensor, ok: tf.Tensor, message: str, bad: tf.Tensor) -> tf.Tensor:
    """``tensor``, once ``ok`` holds for every row (else an InvalidArgumentError with ``message`` and the
    first offending value)."""
    first = tf.boolean_mask(bad, ~ok)[:1]
    check = tf.debugging.Assert(tf.reduce_all(ok), [f"{PREFIX} {message}; first offending value:", first])
    with tf.control_dependencies([check]):
        return tf.identity(tensor)


def guard_batch(parsed: Dict[str, object], schema: Schema, non_finite: Optional[str] = "error",
                labels: bool = True, scenario: bool = True) -> Dict[str, object]:
    """Apply the guards to one parsed batch (before the vocabulary lookups and padding): numeric features
    by ``non_finite`` (None: no check, the caller counts them), labels and the scenario when asked.
    Returns the batch; with ``zero`` / ``count`` it also holds ``COUNT_KEY``."""
    if non_finite is not None and non_finite not in POLICIES:
        raise ValueError(f"data.non_finite '{non_finite}' (expected one of {', '.join(POLICIES)})")
    parsed = dict(parsed)
    if scenario and schema.scenario.name in parsed:
        s, S = parsed[schema.scenario.name], schema.num_scenarios
        parsed[schema.scenario.name] = _checked(s, (s >= 0) & (s < S), f"scenario '{schema.scenario.name}' "
                                                f"outside [0, {S})", s)
    for name in schema.labels if labels else ():
        y = parsed[name]
        parsed[name] = _checked(y, tf.equal(y, 0.0) | tf.equal(y, 1.0), f"label '{name}' outside {{0, 1}}", y)
    numeric = [f.name for f in schema.of_kind("numeric") if f.name in parsed]
    if non_finite is None or not numeric:
        return parsed
    if non_finite == "error":
        for name in numeric:
            x = parsed[name]
            parsed[name] = _checked(x, tf.math.is_finite(x), f"non-finite value in numeric feature '{name}'", x)
        return parsed
    bad = tf.stack([~tf.math.is_finite(parsed[n]) for n in numeric], axis=1)  # [B, n]
    count = tf.reduce_sum(tf.cast(bad, tf.int64))
    if non_finite == "zero":
        for name in numeric:
            parsed[name] = tf.where(tf.math.is_finite(parsed[name]), parsed[name], tf.zeros_like(parsed[name]))
    else:  # count: the example is left out
        keep = ~tf.reduce_any(bad, axis=1)
        parsed = {k: (tf.ragged.boolean_mask(v, keep) if isinstance(v, tf.RaggedTensor) else tf.boolean_mask(v, keep))
                  for k, v in parsed.items()}
    parsed[COUNT_KEY] = count
    return parsed


def pop_count(x: Dict[str, tf.Tensor]) -> tf.Tensor:
    """Remove ``COUNT_KEY`` from a batch's features (a model never sees it); 0 when the parser added none."""
    count = x.pop(COUNT_KEY, None) if isinstance(x, dict) else None
    return tf.constant(0, tf.int64) if count is None else count


# ---------------------------------------------------------------------------------------- NumPy side
def _rows(values) -> np.ndarray:
    return values.numpy() if hasattr(values, "numpy") else np.asarray(values)


def value_problems(parsed: Dict[str, object], schema: Schema, non_finite: str = "error") -> List[Tuple[int, str]]:
    """Per guard, the first (row, what is wrong) in a parsed batch (``tf.io.parse_example`` output), on
    NumPy: the same checks as ``guard_batch``; numeric values only under the ``error`` policy."""
    found = []
    key, S = schema.scenario.name, schema.num_scenarios
    if key in parsed:
        s = _rows(parsed[key])
        for r in np.flatnonzero((s < 0) | (s >= S))[:1]:
            found.append((int(r), f"has scenario {int(s[r])} in field '{key}' (expected 0..{S - 1}: "
                                  f"{', '.join(schema.scenario.values)})"))
    for name in schema.labels:
        if name in parsed:
            y = _rows(parsed[name])
            for r in np.flatnonzero((y != 0) & (y != 1))[:1]:
                found.append((int(r), f"has label '{name}' = {y[r]!r} (expected 0 or 1)"))
    if non_finite == "error":
        for f in schema.of_kind("numeric"):
            if f.name in parsed:
                v = _rows(parsed[f.name])
                for r in np.flatnonzero(~np.isfinite(v))[:1]:
                    found.append((int(r), f"has a non-finite value ({v[r]}) in numeric feature '{f.name}' "
                                          "(data.non_finite: zero replaces such values by 0, count leaves the "
                                          "example out; both count them)"))
    return sorted(found)


def first_bad_value(parsed: Dict[str, object], schema: Schema, non_finite: str = "error") -> Optional[Tuple[int, str]]:
    """The first (row, what is wrong) of a parsed batch, or None when every value passes the guards."""
    found = value_problems(parsed, schema, non_finite)
    return found[0] if found else None
