"""Read an ingested split back as raw values: for tests, debugging and spot checks.

``read_columns`` gives NumPy columns (sequences as ``(flat values, row lengths)``, most recent first);
``read_split`` a pandas DataFrame (scalars as numbers or ``str``, sequences as Python lists). Both parse
the shards in the schema's record layout (``tfmsr.data.pipeline.parse_records``) with the spec of each
column's ``raw_dtype`` (``parse_spec``), so they show exactly what was written, before any vocabulary lookup.
"""
from __future__ import annotations

import os
from typing import Dict

import numpy as np
import pandas as pd

from tfmsr.features import Schema


def read_columns(data_dir: str, split: str, batch: int = 8192) -> Dict[str, object]:
    import tensorflow as tf

    from tfmsr.data.pipeline import compression_of, parse_records, parse_spec, split_files

    schema = Schema.load(os.path.join(data_dir, "schema.yaml"))
    spec = parse_spec(schema)
    files = split_files(data_dir, split)
    parts = {k: [] for k in spec}
    for raw in tf.data.TFRecordDataset(files, compression_type=compression_of(files)).batch(batch):
        for k, v in parse_records(raw, spec, schema).items():
            parts[k].append((v.flat_values.numpy(), np.diff(v.row_splits.numpy())) if isinstance(v, tf.RaggedTensor)
                            else v.numpy())
    out = {}
    for k, p in parts.items():
        if isinstance(spec[k], tf.io.RaggedFeature):
            out[k] = (_text(np.concatenate([x[0] for x in p])), np.concatenate([x[1] for x in p]))
        else:
            out[k] = _text(np.concatenate(p))
    return out


def read_split(data_dir: str, split: str, batch: int = 8192) -> pd.DataFrame:
    cols = {}
    for k, v in read_columns(data_dir, split, batch).items():
        if isinstance(v, tuple):
            flat, lens = v[0].tolist(), np.concatenate([[0], np.cumsum(v[1])]).tolist()
            cols[k] = [flat[a:b] for a, b in zip(lens[:-1], lens[1:])]
        else:
            cols[k] = v
    return pd.DataFrame(cols)


def _text(a: np.ndarray) -> np.ndarray:
    """Bytes -> str (object array); numbers unchanged."""
    return np.array([x.decode() for x in a.tolist()], dtype=object) if a.dtype == object else a
