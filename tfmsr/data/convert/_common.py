"""Building blocks shared by the dataset converters (not a converter itself: the name starts with ``_``).

Everything here streams, so a converter's memory is bounded by its chunk size, its vocabularies (distinct
values, not rows) and its per-user history buffers (users x L), never by the number of rows:

* ``find_input`` / ``csv_header`` / ``require_columns`` / ``CsvStream``: chunked CSV reading (plain or
  ``.gz``) with column validation (one ``DataError`` naming the file and the column) and progress on
  stderr (rows, rows/s, share of the file read, ETA).
* ``ints`` / ``floats``: column conversion with missing values (``MISSING`` / NaN) and clear errors.
* ``Vocab``: raw values -> ids 1..V-1 in sorted order of the values (0 = padding / missing / OOV),
  counted chunk by chunk. ``Moments``: streaming mean/std for numeric features.
* ``hash_unit`` / ``hash_split``: deterministic pseudo-random splits by row number (no RNG state).
* ``TimeBuckets``: an external distribution sort; rows are spilled to one binary file per time bucket
  and read back bucket by bucket in time order.
* ``HistoryBuffer``: per-user ring buffers of the last L events; answers "the last L events strictly
  before time t" for a batch of queries while events stream in time order (behaviour sequences).
* ``SplitWriter``: buffers rows per split and writes them to a ``DatasetWriter`` in bounded chunks.
* ``add_common_arguments`` / ``writer_options``: the options every converter shares (``add_layout_argument``: the
  shards' record layout, ``--record-layout packed``, also of ``data synth`` / ``ingest``); ``ConvertOptions``: them
  as a dataclass a converter's own options extend; ``Conversion``: one run of a converter (options, start
  time); ``print_summary``: the JSON line every converter's CLI run prints.
"""
from __future__ import annotations

import abc
import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from tfmsr.data.pipeline import DataError

MISSING = np.iinfo(np.int64).min  # integer placeholder for a missing value (never a valid raw id)
NULL_STRINGS = ("", "NULL", "null", "NaN", "nan", "NA", "\\N")


# ------------------------------------------------------------------------------------------ CLI
def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by every converter (besides --src/--out/--overwrite, which the CLI adds)."""
    p.add_argument("--chunk-rows", type=int, default=200_000, help="CSV rows read per chunk (memory knob)")
    p.add_argument("--rows-per-shard", type=int, default=100_000)
    p.add_argument("--gzip", action="store_true", help="GZIP-compressed shards")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_layout_argument(p, flags=("--record-layout",))


def add_layout_argument(p: argparse.ArgumentParser, default: str = "",
                        flags: Sequence[str] = ("--layout", "--record-layout")) -> None:
    """``--layout {features,packed}`` (dest ``record_layout``): the record layout of the shards written
    (``tfmsr.data.layout``; unset: the ``default`` the help names first, then ``DEFAULT_LAYOUT``). Converters
    take only ``--record-layout``: Ali-CCP's ``--layout`` is the layout of its input files."""
    from tfmsr.data.layout import DEFAULT_LAYOUT, LAYOUTS

    p.add_argument(*flags, dest="record_layout", choices=LAYOUTS, default=None,
                   help=f"record layout of the shards (default {default}{DEFAULT_LAYOUT}): 'packed' holds a row's "
                        "scalar columns in one list per dtype (smaller, faster to read), 'features' one "
                        "Example feature per column (tfmsr/data/layout.py)")


def writer_options(args) -> dict:
    """``DatasetWriter`` keyword arguments from the common options."""
    return {"rows_per_shard": args.rows_per_shard, "compression": "GZIP" if args.gzip else None,
            "overwrite": args.overwrite}


