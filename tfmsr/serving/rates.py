"""Label-rate features a servable computes from the raw key (``rate_per`` / ``train_count_per`` of
``tfmsr data ingest``, ``tfmsr.data.ingest.rates``), so a request sends the raw item id alone.

A dataset whose spec derives a numeric feature straight from ``rate_per: KEY`` or ``train_count_per: KEY``
(e.g. ``item_rate`` and ``item_train_n`` of the shipped specs), where KEY is the raw value of a categorical
feature with a vocabulary (``item_id: {from: item_key}``), stores KEY's train rows and positives in
``rates/KEY.parquet`` (carried counts of ``--vocab-from`` included). The export writes that table to
``assets/rates_KEY.tsv`` (``key<TAB>rows<TAB>positives``), read by two stock ``StaticHashTable`` s, and the
graph computes what ingest gives a valid / test row (every train row read):

    rate_per          (pos + m p) / (n + m),  p = (P + 1) / (N + 2)  (P, N: all train positives, rows)
    train_count_per   n
    then the feature's ingest transform (log1p, clip) in float64, cast to float32; standardised in the model

A key without train rows (absent from the table) reads n = pos = 0, i.e. the prior ``p`` and 0, as at
ingest; the missing raw value ("" / 0) gets the feature's ``fill``. An unknown key is an unknown item: its
vocabulary lookup counts it as out-of-vocabulary. A ``reading: as_of`` feature gets the same full-train
value (what a server knows now); its valid / test shards hold values as of each row, so there only the
out_of_fold default is exact. Train rows' shard values are out of fold and differ from the table's.

Anything missing (a dataset without ``rates/``, written before, its spec no longer readable, a feature
derived further from the rate, a key that is no vocabulary feature, a key holding a tab or newline) leaves
the feature a request input, as before; ``from_dataset`` says why in its log line.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf

from tfmsr.features import Schema

_DTYPES = {"string": tf.string, "int64": tf.int64}
_MISSING = {"string": "", "int64": 0}


@dataclass
class RateFeature:
    """One numeric feature computed from its key's row of the table."""

    name: str
    op: str                  # rate_per | train_count_per
    key: str                 # the feature whose raw value is the key (e.g. item_id)
    m: float = 0.0
    transform: List[tuple] = field(default_factory=list)
    fill: float = 0.0
    reading: str = "out_of_fold"

    def describe(self, table: "RateTable") -> dict:
        return {"op": self.op, "key_input": self.key, "m": self.m, "prior": table.prior,
                "transform": [list(t) for t in self.transform], "fill": self.fill,
                "asset": os.path.basename(table.path), "keys": table.size,
                "unknown_key": "n = positives = 0: rate = prior, count 0", "missing_key": "fill"}


class RateTable(tf.Module):
    """``assets/rates_<key>.tsv`` as two hash tables (rows, positives) of the raw key, and the prior."""

    def __init__(self, path: str, raw: str, prior: float, size: int):
        super().__init__(name=f"rates_{os.path.basename(path).split('.')[0]}")
        self.path, self.raw, self.prior, self.size = path, raw, float(prior), int(size)
        L = tf.lookup
        with tf.init_scope():
            self.rows, self.positives = (L.StaticHashTable(L.TextFileInitializer(
                path, _DTYPES[raw], 0, tf.int64, column, delimiter="\t"), default_value=0) for column in (1, 2))

    def value(self, f: RateFeature, raw: tf.Tensor) -> tf.Tensor:
        """float32 ``[B]`` of feature ``f`` for raw keys ``[B]`` (see the module docstring)."""
        n = tf.cast(self.rows.lookup(raw), tf.float64)
        if f.op == "rate_per":
            x = (tf.cast(self.positives.lookup(raw), tf.float64) + f.m * self.prior) / (n + f.m)
        else:
            x = n
        for step in f.transform:   # standardize: in the model, as for every numeric input
            if step[0] == "log1p":
                x = tf.math.log1p(x)
            elif step[0] == "clip":
                x = tf.clip_by_value(x, tf.constant(step[1], tf.float64), tf.constant(step[2], tf.float64))
        x = tf.cast(x, tf.float32)
        return tf.where(tf.equal(raw, _MISSING[self.raw]), tf.fill(tf.shape(x), tf.constant(f.fill, tf.float32)), x)


class RateLookups(tf.Module):
    """The computed features of a servable: ``self(x)`` adds each from ``x[key]`` (raw values);
    ``given`` (values a ``tf.Example`` carried, NaN where absent) win where present."""

    def __init__(self, features: Dict[str, RateFeature], tables: Dict[str, RateTable]):
        super().__init__(name="rate_lookups")
        self.features, self.tables = features, tables   # tables: feature name -> its key's table

    @property
    def names(self) -> List[str]:
        return sorted(self.features)

    def __bool__(self) -> bool:
        return bool(self.features)

    def only(self, names) -> "RateLookups":
        """The features among ``names`` whose key is among them too (a servable reading a subset)."""
        keep = {n: f for n, f in self.features.items() if n in names and f.key in names}
        return RateLookups(keep, {n: self.tables[n] for n in keep})

    def __call__(self, x: Dict[str, tf.Tensor], given: Optional[Dict[str, tf.Tensor]] = None):
        out = dict(x)
        for name, f in self.features.items():
            out[name] = self.tables[name].value(f, x[f.key])
            if given is not None and name in given:
                out[name] = tf.where(tf.math.is_nan(given[name]), out[name], given[name])
        return out

    def describe(self) -> dict:
        """``export.json["computed_inputs"]``: per feature, how the graph computes it."""
        return {n: f.describe(self.tables[n]) for n, f in sorted(self.features.items())}

    @property
    def meta(self) -> dict:
        """``{"computed_inputs": ...}`` for ``export.json``, or {} when none."""
        return {"computed_inputs": self.describe()} if self.features else {}

    def files(self) -> List[str]:
        return sorted({t.path for t in self.tables.values()})


