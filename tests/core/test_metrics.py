import json
import math

import numpy as np
import pytest

from tfmsr.core import metrics as M


def brute_auc(labels, scores):
    pos = [s for y, s in zip(labels, scores) if y > 0.5]
    neg = [s for y, s in zip(labels, scores) if y <= 0.5]
    if not pos or not neg:
        return float("nan")
    total = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return total / (len(pos) * len(neg))


def brute_gauc(labels, scores, groups):
    num = den = 0.0
    for g in set(groups.tolist()):
        m = groups == g
        a = brute_auc(labels[m], scores[m])
        if not math.isnan(a):
            num += a * m.sum()
            den += m.sum()
    return num / den if den else float("nan")


def random_case(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 301))
    labels = rng.integers(0, 2, n)
    scores = rng.integers(0, 6, n) / 5.0  # few distinct values -> many ties
    return rng, n, labels, scores


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


@pytest.mark.parametrize("seed", range(12))
def test_auc_matches_brute_force(seed):
    _, _, labels, scores = random_case(seed)
    assert same(M.auc(labels, scores), brute_auc(labels, scores))


@pytest.mark.parametrize("seed", range(12))
def test_gauc_matches_brute_force(seed):
    rng, n, labels, scores = random_case(seed)
    groups = rng.integers(0, max(1, n // 8), n)
    assert same(M.gauc(labels, scores, groups), brute_gauc(labels, scores, groups))
    names = np.array(["u%d" % g for g in groups])  # non-integer group ids
    assert same(M.gauc(labels, scores, names), brute_gauc(labels, scores, groups))


@pytest.mark.parametrize("seed", range(6))
def test_scenario_auc_matches_brute_force(seed):
    rng, n, labels, scores = random_case(seed)
    scen = rng.integers(0, 3, n)
    got = M.scenario_auc(labels, scores, scen, 4)  # scenario 3 is empty -> nan
    assert len(got) == 4 and math.isnan(got[3])
    for s in range(3):
        assert same(got[s], brute_auc(labels[scen == s], scores[scen == s]))


def test_auc_known_cases():
    assert M.auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert M.auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert M.auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert math.isnan(M.auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(M.auc([], []))
    assert M.auc([[0.0, 1.0]], [[0.2], [0.9]]) == 1.0  # flattened
    with pytest.raises(ValueError, match="scores"):
        M.auc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="groups"):
        M.gauc([0, 1], [0.1, 0.2], [0])


def test_gauc_known_cases():
    labels = [1, 0, 1, 0, 1, 1, 0]
    scores = [0.9, 0.1, 0.2, 0.8, 0.5, 0.4, 0.3]
    groups = [0, 0, 1, 1, 2, 2, 3]  # group 2 all positive, group 3 single negative: skipped
    assert M.gauc(labels, scores, groups) == 0.5  # (2 * 1.0 + 2 * 0.0) / 4
    assert math.isnan(M.gauc([1, 0], [0.1, 0.2], [0, 1]))


def test_logloss():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = rng.random(200)
    p[:3] = [0.0, 1.0, 1.0]
    eps = 1e-7
    q = np.clip(p, eps, 1 - eps)
    expected = -np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))
    assert M.logloss(y, p) == pytest.approx(expected, rel=1e-12)
    assert M.logloss([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2))


def test_rela_impr():
    assert M.rela_impr(0.75, 0.7) == pytest.approx(25.0)
    assert M.rela_impr(0.7, 0.7) == 0.0


def test_hit_rate_and_ndcg():
    ranks = [0, 1, 4, 9, 20]
    assert M.hit_rate_at_k(ranks, 5) == pytest.approx(3 / 5)
    assert M.hit_rate_at_k(ranks, 1) == pytest.approx(1 / 5)
    expected = (1.0 + 1 / math.log2(3) + 1 / math.log2(6)) / 5
    assert M.ndcg_at_k(ranks, 5) == pytest.approx(expected)
    assert M.ndcg_at_k(ranks, 10) == pytest.approx(expected + 1 / math.log2(11) / 5)
    with pytest.raises(ValueError):
        M.hit_rate_at_k(ranks, 0)