@dataclasses.dataclass
class ConvertOptions:
    """The options every streaming converter shares (``add_common_arguments`` + the schema's embedding dim).
    A converter's options subclass it with its own fields and check them in ``check`` (run on construction)."""

    chunk_rows: int = 200_000
    rows_per_shard: int = 100_000
    compression: Optional[str] = None
    overwrite: bool = False
    quiet: bool = False
    dim: int = 16
    record_layout: Optional[str] = None  # of the shards (--record-layout; None: DEFAULT_LAYOUT; tfmsr.data.layout)

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Raise a ValueError naming the flag of a bad value (a subclass's own fields)."""

    @classmethod
    def from_args(cls, args, **values) -> "ConvertOptions":
        """From parsed flags: a flag whose dest is a field sets it, ``--gzip`` the compression; ``values`` win."""
        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
        return cls(**{**given, **writer_options(args), **values})

    @classmethod
    def of(cls, options: Optional["ConvertOptions"] = None, **values) -> "ConvertOptions":
        """``options`` (default: the defaults) with ``values`` replaced, so ``convert(src, out, seq_len=15)`` works."""
        if options is None:
            return cls(**values)
        if not isinstance(options, cls):
            raise TypeError(f"expected {cls.__module__}.{cls.__name__} options, got {type(options).__name__}")
        return dataclasses.replace(options, **values)

    def writer_kwargs(self) -> dict:
        """``DatasetWriter`` keyword arguments."""
        return {"rows_per_shard": self.rows_per_shard, "compression": self.compression, "overwrite": self.overwrite,
                "layout": self.record_layout}

    def refuse_existing(self, out: str) -> None:
        if os.path.exists(out) and not self.overwrite:
            raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")


class Conversion(abc.ABC):
    """One run of a converter: ``src``, ``out``, the options (``options_class``, checked; an existing ``out``
    refused unless --overwrite) and the start time ``t0``. A converter's subclass implements ``run``."""

    options_class = ConvertOptions

    def __init__(self, src: str, out: str, options: Optional[ConvertOptions] = None, **values):
        self.o = self.options_class.of(options, **values)
        self.o.refuse_existing(out)
        self.src, self.out, self.t0 = src, out, time.time()

    @abc.abstractmethod
    def run(self) -> dict:
        """Convert ``src`` into shards under ``out``; returns the dataset statistics."""


def print_summary(out: str, stats: dict) -> dict:
    """The one JSON line a ``tfmsr data convert`` run prints on stdout (splits, scenarios, conversion counts)."""
    print(json.dumps({"out": out, "splits": {k: v["rows"] for k, v in stats["splits"].items()},
                      "scenarios": stats["scenario_rows"], "conversion": stats["conversion"]}))
    return stats


# ------------------------------------------------------------------------------------------ progress
class Progress:
    """Throttled progress line on stderr (or to ``log``): ``label: rows, rows/s, % of input, ETA``."""

    def __init__(self, label: str, quiet: bool = False, every: float = 2.0, log=None):
        self.label, self.quiet, self.every = label, quiet, every
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.t0 = self._last = time.time()
        self.rows = 0

    def update(self, rows: int, fraction: Optional[float] = None) -> None:
        self.rows = rows
        now = time.time()
        if self.quiet or now - self._last < self.every:
            return
        self._last = now
        rate = rows / max(now - self.t0, 1e-9)
        msg = f"{self.label}: {rows:,} rows  {rate:,.0f} rows/s"
        if fraction is not None and 0 < fraction <= 1:
            msg += f"  {100 * fraction:.0f}%  ETA {(now - self.t0) * (1 - fraction) / fraction:,.0f}s"
        self.log(msg)

    def close(self) -> float:
        """Print the final line; returns the elapsed seconds."""
        sec = time.time() - self.t0
        if not self.quiet:
            self.log(f"{self.label}: {self.rows:,} rows in {sec:,.1f}s ({self.rows / max(sec, 1e-9):,.0f} rows/s)")
        return sec


# ------------------------------------------------------------------------------------------ CSV input
def find_input(src: str, names: Sequence[str], what: str) -> str:
    """Path of the first of ``names`` (each also tried with ``.gz``) inside ``src``; DataError if none."""
    if not os.path.isdir(src):
        raise DataError(f"{src}: not a directory (expected the folder holding the {what} files)")
    for name in names:
        for candidate in (name, name + ".gz"):
            path = os.path.join(src, candidate)
            if os.path.isfile(path):
                return path
    raise DataError(f"{src}: no {what} file (expected {' or '.join(names)}, optionally .gz)")


def _compression(path: str) -> Optional[str]:
    return "gzip" if path.endswith(".gz") else None


def csv_header(path: str, sep: str = ",") -> List[str]:
    """Column names of a CSV file, stripped of surrounding whitespace (Alimama's user_profile.csv has a
    trailing space after its last header)."""
    try:
        cols = pd.read_csv(path, nrows=0, sep=sep, compression=_compression(path)).columns
    except pd.errors.EmptyDataError:
        raise DataError(f"{os.path.basename(path)}: empty file (expected a header line)") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: cannot read the header ({e})") from None
    return [str(c).strip() for c in cols]


def require_columns(path: str, header: Sequence[str], required: Sequence[str],
                    layout: Optional[Sequence[str]] = None) -> None:
    """DataError ``"<file>: missing column 'c' (expected a,b,c)"`` for the first required column absent
    from ``header``; ``layout`` (default ``required``) is the full expected column list shown."""
    have = set(header)
    for col in required:
        if col not in have:
            raise DataError(f"{os.path.basename(path)}: missing column '{col}' "
                            f"(expected {','.join(layout or required)}; found {','.join(header)})")


class CsvStream:
    """Chunks (pandas DataFrames) of selected columns of a CSV file, with progress.

    ``columns``: stripped header names to keep (validated against the header; with ``names`` the file
    has no header and ``names`` are its columns). ``dtype`` maps column -> pandas dtype (e.g. ``str``,
    ``"category"``); other columns are inferred per chunk and converted with ``ints``/``floats``.
    ``rows_read`` counts data rows; ``self.start`` is the row number of the current chunk's first row.
    """

    def __init__(self, path: str, columns: Sequence[str], chunk_rows: int = 200_000,
                 dtype: Optional[Mapping[str, object]] = None, names: Optional[Sequence[str]] = None,
                 sep: str = ",", layout: Optional[Sequence[str]] = None, quiet: bool = False,
                 label: Optional[str] = None):
        self.path, self.name = path, os.path.basename(path)
        self.columns = list(columns)
        self.chunk_rows, self.sep, self.names = int(chunk_rows), sep, names
        if self.chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        header = list(names) if names else csv_header(path, sep)
        require_columns(path, header, self.columns, layout)
        self.header = header
        self.dtype = dict(dtype or {})
        self.progress = Progress(label or self.name, quiet)
        self.rows_read = 0
        self.start = 0

    def __iter__(self) -> Iterator[pd.DataFrame]:
        wanted = set(self.columns)
        size = max(os.path.getsize(self.path), 1)
        raw_names = None if self.names else pd.read_csv(
            self.path, nrows=0, sep=self.sep, compression=_compression(self.path)).columns
        strip = {c: str(c).strip() for c in raw_names} if raw_names is not None else {}
        dtype = {raw: self.dtype[s] for raw, s in strip.items() if s in self.dtype} if strip else self.dtype
        with open(self.path, "rb") as fh:
            reader = pd.read_csv(
                fh, sep=self.sep, usecols=lambda c: str(c).strip() in wanted, chunksize=self.chunk_rows,
                dtype=dtype or None, compression=_compression(self.path), header=None if self.names else 0,
                names=list(self.names) if self.names else None, keep_default_na=False,
                na_values=list(NULL_STRINGS), low_memory=False)
            while True:
                try:
                    df = next(reader)
                except StopIteration:
                    break
                except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as e:
                    raise DataError(f"{self.name}: cannot parse the rows after data row {self.rows_read:,} "
                                    f"({str(e).splitlines()[0]})") from None
                df.columns = [str(c).strip() for c in df.columns]
                self.start = self.rows_read
                self.rows_read += len(df)
                self.progress.update(self.rows_read, fh.tell() / size)
                yield df
        self.progress.close()


def ints(values, path: str, column: str, allow_missing: bool = True, start: int = 0) -> np.ndarray:
    """int64 array of a column; empty/NULL cells -> ``MISSING`` (or a DataError when not allowed).
    Non-numeric or non-integral values raise a DataError naming the file, column, row and value
    (``start`` = row number of the first value, for the message)."""
    s = pd.Series(values)
    name = os.path.basename(path)
    if pd.api.types.is_integer_dtype(s.dtype):
        return s.to_numpy(np.int64)
    num = pd.to_numeric(s, errors="coerce") if not pd.api.types.is_float_dtype(s.dtype) else s
    num = num.to_numpy(np.float64)
    missing = np.isnan(num)
    if missing.any():
        raw_missing = s.isna().to_numpy() | s.astype(str).str.strip().isin(NULL_STRINGS).to_numpy()
        bad = missing & ~raw_missing
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{name}: column '{column}' row {start + i:,} has non-numeric value "
                            f"{s.iloc[i]!r} (expected an integer)")
        if not allow_missing:
            i = int(np.flatnonzero(missing)[0])
            raise DataError(f"{name}: column '{column}' row {start + i:,} is empty (expected an integer)")
    ok = ~missing
    if ok.any() and not np.array_equal(num[ok], np.round(num[ok])):
        i = int(np.flatnonzero(ok & (num != np.round(num)))[0])
        raise DataError(f"{name}: column '{column}' row {start + i:,} has value {s.iloc[i]!r} "
                        "(expected an integer)")
    out = np.full(len(num), MISSING, np.int64)
    out[ok] = num[ok].astype(np.int64)
    return out


