"""Derived values, side-table joins and numeric transforms, vectorised per chunk.

Row ops (``concat``, ``first_token``, ``slice``, ``first_flag``, ``bucketize``, ``time_part``) run on the
chunk's pyarrow columns while reading. Per-key ops need the whole log first: ``count_per`` (the number of
rows of each key, e.g. a user's number of ratings) and ``position_in_file`` (a row's relative position
among its key's rows of the same input file, ``(rank + 0.5) / count``); they are completed from counts
gathered while reading (``KeyStats``) when the rows are read back, as is any ``bucketize`` of them.
``rate_per`` / ``train_count_per`` (train labels per key) live in ``rates``.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tfmsr.data.convert._common import MISSING
from tfmsr.data.ingest.spec import DeriveSpec, TableSpec
from tfmsr.data.pipeline import DataError


def to_numpy(arr: pa.Array, dtype: str) -> np.ndarray:
    """float64 (missing NaN) or int64 (missing ``MISSING``) NumPy copy of a numeric column."""
    if dtype == "int64":
        return pc.fill_null(arr.cast(pa.int64()), MISSING).to_numpy(zero_copy_only=False)
    return pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)


def as_float(x: np.ndarray) -> np.ndarray:
    """Float copy of a numeric NumPy column (``MISSING`` -> NaN)."""
    if x.dtype.kind == "f":
        return x
    out = x.astype(np.float64)
    out[x == MISSING] = np.nan
    return out


def bucketize(x: np.ndarray, boundaries: List[float]) -> np.ndarray:
    """Bucket index 0..len(boundaries) (value >= boundary k -> past bucket k); missing -> ``MISSING``."""
    f = as_float(x)
    out = np.searchsorted(np.asarray(boundaries, np.float64), f, side="right").astype(np.int64)
    out[np.isnan(f)] = MISSING
    return out


def _from_numpy(x: np.ndarray) -> pa.Array:
    if x.dtype.kind == "f":
        return pa.array(x, pa.float64(), mask=np.isnan(x))
    return pa.array(x, pa.int64(), mask=x == MISSING)


def time_part(x: np.ndarray, part: str, unit: str) -> np.ndarray:
    """Calendar part (UTC) of unix times: year, month (1-12), day (1-31), weekday (Monday 0), hour."""
    f = as_float(x)
    ok = ~np.isnan(f)
    secs = np.where(ok, f, 0).astype(np.int64) // (1000 if unit == "ms" else 1)
    t = secs.astype("datetime64[s]")
    if part == "year":
        out = t.astype("datetime64[Y]").astype(np.int64) + 1970
    elif part == "month":
        out = t.astype("datetime64[M]").astype(np.int64) % 12 + 1
    elif part == "day":
        out = (t.astype("datetime64[D]") - t.astype("datetime64[M]")).astype(np.int64) + 1
    elif part == "weekday":
        out = (t.astype("datetime64[D]").astype(np.int64) + 3) % 7
    else:
        out = secs // 3600 % 24
    return np.where(ok, out, MISSING)


def _blank_to_null(arr: pa.Array) -> pa.Array:
    return pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)


def row_op(d: DeriveSpec, values: Dict[str, pa.Array], types: Dict[str, str], where) -> pa.Array:
    """One derived column of a chunk; ``where(i, column)`` names row i's file and line for errors."""
    o, args = d.options, [values[v] for v in d.inputs]
    if d.op == "concat":
        strs = [a if types[v] == "string" else pc.cast(a, pa.string()) for v, a in zip(d.inputs, args)]
        return pc.binary_join_element_wise(*strs, o["sep"])
    if d.op == "first_token":
        return _blank_to_null(pc.list_element(pc.split_pattern(args[0], o["sep"], max_splits=1), 0))
    if d.op == "slice":
        s = pc.utf8_trim_whitespace(args[0]) if o["strip"] else args[0]
        s = pc.utf8_slice_codeunits(s, o["start"], o["stop"] if o["stop"] is not None else 2 ** 31 - 1)
        s = pc.utf8_upper(s) if o["case"] == "upper" else pc.utf8_lower(s) if o["case"] == "lower" else s
        return _blank_to_null(s)
    if d.op == "first_flag":
        return _first_flag(d, args, types, where)
    x = to_numpy(args[0], types[d.inputs[0]])
    if d.op == "bucketize":
        return _from_numpy(bucketize(x, o["boundaries"]))
    if d.op == "time_part":
        return _from_numpy(time_part(x, o["part"], o["unit"]))
    raise AssertionError(d.op)


def _first_flag(d: DeriveSpec, args: List[pa.Array], types, where) -> pa.Array:
    """Name of the first of ``d.inputs`` whose value is 1 (``default`` when none); flags must be 0/1."""
    flags = np.stack([as_float(to_numpy(a, types[v])) for v, a in zip(d.inputs, args)], axis=1)
    bad = ~np.isin(flags, (0.0, 1.0))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise DataError(f"{where(i, d.inputs[j])}: value {flags[i, j]} is not a 0/1 flag "
                        f"(derive.{d.name} reads first_flag over {', '.join(d.inputs)})")
    on = flags == 1
    names = pa.array([str(v) for v in d.options["values"]] + [d.options["default"]], pa.string())
    return pc.take(names, pa.array(np.where(on.any(axis=1), on.argmax(axis=1), len(d.inputs))))


