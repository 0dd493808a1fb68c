"""``stats.json``: rows, positives, traffic share and repeat rate per split and scenario.

The repeat rate is the share of rows whose target item already appears in the behaviour sequence that
shares the item's table (MuSeNet's repeat consumption); FIMN's SEM reads the traffic shares.
"""
from __future__ import annotations

from typing import Mapping, Optional, Tuple

import numpy as np

from tfmsr.features import Schema


def repeat_pair(schema: Schema) -> Optional[Tuple[str, str]]:
    """(target item feature, behaviour sequence sharing its table), or None."""
    for f in schema.group("item", "categorical"):
        for s in schema.of_kind("sequence"):
            if s.table == f.table and s.group == "behavior":
                return f.name, s.name
    return None


def is_repeat(target, history) -> np.ndarray:
    """Boolean [N]: target id (non-zero) occurs in that row's history (2-D array or list of lists)."""
    target = np.asarray(target)
    if isinstance(history, np.ndarray) and history.ndim == 2:
        return ((history == target[:, None]) & (target[:, None] != 0)).any(axis=1)
    return np.array([t != 0 and t in set(h) for t, h in zip(target.tolist(), history)], dtype=bool)


class StatsAccumulator:
    def __init__(self, schema: Schema):
        self.schema = schema
        s = schema.num_scenarios
        self._rows = {}
        self._pos = {}
        self._rep = {}
        self._zero = lambda: np.zeros(s, dtype=np.int64)
        self._pair = repeat_pair(schema)

    def update(self, split: str, columns: Mapping[str, object]) -> None:
        sc = np.asarray(columns[self.schema.scenario.name], dtype=np.int64)
        s = self.schema.num_scenarios
        if sc.size and (sc.min() < 0 or sc.max() >= s):
            bad = sc[(sc < 0) | (sc >= s)][0]
            raise ValueError(f"scenario '{self.schema.scenario.name}': value {bad} outside [0, {s})")
        y = np.asarray(columns[self.schema.label], dtype=np.float64) > 0.5
        for d in (self._rows, self._pos, self._rep):
            d.setdefault(split, self._zero())
        self._rows[split] += np.bincount(sc, minlength=s)
        self._pos[split] += np.bincount(sc, weights=y, minlength=s).astype(np.int64)
        if self._pair:
            rep = is_repeat(columns[self._pair[0]], columns[self._pair[1]])
            self._rep[split] += np.bincount(sc, weights=rep, minlength=s).astype(np.int64)

    def result(self) -> dict:
        names = self.schema.scenario.values
        out = {"scenarios": list(names), "splits": {}}
        total = self._zero()
        for split, rows in self._rows.items():
            total += rows
            n = int(rows.sum())
            per = {}
            for i, name in enumerate(names):
                r = int(rows[i])
                per[name] = {
                    "rows": r,
                    "positives": int(self._pos[split][i]),
                    "positive_rate": float(self._pos[split][i] / r) if r else 0.0,
                    "share": float(r / n) if n else 0.0,
                }
                if self._pair:
                    per[name]["repeat_rate"] = float(self._rep[split][i] / r) if r else 0.0
            out["splits"][split] = {
                "rows": n,
                "positives": int(self._pos[split].sum()),
                "positive_rate": float(self._pos[split].sum() / n) if n else 0.0,
                "scenarios": per,
            }
        grand = int(total.sum())
        out["traffic_share"] = {name: float(total[i] / grand) if grand else 0.0 for i, name in enumerate(names)}
        out["scenario_rows"] = {name: int(total[i]) for i, name in enumerate(names)}
        return out
