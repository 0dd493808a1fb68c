"""Raw values -> dense codes while reading; vocabularies from the train split's counts; vocab files.

* ``Coder``: every distinct raw value of a code space (a table, or a value such as the scenario column)
  gets a dense code 0, 1, 2, ... in order of first appearance; -1 is missing. Memory: the distinct values.
* ``build_vocab``: the table's ids from the **train** counts: values seen at least ``min_count`` times,
  most frequent first (ties by raw value), at most ``max_size`` of them. With a previous vocabulary
  (``--vocab-from``) every known value keeps its id, new values meeting ``min_count`` on this dataset's
  train counts are appended after them (most frequent first), nothing is renumbered, and growing past
  ``max_size`` stops with an error naming the table.
* ``write_vocab`` / ``read_vocab``: ``vocab/<table>.txt``, line n = the raw value of id n (n >= 1), written
  atomically; a value holding a line break cannot be stored and is an error.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tfmsr.core.io import write_atomic
from tfmsr.data.pipeline import DataError


class Coder:
    """Dense codes of the raw values of one code space (``dtype`` 'string' or 'int64').

    The known values are one pyarrow array (code = position); a chunk is dictionary-encoded and only its
    distinct values are looked up (``pc.index_in``), so coding costs O(chunk + distinct values) in C++.
    ``zero_missing``: an int64 0 is missing (the raw-id contract of int64 vocabularies). With ``track``,
    where each value first appeared ((file index, line)) is kept for error messages."""

    def __init__(self, name: str, dtype: str, zero_missing: bool = False, track: bool = False):
        self.name, self.dtype, self.zero_missing, self.track = name, dtype, zero_missing, track
        self._known = pa.array([], pa.int64() if dtype == "int64" else pa.string())
        self.first_file: List[int] = []
        self.first_line: List[int] = []

    def __len__(self) -> int:
        return len(self._known)

    def encode(self, arr: pa.Array, file_index: int = -1, lines: Optional[np.ndarray] = None) -> np.ndarray:
        """int32 codes of a column (new values get new codes); missing -> -1. ``lines`` [n] = each row's
        line in its file, to remember where a value first appeared."""
        if self.zero_missing:
            arr = pc.if_else(pc.equal(arr, 0), pa.scalar(None, arr.type), arr)
        enc = pc.dictionary_encode(arr.cast(self._known.type))
        local = enc.dictionary
        m = self.codes_of(local)
        new = np.flatnonzero(m < 0)
        idx = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        if len(new):
            base = len(self._known)
            m[new] = np.arange(base, base + len(new))
            self._known = pa.concat_arrays([self._known, local.take(pa.array(new))])
            if self.track:
                self._remember(idx, new, file_index, lines)
        return np.append(m, -1)[idx].astype(np.int32)

    def _remember(self, idx: np.ndarray, new: np.ndarray, file_index: int, lines: Optional[np.ndarray]) -> None:
        first = np.full(int(idx.max()) + 1, -1, np.int64)
        valid = np.flatnonzero(idx >= 0)
        u, at = np.unique(idx[valid], return_index=True)
        first[u] = valid[at]
        self.first_file += [file_index] * len(new)
        self.first_line += (lines[first[new]] if lines is not None else first[new]).tolist()

    def codes_of(self, values) -> np.ndarray:
        """Codes (int64, -1 = unknown) of raw values (a list or pyarrow array)."""
        values = values if isinstance(values, pa.Array) else pa.array(values, self._known.type)
        if not len(self._known) or not len(values):
            return np.full(len(values), -1, np.int64)
        return pc.fill_null(pc.index_in(values, value_set=self._known), -1).to_numpy(
            zero_copy_only=False).astype(np.int64)

    @property
    def array(self) -> pa.Array:
        """Raw values by code as a pyarrow array."""
        return self._known

    def values(self) -> np.ndarray:
        """Raw values by code (object array of str, or int64)."""
        return self._known.to_numpy(zero_copy_only=False)

    def where(self, code: int, files: List[str]) -> str:
        """'FILE line N' of the first row holding ``code``."""
        if not self.track or code >= len(self.first_file) or self.first_file[code] < 0:
            return "(a derived value)"
        return f"{files[self.first_file[code]]} line {self.first_line[code]}"


@dataclass
class Vocab:
    """A built vocabulary: ``lines`` (raw values in id order; id = position + 1), ``id_of_code`` (code -> id,
    0 = OOV), ``known`` (ids 1..known came from the previous vocabulary)."""
    table: str
    lines: np.ndarray
    id_of_code: np.ndarray
    known: int
    below_min_count: int
    truncated: int

    @property
    def size(self) -> int:
        return len(self.lines) + 1


def _ranked(codes: np.ndarray, counts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``codes`` ordered by descending count, ties by raw value."""
    if not len(codes):
        return codes
    by_value = codes[np.argsort(values[codes], kind="stable")]
    return by_value[np.argsort(-counts[by_value], kind="stable")]


