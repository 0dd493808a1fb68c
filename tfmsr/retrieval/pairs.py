"""Cross-scenario pairs for SASS pre-training (Sec. 4.1), derived from any tfmsr dataset directory.

"If a user u accessed k scenarios, we simply split these scenarios and make a combination of two to
generate C(k, 2) samples for contrastive learning" -- and the same for items. Samples are drawn "from
both labeled (clicked) and unlabeled (exposed but not clicked) data", so every row of the split counts.

* **User view** (u, s): the user's features and behaviour in scenario s, i.e. the request columns
  (groups user, context, query, behavior and the scenario) of the user's *latest* row in s. The model
  reads the scenario's own behaviour from the sequence (its behaviour-scenario feature).
* **Item view** (i, s): the item's features in scenario s (its profile; the model adds its
  item-scenario statistics).
* One streaming pass keeps, per (user, scenario), the latest row (memory O(users x scenarios x request
  width) plus O(items x scenarios) counters, independent of the number of rows); then, for every pair of
  scenarios a < b, every user (item) seen in both yields the pair (a, b): a key seen in k scenarios gives
  C(k, 2) pairs.

Shards (``write_pairs``)::

    OUT/pairs.json                     counts, C(k,2) check, per-scenario-pair counts, columns, source
    OUT/user/part-*.tfrecord           key, a.<col>, b.<col> for every request column (a.scenario < b.scenario)
    OUT/item/part-*.tfrecord           key, a.scenario, b.scenario, <item columns>

written to ``OUT.tmp-<pid>`` and renamed when complete. ``pair_datasets`` reads them back as batches of
user views ``{"user_a", "user_b"}`` and item views ``{"item_a", "item_b"}`` (with the statistics of each
view's scenario looked up in a ``RetrievalData``).
"""
from __future__ import annotations

import glob
import json
import math
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from tfmsr.core.io import atomic_dir, write_json
from tfmsr.data import wire
from tfmsr.data.pipeline import DataError, parse_spec
from tfmsr.data.tfrecord import ShardWriter
from tfmsr.features import Schema
from tfmsr.retrieval.data import (RetrievalData, _integer_key, item_key, item_names, iter_split,
                                  request_names)

A, B = "a", "b"


def _encode(columns: Dict[str, np.ndarray]) -> List[bytes]:
    """tf.Example records of equal-length NumPy columns: ints, floats, strings, 2-D int sequences (0 = padding)."""
    feats = []
    for name, col in columns.items():
        col = np.asarray(col)
        if col.ndim == 2:
            keep = col != 0
            feats.append((name, wire.int64_feature(col[keep], keep.sum(axis=1))))
        elif col.dtype.kind in "iub":
            feats.append((name, wire.int64_feature(col.astype(np.int64))))
        elif col.dtype.kind == "f":
            feats.append((name, wire.float_feature(col)))
        else:
            feats.append((name, wire.bytes_feature([[v if isinstance(v, bytes) else str(v).encode()] for v in col])))
    return wire.split_rows(wire.examples(feats))


