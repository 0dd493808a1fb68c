"""Label-rate statistics per key (``rate_per``, ``train_count_per``): the industrial "item CTR" feature.

``rate_per: KEY`` gives each row its key's (e.g. its item's) positive rate among **train-split** rows,
smoothed toward the global positive rate of the same train rows: ``(pos + m * p) / (n + m)``, ``p = (P + 1)
/ (N + 2)`` (Laplace; P positives of the N rows read, any key). ``train_count_per: KEY`` is that ``n``.
Valid and test labels never reach any row; a row never reads its own label. Two readings (``reading:``):

* ``out_of_fold`` (default): K folds (``folds: 5``) on a hash of the user; a train row reads the train
  rows of the other folds (all times), a valid/test row every train row, i.e. the information of the
  benchmark's ``popularity`` row. Not leave-one-out: its shift ``(S - y) / (n - 1)`` leaks the label
  within a key, a fold of other users does not. Memory: keys x K counts (no per-row state). A key that is
  the user itself is an error (its train rows would read only the prior).
* ``as_of`` (needs ``time``): the key's train rows **strictly earlier** than the row (ties excluded), what
  a server knows at request time. Memory: about 32 bytes per train row (sorted (key, time rank) codes,
  running positives, the same for all keys) plus 8 per distinct time, i.e. O(train rows), reported as
  ``table_bytes`` in ``stats.json["ingest"]["rates"]``.

Default out_of_fold: on ml-latest-small (3 seeds) it lifts every model's test GAUC and as_of does not (a
user_time split puts many test rows years before most train rows, so as-of values on test are thin).

Both read the spill once more (a pass between reading and writing) to gather the train rows, since the
split is known only per group of users. ``stats.json["ingest"]["rates"]`` counts per split the rows, the
rows with no train row of their key read (prior only) and the rows without a key.

``--vocab-from PREV``: PREV stores its per-key train rows and positives (all of PREV's train split plus
what PREV itself carried) in ``rates/<key>.parquet``; they count as read by every row of this dataset
(earlier than all of it). This dataset writes the sum (carried + its own train rows) for the next day.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tfmsr.data.pipeline import DataError
from tfmsr.data.ingest.vocab import Coder

META = (b"train_rows", b"train_positives")


class Carried:
    """A key's per-key train rows and positives: carried from a previous dataset (``--vocab-from``) and
    this dataset's own (``totals``, set by ``freeze``), saved as ``rates/<key>.parquet``."""

    def __init__(self, key: str):
        self.key = key
        self.prev_rows = self.prev_pos = np.zeros(0, np.int64)
        self.prev_total = (0, 0)
        self.prev_extra: Optional[pa.Table] = None  # PREV's keys this dataset never saw
        self.totals = (np.zeros(0, np.int64), np.zeros(0, np.int64), 0, 0)  # per key rows, positives; all

    def load(self, prev_dir: str, coder: Coder) -> None:
        """PREV's per-key counts, mapped to this run's codes (call after pass 1, before ``freeze``)."""
        path = os.path.join(prev_dir, "rates", f"{self.key}.parquet")
        if not os.path.isfile(path):
            raise DataError(f"--vocab-from {prev_dir}: no rates/{self.key}.parquet, so the train counts of "
                            f"rate_per / train_count_per '{self.key}' cannot carry over (ingest the previous "
                            "dataset with the same rate_per spec, or drop --vocab-from)")
        t = pq.read_table(path)
        meta = t.schema.metadata or {}
        self.prev_total = tuple(int(meta[k]) for k in META)
        codes = coder.codes_of(t["key"].combine_chunks().cast(coder.array.type))
        seen = codes >= 0
        rows, pos = (t[c].to_numpy().astype(np.int64) for c in ("rows", "positives"))
        self.prev_rows = np.bincount(codes[seen], weights=rows[seen], minlength=len(coder)).astype(np.int64)
        self.prev_pos = np.bincount(codes[seen], weights=pos[seen], minlength=len(coder)).astype(np.int64)
        self.prev_extra = t.filter(pa.array(~seen)) if (~seen).any() else None

    def save(self, out_dir: str, coder: Coder) -> None:
        """``rates/<key>.parquet``: key (raw), rows, positives = carried + this dataset's train rows."""
        rows = (self.totals[0] + self.prev_rows).astype(np.int64)
        pos = (self.totals[1].astype(np.int64) + self.prev_pos)
        keep = rows > 0
        t = pa.table({"key": pc.filter(coder.array, pa.array(keep)), "rows": rows[keep], "positives": pos[keep]})
        if self.prev_extra is not None:
            t = pa.concat_tables([t, self.prev_extra.select(["key", "rows", "positives"]).cast(t.schema)])
        total = (self.totals[2] + self.prev_total[0], self.totals[3] + self.prev_total[1])
        t = t.replace_schema_metadata({k: str(v).encode() for k, v in zip(META, total)})
        os.makedirs(os.path.join(out_dir, "rates"), exist_ok=True)
        pq.write_table(t, os.path.join(out_dir, "rates", f"{self.key}.parquet"))


