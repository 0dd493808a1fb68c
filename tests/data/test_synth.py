"""The planted generator: deterministic, streaming, histories strictly earlier, ground truth recorded."""
import json
import os

import numpy as np
import pytest

from tfmsr.core import metrics
from tfmsr.data import synth
from tfmsr.data.pipeline import make_dataset, split_files
from tfmsr.data.synth import generate


def read_all(data_dir, schema):
    """Every row of train, valid, test in time order (file order)."""
    parts = []
    for split in ("train", "valid", "test"):
        for x, y in make_dataset(split_files(data_dir, split), schema, 4096, training=False):
            row = {k: v.numpy() for k, v in x.items()}
            row["click"] = y.numpy()
            parts.append(row)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_stats_and_ground_truth(synth_dir, synth_schema):
    stats = json.load(open(os.path.join(synth_dir, "stats.json")))
    assert {k: v["rows"] for k, v in stats["splits"].items()} == {"train": 4800, "valid": 600, "test": 600}
    share = list(stats["traffic_share"].values())
    assert share == sorted(share, reverse=True) and 0.4 < share[0] < 0.6  # long tail, 50 % head
    gen = stats["generator"]
    assert gen["scenario_clusters"] == [0, 0, 1, 1, 2]
    sim = np.array(gen["scenario_similarity"])
    assert sim[0, 1] > 0.5 and sim[2, 3] > 0.5 and sim[0, 2] < sim[0, 1]
    for split in stats["splits"].values():
        for s in split["scenarios"].values():
            assert 0.05 < s["positive_rate"] < 0.6 and 0 < s["repeat_rate"] < 0.6
    rows = read_all(synth_dir, synth_schema)
    oracle_auc = metrics.auc(rows["click"], rows["oracle_p"])
    assert 0.8 < oracle_auc < 0.97  # the planted signal is strong but not deterministic
    np.testing.assert_array_equal(rows["latent_scenario"], (rows["hour"] - 1) // 6)
    search = rows["scenario"] % 2 == 1
    assert (rows["query_cate"][~search] == 0).all() and (rows["query_cate"][search] > 0).all()
    # premise headroom: the oracle's test AUC, and no premise switched on -> no gap but the interest terms'
    head, test = gen["premise_headroom"], slice(len(rows["click"]) - 600, None)
    assert head["oracle"]["auc"] == pytest.approx(metrics.auc(rows["click"][test], rows["oracle_p"][test]), abs=2e-4)
    assert len(head["oracle"]["scenario_auc"]) == 5
    for name in ("behaviour_scenario", "local_activation", "aspect_intensity", "item_scenario"):
        assert head[name] == head["oracle"]
    assert head["behaviour_interest"]["auc"] < head["oracle"]["auc"]
    assert head["scenario_taste"]["auc"] < head["oracle"]["auc"]


def test_histories_are_strictly_earlier_clicks(synth_dir, synth_schema):
    rows = read_all(synth_dir, synth_schema)
    history = {}
    repeats, clicks = {}, {}
    for i in range(len(rows["user_id"])):
        u = rows["user_id"][i]
        h = history.get(u, [])
        expect = (h + [(0, 0, 0)] * 30)[:30]
        got = list(zip(rows["hist_item_id"][i], rows["hist_cate_id"][i], rows["hist_scenario"][i]))
        assert got == expect, f"row {i}: history is not the user's earlier clicks"
        assert rows["user_repeat_rate"][i] == pytest.approx(repeats.get(u, 0) / max(clicks.get(u, 0), 1))
        if rows["click"][i] > 0.5:
            item = rows["item_id"][i]
            repeats[u] = repeats.get(u, 0) + int(item in [e[0] for e in h[:30]])
            clicks[u] = clicks.get(u, 0) + 1
            history[u] = [(item, rows["cate_id"][i], rows["scenario"][i] + 1)] + h
    assert sum(clicks.values()) > 500


def test_deterministic_by_seed_and_streams_in_chunks(tmp_path):
    a = generate(str(tmp_path / "a"), rows=3000, users=200, items=100, categories=10, seed=7, chunk=700,
                 progress=False)
    b = generate(str(tmp_path / "b"), rows=3000, users=200, items=100, categories=10, seed=7, chunk=700,
                 progress=False)
    c = generate(str(tmp_path / "c"), rows=3000, users=200, items=100, categories=10, seed=8, chunk=700,
                 progress=False)
    assert a["splits"] == b["splits"] and a["splits"] != c["splits"]
    for split in ("train", "valid", "test"):
        for fa, fb in zip(split_files(str(tmp_path / "a"), split), split_files(str(tmp_path / "b"), split)):
            assert open(fa, "rb").read() == open(fb, "rb").read()
    with pytest.raises(FileExistsError):
        generate(str(tmp_path / "a"), rows=3000, progress=False)



TAIL = {"search_scenarios": (1, 3, 4), "clusters": (0, 0, 1, 1, 1)}  # the long-tail scenario: search, opposing cluster


@pytest.mark.parametrize("kappa,eta,tau,lam,switches", [
    (0.0, 0.0, 0.0, 1.0, {}), (1.0, 0.0, 0.0, 1.0, {}), (0.0, 2.0, 0.0, 1.0, {}), (1.0, 0.0, 0.1, 1.0, {}),
    (1.0, 2.0, 0.1, 2.0, {}), (1.0, 2.0, 0.1, 2.0, TAIL), (0.0, 0.0, 0.0, 1.0, {"item_scenario": 1.5})])
def test_click_logit_is_the_documented_one_with_behaviour_scenario_weights(kappa, eta, tau, lam, switches):
    """oracle_p re-computed in NumPy from the world and the row (module docstring), with the behaviour weights
    w_h = (1 - kappa) + kappa * sim(s_h, s) (kappa = 1 makes a click from an opposing scenario count against)
    the aspect weights c_s^item = 1 + eta t_s, c_s^cat = 1 - eta t_s (t = +1 feed, -1 search) and, with tau > 0,
    the history average weighted by softmax_h(cos(g_h, g_i) / tau) instead of 1 / |history|, both interest
    terms scaled by lam; and the premise-headroom logits, each the same logit with one effect taken out.
    ``switches``: other search entrances (default: the odd scenarios; only their rows carry a query),
    scenario clusters, and the item-scenario appeal omega * xi[i, s]."""
    rng = np.random.default_rng(3)
    w = synth._World(rng, 5, 300, 200, 20, 60, 8, behaviour_scenario=kappa, aspect_intensity=eta,
                     local_activation=tau, interest_weight=lam, **switches)
    is_search = np.isin(np.arange(5), switches.get("search_scenarios", (1, 3)))
    hist = [np.zeros((300, 30), np.int64) for _ in range(3)]
    counts = [np.zeros(300, np.int64), np.zeros(300, np.int64)]
    headroom = {}
    rows = [synth._chunk(rng, w, 2000, *hist, *counts, headroom) for _ in range(3)][-1]
    u, i, s = rows["user_id"] - 1, rows["item_id"] - 1, rows["scenario"]
    hi, hc, hs = rows["hist_item_id"], rows["hist_cate_id"], rows["hist_scenario"]
    sim = w.similarity()
    w_h = np.where(hi > 0, (1 - kappa) + kappa * sim[np.maximum(hs - 1, 0), s[:, None]], 0.0)
    unit = w.g_i / np.linalg.norm(w.g_i, axis=1, keepdims=True)
    cos = np.einsum("bld,bd->bl", unit[np.maximum(hi - 1, 0)], unit[i])
    if tau:
        att = np.where(hi > 0, np.exp(cos / tau), 0.0)
        att = att / np.maximum(att.sum(1, keepdims=True), 1e-30)
        assert np.allclose(att.sum(1), (hi > 0).any(1))   # an empty history gets no interest
    else:
        att = (hi > 0) / np.maximum((hi > 0).sum(1), 1)[:, None]
    cat = w.cat[i]
    z = rows["latent_scenario"]
    np.testing.assert_array_equal(rows["query_cate"] > 0, is_search[s])
    t = np.where(is_search, -1.0, 1.0)[s]
    rest = (w.b0 + w.bias_s[s] + (w.g_u[u] * w.g_i[i]).sum(1) / np.sqrt(8)
            + 2.0 * (w.a_u[u] * w.m[s] * w.b_i[i]).sum(1) / np.sqrt(8)
            + (w.rho[z] + 2.0 * (w.repeat_q[u] - 0.2)) * (hi == i[:, None] + 1).any(1)
            + 0.8 * w.T[z, cat] + 1.2 * (is_search[s] & (rows["query_cate"] - 1 == cat)) - 0.25 * w.price[i])
    omega = switches.get("item_scenario", 0.0)
    rest = rest + omega * w.xi[i, s]
    same = hc == cat[:, None] + 1

    def interest(weights, w_h, c_item, c_cat):
        return lam * (c_item * (weights * w_h * cos).sum(1) + c_cat * (weights * w_h * same).sum(1))

    logit = rest + interest(att, w_h, 1 + eta * t, 1 - eta * t)
    assert (hi > 0).any(1).mean() > 0.5 and ((hs > 0) & (hs - 1 != s[:, None])).any()
    np.testing.assert_allclose(rows["oracle_p"], 1 / (1 + np.exp(-logit)), rtol=1e-5, atol=1e-6)
    # premise headroom: w_h -> its mean over the traffic mix of behaviour scenarios; attention -> plain mean;
    # c_s -> its traffic-weighted mean; no interest terms; the taste m_s -> its traffic-weighted mean
    mean = (hi > 0) / np.maximum((hi > 0).sum(1), 1)[:, None]
    w_mix = np.where(hi > 0, ((1 - kappa) + kappa * (w.traffic @ sim))[s][:, None], 0.0)
    c_bar = w.traffic @ (np.where(is_search, -1.0, 1.0) * eta)
    expected = {"oracle": logit, "behaviour_scenario": rest + interest(att, w_mix, 1 + eta * t, 1 - eta * t),
                "local_activation": rest + interest(mean, w_h, 1 + eta * t, 1 - eta * t),
                "aspect_intensity": rest + interest(att, w_h, 1 + c_bar, 1 - c_bar), "behaviour_interest": rest,
                "scenario_taste": logit + 2.0 * (w.a_u[u] * (w.traffic @ w.m - w.m[s]) * w.b_i[i]).sum(1) / np.sqrt(8),
                "item_scenario": logit + omega * ((w.xi[i] * w.traffic).sum(1) - w.xi[i, s])}
    assert set(headroom) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(headroom[name], value, rtol=1e-6, atol=1e-6, err_msg=name)
    if not kappa:
        np.testing.assert_allclose(headroom["behaviour_scenario"], logit, atol=1e-9)
    if not tau:
        np.testing.assert_allclose(headroom["local_activation"], logit, atol=1e-9)
    if not eta:
        np.testing.assert_allclose(headroom["aspect_intensity"], logit, atol=1e-9)
    if omega:
        assert w.xi.shape == (200, 5) and 0.8 < w.xi.std() < 1.2 and np.abs(headroom["item_scenario"] - logit).mean() > 0.5
    else:
        np.testing.assert_allclose(headroom["item_scenario"], logit, atol=1e-9)
    if kappa:
        assert sim.min() < -0.3  # opposing clusters exist, so some behaviours count against the item
    with pytest.raises(ValueError, match="behaviour_scenario"):
        synth.generate("unused", rows=1000, behaviour_scenario=1.5, progress=False)
    with pytest.raises(ValueError, match="aspect_intensity"):
        synth.generate("unused", rows=1000, aspect_intensity=-1.0, progress=False)
    with pytest.raises(ValueError, match="local_activation"):
        synth.generate("unused", rows=1000, local_activation=-0.1, progress=False)
    with pytest.raises(ValueError, match="interest_weight"):
        synth.generate("unused", rows=1000, interest_weight=-1.0, progress=False)
    with pytest.raises(ValueError, match="item_scenario"):
        synth.generate("unused", rows=1000, item_scenario=-0.5, progress=False)
    for bad in ([1, 5], [1, 1], [-1]):
        with pytest.raises(ValueError, match="search_scenarios"):
            synth.generate("unused", rows=1000, search_scenarios=bad, progress=False)
    for bad in ([0, 0, 1, 1], [0, 0, 1, 1, -1]):
        with pytest.raises(ValueError, match="clusters"):
            synth.generate("unused", rows=1000, clusters=bad, progress=False)


def test_item_scenario_switch_changes_no_other_random_draw():
    """omega > 0 adds the item-scenario appeal from a stream of its own: the world and the rows' draws (users,
    items, scenarios, ...) are those of omega = 0; only the clicks can differ."""
    worlds = [synth._World(np.random.default_rng(5), 5, 300, 200, 20, 60, 8, item_scenario=o) for o in (0.0, 1.0)]
    for name in ("g_u", "a_u", "g_i", "b_i", "m", "popularity", "bias_s", "T"):
        np.testing.assert_array_equal(getattr(worlds[0], name), getattr(worlds[1], name), err_msg=name)
    assert not worlds[0].xi.any() and worlds[1].xi.std() > 0.5
    rows = []
    for w in worlds:
        rng = np.random.default_rng(9)
        rows.append(synth._chunk(rng, w, 500, *[np.zeros((300, 30), np.int64) for _ in range(3)],
                                 np.zeros(300, np.int64), np.zeros(300, np.int64)))
    np.testing.assert_array_equal(rows[0]["user_id"], rows[1]["user_id"])
    first = np.unique(rows[0]["user_id"], return_index=True)[1]   # each user's first row: an empty history
    for key in ("item_id", "scenario", "hour", "device"):
        np.testing.assert_array_equal(rows[0][key][first], rows[1][key][first], err_msg=key)
    assert not np.allclose(rows[0]["oracle_p"], rows[1]["oracle_p"])


def test_search_and_cluster_switches_change_no_random_draw():
    """The world with the long-tail scenario made a search entrance in the opposing cluster is the default world
    but for s4's taste (now its cluster's) and the search flags; scenarios of one cluster are alike."""
    default, tail = (synth._World(np.random.default_rng(5), 5, 300, 200, 20, 60, 8, **kw) for kw in ({}, TAIL))
    for name in ("g_u", "a_u", "g_i", "b_i", "popularity", "bias_s", "T", "cat", "activity"):
        np.testing.assert_array_equal(getattr(default, name), getattr(tail, name), err_msg=name)
    np.testing.assert_array_equal(default.m[:4], tail.m[:4])
    assert tail.cluster.tolist() == [0, 0, 1, 1, 1] and tail.search.tolist() == [False, True, False, True, True]
    sim = tail.similarity()
    assert sim[4, 2] > 0.8 and sim[4, 3] > 0.8 and abs(sim[4, 0] - sim[2, 0]) < 0.2  # s4 now sides with s2, s3
    assert abs(default.similarity()[4, 2]) < 0.8