def floats(values, path: str, column: str, start: int = 0) -> np.ndarray:
    """float64 array of a column; empty/NULL cells -> NaN; other non-numeric values -> DataError."""
    s = pd.Series(values)
    if pd.api.types.is_numeric_dtype(s.dtype):
        return s.to_numpy(np.float64)
    num = pd.to_numeric(s, errors="coerce").to_numpy(np.float64)
    bad = np.isnan(num) & ~(s.isna().to_numpy() | s.astype(str).str.strip().isin(NULL_STRINGS).to_numpy())
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{os.path.basename(path)}: column '{column}' row {start + i:,} has non-numeric "
                        f"value {s.iloc[i]!r} (expected a number)")
    return num


# ------------------------------------------------------------------------------------------ vocabularies
class Vocab:
    """Raw values -> ids ``1..V-1`` in **sorted order of the values**; 0 is padding / missing / OOV.

    ``add(values)`` counts a chunk (ints: ``MISSING`` skipped; strings: None/NaN skipped); chunks are
    merged lazily, so memory is O(distinct values). ``freeze(min_count)`` keeps values seen at least
    ``min_count`` times; afterwards ``lookup(values)`` maps a chunk to ids (unknown -> 0) and ``size``
    is the table size V (>= 2, as the schema requires). Deterministic: ids depend only on the set of
    kept values, not on file order or chunking.
    """

    def __init__(self, name: str):
        self.name = name
        self.keys: Optional[np.ndarray] = None
        self.counts = np.zeros(0, np.int64)
        self._pending: List[tuple] = []
        self._pending_n = 0
        self.frozen = False
        self.dropped = 0  # distinct values below min_count

    @staticmethod
    def _clean(values) -> np.ndarray:
        v = np.asarray(values)
        if v.dtype.kind in "iu":
            v = v.astype(np.int64, copy=False)
            return v[v != MISSING]
        if v.dtype.kind == "f":
            raise TypeError("Vocab: convert float columns with ints() first (NaN -> MISSING)")
        keep = ~pd.isna(v)
        return v[keep].astype(str)

    def add(self, values) -> "Vocab":
        if self.frozen:
            raise RuntimeError(f"vocabulary '{self.name}' is frozen")
        v = self._clean(values)
        if len(v):
            u, c = np.unique(v, return_counts=True)
            self._pending.append((u, c.astype(np.int64)))
            self._pending_n += len(u)
            if self._pending_n > max(1_000_000, 2 * len(self.counts)):
                self._merge()
        return self

    def _merge(self) -> None:
        if not self._pending:
            return
        parts = ([(self.keys, self.counts)] if self.keys is not None else []) + self._pending
        keys = np.concatenate([p[0] for p in parts])
        counts = np.concatenate([p[1] for p in parts])
        self.keys, inv = np.unique(keys, return_inverse=True)
        self.counts = np.bincount(inv.ravel(), weights=counts, minlength=len(self.keys)).astype(np.int64)
        self._pending, self._pending_n = [], 0

    def freeze(self, min_count: int = 1) -> "Vocab":
        self._merge()
        if self.keys is None:
            self.keys = np.zeros(0, np.int64)
        keep = self.counts >= min_count
        self.dropped = int((~keep).sum())
        self.keys, self.counts = self.keys[keep], self.counts[keep]
        self.frozen = True
        return self

    @property
    def size(self) -> int:
        """Embedding table rows: distinct kept values + 1 (id 0), at least 2."""
        self._require_frozen()
        return max(2, len(self.keys) + 1)

    def _require_frozen(self):
        if not self.frozen:
            raise RuntimeError(f"vocabulary '{self.name}' is not frozen yet (call freeze())")

    def lookup(self, values) -> np.ndarray:
        """ids (int64) of a chunk of raw values; missing and unknown values -> 0."""
        self._require_frozen()
        v = np.asarray(values)
        out = np.zeros(v.shape, np.int64)
        if not len(self.keys) or not v.size:
            return out
        if v.dtype.kind in "iu":
            v = v.astype(np.int64, copy=False)
            valid = v != MISSING
        elif v.dtype.kind == "f":
            raise TypeError("Vocab.lookup: convert float columns with ints() first")
        else:
            valid = ~pd.isna(v)
            v = np.where(valid, v, "").astype(str)
        if self.keys.dtype.kind != v.dtype.kind and not (self.keys.dtype.kind in "iu" and v.dtype.kind in "iu"):
            raise TypeError(f"vocabulary '{self.name}': lookup of {v.dtype} values in a {self.keys.dtype} vocabulary")
        idx = np.searchsorted(self.keys, v)
        idx_c = np.minimum(idx, len(self.keys) - 1)
        found = valid & (idx < len(self.keys)) & (self.keys[idx_c] == v)
        out[found] = idx[found] + 1
        return out

    def value_of(self, ids) -> np.ndarray:
        """Raw values of ids 1..V-1 (the inverse of ``lookup``)."""
        self._require_frozen()
        return self.keys[np.asarray(ids) - 1]