def _pair_counts(seen: np.ndarray) -> Tuple[int, int]:
    """(keys seen in >= 2 scenarios, sum of C(k, 2)) of a boolean ``[K, S]`` matrix."""
    k = seen.sum(axis=1)
    return int((k >= 2).sum()), int((k * (k - 1) // 2).sum())


def scan_views(data_dir: str, split: str = "train", batch: int = 8192):
    """One pass over ``split``: (schema, latest request row per (user, scenario) as ``{col: [U*S, ...]}``,
    seen_user ``bool [U, S]``, item columns ``{col: [I]}``, seen_item ``bool [I, S]``)."""
    schema = Schema.load(os.path.join(data_dir, "schema.yaml"))
    ukey, ikey = schema.user_key, item_key(schema)
    U, I, S = _integer_key(schema, ukey, "user"), _integer_key(schema, ikey, "item"), schema.num_scenarios
    cols = request_names(schema) + [schema.scenario.name]
    snap: Dict[str, np.ndarray] = {}
    items: Dict[str, np.ndarray] = {}
    seen_u, seen_i = np.zeros(U * S, bool), np.zeros(I * S, bool)
    for x, _ in iter_split(data_dir, schema, split, batch):
        s = x[schema.scenario.name].astype(np.int64)
        u = np.where((x[ukey] > 0) & (x[ukey] < U), x[ukey], 0)
        it = np.where((x[ikey] > 0) & (x[ikey] < I), x[ikey], 0)
        key = u * S + s
        rev = key[::-1]
        uniq, first_rev = np.unique(rev, return_index=True)
        last = len(key) - 1 - first_rev                      # each (user, scenario)'s latest row in the batch
        for c in cols:
            if c not in snap:
                snap[c] = np.zeros((U * S,) + x[c].shape[1:], x[c].dtype)
            snap[c][uniq] = x[c][last]
        seen_u[uniq] = True
        seen_i[it * S + s] = True
        for c in item_names(schema):
            if c not in items:
                items[c] = np.zeros((I,) + x[c].shape[1:], x[c].dtype)
            items[c][it] = x[c]
    seen_u, seen_i = seen_u.reshape(U, S), seen_i.reshape(I, S)
    seen_u[0] = False  # id 0 is padding / OOV: not one user
    seen_i[0] = False
    return schema, snap, seen_u, items, seen_i


def write_pairs(data_dir: str, out_dir: str, split: str = "train", rows_per_shard: int = 50_000,
                overwrite: bool = False, batch: int = 8192) -> dict:
    """Derive the cross-scenario user and item pairs of ``data_dir``'s ``split`` into shards under
    ``out_dir`` (see the module docstring); returns the summary written to ``pairs.json``."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} already exists (pass --overwrite to replace it)")
    schema, snap, seen_u, items, seen_i = scan_views(data_dir, split, batch)
    cols = request_names(schema) + [schema.scenario.name]
    summary = {"source": os.path.abspath(data_dir), "split": split, "scenarios": list(schema.scenario.values),
               "user_key": schema.user_key, "item_key": item_key(schema),
               "user_columns": cols, "item_columns": item_names(schema)}
    with atomic_dir(out_dir, replace=True) as tmp:
        for side, seen in (("user", seen_u), ("item", seen_i)):
            def columns(k, a, b, side=side):
                if side == "user":
                    S = schema.num_scenarios
                    return {f"{p}.{c}": snap[c][k * S + s] for p, s in ((A, a), (B, b)) for c in cols}
                out = {f"{p}.{schema.scenario.name}": np.full(len(k), s, np.int64) for p, s in ((A, a), (B, b))}
                return {**out, **{c: items[c][k] for c in item_names(schema)}}

            summary[side] = _write_side(os.path.join(tmp, side), side, seen, schema, rows_per_shard, columns)
        write_json(os.path.join(tmp, "pairs.json"), summary)
    return summary


def _write_side(out: str, side: str, seen: np.ndarray, schema: Schema, rows_per_shard: int, columns) -> dict:
    """The pairs of one side: for each scenario pair (a, b), the keys seen in both, as shards of
    ``{"key": k, **columns(k, a, b)}``; returns the side's counts (checked against sum C(k, 2))."""
    S = schema.num_scenarios
    writer = ShardWriter(out, rows_per_shard)
    by_pair, total = {}, 0
    for a in range(S):
        for b in range(a + 1, S):
            keys = np.flatnonzero(seen[:, a] & seen[:, b])
            by_pair[f"{schema.scenario.values[a]}-{schema.scenario.values[b]}"] = int(len(keys))
            total += len(keys)
            for lo in range(0, len(keys), rows_per_shard):
                k = keys[lo:lo + rows_per_shard]
                writer.write(_encode({"key": k, **columns(k, a, b)}))
    writer.close()
    keys_multi, expected = _pair_counts(seen)
    if expected != total:  # the C(k, 2) rule, checked
        raise AssertionError(f"{side} pairs: wrote {total}, expected sum C(k,2) = {expected}")
    return {"keys": int(seen.any(axis=1).sum()), "keys_in_2plus_scenarios": keys_multi, "pairs": total,
            "by_scenario_pair": by_pair, "scenarios_per_key": np.bincount(seen.sum(axis=1), minlength=S + 1)[1:].tolist()}


def read_summary(pairs_dir: str) -> dict:
    path = os.path.join(pairs_dir, "pairs.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (write the pairs with `tfmsr retrieval pairs`)")
    with open(path) as fh:
        return json.load(fh)


def _id_spec(schema: Schema) -> dict:
    """The serving parse spec with the vocabulary columns as int64: pairs store what ``iter_split`` reads,
    the looked-up ids of a table with a vocabulary (hashed strings stay strings)."""
    spec = parse_spec(schema, inputs_only=True)
    for f in schema.features:
        if f.kind != "numeric" and schema.vocab_path(f):
            s = spec[f.name]
            spec[f.name] = (tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64) if f.kind == "sequence"
                            else tf.io.FixedLenFeature(s.shape, tf.int64))
    return spec


def _pair_spec(schema: Schema, side: str) -> dict:
    base = _id_spec(schema)
    scen = schema.scenario.name
    spec = {"key": tf.io.FixedLenFeature([], tf.int64)}
    if side == "user":
        for p in (A, B):
            spec.update({f"{p}.{c}": base[c] for c in request_names(schema) + [scen]})
    else:
        spec.update({f"{p}.{scen}": tf.io.FixedLenFeature([], tf.int64) for p in (A, B)})
        spec.update({c: base[c] for c in item_names(schema)})
    return spec


def pair_datasets(pairs_dir: str, data: RetrievalData, batch_size: int, seed: int = 0,
                  sides=("user", "item"), shuffle_buffer: int = 200_000) -> Tuple[Optional[tf.data.Dataset], int, dict]:
    """Endless shuffled batches of the pairs of ``sides`` zipped into one dict
    ``{"user_a", "user_b", "item_a", "item_b"}`` (sides without pairs are left out); returns
    (dataset or None when there are no pairs, steps per epoch = the larger side / batch, summary)."""
    summary = read_summary(pairs_dir)
    schema, scen = data.schema, data.schema.scenario.name
    if summary.get("scenarios") != data.scenario_names:
        raise DataError(f"{pairs_dir}: pairs of scenarios {summary.get('scenarios')}, data has {data.scenario_names}")
    parts, steps = [], 0
    for side in sides:
        n = int(summary.get(side, {}).get("pairs", 0))
        files = sorted(glob.glob(os.path.join(pairs_dir, side, "*.tfrecord")))
        if not n or not files:
            continue
        steps = max(steps, math.ceil(n / batch_size))
        spec = _pair_spec(schema, side)
        seq_len = {f.name: f.length for f in schema.of_kind("sequence")}

        def parse(serialized, side=side, spec=spec):
            x = tf.io.parse_example(serialized, spec)
            for name in list(x):
                base = name.split(".", 1)[-1]
                if base in seq_len:
                    x[name] = x[name].to_tensor(default_value=0, shape=[None, seq_len[base]])
            if side == "user":
                cols = request_names(schema) + [scen]
                return {f"user_{p}": data.with_user_stats({c: x[f"{p}.{c}"] for c in cols}) for p in (A, B)}
            out = {}
            stats = tf.gather(data.tables()["item_stats"], tf.clip_by_value(x["key"], 0, data.num_items - 1))
            for p in (A, B):
                view = {c: x[c] for c in item_names(schema)}
                view["item_stats"], view[scen] = stats, x[f"{p}.{scen}"]
                out[f"item_{p}"] = view
            return out

        ds = tf.data.TFRecordDataset(files).shuffle(min(n, shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
        ds = ds.repeat().batch(batch_size, drop_remainder=True)
        parts.append(ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
    if not parts:
        return None, 0, summary
    ds = parts[0] if len(parts) == 1 else tf.data.Dataset.zip(tuple(parts)).map(lambda *d: {k: v for x in d for k, v in x.items()})
    return ds.prefetch(tf.data.AUTOTUNE), steps, summary