def from_dataset(schema: Schema, data_dir: Optional[str], workdir: str,
                 log: Callable[[str], None] = print, tag: str = "export") -> Optional[RateLookups]:
    """The rate features of the dataset ``data_dir`` a servable can compute (their tables written as TSV
    under ``workdir``), or None (logged why, each line prefixed ``[tag]``) when there are none: they stay
    request inputs."""
    def note(message: str) -> None:
        log(f"[{tag}] {message}")

    found = _rate_features(schema, data_dir)
    if isinstance(found, str):
        if found:
            note(f"rate features stay request inputs: {found}")
        return None
    features, tables, made = {}, {}, {}
    for f, key, raw in found:
        if key not in made:
            made[key] = _table(os.path.join(data_dir, "rates", f"{key}.parquet"), raw, workdir)
        if isinstance(made[key], str):
            note(f"'{f.name}' stays a request input: {made[key]}")
            continue
        features[f.name], tables[f.name] = f, made[key]
    features = _verified(RateLookups(features, tables), schema, data_dir, note)
    if features:
        note(f"computed from the raw key in the graph: {', '.join(sorted(features))} "
             f"({', '.join(sorted({os.path.basename(t.path) for t in tables.values()}))})")
    return RateLookups(features, tables) if features else None


def _verified(rates: RateLookups, schema: Schema, data_dir: str, log) -> Dict[str, RateFeature]:
    """The features of ``rates`` but the out_of_fold ones whose computed value differs from the first valid
    shard's (e.g. the spec edited after ingest): those stay request inputs (logged)."""
    from tfmsr.data.pipeline import DataError, compression_of, make_parser, split_files

    check = [n for n, f in rates.features.items() if f.reading == "out_of_fold"]
    try:
        files = split_files(data_dir, "valid")[:1] if check else []
    except DataError:
        files = []
    records = [r for r in tf.data.TFRecordDataset(files, compression_of(files) if files else "").batch(2048).take(1)]
    if not records:
        return dict(rates.features)
    shards = Schema.load(os.path.join(data_dir, "schema.yaml"))   # in its own record layout
    try:
        x = make_parser(shards, with_labels=False, raw=True, non_finite=None)(records[0])
    except tf.errors.OpError as e:
        log(f"{files[0]}: not checked against the rates table ({type(e).__name__})")
        return dict(rates.features)
    got = rates(x)
    out = dict(rates.features)
    for name in check:
        diff = float(tf.reduce_max(tf.abs(got[name] - x[name])))
        if diff > 1e-5:
            log(f"'{name}' stays a request input: computed from the rates table it differs from the "
                f"valid shard {files[0]} by up to {diff:.4g} (was the spec changed after ingest?)")
            del out[name]
    return out


def _rate_features(schema: Schema, data_dir: Optional[str]):
    """[(RateFeature, rate key, raw dtype)] of the schema's numeric features derived straight from a label
    rate of a vocabulary feature's raw value, or a string: why none ("" when the dataset has no rates)."""
    try:
        with open(os.path.join(data_dir or "", "stats.json")) as fh:
            ingest = json.load(fh).get("ingest") or {}
    except (OSError, ValueError):
        return "" if data_dir is None or os.path.isdir(data_dir) else f"the dataset {data_dir} is gone"
    rates = ingest.get("rates") or {}
    if not rates:
        return ""
    from tfmsr.data.ingest.spec import SpecError, load_spec  # only for datasets with rates

    try:
        spec = load_spec(ingest["spec"])
    except (OSError, SpecError, KeyError) as e:
        return f"the dataset's spec {ingest.get('spec')} cannot be read ({e})"
    names = {f.name for f in schema.features}
    out = []
    for f in spec.features.values():
        d = rates.get(f.source)
        if f.name not in names or f.policy != "numeric" or d is None:
            continue
        keyed = [g for g in spec.features.values() if g.source == d["key"] and g.kind == "categorical"
                 and g.name in names and schema.feature(g.name).vocab]
        if keyed:
            raw = schema.feature(keyed[0].name).raw
            out.append((RateFeature(f.name, d["op"], keyed[0].name, float(d.get("m") or 0.0), f.transform, f.fill,
                                     d.get("reading", "out_of_fold")), d["key"], raw))
    return out


def _table(parquet: str, raw: str, workdir: str):
    """A ``RateTable`` of ``rates/<key>.parquet`` (as TSV under ``workdir``), or a string: why not."""
    import pyarrow.parquet as pq

    if not os.path.isfile(parquet):
        return f"no {parquet} (a dataset written before: request inputs as before)"
    t = pq.read_table(parquet)
    meta = t.schema.metadata or {}
    n_all, pos_all = (int(meta[k]) for k in (b"train_rows", b"train_positives"))
    keys = t["key"].to_numpy(zero_copy_only=False)
    if raw == "string" and any(("\t" in k) or ("\n" in k) for k in keys):
        return f"{parquet}: a key holds a tab or a newline (the TSV asset cannot hold it)"
    lines = [f"{k}\t{r}\t{p}\n" for k, r, p in zip(keys, t["rows"].to_numpy(), t["positives"].to_numpy())
             if k != _MISSING[raw]]  # the missing value reads the fill in the graph
    path = os.path.join(workdir, f"rates_{os.path.basename(parquet)[:-len('.parquet')]}.tsv")
    with open(path, "w") as fh:
        fh.writelines(lines)
    return RateTable(path, raw, (pos_all + 1.0) / (n_all + 2.0), len(lines))