def test_hit_rate_and_ndcg_break_ties_at_random():
    """Ties: the positive's position is uniform on rank .. rank + ties; the metrics are the expectations,
    checked against an average over every tie-break."""
    ranks, ties, k = [0, 3, 2, 9, np.inf], [0, 4, 0, 6, 0], 5
    hits, gains = [], []
    for r, t in zip(ranks, ties):
        pos = np.arange(r, r + t + 1) if np.isfinite(r) else np.array([np.inf])
        hits.append(np.mean(pos < k))
        gains.append(np.mean(np.where(pos < k, 1 / np.log2(np.minimum(pos, 1e9) + 2), 0.0)))
    assert M.hit_rate_at_k(ranks, k, ties) == pytest.approx(np.mean(hits))
    assert M.ndcg_at_k(ranks, k, ties) == pytest.approx(np.mean(gains))
    assert M.hit_rate_at_k([0], 20, [999]) == pytest.approx(20 / 1000)   # all 1000 candidates alike
    assert M.ndcg_at_k(ranks, k, [0] * 5) == pytest.approx(M.ndcg_at_k(ranks, k))


def small_case():
    labels = np.array([1, 0, 1, 0, 1, 0, 0, 1])
    probs = np.array([0.9, 0.2, 0.3, 0.6, 0.7, 0.1, 0.4, 0.8])
    scen = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    users = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    oracle = np.array([0.95, 0.05, 0.9, 0.1, 0.9, 0.1, 0.1, 0.9])
    return labels, probs, scen, users, oracle


def test_summarize():
    labels, probs, scen, users, oracle = small_case()
    s = M.summarize(labels, probs, scen, 3, users=users, oracle=oracle, scenario_names=["a", "b", "c"])
    assert set(s) == {"auc", "logloss", "gauc", "rows", "positive_rate", "scenarios", "oracle_auc", "oracle_logloss"}
    assert s["rows"] == 8 and isinstance(s["rows"], int)
    assert s["positive_rate"] == 0.5
    assert s["auc"] == pytest.approx(brute_auc(labels, probs))
    assert s["gauc"] == pytest.approx(brute_gauc(labels, probs, users))
    assert s["logloss"] == pytest.approx(M.logloss(labels, probs))
    assert s["oracle_auc"] == 1.0
    assert list(s["scenarios"]) == ["a", "b", "c"]
    a = s["scenarios"]["a"]
    assert set(a) == {"auc", "logloss", "rows", "positive_rate", "oracle_auc"}
    assert a["rows"] == 4 and a["auc"] == pytest.approx(brute_auc(labels[:4], probs[:4]))
    assert s["scenarios"]["c"]["rows"] == 0 and math.isnan(s["scenarios"]["c"]["auc"])
    json.dumps(s)  # plain Python types (nan allowed)
    plain = M.summarize(labels, probs, scen, 2)
    assert "gauc" not in plain and "oracle_auc" not in plain and list(plain["scenarios"]) == ["0", "1"]


def test_format_table():
    labels, probs, scen, users, oracle = small_case()
    names = ["search", "feed"]
    res = {
        "shared_bottom": M.summarize(labels, probs, scen, 2, users=users, oracle=oracle, scenario_names=names),
        "star": M.summarize(labels, 1 - probs, scen, 2, scenario_names=names),
    }
    table = M.format_table(res, names)
    for word in ["shared_bottom", "star", "oracle", "search", "feed", "auc", "gauc", "logloss"]:
        assert word in table
    lines = table.splitlines()
    assert len(lines) == 5  # header, rule, 2 models, oracle
    assert lines[-1].startswith("oracle") and "1.0000" in lines[-1]
    assert lines[3].split()[4] == "-"  # star has no gauc
    assert "oracle" not in M.format_table({"star": res["star"]}, names)


def test_gauc_large_matches_per_group_reference():
    rng = np.random.default_rng(7)
    n, g = 200_000, 20_000
    groups = rng.integers(0, g, n)
    labels = rng.integers(0, 2, n)
    scores = rng.integers(0, 20, n) / 19.0
    got = M.gauc(labels, scores, groups)  # vectorised: no Python loop per group (speed is a benchmark matter)
    # reference on a random subset of groups: rows outside the subset are dropped from both
    subset = rng.choice(g, 300, replace=False)
    m = np.isin(groups, subset)
    assert M.gauc(labels[m], scores[m], groups[m]) == pytest.approx(brute_gauc(labels[m], scores[m], groups[m]))
    # and the full result is the weighted mean of per-group AUCs
    order = np.argsort(groups, kind="stable")
    bounds = np.searchsorted(groups[order], np.arange(g + 1))
    num = den = 0.0
    for i in range(g):
        idx = order[bounds[i]:bounds[i + 1]]
        a = M.auc(labels[idx], scores[idx])
        if not math.isnan(a):
            num += a * len(idx)
            den += len(idx)
    assert got == pytest.approx(num / den)
