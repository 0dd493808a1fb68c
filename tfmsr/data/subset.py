"""A dataset restricted to some of its scenarios (``tfmsr data subset``): the same records, byte for byte.

Every split keeps the rows whose scenario is listed, in file order. The schema (all S scenarios, so ids,
models and servables stay as they are), the vocabulary files and the compression are kept; ``stats.json`` is
recomputed and its ``subset`` block names the source, the scenarios kept and the rows read and kept per split.
One scenario's data alone is what an "Individual" baseline trains on (SAML's BST-Individual, Table III).
"""
from __future__ import annotations

import os
import shutil
from typing import Dict, List, Sequence

import numpy as np
import tensorflow as tf

from tfmsr.data.pipeline import DataError, compression_of, make_parser, parse_spec, read_errors, split_files
from tfmsr.data.stats import repeat_pair
from tfmsr.data.tfrecord import DatasetWriter
from tfmsr.features import Schema

READ_BATCH = 8192


def scenario_ids(schema: Schema, scenarios: Sequence[str]) -> List[int]:
    """Scenario names (or indices) -> ids, in the schema's order; an unknown one is an error naming the choices."""
    names = list(schema.scenario.values)
    ids = []
    for s in scenarios:
        s = str(s).strip()
        if s in names:
            ids.append(names.index(s))
        elif s.isdigit() and int(s) < len(names):
            ids.append(int(s))
        else:
            raise DataError(f"{schema.source}: no scenario {s!r} (scenarios: {', '.join(names)})")
    if not ids:
        raise DataError(f"{schema.source}: a subset needs at least one scenario")
    return sorted(set(ids))


def data_splits(data_dir: str) -> List[str]:
    """The splits of a dataset: its sub-folders that hold shards."""
    return sorted(d for d in os.listdir(data_dir)
                  if os.path.isdir(os.path.join(data_dir, d)) and d != "vocab" and not d.startswith(".")
                  and any(".tfrecord" in f for f in os.listdir(os.path.join(data_dir, d))))


def _stats_parser(schema: Schema):
    """Parses only what ``stats.json`` reads: the scenario, the labels and the repeat pair (as ids)."""
    full = parse_spec(schema)
    names = [schema.scenario.name, *schema.labels, *(repeat_pair(schema) or ())]
    return make_parser(schema, with_labels=False, spec={n: full[n] for n in names}, non_finite=None)


def _copy_split(writer: DatasetWriter, split: str, files: List[str], schema: Schema, parse, keep: np.ndarray) -> Dict:
    """Writes the kept records of one split (``parse``: :func:`_stats_parser`); returns rows read and kept."""
    ds = tf.data.TFRecordDataset(files, compression_type=compression_of(files)).batch(READ_BATCH)
    read = kept = 0
    with read_errors(files, schema):
        for serialized in ds:
            cols = {k: v.numpy() for k, v in parse(serialized).items()}
            mask = np.isin(cols[schema.scenario.name], keep)
            read, kept = read + len(mask), kept + int(mask.sum())
            if mask.any():
                writer.write(split, {k: v[mask] for k, v in cols.items()}, serialized.numpy()[mask].tolist())
    return {"rows_read": read, "rows_kept": kept}


def subset(src: str, out: str, scenarios: Sequence[str], overwrite: bool = False,
           rows_per_shard: int = 50_000) -> dict:
    """Writes ``out``: ``src`` with only the rows of ``scenarios`` (names or indices), atomically; returns
    its ``stats.json``. A split left with no row is an error (a model could not train or be evaluated on it)."""
    schema = Schema.load(os.path.join(src, "schema.yaml"))
    keep = np.array(scenario_ids(schema, scenarios), np.int64)
    splits = {sp: split_files(src, sp) for sp in data_splits(src)}
    compression = compression_of([f for fs in splits.values() for f in fs]) or None
    names = [schema.scenario.values[i] for i in keep]
    writer = DatasetWriter(out, schema, rows_per_shard, compression, overwrite)
    with writer:
        parse = _stats_parser(schema)
        counts = {sp: _copy_split(writer, sp, files, schema, parse, keep) for sp, files in splits.items()}
        empty = [sp for sp, c in counts.items() if not c["rows_kept"]]
        if empty:
            raise DataError(f"{src}: split(s) {', '.join(empty)} hold no row of scenario(s) {', '.join(names)}")
        if os.path.isdir(os.path.join(src, "vocab")):
            shutil.copytree(os.path.join(src, "vocab"), os.path.join(writer.tmp_dir, "vocab"))
        writer.extra_stats["subset"] = {"source": os.path.abspath(src), "scenarios": names, "splits": counts}
    return writer.stats.result() | {"subset": writer.extra_stats["subset"]}
