"""Write columnar rows (NumPy / pandas) as ``tf.train.Example`` TFRecord shards, atomically.

Layout of a dataset directory (what converters and the synthetic generator write)::

    DIR/schema.yaml
    DIR/stats.json                     rows, positives, traffic share, repeat rate per split and scenario
    DIR/<split>/part-00000.tfrecord[.gz]    rows in the schema's ``layout`` (``tfmsr.data.layout``)

``DatasetWriter`` writes everything into ``DIR.tmp-<pid>`` and renames it to ``DIR`` only when the
dataset is complete, so a crashed conversion never leaves a half-written dataset behind.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from tfmsr.data import wire
from tfmsr.data.layout import (DEFAULT_LAYOUT, FEATURES, LAYOUTS, PACKED, SEQ_KINDS, column_kinds, layout_of_keys,
                               packed_columns)
from tfmsr.data.stats import StatsAccumulator
from tfmsr.features import Schema


def encode_examples(columns: Mapping[str, object], schema: Schema, layout: str = FEATURES) -> List[bytes]:
    """Serialise one chunk of rows in ``layout`` (``tfmsr.data.layout``). ``columns`` maps every schema column
    to an array of length N (sequences: a 2-D array right-padded with 0, or a list of per-row lists)."""
    kinds = column_kinds(schema)
    missing = [c for c in kinds if c not in columns]
    if missing:
        raise KeyError(f"encode_examples: missing column(s) {missing} required by {schema.source}")
    n = len(columns[schema.scenario.name])
    for name in kinds:
        if len(columns[name]) != n:
            raise ValueError(f"encode_examples: column '{name}' has {len(columns[name])} rows, expected {n}")
    if layout == PACKED:
        feats = [(key, _packed(kinds[names[0]], [columns[c] for c in names], n))
                 for key, names in packed_columns(schema).items()]
        feats += [(name, _feature(kind, columns[name], n)) for name, kind in kinds.items() if kind in SEQ_KINDS]
    elif layout == FEATURES:
        feats = [(name, _feature(kind, columns[name], n)) for name, kind in kinds.items()]
    else:
        raise ValueError(f"encode_examples: unknown layout '{layout}' (expected one of {', '.join(LAYOUTS)})")
    return wire.split_rows(wire.examples(feats))


def _feature(kind: str, col, n: int) -> wire.Segments:
    """One column as the Feature segments of its kind (``column_kinds``)."""
    if kind == "int":
        return wire.int64_feature(np.asarray(col, np.int64))
    if kind == "float":
        return wire.float_feature(np.asarray(col, np.float32))
    if kind == "int_seq":
        if isinstance(col, np.ndarray) and col.ndim == 2:
            keep = col != 0  # 0 is padding
            flat, lengths = col[keep], keep.sum(axis=1)
        else:
            lengths = np.fromiter((len(r) for r in col), np.int64, n)
            flat = np.fromiter((v for r in col for v in r), np.int64, int(lengths.sum()))
        return wire.int64_feature(flat, lengths)
    rows = [[col[i]] for i in range(n)] if kind == "bytes" else [[v for v in r if v] for r in col]
    return wire.bytes_feature([[_b(v) for v in r] for r in rows])


def _packed(kind: str, cols: List[object], n: int) -> wire.Segments:
    """Scalar columns of one kind side by side: one list of ``len(cols)`` values per row."""
    if kind == "int":
        return wire.int64_feature(np.stack([np.asarray(c, np.int64) for c in cols], axis=1).ravel(),
                                  np.full(n, len(cols), np.int64))
    if kind == "float":
        return wire.float_feature(np.stack([np.asarray(c, np.float32) for c in cols], axis=1))
    return wire.bytes_feature([[_b(c[i]) for c in cols] for i in range(n)])


def relayout(records: Sequence[bytes], schema: Schema, layout: str) -> List[bytes]:
    """Records of a dataset of ``schema`` written again in ``layout``: the same rows (e.g. per-feature serving
    requests from packed shards), read in the layout they are in (their first record tells)."""
    import tensorflow as tf

    from tfmsr.data.pipeline import parse_records, parse_spec

    if not len(records):
        return []
    found = layout_of_keys(tf.train.Example.FromString(records[0]).features.feature)
    parsed = parse_records(tf.constant(list(records)), parse_spec(schema), schema, found)
    cols = {k: v.to_list() if isinstance(v, tf.RaggedTensor) else v.numpy() for k, v in parsed.items()}
    return encode_examples(cols, schema, layout)


def _b(v) -> bytes:
    return v if isinstance(v, bytes) else str(v).encode()


class ShardWriter:
    """Rolls TFRecord shards of ``rows_per_shard`` rows under ``directory``."""

    def __init__(self, directory: str, rows_per_shard: int = 50_000, compression: Optional[str] = None):
        import tensorflow as tf

        self._tf = tf
        self.directory = directory
        self.rows_per_shard = rows_per_shard
        self.compression = compression
        self.suffix = ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"
        self.files: List[str] = []
        self._writer = None
        self._rows_in_shard = 0
        os.makedirs(directory, exist_ok=True)

    def write(self, records: List[bytes]) -> None:
        i = 0
        while i < len(records):
            if self._writer is None:
                path = os.path.join(self.directory, f"part-{len(self.files):05d}{self.suffix}")
                self._writer = self._tf.io.TFRecordWriter(path, options=self.compression or "")
                self.files.append(path)
            take = min(len(records) - i, self.rows_per_shard - self._rows_in_shard)
            write = self._writer.write
            for rec in records[i:i + take]:
                write(rec)
            i += take
            self._rows_in_shard += take
            if self._rows_in_shard >= self.rows_per_shard:
                self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._rows_in_shard = 0


class DatasetWriter:
    """Writes a whole dataset (splits + schema + stats) to a temp dir, renamed into place on success.

    with DatasetWriter(out, schema) as w:
        w.write("train", columns)      # any number of chunks, any splits
    """

    def __init__(self, out_dir: str, schema: Schema, rows_per_shard: int = 50_000,
                 compression: Optional[str] = None, overwrite: bool = False, extra_stats: Optional[dict] = None,
                 layout: Optional[str] = None):
        self.out_dir = os.path.abspath(out_dir)
        if os.path.exists(self.out_dir) and not overwrite:
            raise FileExistsError(f"{self.out_dir} already exists (pass overwrite to replace it)")
        self.schema = schema
        self.tmp_dir = f"{self.out_dir}.tmp-{os.getpid()}"
        self.rows_per_shard = rows_per_shard
        self.compression = compression
        self.overwrite = overwrite
        self.extra_stats = dict(extra_stats or {})
        self._writers: Dict[str, ShardWriter] = {}
        self.stats = StatsAccumulator(schema)
        if layout not in (None, *LAYOUTS):
            raise ValueError(f"DatasetWriter: unknown layout '{layout}' (expected one of {', '.join(LAYOUTS)})")
        self.layout = layout or DEFAULT_LAYOUT  # of the rows it encodes
        self.written: Optional[str] = None  # the layout of the records written so far

    def __enter__(self):
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        os.makedirs(self.tmp_dir)
        return self

    def write(self, split: str, columns: Mapping[str, object], records: Optional[List[bytes]] = None) -> None:
        """``records``: the rows already serialised, in the layout of the writer's ``schema`` (then ``columns``
        needs only what the stats read: the scenario, the label and the repeat pair); else the rows are encoded
        in ``layout``. A dataset holds one layout (recorded in its schema.yaml)."""
        layout = self.schema.layout if records is not None else self.layout
        if self.written not in (None, layout):
            raise ValueError(f"DatasetWriter {self.out_dir}: records in the {layout} layout after records in the "
                             f"{self.written} layout (a dataset holds one layout)")
        self.written = layout
        if split not in self._writers:
            self._writers[split] = ShardWriter(os.path.join(self.tmp_dir, split), self.rows_per_shard,
                                               self.compression)
        self._writers[split].write(records if records is not None else encode_examples(columns, self.schema, layout))
        self.stats.update(split, columns)

    def __exit__(self, exc_type, exc, tb):
        for w in self._writers.values():
            w.close()
        if exc_type is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            return False
        layout = self.written or self.layout
        dataclasses.replace(self.schema, layout=layout).save(os.path.join(self.tmp_dir, "schema.yaml"))
        stats = self.stats.result()
        stats.update(self.extra_stats)
        stats["compression"] = self.compression or ""
        with open(os.path.join(self.tmp_dir, "stats.json"), "w") as fh:
            json.dump(stats, fh, indent=2)
        if os.path.exists(self.out_dir) and self.overwrite:
            shutil.rmtree(self.out_dir)
        os.rename(self.tmp_dir, self.out_dir)
        return False
