"""Evaluation metrics for multi-scenario recommendation (pure NumPy, no TensorFlow).

- ``auc``: exact ROC AUC, the probability that a random positive scores above a random negative, ties
  counting 1/2 (Mann-Whitney U with tie-averaged ranks). ``nan`` when only one class is present.
- ``scenario_auc``: ``auc`` within each scenario index ``0..num_scenarios-1``.
- ``gauc``: group AUC (DIN, SAML, MuSeNet): AUC within each group (e.g. user), averaged with weights =
  impressions of the group, over groups holding both a positive and a negative.
- ``logloss``: mean binary cross-entropy, probabilities clipped to ``[eps, 1 - eps]``.
- ``rela_impr``: RelaImpr in percent (SAML eq. 10): ``((auc_model - 0.5) / (auc_base - 0.5) - 1) * 100``.
- ``hit_rate_at_k`` / ``ndcg_at_k``: retrieval with one held-out positive per query; ``ranks`` are 0-based
  positions of the true item; a hit is ``rank < k``, NDCG is ``1 / log2(rank + 2)`` for hits, else 0;
  candidates tied with the true item (``ties``) are broken uniformly at random (expected hit and NDCG).
- ``summarize`` / ``format_table``: a JSON-serialisable summary per model and a fixed-width text table.

Labels are 0/1; anything ``> 0.5`` counts as positive. Inputs are flattened to 1-D.
"""
import math

import numpy as np

NAN = float("nan")


def _arrays(**named):
    """Flatten each named array-like to 1-D and check that all have the length of the first."""
    out = {name: np.asarray(value).ravel() for name, value in named.items()}
    first, ref = next(iter(out.items()))
    for name, arr in out.items():
        if len(arr) != len(ref):
            raise ValueError(f"{name} has length {len(arr)} but {first} has length {len(ref)}")
    return tuple(out.values())


def _scores(name, scores):
    scores = scores.astype(np.float64)
    if np.isnan(scores).any():
        raise ValueError(f"{name} contains NaN")
    return scores


def _auc(pos, scores):
    """AUC of boolean ``pos`` against float ``scores`` (already validated)."""
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return NAN
    uniq, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts  # 0-based position of each tie group in sorted order
    avg_rank = starts + (counts + 1) / 2.0  # 1-based average rank of the tie group
    u = avg_rank[inverse][pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def auc(labels, scores) -> float:
    labels, scores = _arrays(labels=labels, scores=scores)
    return _auc(labels > 0.5, _scores("scores", scores))


def scenario_auc(labels, scores, scenarios, num_scenarios) -> list:
    labels, scores, scenarios = _arrays(labels=labels, scores=scores, scenarios=scenarios)
    pos, scores = labels > 0.5, _scores("scores", scores)
    return [_auc(pos[scenarios == s], scores[scenarios == s]) for s in range(num_scenarios)]


def gauc(labels, scores, groups) -> float:
    labels, scores, groups = _arrays(labels=labels, scores=scores, groups=groups)
    scores = _scores("scores", scores)
    _, codes = np.unique(groups, return_inverse=True)
    codes = codes.ravel()
    order = np.lexsort((scores, codes))  # by group, then score
    pos, s, g = labels[order] > 0.5, scores[order], codes[order]
    n = len(s)
    if n == 0:
        return NAN
    size = np.bincount(g)
    n_pos = np.bincount(g, weights=pos)
    group_start = np.cumsum(size) - size
    # runs of equal (group, score) are the tie groups; each row gets its run's average in-group rank
    new_run = np.r_[True, (g[1:] != g[:-1]) | (s[1:] != s[:-1])]
    run_start = np.flatnonzero(new_run)
    run_len = np.diff(np.r_[run_start, n])
    run_id = np.cumsum(new_run) - 1
    rank = run_start[run_id] - group_start[g] + (run_len[run_id] + 1) / 2.0
    rank_sum = np.bincount(g, weights=rank * pos, minlength=len(size))
    n_neg = size - n_pos
    ok = (n_pos > 0) & (n_neg > 0)
    if not ok.any():
        return NAN
    group_auc = (rank_sum[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2.0) / (n_pos[ok] * n_neg[ok])
    return float(np.average(group_auc, weights=size[ok]))


def logloss(labels, probs, eps=1e-7) -> float:
    labels, probs = _arrays(labels=labels, probs=probs)
    if len(labels) == 0:
        return NAN
    y = (labels > 0.5).astype(np.float64)
    p = np.clip(probs.astype(np.float64), eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def rela_impr(auc_model, auc_base) -> float:
    if auc_base == 0.5:
        return NAN
    return float(((auc_model - 0.5) / (auc_base - 0.5) - 1.0) * 100.0)


def _ranks(ranks, k, ties=None):
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranks = np.asarray(ranks, dtype=np.float64).ravel()
    ties = np.zeros_like(ranks) if ties is None else np.asarray(ties, dtype=np.float64).ravel()
    return ranks, ties


def hit_rate_at_k(ranks, k, ties=None) -> float:
    """Share of queries whose positive is in the top k. ``ties[q]``: other candidates scoring exactly as the
    positive, broken uniformly at random (its position is uniform on ``rank .. rank + ties``), so the hit
    is the expected one, ``P(position < k)``: a model scoring every candidate alike gets k / N, not 1."""
    ranks, ties = _ranks(ranks, k, ties)
    if not len(ranks):
        return NAN
    return float(np.mean(np.clip((k - ranks) / (ties + 1.0), 0.0, 1.0)))


def ndcg_at_k(ranks, k, ties=None) -> float:
    """Mean ``1 / log2(position + 2)`` over queries (0 outside the top k), ties as in ``hit_rate_at_k``:
    the discount averaged over the positions ``rank .. rank + ties``."""
    ranks, ties = _ranks(ranks, k, ties)
    if not len(ranks):
        return NAN
    cum = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))])   # cum[j] = sum_{p < j}
    lo = np.minimum(np.maximum(ranks, 0), k).astype(np.int64)
    hi = np.minimum(np.maximum(ranks, 0) + ties + 1, k).astype(np.int64)
    return float(np.mean((cum[hi] - cum[lo]) / (ties + 1.0)))


