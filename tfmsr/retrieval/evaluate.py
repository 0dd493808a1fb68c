"""Top-K evaluation over each scenario's full item corpus (SASS Sec. 5.1.3: HR@K, NDCG@K, K = 20).

For every query of the evaluation split -- a (user request, scenario s, positive item) row -- the whole
corpus of s (the items exposed in s in the train split) is scored by the model (``user_vectors`` against
``item_vectors`` in scenario s; cosine or dot product as the model says), and the 0-based rank of the
positive is the number of candidates scoring strictly higher; candidates scoring exactly the same are ties,
broken uniformly at random. ``tfmsr.core.metrics.hit_rate_at_k`` / ``ndcg_at_k`` turn ranks and ties into the
expected HR@K and NDCG@K (one relevant item per query): a degenerate model that scores every candidate alike
(e.g. all-zero vectors) gets K / N, not a perfect score.

* **Excluded from the ranking** (``exclude_train_positives``, default on): the items the user clicked in
  the train split (in any scenario), except the query's own positive -- so a repeat consumption on the
  planted data (the target is an earlier click) stays a valid target, and already-consumed items do not
  crowd the list.
* A positive that is not in the scenario's corpus (never exposed there in train) cannot be retrieved and
  counts as a miss; ``coverage`` reports the share of queries whose positive is in the corpus.
* Per scenario: ``queries``, ``corpus``, ``coverage``, ``hr@K``, ``ndcg@K``; overall: over all queries
  (``hr@K``, ``ndcg@K``) and the mean of the scenarios (``hr@K_macro``, ``ndcg@K_macro``).
* Candidates are scored with the served item table (``RetrievalData.served``): label-rate item features
  at the full-train values a servable computes from the raw item id, not a train row's out-of-fold value.
* ``popularity`` scores every candidate by its train positives in the scenario (ties broken by a fixed
  pseudo-random order): the floor a trained model must clear.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from tfmsr.core import metrics
from tfmsr.retrieval.data import RetrievalData


class ModelScorer:
    """Scores of a trained retrieval model: item vectors of a scenario's corpus are computed once."""

    def __init__(self, model, data: RetrievalData, batch_size: int = 1024):
        self.model, self.data, self.batch = model, data, batch_size
        self._items: Dict[int, np.ndarray] = {}
        self._user_fn = tf.function(lambda r: model.user_vectors(r, training=False), reduce_retracing=True, autograph=False)
        self._item_fn = tf.function(lambda items, s: model.item_vectors(items, s, training=False),
                                    reduce_retracing=True, autograph=False)

    def reset(self) -> None:
        """Forget the cached item vectors (after the model's weights changed, e.g. another epoch)."""
        self._items = {}

    def _norm(self, v: np.ndarray) -> np.ndarray:
        if not self.model.cosine:
            return v
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-8)

    def item_vectors(self, s: int, corpus: np.ndarray) -> np.ndarray:
        if s not in self._items:
            parts = [self._item_fn(self.data.numpy_items(corpus[i:i + self.batch]), tf.constant(s)).numpy()
                     for i in range(0, len(corpus), self.batch)]
            self._items[s] = self._norm(np.concatenate(parts).astype(np.float32))
        return self._items[s]

    def scores(self, s: int, corpus: np.ndarray, rows: Dict[str, np.ndarray]) -> np.ndarray:
        u = self._norm(self._user_fn(self.data.numpy_request(rows)).numpy())
        return u @ self.item_vectors(s, corpus).T


class PopularityScorer:
    """Each candidate's train positives in the scenario (+ a fixed tie-breaking jitter in [0, 0.5))."""

    def __init__(self, data: RetrievalData, seed: int = 0):
        self.data = data
        self.jitter = np.random.default_rng(seed).random(data.num_items) * 0.5

    def scores(self, s: int, corpus: np.ndarray, rows: Dict[str, np.ndarray]) -> np.ndarray:
        pop = self.data.item_positives[corpus, s] + self.jitter[corpus]
        return np.broadcast_to(pop, (len(rows["item"]), len(corpus))).copy()


def _exclusions(data: RetrievalData, users: np.ndarray, targets: np.ndarray, corpus: np.ndarray):
    """(query row, corpus column) of every train positive of the query's user that is in the corpus and
    is not the query's target."""
    users = np.where((users > 0) & (users < data.num_users), users, 0)
    starts, ends = data.user_pos_indptr[users], data.user_pos_indptr[users + 1]
    lens = ends - starts
    q = np.repeat(np.arange(len(users)), lens)
    offset = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    items = data.user_pos_items[np.repeat(starts, lens) + offset]
    col = np.searchsorted(corpus, items)
    ok = col < len(corpus)
    ok[ok] = corpus[col[ok]] == items[ok]
    ok &= items != targets[q]
    return q[ok], col[ok]