# ---------------------------------------------------------------------------------------------- joins
class Join:
    """A side table in memory, joined to each chunk on its key: its columns (but the key) become values
    of the chunk; rows whose key has no match get missing values (``required``: are dropped, counted)."""

    def __init__(self, spec: TableSpec, columns: Dict[str, pa.Array], path: str):
        self.spec, self.path = spec, path
        keys = columns[spec.key]
        if keys.null_count:
            i = int(np.flatnonzero(keys.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{path} row {i}: key column '{spec.key}' is empty (tables.{spec.name} needs a key "
                            "on every row)")
        dup = pc.count_distinct(keys).as_py()
        if dup != len(keys):
            uniq, first = np.unique(keys.to_numpy(zero_copy_only=False), return_index=True)
            seen = np.zeros(len(keys), bool)
            seen[first] = True
            i = int(np.flatnonzero(~seen)[0])
            raise DataError(f"{path} row {i}: key '{spec.key}' value {keys[i].as_py()!r} appears twice "
                            f"(tables.{spec.name} joins on a unique key)")
        self.keys = keys
        self.columns = {c: a for c, a in columns.items() if c != spec.key}
        self.rows = len(keys)

    def apply(self, values: Dict[str, pa.Array]) -> np.ndarray:
        """Adds the joined columns to ``values``; returns the mask of rows without a match."""
        pos = pc.index_in(values[self.spec.on], value_set=self.keys)
        for c, a in self.columns.items():
            values[c] = pc.take(a, pos)
        return pos.is_null().to_numpy(zero_copy_only=False)


# ---------------------------------------------------------------------------------------------- per-key values
class KeyStats:
    """Counts per key code (``count_per``) and, per input file, per key code plus each row's running rank
    among its key's rows of that file (``position_in_file``), gathered while reading."""

    def __init__(self):
        self.counts: Dict[str, np.ndarray] = {}
        self.file_counts: Dict[tuple, np.ndarray] = {}

    @staticmethod
    def _add(store: dict, key, codes: np.ndarray) -> np.ndarray:
        """Adds the chunk's codes to ``store[key]``; returns the counts before the chunk, per row."""
        size = int(codes.max()) + 1 if len(codes) else 0
        have = store.get(key, np.zeros(0, np.int64))
        if size > len(have):
            have = np.concatenate([have, np.zeros(max(size - len(have), len(have)), np.int64)])
        valid = codes >= 0
        before = np.where(valid, have[np.where(valid, codes, 0)], 0)
        have += np.bincount(codes[valid], minlength=len(have))
        store[key] = have
        return before

    def count(self, value: str, codes: np.ndarray) -> None:
        self._add(self.counts, value, codes)

    def rank(self, value: str, file_index: int, codes: np.ndarray) -> np.ndarray:
        """Each row's rank among its key's rows of this file so far (int32)."""
        before = self._add(self.file_counts, (value, file_index), codes)
        order = np.argsort(codes, kind="stable")
        c = codes[order]
        start = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
        within = np.arange(len(c)) - np.repeat(start, np.diff(np.r_[start, len(c)]))
        rank = np.empty(len(c), np.int64)
        rank[order] = within
        return (before + rank).astype(np.int32)

    def count_of(self, value: str, codes: np.ndarray) -> np.ndarray:
        have = self.counts[value]
        return np.where(codes >= 0, have[np.maximum(codes, 0)], MISSING)

    def position(self, value: str, files: np.ndarray, codes: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        out = np.full(len(codes), np.nan)
        for f in np.unique(files):
            m = (files == f) & (codes >= 0)
            total = self.file_counts[(value, int(f))][codes[m]]
            out[m] = (ranks[m] + 0.5) / total
        return out


def key_op(d: DeriveSpec, late: Dict[str, np.ndarray], keys: KeyStats, rec) -> np.ndarray:
    """A per-key derived value of rows read back from the spill (``late``: values by name, ``rec`` the
    spilled records)."""
    if d.op == "count_per":
        return keys.count_of(d.inputs[0], late[d.inputs[0]])
    if d.op == "position_in_file":
        return keys.position(d.inputs[0], rec["file"], late[d.inputs[0]], rec[f"rank:{d.name}"])
    if d.op == "bucketize":
        return bucketize(late[d.inputs[0]], d.options["boundaries"])
    raise AssertionError(d.op)


def transform(x: np.ndarray, steps: List[tuple], name: str) -> np.ndarray:
    """A numeric feature's ``log1p`` / ``clip`` steps (``standardize`` is left to the graph: mean/std go
    into the schema)."""
    x = as_float(x).copy()
    for step in steps:
        if step[0] == "log1p":
            if (x <= -1).any():
                raise DataError(f"feature '{name}': log1p of {x[x <= -1][0]} (values must be > -1; clip first)")
            x = np.log1p(x)
        elif step[0] == "clip":
            x = np.clip(x, step[1], step[2])
    return x


def fill_missing(x: np.ndarray, fill: float) -> Optional[np.ndarray]:
    return np.where(np.isnan(x), fill, x)