def build_vocab(table: str, coder: Coder, train_counts: np.ndarray, min_count: int, max_size: Optional[int],
                previous: Optional[list] = None) -> Vocab:
    """The table's vocabulary from its train counts (per code), optionally growing ``previous``."""
    values = coder.values()
    counts = np.zeros(len(values), np.int64)
    counts[:len(train_counts)] = train_counts[:len(values)]
    seen = np.flatnonzero(counts > 0)
    keep = seen[counts[seen] >= min_count]
    below = len(seen) - len(keep)
    prev_lines = list(previous or [])
    prev_codes = coder.codes_of(prev_lines)
    new = np.setdiff1d(keep, prev_codes[prev_codes >= 0])
    new = _ranked(new, counts, values)
    truncated = 0
    if max_size is not None and len(prev_lines) + len(new) > max_size:
        if previous is not None:
            raise DataError(f"vocabulary '{table}': {len(prev_lines):,} known + {len(new):,} new values "
                            f"(seen >= {min_count} times in train) exceed max_size {max_size:,}; raise the table's "
                            "max_size or min_count (ids are append-only and are never renumbered)")
        truncated = len(new) - max_size
        new = new[:max_size]
    lines = np.concatenate([np.asarray(prev_lines, values.dtype if len(values) else object),
                            values[new]]) if len(prev_lines) else values[new]
    id_of_code = np.zeros(len(values), np.int64)
    id_of_code[prev_codes[prev_codes >= 0]] = np.flatnonzero(prev_codes >= 0) + 1
    id_of_code[new] = len(prev_lines) + 1 + np.arange(len(new))
    if len(lines) == 0:
        raise DataError(f"vocabulary '{table}': no value in the train split (seen >= {min_count} times); "
                        "check the column feeding it")
    return Vocab(table, lines, id_of_code, len(prev_lines), below, truncated)


def write_vocab(path: str, vocab: Vocab) -> None:
    """``path`` (a .txt) holding one raw value per line, line n = id n; temp file then rename."""
    text = [str(v) for v in vocab.lines.tolist()]
    bad = [v for v in text if "\n" in v or "\r" in v]
    if bad:
        raise DataError(f"vocabulary '{vocab.table}': value {bad[0]!r} holds a line break, which a vocabulary "
                        "file (one value per line) cannot store")
    os.makedirs(os.path.dirname(path), exist_ok=True)

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("\n".join(text) + "\n")
    write_atomic(path, write)


def read_vocab(path: str, dtype: str) -> list:
    """Raw values of a vocab file in id order (ints for an int64 table)."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().split("\n")
    except OSError as e:
        raise DataError(f"{path}: cannot read the vocabulary ({e.strerror})") from None
    if lines and lines[-1] == "":
        lines.pop()
    if dtype != "int64":
        return lines
    try:
        return [int(v) for v in lines]
    except ValueError:
        bad = next(i for i, v in enumerate(lines) if not v.lstrip("-").isdigit())
        raise DataError(f"{path} line {bad + 1}: {lines[bad]!r} is not an int64 (the table's raw type)") from None
