"""Read an ingested split back as raw values (a pandas DataFrame): for tests, debugging and spot checks.

Scalars come back as numbers or ``str``; sequences as Python lists (most recent first). This reads the
shards with a plain ``tf.io.parse_example`` spec built from the schema's ``raw_dtype`` of each column, so
it shows exactly what was written, before any vocabulary lookup.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from tfmsr.features import Schema


def read_split(data_dir: str, split: str, batch: int = 8192) -> pd.DataFrame:
    import tensorflow as tf

    from tfmsr.data.pipeline import compression_of, split_files

    schema = Schema.load(os.path.join(data_dir, "schema.yaml"))
    dtypes = {"string": tf.string, "int64": tf.int64, "float32": tf.float32}
    spec = {schema.scenario.name: tf.io.FixedLenFeature([], tf.int64)}
    spec.update({label: tf.io.FixedLenFeature([], tf.float32) for label in schema.labels})
    for f in schema.features:
        dt = dtypes[schema.raw_dtype(f)]
        spec[f.name] = tf.io.RaggedFeature(dt) if f.kind == "sequence" else tf.io.FixedLenFeature([], dt)
    spec.update({n: tf.io.FixedLenFeature([], dtypes[d]) for n, d in schema.extras.items()})
    files = split_files(data_dir, split)
    ds = tf.data.TFRecordDataset(files, compression_type=compression_of(files)).batch(batch)
    cols = {k: [] for k in spec}
    for raw in ds:
        parsed = tf.io.parse_example(raw, spec)
        for k, v in parsed.items():
            cols[k].extend(_python(v))
    return pd.DataFrame(cols)


def _python(v) -> list:
    import tensorflow as tf

    if isinstance(v, tf.RaggedTensor):
        flat, splits = v.flat_values.numpy(), v.row_splits.numpy().tolist()
        vals = [x.decode() for x in flat.tolist()] if flat.dtype == object else flat.tolist()
        return [vals[a:b] for a, b in zip(splits[:-1], splits[1:])]
    arr = v.numpy()
    if arr.dtype == object:
        return [x.decode() for x in arr.tolist()]
    return arr.tolist() if arr.dtype.kind != "f" else list(arr.astype(np.float64))