class AsOf(Carried):
    """Train rows (key code, time, label) of one key value; after ``freeze`` answers, for any (key code,
    time), the key's and all keys' train rows and positives strictly earlier (plus the carried counts)."""

    def __init__(self, key: str):
        super().__init__(key)
        self.parts = []

    def add(self, codes: np.ndarray, time: np.ndarray, label: np.ndarray) -> None:
        ok = codes >= 0
        self.parts.append((codes[ok].astype(np.int64), time[ok].astype(np.float64), label[ok].astype(np.int64)))

    def freeze(self, n_codes: int) -> None:
        codes, time, label = (np.concatenate([p[i] for p in self.parts]) if self.parts else
                              np.zeros(0, (np.int64, np.float64, np.int64)[i]) for i in range(3))
        self.parts = []
        self.n_codes = n_codes
        self.times = np.unique(time)
        self.span = len(self.times) + 1
        if n_codes * self.span >= 2 ** 62:
            raise DataError(f"rate_per {self.key}: {n_codes:,} keys x {self.span:,} distinct times overflow the "
                            "as-of index (int64); coarsen the time value")
        rank = np.searchsorted(self.times, time)
        comp = codes * self.span + rank
        order = np.argsort(comp, kind="stable")
        self.comp, self.cum = comp[order], np.r_[0, np.cumsum(label[order])]
        g = np.argsort(rank, kind="stable")
        self.grank, self.gcum = rank[g], np.r_[0, np.cumsum(label[g])]
        self.totals = (np.bincount(codes, minlength=n_codes), np.bincount(codes, weights=label, minlength=n_codes),
                       len(codes), int(label.sum()))
        self.prev_rows, self.prev_pos = _fit(self.prev_rows, n_codes), _fit(self.prev_pos, n_codes)

    @property
    def table_bytes(self) -> int:
        return int(self.comp.nbytes + self.cum.nbytes + self.grank.nbytes + self.gcum.nbytes + self.times.nbytes)

    def query(self, codes: np.ndarray, time: np.ndarray, fold=None, train=None):
        """(key rows n, key positives, all rows N, all positives P) strictly before ``time``, carried counts
        included; keys missing (code < 0) get n = pos = 0."""
        r = np.searchsorted(self.times, time, side="left")
        c = np.maximum(codes, 0).astype(np.int64)
        hi = np.searchsorted(self.comp, c * self.span + r, side="left")
        lo = np.searchsorted(self.comp, c * self.span, side="left")
        ok = codes >= 0
        n = np.where(ok, hi - lo + self.prev_rows[c], 0)
        pos = np.where(ok, self.cum[hi] - self.cum[lo] + self.prev_pos[c], 0)
        g = np.searchsorted(self.grank, r, side="left")
        return n, pos, g + self.prev_total[0], self.gcum[g] + self.prev_total[1]


class OutOfFold(Carried):
    """Train rows counted per (key code, fold of the user) (K folds on a hash of the user): a train row
    reads the other folds' rows of its key (all times), valid and test rows every train row. Memory: keys
    x K counts, not rows."""

    def __init__(self, key: str, folds: int):
        super().__init__(key)
        self.folds = folds
        self.n = self.pos = np.zeros((0, folds), np.int64)

    def add(self, codes: np.ndarray, fold: np.ndarray, label: np.ndarray) -> None:
        ok = codes >= 0
        size = max(len(self.n), int(codes.max()) + 1 if ok.any() else 0)
        flat = codes[ok] * self.folds + fold[ok]
        self.n = _fit(self.n, size) + np.bincount(flat, minlength=size * self.folds).reshape(size, self.folds)
        self.pos = _fit(self.pos, size) + np.bincount(flat, weights=label[ok], minlength=size * self.folds).reshape(
            size, self.folds).astype(np.int64)

    def freeze(self, n_codes: int) -> None:
        self.n, self.pos = _fit(self.n, n_codes), _fit(self.pos, n_codes)
        self.totals = (self.n.sum(1), self.pos.sum(1), int(self.n.sum()), int(self.pos.sum()))
        self.fold_n, self.fold_pos = self.n.sum(0), self.pos.sum(0)
        self.prev_rows, self.prev_pos = _fit(self.prev_rows, n_codes), _fit(self.prev_pos, n_codes)

    @property
    def table_bytes(self) -> int:
        return int(self.n.nbytes + self.pos.nbytes)

    def query(self, codes: np.ndarray, time, fold: np.ndarray, train: np.ndarray):
        """(key rows n, key positives, all rows N, all positives P) of the other folds (train rows) or of
        every fold (valid / test rows), carried counts included; missing keys get n = pos = 0."""
        c, f = np.maximum(codes, 0), np.where(train, fold, 0)
        ok = codes >= 0
        n = np.where(ok, self.totals[0][c] - train * self.n[c, f] + self.prev_rows[c], 0)
        pos = np.where(ok, self.totals[1][c] - train * self.pos[c, f] + self.prev_pos[c], 0)
        n_all = self.totals[2] - train * self.fold_n[f] + self.prev_total[0]
        return n, pos, n_all, self.totals[3] - train * self.fold_pos[f] + self.prev_total[1]


def rate(n: np.ndarray, pos: np.ndarray, n_all: np.ndarray, pos_all: np.ndarray, m: float) -> np.ndarray:
    """``(pos + m p) / (n + m)``, ``p = (P + 1) / (N + 2)``."""
    p = (pos_all + 1.0) / (n_all + 2.0)
    return (pos + m * p) / (n + m)


def _fit(a: np.ndarray, n: int) -> np.ndarray:
    """``a`` (counts per key code, rows first) with ``n`` rows: zero rows appended, or cut."""
    return np.concatenate([a, np.zeros((n - len(a), *a.shape[1:]), a.dtype)]) if len(a) < n else a[:n]