class Moments:
    """Streaming mean / standard deviation (Chan et al. pairwise update; NaNs skipped)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x) -> None:
        x = np.asarray(x, np.float64)
        x = x[~np.isnan(x)]
        if not len(x):
            return
        n, mean = len(x), float(x.mean())
        m2 = float(((x - mean) ** 2).sum())
        tot = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / tot
        self.m2 += m2 + delta * delta * self.n * n / tot
        self.n = tot

    @property
    def std(self) -> float:
        """Population std, or 1.0 when undefined / zero (the schema needs std > 0)."""
        s = (self.m2 / self.n) ** 0.5 if self.n else 0.0
        return s if s > 1e-12 else 1.0


class StringCodes:
    """Dense running codes 0, 1, 2, ... for the strings of a column in order of first appearance, so a
    string column can be spilled in a fixed-width record; ``values`` holds the strings by code and
    ``vocab()`` gives the sorted-order ``Vocab`` of them (map codes to ids with ``ids_of_codes``)."""

    def __init__(self, name: str):
        self.name = name
        self.values: List[str] = []
        self._index: Dict[str, int] = {}

    def codes(self, column) -> np.ndarray:
        """int64 codes of a chunk; missing cells -> ``MISSING``."""
        s = pd.Series(column)
        isna = s.isna().to_numpy()
        s = s.astype(str).str.strip()
        missing = isna | s.isin(NULL_STRINGS).to_numpy()
        for v in pd.unique(s[~missing]):
            if v not in self._index:
                self._index[v] = len(self.values)
                self.values.append(v)
        out = np.full(len(s), MISSING, np.int64)
        if (~missing).any():
            out[~missing] = s[~missing].map(self._index).to_numpy(np.int64)
        return out

    def vocab(self) -> "Vocab":
        return Vocab(self.name).add(np.array(self.values, dtype=str)).freeze()

    def ids_of_codes(self, vocab: "Vocab") -> np.ndarray:
        """Array ``code -> id`` in ``vocab`` (index it with codes >= 0)."""
        return vocab.lookup(np.array(self.values, dtype=str)) if self.values else np.zeros(0, np.int64)


# ------------------------------------------------------------------------------------------ splits
def hash_unit(index, seed: int = 0) -> np.ndarray:
    """Deterministic uniform numbers in [0, 1) from integer row numbers (splitmix64 finaliser)."""
    with np.errstate(over="ignore"):
        z = np.asarray(index, np.uint64) + np.uint64((0x9E3779B97F4A7C15 * (seed + 1)) % (1 << 64))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def hash_split(index, valid: float, test: float, seed: int = 0) -> np.ndarray:
    """Split name per row ('train'/'valid'/'test') from its row number: a fixed pseudo-random draw, so
    the same row always lands in the same split whatever the chunking."""
    u = hash_unit(index, seed)
    return np.where(u < test, "test", np.where(u < test + valid, "valid", "train"))


# ------------------------------------------------------------------------------------------ external sort
class TimeBuckets:
    """External distribution sort by time: ``add(times, records)`` appends each record (a NumPy
    structured array) to the binary spill file of its bucket ``time // width``; ``load(b)`` reads one
    bucket back. Visiting ``buckets()`` in order yields the rows in time order, one bucket in memory at a
    time (sort within the bucket yourself). Disk: the records; memory: one chunk or one bucket."""

    def __init__(self, directory: str, name: str, dtype: np.dtype, width: int):
        if width < 1:
            raise ValueError(f"bucket width must be >= 1 second, got {width}")
        self.directory, self.name, self.dtype, self.width = directory, name, np.dtype(dtype), int(width)
        os.makedirs(directory, exist_ok=True)
        self.counts: Dict[int, int] = {}

    def _path(self, b: int) -> str:
        return os.path.join(self.directory, f"{self.name}-{b}.bin")

    def add(self, times: np.ndarray, records: np.ndarray) -> None:
        if not len(records):
            return
        b = np.asarray(times, np.int64) // self.width
        order = np.argsort(b, kind="stable")
        b, records = b[order], records[order]
        cuts = np.flatnonzero(np.diff(b)) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(b)]):
            key = int(b[lo])
            with open(self._path(key), "ab") as fh:
                records[lo:hi].tofile(fh)
            self.counts[key] = self.counts.get(key, 0) + int(hi - lo)

    def buckets(self) -> List[int]:
        return sorted(self.counts)

    def load(self, b: int) -> np.ndarray:
        if b not in self.counts:
            return np.zeros(0, self.dtype)
        return np.fromfile(self._path(b), dtype=self.dtype)

    @property
    def rows(self) -> int:
        return sum(self.counts.values())

    @property
    def max_bucket_rows(self) -> int:
        return max(self.counts.values(), default=0)


class SpillDir:
    """A new temporary folder for spill files, removed on exit (also after an error). The folder must
    not exist yet: an existing folder is never reused or deleted."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self) -> str:
        try:
            os.makedirs(self.path)
        except FileExistsError:
            raise DataError(f"{self.path}: spill folder already exists (left by another run? remove it)") from None
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)
        return False


