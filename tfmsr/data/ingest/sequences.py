"""Behaviour sequences: from the log itself (each user's earlier events) or from a delimited column.

From the log: the rows of a group of users, sorted by (user, time, input order) (``Timeline``), give each
row's history as the user's *eligible* events (``behaviour.where``, default all) **strictly before** the
row's time: events with the same time as the target (a tie block) are never in each other's history, so a
target never sees itself nor anything simultaneous. Most recent first (ties by input order, later input =
more recent), at most ``length``. Rows of every split are in the timeline, so a test row's history holds
the user's earlier train and valid events, exactly as the MovieLens protocol (datasets/README.md) states.

From a column: ``"a|b|c"`` split on ``sep``; stored newest first (``order: oldest_first`` reverses the
column's order), truncated to ``length``; empty tokens are dropped.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tfmsr.data.ingest.vocab import Coder


class Timeline:
    """Rows sorted by (user code, time, input order); per row: ``ustart`` (first row of its user), ``tie``
    (first row of its (user, time) block), ``rank`` within the user and the user's ``count``. The rows
    must come in input order within each user (the sort is stable)."""

    def __init__(self, user: np.ndarray, time: np.ndarray):
        self.order = np.lexsort((time, user))
        u, t = user[self.order], time[self.order]
        n = len(u)
        idx = np.arange(n)
        new_user = np.r_[True, u[1:] != u[:-1]] if n else np.zeros(0, bool)
        self.ustart = np.maximum.accumulate(np.where(new_user, idx, 0)) if n else idx
        new_tie = new_user | np.r_[True, t[1:] != t[:-1]] if n else new_user
        self.tie = np.maximum.accumulate(np.where(new_tie, idx, 0)) if n else idx
        self.rank = idx - self.ustart
        starts = np.flatnonzero(new_user)
        self.count = np.repeat(np.diff(np.r_[starts, n]), np.diff(np.r_[starts, n]))

    def events(self, eligible: np.ndarray) -> None:
        """Which rows (in sorted order) are behaviour events (``behaviour.where``)."""
        self._csum = np.concatenate([[0], np.cumsum(eligible, dtype=np.int64)])
        self._epos = np.flatnonzero(eligible)

    def history(self, rows: np.ndarray, length: int):
        """Each row's history as (flat positions in sorted order, most recent first per row; lengths [n]).
        ``rows`` are positions in sorted order; call ``events`` first."""
        hi = self._csum[self.tie[rows]]
        count = np.minimum(hi - self._csum[self.ustart[rows]], length)
        start = np.concatenate([[0], np.cumsum(count)])
        k = np.arange(start[-1]) - np.repeat(start[:-1], count)  # position within the row
        return self._epos[np.repeat(hi - 1, count) - k], count


def delimited(arr: pa.Array, sep: str, length: int, oldest_first: bool, coder: Coder) -> np.ndarray:
    """[n, length] int32 codes of the first ``length`` tokens (newest first) of a delimited string column,
    -1 = padding; tokens are coded with ``coder``."""
    lists = pc.split_pattern(pc.fill_null(arr, ""), sep)
    if oldest_first:
        lists = _reverse(lists)
    flat = pc.list_flatten(lists)
    codes = coder.encode(pc.if_else(pc.equal(flat, ""), pa.scalar(None, pa.string()), flat)).astype(np.int64)
    offs = lists.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    lens = np.diff(offs)
    row = np.repeat(np.arange(len(arr)), lens)
    valid = codes >= 0
    # position of each valid token among its row's valid tokens
    vc = np.cumsum(valid) - valid
    first_valid = np.concatenate([[0], np.cumsum(valid)])[offs[:-1]]
    pos = vc - first_valid[row]
    keep = valid & (pos < length)
    out = np.full((len(arr), length), -1, np.int32)
    out[row[keep], pos[keep]] = codes[keep]
    return out


def _reverse(lists: pa.Array) -> pa.Array:
    offs = lists.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    lens = np.diff(offs)
    row_end = np.repeat(offs[1:], lens)
    idx = np.arange(offs[-1]) if len(offs) else np.zeros(0, np.int64)
    src = row_end - 1 - (idx - np.repeat(offs[:-1], lens))
    items = pc.take(lists.values, pa.array(src + offs[0]))
    return pa.ListArray.from_arrays(pa.array((offs - offs[0]).astype(np.int32)), items)