def _basic(pos, probs):
    n = len(pos)
    return {
        "auc": _auc(pos, probs),
        "logloss": logloss(pos, probs) if n else NAN,
        "rows": int(n),
        "positive_rate": float(pos.mean()) if n else NAN,
    }


def summarize(labels, probs, scenarios, num_scenarios, users=None, oracle=None, scenario_names=None) -> dict:
    named = dict(labels=labels, probs=probs, scenarios=scenarios)
    if users is not None:
        named["users"] = users
    if oracle is not None:
        named["oracle"] = oracle
    arrays = dict(zip(named, _arrays(**named)))
    pos, probs, scen = arrays["labels"] > 0.5, _scores("probs", arrays["probs"]), arrays["scenarios"]
    orc = _scores("oracle", arrays["oracle"]) if oracle is not None else None
    names = list(scenario_names) if scenario_names is not None else [str(i) for i in range(num_scenarios)]
    if len(names) != num_scenarios:
        raise ValueError(f"scenario_names has {len(names)} names but num_scenarios is {num_scenarios}")

    out = _basic(pos, probs)
    if users is not None:
        out["gauc"] = gauc(pos, probs, arrays["users"])
    if orc is not None:
        out["oracle_auc"] = _auc(pos, orc)
        out["oracle_logloss"] = logloss(pos, orc) if len(pos) else NAN
    out["scenarios"] = {}
    for i, name in enumerate(names):
        m = scen == i
        entry = _basic(pos[m], probs[m])
        if orc is not None:
            entry["oracle_auc"] = _auc(pos[m], orc[m])
        out["scenarios"][name] = entry
    return out


def _fmt(x):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def format_table(results: dict, scenario_names) -> str:
    names = [str(s) for s in scenario_names]
    header = names + ["auc", "gauc", "logloss"]
    rows = []
    for row_name, r in results.items():
        scen = r.get("scenarios", {})
        cells = [scen.get(s, {}).get("auc") for s in names] + [r.get("auc"), r.get("gauc"), r.get("logloss")]
        rows.append((str(row_name), [_fmt(c) for c in cells]))
    oracle = next((r for r in results.values() if "oracle_auc" in r), None)
    if oracle is not None:
        scen = oracle.get("scenarios", {})
        cells = [scen.get(s, {}).get("oracle_auc") for s in names]
        cells += [oracle["oracle_auc"], None, oracle.get("oracle_logloss")]
        rows.append(("oracle", [_fmt(c) for c in cells]))
    first = max([len("model")] + [len(name) for name, _ in rows])
    widths = [max(len(h), 6) for h in header]
    lines = ["  ".join(["model".ljust(first)] + [h.rjust(w) for h, w in zip(header, widths)])]
    lines.append("-" * len(lines[0]))
    for name, cells in rows:
        lines.append("  ".join([name.ljust(first)] + [c.rjust(w) for c, w in zip(cells, widths)]))
    return "\n".join(lines)