# ------------------------------------------------------------------------------------------ sequences
class HistoryBuffer:
    """Per-key (user) buffers of the last ``length`` events, most recent first, 0 = padding.

    Feed events in time slices (every event of a slice later than all events of earlier slices, e.g. one
    ``TimeBuckets`` bucket)::

        hb.begin(keys, times, values)          # this slice's events
        out = hb.query(query_keys, query_times)  # any number of calls (batches of the slice's queries)
        hb.commit()                            # the slice's events enter the buffers

    ``query`` returns, for each query, the key's last ``length`` events **strictly before** its time
    (earlier slices + this slice's earlier events) as field name -> int64 ``[Q, length]``. Events of one
    key at equal times keep their input order (later input = more recent). ``step(...)`` does all three.
    ``values`` maps field name -> array of event values (ids, 0 = padding). Keys are ints in [0, num_keys).

    Memory: ``num_keys x length x sum(itemsize of fields)`` for the buffers, the slice's events, and
    O(batch x length) temporaries (``commit`` updates keys in batches of ``batch``; query in batches).
    """

    def __init__(self, num_keys: int, length: int, fields: Mapping[str, object], batch: int = 20_000):
        if length < 1:
            raise ValueError(f"history length must be >= 1, got {length}")
        self.length, self.num_keys, self.batch = int(length), int(num_keys), int(batch)
        self.buf = {name: np.zeros((self.num_keys, self.length), dtype) for name, dtype in fields.items()}
        self.events = 0
        self._slice = None

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buf.values())

    def _check_keys(self, name, arr):
        if arr.size and (arr.min() < 0 or arr.max() >= self.num_keys):
            raise ValueError(f"HistoryBuffer: {name} outside [0, {self.num_keys})")

    def begin(self, keys, times, values: Mapping[str, np.ndarray]) -> None:
        keys, times = np.asarray(keys, np.int64), np.asarray(times, np.int64)
        self._check_keys("event keys", keys)
        missing = set(self.buf) - set(values)
        if missing:
            raise KeyError(f"HistoryBuffer.begin: no values for field(s) {sorted(missing)}")
        order = np.lexsort((times, keys))  # by key, then time; stable for ties
        ks, ts = keys[order], times[order]
        vals = {name: np.asarray(values[name])[order] for name in self.buf}
        t0 = int(ts.min()) if len(ts) else 0
        if len(ts) and int(ts.max()) - t0 >= (1 << 31):
            raise ValueError("HistoryBuffer: one slice spans more than 2^31 time units; use smaller slices")
        comp = (ks << 32) | (ts - t0)  # sort key (key, time) as one int64
        self._slice = (ks, comp, t0, vals)

    def _gather(self, start, pos, keys, vals) -> Dict[str, np.ndarray]:
        """Rows ``[Q, L]``: slice events ``pos-1, pos-2, ..., start`` (most recent first), then the
        key's buffer."""
        j = np.arange(self.length)
        k = (pos - start)[:, None]
        in_slice = j < k
        sidx = np.where(in_slice, pos[:, None] - 1 - j, 0)
        bidx = np.where(in_slice, 0, j - k)
        out = {}
        for name, buf in self.buf.items():
            old = np.take_along_axis(buf[keys], bidx, axis=1).astype(np.int64)
            v = vals[name]
            out[name] = np.where(in_slice, v[sidx], old) if len(v) else old
        return out

    def query(self, query_keys, query_times) -> Dict[str, np.ndarray]:
        if self._slice is None:
            raise RuntimeError("HistoryBuffer.query before begin()")
        ks, comp, t0, vals = self._slice
        qk, qt = np.asarray(query_keys, np.int64), np.asarray(query_times, np.int64)
        self._check_keys("query keys", qk)
        qrel = np.clip(qt - t0, 0, (1 << 32) - 1)
        start = np.searchsorted(comp, qk << 32, side="left")
        pos = np.searchsorted(comp, (qk << 32) | qrel, side="left")
        if len(qk) <= self.batch:
            return self._gather(start, pos, qk, vals)
        parts = [self._gather(start[i:i + self.batch], pos[i:i + self.batch], qk[i:i + self.batch], vals)
                 for i in range(0, len(qk), self.batch)]
        return {name: np.concatenate([p[name] for p in parts]) for name in self.buf}

    def commit(self) -> None:
        if self._slice is None:
            raise RuntimeError("HistoryBuffer.commit before begin()")
        ks, _, _, vals = self._slice
        self._slice = None
        if not len(ks):
            return
        uk, first = np.unique(ks, return_index=True)
        last = np.r_[first[1:], len(ks)]
        for i in range(0, len(uk), self.batch):
            sl = slice(i, i + self.batch)
            new = self._gather(first[sl], last[sl], uk[sl], vals)
            for name, buf in self.buf.items():
                buf[uk[sl]] = new[name]
        self.events += len(ks)

    def step(self, keys, times, values: Mapping[str, np.ndarray], query_keys, query_times) -> Dict[str, np.ndarray]:
        """``begin`` + ``query`` + ``commit`` for one slice."""
        self.begin(keys, times, values)
        out = self.query(query_keys, query_times)
        self.commit()
        return out