def target_ranks(scores: np.ndarray, target_col: np.ndarray):
    """``(rank, ties)`` of each row's target column: the candidates scoring strictly higher (0-based rank;
    ``inf`` where the target is not in the corpus, ``target_col < 0``, or scores NaN) and the other candidates
    scoring the same (-inf candidates, the exclusions, never count)."""
    rows = np.arange(len(scores))
    t = scores[rows, np.maximum(target_col, 0)]
    rank = (scores > t[:, None]).sum(axis=1).astype(np.float64)
    ties = ((scores == t[:, None]) & np.isfinite(scores)).sum(axis=1) - np.isfinite(t)
    inside = (target_col >= 0) & ~np.isnan(t)          # a NaN score ranks nowhere: a miss
    return np.where(inside, rank, np.inf), np.where(inside, ties, 0).astype(np.float64)


def evaluate(scorer: Union[object, Dict[int, object]], data: RetrievalData, split: str = "test", k: int = 20,
             exclude_train_positives: bool = True, chunk: int = 1024,
             scenarios: Optional[Sequence[int]] = None) -> dict:
    """HR@K / NDCG@K per scenario (``scorer``: one for every scenario, or ``{s: scorer}``); ``scenarios``
    restricts the evaluation (and the overall figures) to those scenario indices."""
    out = {"split": split, "k": k, "exclude_train_positives": exclude_train_positives, "scenarios": {}}
    all_ranks, all_ties = [], []
    hr_key, ndcg_key = f"hr@{k}", f"ndcg@{k}"
    for s, name in enumerate(data.scenario_names):
        if scenarios is not None and s not in scenarios:
            continue
        sc = scorer[s] if isinstance(scorer, dict) else scorer
        rows = data.positives(split, s)
        corpus = data.corpus(s)
        n = len(rows["item"]) if rows else 0
        ranks = ties = np.zeros(0)
        if n and len(corpus):
            col = np.searchsorted(corpus, rows["item"])
            inside = col < len(corpus)
            inside[inside] = corpus[col[inside]] == rows["item"][inside]
            target_col = np.where(inside, col, -1)
            parts = []
            for lo in range(0, n, chunk):
                part = {c: v[lo:lo + chunk] for c, v in rows.items()}
                scores = np.asarray(sc.scores(s, corpus, part), np.float64)
                if exclude_train_positives:
                    qi, ci = _exclusions(data, part[data.user_key], part["item"], corpus)
                    scores[qi, ci] = -np.inf
                parts.append(target_ranks(scores, target_col[lo:lo + chunk]))
            ranks, ties = (np.concatenate(p) for p in zip(*parts))
            coverage = float(inside.mean())
        else:
            coverage = float("nan")
        all_ranks.append(ranks)
        all_ties.append(ties)
        out["scenarios"][name] = {"queries": int(n), "corpus": int(len(corpus)), "coverage": coverage,
                                  hr_key: metrics.hit_rate_at_k(ranks, k, ties),
                                  ndcg_key: metrics.ndcg_at_k(ranks, k, ties)}
    ranks, ties = np.concatenate(all_ranks), np.concatenate(all_ties)
    out[hr_key], out[ndcg_key] = metrics.hit_rate_at_k(ranks, k, ties), metrics.ndcg_at_k(ranks, k, ties)
    per = [v for v in out["scenarios"].values() if v["queries"]]
    out[f"{hr_key}_macro"] = float(np.mean([v[hr_key] for v in per])) if per else float("nan")
    out[f"{ndcg_key}_macro"] = float(np.mean([v[ndcg_key] for v in per])) if per else float("nan")
    out["queries"] = int(len(ranks))
    return out


def format_table(results: Dict[str, dict], scenario_names, k: int = 20) -> str:
    """Fixed-width text table: HR@K and NDCG@K per scenario and overall, one row per model."""
    cols = [f"{s} hr" for s in scenario_names] + ["all hr"] + [f"{s} ndcg" for s in scenario_names] + ["all ndcg"]
    rows = []
    for name, r in results.items():
        sc = r["scenarios"]
        cells = [sc[s][f"hr@{k}"] for s in scenario_names] + [r[f"hr@{k}"]]
        cells += [sc[s][f"ndcg@{k}"] for s in scenario_names] + [r[f"ndcg@{k}"]]
        rows.append((name, ["-" if c != c else f"{c:.4f}" for c in cells]))
    first = max([5] + [len(n) for n, _ in rows])
    widths = [max(len(c), 6) for c in cols]
    lines = ["  ".join(["model".ljust(first)] + [c.rjust(w) for c, w in zip(cols, widths)])]
    lines.append("-" * len(lines[0]))
    lines += ["  ".join([n.ljust(first)] + [c.rjust(w) for c, w in zip(cells, widths)]) for n, cells in rows]
    return "\n".join(lines)