# ------------------------------------------------------------------------------------------ writing
class SplitWriter:
    """Buffers rows per split and hands them to a ``DatasetWriter`` in chunks of ``rows`` rows, so many
    small slices (e.g. hourly buckets) become few large encode/write calls; memory <= ``rows`` rows per
    split. Call ``flush()`` before the DatasetWriter closes. ``counts`` = rows written per split."""

    def __init__(self, writer, rows: int = 10_000):
        self.writer, self.rows = writer, rows
        self._buf: Dict[str, List[Dict[str, np.ndarray]]] = {}
        self._n: Dict[str, int] = {}
        self.counts: Dict[str, int] = {}

    def add(self, split: str, columns: Mapping[str, np.ndarray]) -> None:
        n = len(next(iter(columns.values())))
        if not n:
            return
        self._buf.setdefault(split, []).append(dict(columns))
        self._n[split] = self._n.get(split, 0) + n
        self.counts[split] = self.counts.get(split, 0) + n
        if self._n[split] >= self.rows:
            self._flush(split)

    def add_split(self, split_of_row: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
        """Rows of one chunk routed by a per-row split name array."""
        for split in ("train", "valid", "test"):
            m = split_of_row == split
            if m.any():
                self.add(split, {k: v[m] for k, v in columns.items()})

    def _flush(self, split: str) -> None:
        parts = self._buf.pop(split, [])
        self._n[split] = 0
        if parts:
            cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            n = len(next(iter(cols.values())))
            for lo in range(0, n, self.rows):  # the encoder's temporaries scale with the rows per call
                self.writer.write(split, {k: v[lo:lo + self.rows] for k, v in cols.items()})

    def flush(self) -> None:
        for split in list(self._buf):
            self._flush(split)


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (``resource.getrusage``; Linux reports KB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
