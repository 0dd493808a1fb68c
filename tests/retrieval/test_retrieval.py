"""Retrieval: samples and cross-scenario pairs from a tfmsr dataset, top-K evaluation (checked against
tfrs' BruteForce index), SASS pre-training -> fine-tuning restore, the baselines, the CLI."""
import json
import os
from itertools import combinations

import numpy as np
import pytest
import tensorflow as tf
from conftest import datasets_dir

import tensorflow_recommenders as tfrs  # after tfmsr (conftest): Keras 2

from tfmsr.cli import main as cli
from tfmsr.core.errors import ConfigError
from tfmsr.features import Schema
from tfmsr.retrieval import train as trainer
from tfmsr.retrieval.config import load_config
from tfmsr.retrieval.data import RetrievalData, iter_split, sample_negatives
from tfmsr.retrieval.evaluate import PopularityScorer, evaluate, target_ranks
from tfmsr.retrieval.pairs import pair_datasets, read_summary, write_pairs

TINY = {"embedding_dim": 8}


def quick(model, params=None, pretrain=False, **train):
    t = {"epochs": 1}
    t.update(train)
    raw = {"model": {"name": model, "params": {**TINY, **(params or {})}}, "data": {"batch_size": 128},
           "pretrain": {"enabled": pretrain, "epochs": 1, "batch_size": 128}, "train": t}
    return load_config(raw=raw)


@pytest.fixture(scope="module")
def rows(synth_dir, synth_schema):
    """Every train row of the planted fixture (NumPy columns + label)."""
    parts = [dict(x, label=y) for x, y in iter_split(synth_dir, synth_schema, "train")]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@pytest.fixture(scope="module")
def data(synth_dir):
    return RetrievalData.load(synth_dir, eval_splits=("valid", "test"))


@pytest.fixture(scope="module")
def pairs_dir(synth_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pairs") / "pairs")
    write_pairs(synth_dir, out, rows_per_shard=500)
    return out


def test_retrieval_data_from_rows(data, rows):
    pos = rows["label"] > 0.5
    assert len(data.train["item"]) == pos.sum()
    np.testing.assert_array_equal(data.train["item"], rows["item_id"][pos])
    for s in range(data.num_scenarios):
        np.testing.assert_array_equal(data.corpus(s), np.unique(rows["item_id"][rows["scenario"] == s]))
    # statistics: log1p(exposures), log1p(clicks) per (key, scenario) and over all scenarios
    u, s = 7, 2
    m = (rows["user_id"] == u) & (rows["scenario"] == s)
    assert data.user_stats[u, s, 0] == pytest.approx(np.log1p(m.sum()))
    assert data.user_stats[u, s, 1] == pytest.approx(np.log1p((m & pos).sum()))
    assert data.user_stats[u, data.num_scenarios, 0] == pytest.approx(np.log1p((rows["user_id"] == u).sum()))
    i = int(rows["item_id"][0])
    assert data.exposures[i].sum() == (rows["item_id"] == i).sum()
    assert data.item_stats[i, data.num_scenarios, 1] == pytest.approx(np.log1p(((rows["item_id"] == i) & pos).sum()))
    np.testing.assert_array_equal(data.user_positives(u), np.unique(rows["item_id"][(rows["user_id"] == u) & pos]))
    assert len(data.queries["test"]["item"]) == json.load(open(os.path.join(data.data_dir, "stats.json")))[
        "splits"]["test"]["positives"]


def test_pairs_are_all_cross_scenario_combinations(pairs_dir, rows, data):
    summary = read_summary(pairs_dir)
    S = data.num_scenarios
    # C(k, 2) per user / item seen in k scenarios (exposed rows, clicked or not)
    for side, key in (("user", "user_id"), ("item", "item_id")):
        seen = {}
        for k_, s in zip(rows[key], rows["scenario"]):
            seen.setdefault(int(k_), set()).add(int(s))
        want = sorted((k_, a, b) for k_, ss in seen.items() for a, b in combinations(sorted(ss), 2))
        assert summary[side]["pairs"] == len(want) > 0
        assert summary[side]["keys_in_2plus_scenarios"] == sum(len(ss) >= 2 for ss in seen.values())
        got = []
        for path in sorted(os.listdir(os.path.join(pairs_dir, side))):
            for rec in tf.data.TFRecordDataset(os.path.join(pairs_dir, side, path)):
                f = tf.train.Example.FromString(rec.numpy()).features.feature
                got.append((f["key"].int64_list.value[0], f["a.scenario"].int64_list.value[0],
                            f["b.scenario"].int64_list.value[0]))
                if side == "user" and len(got) <= 30:  # a view = the user's latest row in that scenario
                    k_, a = got[-1][:2]
                    last = np.flatnonzero((rows["user_id"] == k_) & (rows["scenario"] == a))[-1]
                    assert f["a.user_id"].int64_list.value[0] == k_
                    assert list(f["a.hist_item_id"].int64_list.value) == [v for v in rows["hist_item_id"][last] if v]
                    assert f["a.hour"].int64_list.value[0] == rows["hour"][last]
        assert sorted(got) == want
    ds, steps, _ = pair_datasets(pairs_dir, data, 64)
    batch = next(iter(ds))
    assert set(batch) == {"user_a", "user_b", "item_a", "item_b"}
    assert batch["user_a"]["user_stats"].shape == (64, S + 1, 3)
    assert batch["user_a"]["hist_item_id"].shape == (64, 30)
    np.testing.assert_array_equal(batch["user_a"]["user_id"], batch["user_b"]["user_id"])
    assert (batch["item_a"]["scenario"].numpy() < batch["item_b"]["scenario"].numpy()).all()
    assert steps == -(-max(summary["user"]["pairs"], summary["item"]["pairs"]) // 64)


def test_target_ranks_and_exclusions(data):
    scores = np.array([[0.1, 0.9, 0.5, 0.3], [0.2, 0.2, 0.8, -np.inf], [0.0, 0.0, 0.0, 0.0]])
    ranks, ties = target_ranks(scores, np.array([2, 0, 3]))
    np.testing.assert_array_equal(ranks, [1, 1, 0])
    np.testing.assert_array_equal(ties, [0, 1, 3])                # the target itself is not its own tie
    ranks, ties = target_ranks(scores, np.array([-1, 1, 0]))
    assert np.isinf(ranks[0]) and ties[0] == 0
    nan = np.array([[np.nan, 0.5, 0.1]])                           # a NaN target is a miss, never rank 0
    assert np.isinf(target_ranks(nan, np.array([0]))[0][0])

    class Constant:  # a degenerate model (e.g. all-zero vectors): every candidate scores the same
        def scores(self, s, corpus, rows):
            return np.zeros((len(rows["item"]), len(corpus)))

    flat = evaluate(Constant(), data, "test", k=20, exclude_train_positives=False)["scenarios"]["s0"]
    assert flat["hr@20"] == pytest.approx(20 / flat["corpus"] * flat["coverage"])   # k / N, not 1

    class Fixed:  # the target scores highest, the user's other train positives just above it
        def scores(self, s, corpus, rows):
            out = np.zeros((len(rows["item"]), len(corpus)))
            for q, (u, t) in enumerate(zip(rows["user_id"], rows["item"])):
                out[q, np.isin(corpus, data.user_positives(u))] = 2.0
                out[q, corpus == t] = 1.0
            return out

    with_ex = evaluate(Fixed(), data, "test", k=1, exclude_train_positives=True)
    without = evaluate(Fixed(), data, "test", k=1, exclude_train_positives=False)
    s0 = with_ex["scenarios"]["s0"]
    assert s0["hr@1"] == pytest.approx(s0["coverage"])     # every target in the corpus ranks first
    assert without["hr@1"] < with_ex["hr@1"]


def test_hr_matches_tfrs_brute_force(data):
    """HR@K from ranks (no exclusions) == whether tfrs' BruteForce top-K index returns the target."""
    rng = np.random.default_rng(1)
    S, k = data.num_scenarios, 10
    item_vec = rng.normal(size=(data.num_items, 6)).astype(np.float32)
    user_vec = rng.normal(size=(data.num_users, 6)).astype(np.float32)

    class Dot:
        def scores(self, s, corpus, rows):
            return user_vec[rows["user_id"]] @ item_vec[corpus].T

    res = evaluate(Dot(), data, "test", k=k, exclude_train_positives=False)
    for s, name in enumerate(data.scenario_names):
        corpus, q = data.corpus(s), data.positives("test", s)
        index = tfrs.layers.factorized_top_k.BruteForce(k=k)
        index.index(tf.constant(item_vec[corpus]), tf.constant(corpus))
        _, top = index(tf.constant(user_vec[q["user_id"]]))
        hits = (top.numpy() == q["item"][:, None]).any(axis=1)
        assert res["scenarios"][name][f"hr@{k}"] == pytest.approx(hits.mean())


def test_popularity_reference(data):
    res = evaluate(PopularityScorer(data), data, "test", k=20)
    n = sum(v["queries"] for v in res["scenarios"].values())
    assert res["queries"] == n == len(data.queries["test"]["item"])
    random_hr = np.mean([20 / len(data.corpus(s)) for s in range(data.num_scenarios)])
    assert res["hr@20_macro"] > random_hr      # positives are popular on the planted data


def _chi2(obs: np.ndarray, weights: np.ndarray) -> float:
    want = weights / weights.sum() * obs.sum()
    return float(((obs - want) ** 2 / want).sum())


@pytest.mark.parametrize("sampler,power", [("unigram", 0.75), ("uniform", 0.0)])
def test_negative_sampler_is_exposures_to_the_power_over_the_own_scenario_corpus(data, sampler, power):
    """Eq. 11's negatives ([23]: word2vec): item i of the example's scenario corpus with probability ~
    exposures[i, s]^0.75 (uniform: ^0), nothing outside that corpus; chi-square of 12,000 draws per scenario."""
    model = trainer.build("dssm", data.schema, {"negative_sampler": sampler})
    assert model.sampler_power == power
    tf.random.set_seed(0)
    S = data.num_scenarios
    row = np.repeat(np.arange(S), 40)
    logits = tf.constant(data.negative_logits(model.sampler_power))
    draws = sample_negatives(logits, tf.constant(row, tf.int64), 300, seed=3).numpy().reshape(len(row), 300)
    for s in range(S):
        got, corpus = draws[row == s].ravel(), data.corpus(s)
        assert np.isin(got, corpus).all() and len(corpus) > 50
        obs = np.bincount(np.searchsorted(corpus, got), minlength=len(corpus))
        exposures, dof = data.exposures[corpus, s].astype(np.float64), len(corpus) - 1
        assert _chi2(obs, exposures ** power) < dof + 6 * np.sqrt(2 * dof)
        assert _chi2(obs, exposures ** (0.75 - power)) > dof + 6 * np.sqrt(2 * dof)   # not the other sampler
    # the training batches: each example's negatives from its own scenario's corpus (mix), or from the one
    # scenario's (single-scenario training)
    batch = next(iter(data.finetune_dataset(64, 3, seed=0, power=power)[0]))
    neg = batch["neg_id"].numpy().reshape(64, 3)
    for s, ids in zip(batch["request"]["scenario"].numpy(), neg):
        assert np.isin(ids, data.corpus(s)).all()
    one = next(iter(data.finetune_dataset(64, 3, seed=0, scenario=1, power=power)[0]))
    assert np.isin(one["neg_id"].numpy(), data.corpus(1)).all() and (one["request"]["scenario"].numpy() == 1).all()


def weights(model):
    """name -> value of every model weight (what the checkpoints hold: no optimizer or loss trackers)."""
    return {v.name: v.numpy().copy() for layer in model.layers if not isinstance(layer, tf.keras.metrics.Metric)
            for v in layer.variables}


@pytest.mark.slow
def test_finetune_starts_from_pretrained_weights(synth_dir, tmp_path, monkeypatch, data):
    seen = {}
    real = trainer.finetune

    def spy(model, cfg, data_, scenario=None, log=print):
        seen["before"] = weights(model)
        return real(model, cfg, data_, scenario, log)

    monkeypatch.setattr(trainer, "finetune", spy)
    params = {"layers": 1, "dim": 8, "aux_hidden": [8], "seq_pooling": "mean"}
    cfg = quick("sass", params, pretrain=True)
    out = str(tmp_path / "run")
    summary = trainer.train(cfg, synth_dir, out, log=lambda m: None, data=data)
    pre = summary["history"]["all"]["pretrain"]
    assert pre["restored_from"] == os.path.join(out, "pretrain", "ckpt") and pre["pairs"]["user"] > 0
    # the weights fine-tuning started from are exactly the pre-trained checkpoint ...
    restored = trainer.new_model(cfg, data)
    fresh = weights(restored)
    trainer.restore_weights(restored, pre["restored_from"])
    after = weights(restored)
    assert list(after) == list(seen["before"]) and len(after) > 20
    for name, value in after.items():
        np.testing.assert_array_equal(seen["before"][name], value, err_msg=name)
    # ... which pre-training moved away from an initialisation, and fine-tuning moved on from
    emb = next(n for n in fresh if "emb_item_id" in n)
    assert not np.allclose(fresh[emb], seen["before"][emb])
    final = trainer.new_model(cfg, data)
    trainer.restore_weights(final, os.path.join(out, "final", "ckpt"))
    changed = [n for n, v in weights(final).items() if not np.allclose(v, seen["before"][n])]
    assert any("user_tower" in n for n in changed) and any("item_tower" in n for n in changed)
    # a checkpoint of another architecture is refused, not half-restored
    other = trainer.new_model(quick("sass", {**params, "layers": 2}), data)
    with pytest.raises(AssertionError):
        trainer.restore_weights(other, pre["restored_from"])


@pytest.mark.parametrize("model,params,mode", [
    ("dssm", {"hidden": [16], "negative_sampler": "unigram"}, "mix"),
    pytest.param("youtubednn", {"hidden": [16]}, "single", marks=pytest.mark.slow),
    ("sass", {"gate": "simnet", "item_per_scenario": False, "bias_fusion": False, "beta": 0.0, "dim": 8,
              "layers": 1, "seq_pooling": "mean", "finetune_loss": "softmax"}, "mix"),
    ("sass", {"dim": 8, "layers": 2, "global_hidden": [16], "seq_pooling": "mean", "gate_init": "transfer",
              "pairwise_form": "softplus", "pairwise_scale": 10.0}, "mix"),
    ("sass", {"dim": 8, "layers": 1, "seq_pooling": "mean", "gate_init": "transfer", "negatives_from": "batch",
              "pairwise_form": "softplus", "pairwise_scale": 10.0}, "mix"),
    pytest.param("dssm", {"hidden": [16], "negatives_from": "batch"}, "single", marks=pytest.mark.slow),
])
def test_models_train_and_reevaluate(synth_dir, tmp_path, data, model, params, mode):
    cfg = quick(model, params, epochs=3, mode=mode, learning_rate=0.01)
    out = str(tmp_path / model)
    summary = trainer.train(cfg, synth_dir, out, log=lambda m: None, data=data)
    res = summary["metrics"]
    assert set(res["scenarios"]) == set(data.scenario_names) and res["queries"] > 100
    assert res["mode"] == mode and not os.path.exists(os.path.join(out, "pretrain"))
    if mode == "single":
        assert sorted(os.listdir(out)) == sorted(["history.json", "metrics.json", "run.yaml", "schema.yaml"]
                                                 + [f"scenario-{s}" for s in data.scenario_names])
    random_hr = np.mean([20 / len(data.corpus(s)) for s in range(data.num_scenarios)])
    assert res["hr@20_macro"] > random_hr
    again = trainer.evaluate_run(out, synth_dir)[model]      # restored weights score the same
    assert again["hr@20"] == pytest.approx(res["hr@20"]) and again["ndcg@20"] == pytest.approx(res["ndcg@20"])
    with pytest.raises(FileExistsError, match="finished run"):
        trainer.train(cfg, synth_dir, out, data=data)


@pytest.mark.parametrize("mode", ["mix", "single"])
def test_early_stopping_keeps_the_best_validation_epoch(synth_dir, tmp_path, data, mode):
    cfg = quick("dssm", {"hidden": [16]}, epochs=4, mode=mode, learning_rate=0.05, early_stopping_patience=1)
    out = str(tmp_path / "run")
    history = trainer.train(cfg, synth_dir, out, log=lambda m: None, data=data)["history"]
    valid = trainer.evaluate_run(out, synth_dir, split="valid")["dssm"]
    units = ["all"] if mode == "mix" else data.scenario_names
    for unit in units:
        ft = history[unit]["finetune"]
        seen = [row["val_hr@20"] for row in ft["epochs"]]
        es = ft["early_stopping"]
        assert es["best"] == max(seen) and es["best_epoch"] == int(np.argmax(seen)) + 1
        assert len(seen) == 4 or len(seen) == es["best_epoch"] + 1      # stopped one epoch after the best
        assert len(es["scenarios"]) == len(seen) and set(es["scenarios"][0]) == (
            set(data.scenario_names) if unit == "all" else {unit})
        # the saved weights are the best epoch's: they score its validation HR again (a single-scenario
        # model is validated on its own scenario's queries only)
        again = valid["hr@20"] if unit == "all" else valid["scenarios"][unit]["hr@20"]
        assert again == pytest.approx(es["best"])


def test_early_stopping_needs_validation_positives(synth_dir, tmp_path, data):
    from dataclasses import replace

    cfg = quick("dssm", {"hidden": [16]}, early_stopping_patience=1)
    test_only = replace(data, queries={"test": data.queries["test"]})
    with pytest.raises(ValueError, match=r"split\(s\) \['valid'\] were not loaded"):
        trainer.train(cfg, synth_dir, str(tmp_path / "a"), data=test_only)
    no_positives = replace(data, queries={"test": data.queries["test"], "valid": {}})
    with pytest.raises(ValueError, match="valid: no positive rows to rank"):
        trainer.train(cfg, synth_dir, str(tmp_path / "b"), data=no_positives)
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_sass_scenario_l2_penalises_the_scenario_weights_distance_to_their_start(data):
    """``scenario_l2``: fine-tuning loss = eq. (13) + l2 * sum ||w - w_start||^2 over exactly the stacked
    per-scenario weights of both towers (W_0, b_0, gate units, W_o), anchored when fine-tuning starts."""
    params = {**TINY, "dim": 8, "layers": 2, "aux_hidden": [8], "seq_pooling": "mean", "gate_init": "transfer",
              "pairwise_form": "softplus", "pairwise_scale": 10.0, "negatives": 2, "scenario_l2": 0.5,
              "s0_init": "zeros", "aux_init": "zeros"}
    cfg = quick("sass", params)
    model = trainer.new_model(cfg, data)
    S = data.num_scenarios
    sw = model.scenario_weights()
    names = sorted(v.name.split("/")[-1].split(":")[0] for v in sw)
    per_tower = ["W_0", "b_0"] + ["W_br", "W_bz", "W_h", "W_r", "W_z"] * 2 + ["W_o"]
    assert names == sorted(per_tower * 2)
    assert all(v.shape[0] == S for v in sw)
    # every other stacked [S, ...] weight of the towers is not scenario-specific (none is left out)
    ids = {id(v) for v in sw}
    others = [v.name for t in (model.user_tower, model.item_tower) for v in t.trainable_weights
              if id(v) not in ids and "ml_sat" in v.name and "global" not in v.name]
    assert others == []
    batch = next(iter(data.finetune_dataset(32, 2, seed=0)[0]))
    model.start_finetune()
    rng = np.random.default_rng(1)
    moved = [v.numpy() + 0.1 * rng.normal(size=v.shape).astype(np.float32) for v in sw]
    start = [v.numpy() for v in sw]
    for v, m in zip(sw, moved):
        v.assign(m)
    losses = model.compute_losses(batch, training=False)
    logs = {k: float(v) for k, v in losses.items()}
    want = sum(((m.astype(np.float64) - a) ** 2).sum() for m, a in zip(moved, start))
    assert logs["scenario_l2"] == pytest.approx(want, rel=1e-4)
    assert float(model.total_loss(losses)) == pytest.approx(
        logs["scenario_loss"] + logs["global_loss"] + 0.5 * want, rel=1e-4)
    off = trainer.new_model(quick("sass", {**params, "scenario_l2": 0.0}), data)
    off.start_finetune()
    assert "scenario_l2" not in off.finetune_losses(batch, training=False)


@pytest.mark.parametrize("loss", ["pairwise", "pairwise_logq", "softmax"])
def test_sass_in_batch_negatives(data, loss):
    """``negatives_from: batch``: the batches carry no sampled negatives; eq. (11) ranks each user's positive
    against the other positives of the batch *in the user's scenario*, eq. (12) on the global vectors; the
    same item is never a negative; the softmax loss subtracts log pos_prob (YoutubeDNN's logQ)."""
    params = {**TINY, "dim": 8, "layers": 2, "aux_hidden": [8], "seq_pooling": "mean", "gate_init": "transfer",
              "pairwise_form": "softplus", "pairwise_scale": 10.0, "negatives_from": "batch",
              "finetune_loss": loss.replace("_logq", ""), "pairwise_logq": loss == "pairwise_logq", "beta": 0.5}
    model = trainer.new_model(quick("sass", params), data)
    assert model.negatives == 0 and model.needs_probability
    batch = next(iter(data.finetune_dataset(64, model.negatives, seed=0, with_probability=True)[0]))
    assert "neg" not in batch
    losses = model.compute_losses(batch, training=False)
    logs = {k: float(v) for k, v in losses.items()}
    e_u, g_u = (t.numpy() for t in model.user_towers(batch["request"]))
    e_p, g_p = (t.numpy() for t in model.item_towers(batch["pos"]))
    s, ids = batch["request"]["scenario"].numpy(), batch["pos_id"].numpy()
    log_q = np.log(batch["pos_prob"].numpy())
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)

    def np_loss(cos):
        terms = []
        for b in range(len(ids)):
            neg = ids != ids[b]
            if loss == "pairwise":
                terms.extend(np.log1p(np.exp(10 * (cos[b, neg] - cos[b, b]))))
            elif loss == "pairwise_logq":    # scores 10 cos - log q
                terms.extend(np.log1p(np.exp(10 * (cos[b, neg] - cos[b, b]) - (log_q[neg] - log_q[b]))))
            else:
                logits = np.concatenate([[10 * cos[b, b] - log_q[b]], 10 * cos[b, neg] - log_q[neg]])
                terms.append(np.log(np.exp(logits).sum()) - logits[0])
        return np.mean(terms)

    u = unit(e_u[np.arange(len(s)), s])
    scen_cos = np.einsum("bd,jbd->bj", u, unit(e_p[:, s]))       # item j in user b's scenario
    assert logs["scenario_loss"] == pytest.approx(np_loss(scen_cos), rel=1e-4)
    assert logs["global_loss"] == pytest.approx(np_loss(unit(g_u) @ unit(g_p).T), rel=1e-4)
    assert float(model.total_loss(losses)) == pytest.approx(logs["scenario_loss"] + 0.5 * logs["global_loss"],
                                                            rel=1e-5)


@pytest.mark.parametrize("on", [False, True])
def test_sass_global_scenario_input(data, on):
    """``global_scenario_input``: the user-side g_T depends on the request's scenario (embedding + the
    user's statistics there) exactly when the switch is on; the item side's g_T never does."""
    params = {**TINY, "dim": 8, "layers": 2, "aux_hidden": [8], "seq_pooling": "mean",
              "global_scenario_input": on}
    model = trainer.new_model(quick("sass", params), data)
    rows = {k: v[:16] for k, v in data.train.items()}
    req = data.numpy_request(rows)
    other = dict(req, scenario=(req["scenario"] + 1) % data.num_scenarios)
    g1, g2 = model.user_towers(req)[1].numpy(), model.user_towers(other)[1].numpy()
    assert (not np.allclose(g1, g2)) == on
    width = model.user_tower.mlsat.global_net[0].kernel.shape[0]
    off = trainer.new_model(quick("sass", {**params, "global_scenario_input": False}), data)
    extra = model.embedding.scenario_table.output_dim + 3 if on else 0
    assert width == off.user_tower.mlsat.global_net[0].kernel.shape[0] + extra
    assert model.item_tower.mlsat.global_net[0].kernel.shape == off.item_tower.mlsat.global_net[0].kernel.shape


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown parameter"):
        quick("sass", {"gates": "sass"})
    with pytest.raises(ConfigError, match="no pre-training stage"):
        quick("dssm", pretrain=True)
    with pytest.raises(ConfigError, match="multi-scenario model"):
        quick("sass", mode="single")
    with pytest.raises(ConfigError, match="parameter 'gate' must be sass, none, product, sigmoid or simnet .*got 'cross'"):
        trainer.build("sass", _schema(), {"gate": "cross"})
    with pytest.raises(ConfigError, match="pairwise_scale"):
        trainer.build("sass", _schema(), {"pairwise_scale": 0.0})
    with pytest.raises(ConfigError, match="parameter 'pairwise_form' must be printed or softplus .*got 'hinge'"):
        trainer.build("sass", _schema(), {"pairwise_form": "hinge"})
    with pytest.raises(ConfigError, match="parameter 'gate_init' must be glorot or transfer .*got 'ones'"):
        trainer.build("sass", _schema(), {"gate_init": "ones"})
    with pytest.raises(ConfigError, match="parameter 's0_init' must be glorot or zeros .*got 'ones'"):
        trainer.build("sass", _schema(), {"s0_init": "ones"})
    with pytest.raises(ConfigError, match="parameter 'aux_init' must be glorot or zeros .*got 'ones'"):
        trainer.build("sass", _schema(), {"aux_init": "ones"})
    with pytest.raises(ConfigError, match="scenario_l2"):
        trainer.build("sass", _schema(), {"scenario_l2": -1.0})
    with pytest.raises(ConfigError, match="gate 'product' with s0_init 'zeros'"):
        trainer.build("sass", _schema(), {"gate": "product", "s0_init": "zeros"})
    with pytest.raises(ConfigError, match="parameter 'negatives_from' must be sampled, shared or batch .*got 'random'"):
        trainer.build("dssm", _schema(), {"negatives_from": "random"})
    with pytest.raises(ConfigError, match="pairwise_logq .* needs negatives_from batch"):
        trainer.build("sass", _schema(), {"pairwise_logq": True, "negatives_from": "shared"})
    with pytest.raises(ConfigError, match="sampler_power must be >= 0"):
        trainer.build("sass", _schema(), {"sampler_power": -0.5})
    with pytest.raises(ConfigError, match="parameter 'negative_sampler' must be unigram or uniform .*got 'zipf'"):
        trainer.build("dssm", _schema(), {"negative_sampler": "zipf"})
    with pytest.raises(ConfigError, match="unknown parameter"):    # YoutubeDNN samples no negatives
        trainer.build("youtubednn", _schema(), {"negative_sampler": "unigram"})
    with pytest.raises(ConfigError, match="unknown retrieval model"):
        quick("mind")
    with pytest.raises(ConfigError, match="early_stopping_patience must be an integer >= 0"):
        quick("dssm", early_stopping_patience=-1)
    with pytest.raises(ConfigError, match="validation_split 'test' must be a held-out split"):
        quick("dssm", early_stopping_patience=2, validation_split="test")


def _schema():
    from tfmsr.data.synth import synth_schema

    return synth_schema(3, 50, 40, 5, 10, 8)


@pytest.mark.slow
def test_cli_pairs_train_evaluate(synth_dir, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: sass, params: {embedding_dim: 8, dim: 8, layers: 1, seq_pooling: mean}}\n"
                   "data: {batch_size: 128}\npretrain: {enabled: true, epochs: 1, batch_size: 128}\n"
                   "train: {epochs: 1}\n")
    pairs = str(tmp_path / "pairs")
    assert cli(["retrieval", "pairs", "--data", synth_dir, "--out", pairs]) == 0
    made = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert made["user"]["pairs"] > 0 and made["item"]["pairs"] > 0
    assert cli(["retrieval", "pairs", "--data", synth_dir, "--out", pairs]) == 2      # exists: one clear error
    assert "already exists" in capsys.readouterr().err
    run = str(tmp_path / "run")
    assert cli(["retrieval", "train", "--config", str(cfg), "--data", synth_dir, "--model-dir", run,
                "--set", f"pretrain.pairs={pairs}"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["model"] == "sass" and 0 <= out["hr@20"] <= 1 and not os.path.exists(os.path.join(run, "pairs"))
    assert cli(["retrieval", "evaluate", "--model-dir", run, "--popularity", "--k", "10"]) == 0
    table = capsys.readouterr().out
    assert "sass" in table and "popularity" in table and "s4 hr" in table
    assert cli(["retrieval", "train", "--config", str(cfg), "--data", synth_dir, "--model-dir", run,
                "--set", "model.params.gate=cross"]) == 2


@pytest.mark.slow
def test_movielens_pairs_are_item_pairs_only(tmp_path):
    """MovieLens scenarios are user age groups: no user is in two scenarios, items are."""
    from tfmsr.data.convert.movielens import convert

    out = str(tmp_path / "ml")
    convert(datasets_dir("ml-100k"), out)
    s = write_pairs(out, str(tmp_path / "pairs"))
    assert s["user"]["pairs"] == 0 and s["user"]["keys_in_2plus_scenarios"] == 0
    assert s["item"]["pairs"] > 1000


@pytest.mark.slow
def test_export_user_item_topk_servables_load_without_tfmsr(synth_dir, tmp_path, data, capsys):
    """`tfmsr export` of a SASS run: per scenario a user tower, an item tower (+ corpus) and a top-K
    servable; stock ops only; a python that imports only TensorFlow reproduces the in-process vectors
    (named inputs and serialized tf.Examples) and the exact top-K; assets, warm-up, versions."""
    from raw_serving import PY_FUNC_OPS, graph_ops, run_fresh, sample_rows

    from tfmsr.serving.warmup import read_warmup

    run = str(tmp_path / "run")
    cfg = quick("sass", {"layers": 1, "dim": 8, "aux_hidden": [8], "seq_pooling": "mean"})
    trainer.train(cfg, synth_dir, run, log=lambda m: None, data=data)
    out = str(tmp_path / "export" / "sass")
    assert cli(["export", "--model-dir", run, "--out", out, "--k", "5", "--scenarios", "s2,s4"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    kinds = ("user", "item", "topk")
    assert res["version"] == 1 and res["k"] == 5
    assert sorted(res["servables"]) == sorted(f"{k}_{s}" for k in kinds for s in ("s2", "s4"))
    assert sorted(os.listdir(out)) == sorted(list(res["servables"]) + ["models.config"])
    assert f'name: "sass_topk_s4"' in open(os.path.join(out, "models.config")).read()
    # in-process reference: the trained model on the first test rows, each exported scenario fixed
    model = trainer.load_trained(run, data=data)[0][0]
    x, raw = sample_rows(synth_dir, data.schema, n=64)
    want = {}
    for s, name in ((2, "s2"), (4, "s4")):
        req = data.with_user_stats({**{c: tf.constant(x[c]) for c in data.request_names},
                                    data.schema.scenario.name: tf.fill([64], tf.constant(s, tf.int64))})
        items = data.with_item_stats({c: tf.constant(x[c]) for c in data.item_names}, tf.constant(data.item_stats))
        want[f"user_{name}"] = tf.math.l2_normalize(model.user_vectors(req), -1).numpy()
        want[f"item_{name}"] = tf.math.l2_normalize(model.item_vectors(items, s), -1).numpy()
    servables = {sv: os.path.join(out, sv, "1") for sv in res["servables"]}
    for path in servables.values():
        assert not graph_ops(path) & PY_FUNC_OPS
    got = run_fresh(servables, x, raw, tmp_path)   # asserts every op type is registered in core TensorFlow
    for sv, vec in want.items():
        assert vec.std() > 1e-3
        for sig in ("serving_default", "examples"):
            np.testing.assert_allclose(got[f"{sv}/{sig}/vector"], vec, atol=1e-5, rtol=0, err_msg=f"{sv}/{sig}")
    for s, name in ((2, "s2"), (4, "s4")):
        d = os.path.join(out, f"item_{name}", "1", "assets")
        corpus = np.load(os.path.join(d, "corpus.npz"))
        np.testing.assert_array_equal(corpus["item_ids"], data.corpus(s))
        scores = want[f"user_{name}"] @ corpus["vectors"].T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :5]
        for sig in ("serving_default", "examples"):
            np.testing.assert_array_equal(got[f"topk_{name}/{sig}/item_ids"], corpus["item_ids"][top])
            np.testing.assert_allclose(got[f"topk_{name}/{sig}/scores"], np.take_along_axis(scores, top, 1),
                                       atol=1e-5)
        meta = json.load(open(os.path.join(d, "export.json")))
        assert meta["kind"] == "item" and meta["scenario"] == name and meta["corpus_items"] == len(data.corpus(s))
        assert set(meta["inputs"]) == set(data.item_names) and set(meta["signatures"]) == {"serving_default", "examples"}
    for sv, path in servables.items():   # schema asset and warm-up requests that run against their signatures
        assert Schema.load(os.path.join(path, "assets", "schema.yaml")) == data.schema
        m = tf.saved_model.load(path)
        requests = read_warmup(path)
        assert {sig for sig, _ in requests} == set(m.signatures) == {"serving_default", "examples"}
        for sig, inputs in requests:
            outputs = m.signatures[sig](**{k: tf.constant(v) for k, v in inputs.items()})
            assert next(iter(outputs.values())).shape[0] == 4
    # versions are never overwritten; the next export is version 2; ranking-only options are refused
    assert cli(["export", "--model-dir", run, "--out", out, "--version", "1", "--k", "0"]) == 2
    assert "version 1 already exists" in capsys.readouterr().err
    assert cli(["retrieval", "export", "--model-dir", run, "--out", out, "--k", "0", "--scenarios", "s0"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["version"] == 2 and sorted(again["servables"]) == ["item_s0", "user_s0"]
    assert not [f for f in os.listdir(out) if f.startswith(".")]
    assert cli(["export", "--model-dir", run, "--out", out, "--scenarios", "s9"]) == 2
    assert "unknown scenario(s) ['s9']" in capsys.readouterr().err


def test_benchmark_aggregate_and_markdown():
    from pipelines.retrieval_benchmark import VARIANTS, aggregate, markdown, row_config, slug

    def run(hr):
        return {"hr@20": hr, "ndcg@20": hr / 2, "hr@20_macro": hr, "ndcg@20_macro": hr / 2, "seconds": 10.0,
                "scenarios": {"a": {"hr@20": hr, "ndcg@20": hr / 2}, "b": {"hr@20": 2 * hr, "ndcg@20": hr}}}

    agg = aggregate([run(0.1), run(0.2), run(0.3)], ["a", "b"], 20)
    assert agg["hr@20"] == pytest.approx(0.2) and agg["hr@20_std"] == pytest.approx(0.1)   # sample std
    assert agg["scenarios"]["b"]["ndcg@20"] == pytest.approx(0.2) and agg["seeds"] == 3
    one = aggregate([run(0.1)], ["a", "b"], 20)
    assert one["hr@20_std"] != one["hr@20_std"]                                             # nan: one seed
    info = {s: {"train_positives": n, "test_queries": 5, "corpus": 9, "coverage": 1.0} for s, n in (("a", 7), ("b", 3))}
    md = markdown({"k": 20, "seeds": [0, 1, 2], "datasets": {"toy": {
        "data": "/d", "scenarios": ["a", "b"], "scenario_info": info, "pairs": None,
        "rows": {"SASS": {"source": "Table 2", "aggregate": agg}, "DSSM mix": {"source": "Table 2", "aggregate": None}}}}})
    assert "| SASS | Table 2 | 0.2000 ± 0.1000 | 0.4000 ± 0.2000 | 0.2000 ± 0.1000 | 10 | 3 |" in md   # HR@20
    assert "| SASS | Table 2 | 0.1000 ± 0.0500 | 0.2000 ± 0.1000 | 0.1000 ± 0.0500 | 10 | 3 |" in md   # NDCG@20
    assert "sparsest scenario: **b**" in md and "DSSM mix" not in md
    # every row's config resolves, names are unique, ablations are the switches they claim
    assert len({slug(v[0]) for v in VARIANTS}) == len(VARIANTS)
    cfgs = {name: row_config(c, o, [], 1, "/pairs") for name, c, o, _ in VARIANTS}
    assert cfgs["SASS"]["pretrain"]["enabled"] and not cfgs["SASS-Base"]["pretrain"]["enabled"]
    assert cfgs["SASS"]["pretrain"]["pairs"] == "/pairs" and cfgs["SASS"]["train"]["seed"] == 1
    assert cfgs["SASS*"]["model"]["params"]["gate"] == "none" and cfgs["SASS-Base 4 layers"]["model"]["params"]["layers"] == 4
    assert cfgs["No Global Auxiliary Task"]["model"]["params"]["beta"] == 0
    assert cfgs["DSSM single"]["train"]["mode"] == "single" and cfgs["YoutubeDNN mix"]["train"]["mode"] == "mix"
    printed = cfgs["SASS-Base eq. 11 as printed + glorot init"]["model"]["params"]
    assert (printed["pairwise_form"], printed["pairwise_scale"], printed["gate_init"]) == ("printed", 1, "glorot")
    assert cfgs["SASS-Base"]["model"]["params"]["gate_init"] == "transfer"
    # eq. 11's negatives: SASS / SASS-Base ship the logQ-corrected in-batch ones, DSSM uniform sampled ones; the
    # unigram^0.75 rows differ from the uniform sampled rows in the sampler only
    for row in ("SASS", "SASS-Base"):
        params = cfgs[row]["model"]["params"]
        shipped = (params["negatives_from"], params["pairwise_logq"], params["finetune_loss"])
        assert shipped == ("batch", True, "pairwise")
        sampled = cfgs[f"{row} 4 sampled negatives"]["model"]["params"]
        assert (sampled["negatives_from"], sampled["pairwise_logq"], sampled["negatives"]) == ("sampled", False, 4)
        assert cfgs[f"{row} 256 shared negatives"]["model"]["params"]["negatives_from"] == "shared"
    for row, uniform in (("SASS", "SASS 4 sampled negatives"), ("SASS-Base", "SASS-Base 4 sampled negatives"),
                         ("DSSM mix", "DSSM mix")):
        paper, unigram = (json.loads(json.dumps(cfgs[r])) for r in (uniform, f"{row} unigram^0.75 negatives"))
        assert paper["model"]["params"].get("negatives_from", "sampled") == "sampled"
        assert paper["model"]["params"].pop("negative_sampler") == "uniform"
        assert unigram["model"]["params"].pop("negative_sampler") == "unigram" and unigram == paper
    # SASS and SASS-Base: the same settings, pre-training on / off (the pre-training comparison holds)
    assert cfgs["SASS"]["model"] == cfgs["SASS-Base"]["model"] and cfgs["SASS"]["train"] == cfgs["SASS-Base"]["train"]
    # configs/sass_small_data.yaml (the best SASS row) is the paper's sass.yaml with exactly the switches of
    # its SASS-Base row: the two rows differ in pre-training only
    from pipelines.retrieval_benchmark import IN_BATCH, SMALL_DATA, SOFTMAX, _comparable
    small = "SASS + L2-SP 2 layers 64-wide global in-batch softmax (not in paper)"
    assert _comparable(cfgs[small]) == _comparable(row_config("sass", SMALL_DATA + [SOFTMAX, IN_BATCH], [], 1, "/pairs"))
    base = cfgs["SASS-Base + L2-SP 2 layers 64-wide global in-batch softmax (not in paper)"]
    assert base["model"] == cfgs[small]["model"] and cfgs[small]["pretrain"]["enabled"]
    assert not base["pretrain"]["enabled"] and base["train"] == cfgs[small]["train"]


def test_benchmark_relative_gains_are_paired_by_seed_against_the_best_baseline():
    from pipelines.retrieval_benchmark import aggregate, base_row, markdown, relative_gains

    def run(seed, a, b):   # HR@20 in scenarios a and b; overall = their mean; NDCG = HR / 2
        return {"seed": seed, "hr@20": (a + b) / 2, "ndcg@20": (a + b) / 4, "hr@20_macro": 0, "ndcg@20_macro": 0,
                "scenarios": {"a": {"hr@20": a, "ndcg@20": a / 2}, "b": {"hr@20": b, "ndcg@20": b / 2}}}

    def row(config, source, runs):
        return {"config": config, "source": source, "per_seed": runs, "aggregate": aggregate(runs, ["a", "b"], 20)}

    pop = [run(None, .1, .1)]
    rows = {"popularity": {"source": "reference", "per_seed": pop, "aggregate": aggregate(pop, ["a", "b"], 20)},
            "SASS": row("sass", "Table 2", [run(0, .44, .22), run(1, .50, .30), run(2, .60, .10)]),
            "DSSM mix": row("dssm", "Table 2", [run(0, .40, .20), run(1, .40, .20)]),
            "YoutubeDNN mix": row("youtubednn", "Table 2", [run(0, .20, .10), run(1, .30, .10)]),
            "DSSM mix in-batch softmax (not in DSSM)": row("dssm", "extra", [run(0, .9, .9)]),
            "YoutubeDNN single": {"config": "youtubednn", "source": "Table 2", "per_seed": [], "aggregate": None}}
    d = {"data": "/d", "scenarios": ["a", "b"], "pairs": None, "rows": rows,
         "scenario_info": {s: {"train_positives": n, "test_queries": 5, "corpus": 9, "coverage": 1.0}
                           for s, n in (("a", 7), ("b", 3))}}
    # the best of the paper's baselines run, by overall HR@20 (the extra control is not one of them)
    assert base_row(d, "best-baseline", 20) == "DSSM mix"
    assert base_row(d, "YoutubeDNN single", 20) is None and base_row(d, "YoutubeDNN mix", 20) == "YoutubeDNN mix"
    d["base"] = "DSSM mix"
    d["gains"] = gains = relative_gains(d, "DSSM mix", 20)
    assert set(gains) == {"SASS", "YoutubeDNN mix", "DSSM mix in-batch softmax (not in DSSM)"}
    hr = gains["SASS"]["hr@20"]   # seeds 0 and 1 only (DSSM has no seed 2): a +10 % and +25 %, b +10 % and +50 %
    assert hr["a"][:3] == pytest.approx((17.5, np.std([10, 25], ddof=1), 2))
    assert hr["b"][0] == pytest.approx(30.0) and hr["all"][0] == pytest.approx(100 * (0.33 / 0.3 - 1 + 0.4 / 0.3 - 1) / 2)
    assert gains["SASS"]["ndcg@20"]["b"][0] == pytest.approx(30.0)
    md = markdown({"k": 20, "seeds": [0, 1, 2], "datasets": {"toy": d}})
    assert "Relative gain in HR@20 over `DSSM mix`" in md
    assert "| SASS | +17.5 ± 10.6 | +30.0 ± 28.3 | +21.7 ± 16.5 | b | 2 |" in md
    assert "| DSSM mix in-batch softmax (not in DSSM) | +125.0 | +350.0 | +200.0 | b | 1 |" in md


@pytest.mark.slow
def test_benchmark_rows_without_pretraining_pairs_are_not_applicable():
    """MovieLens has item pairs only: "Single Item Embedding" (no item-side task) is reported n/a, not run."""
    from pipelines.retrieval_benchmark import VARIANTS, markdown, not_applicable, row_config

    cfgs = {name: row_config(c, o, [], 0, "/pairs") for name, c, o, _ in VARIANTS}
    items_only = {"user": {"pairs": 0, "keys_in_2plus_scenarios": 0}, "item": {"pairs": 50, "keys_in_2plus_scenarios": 9}}
    both = {"user": {"pairs": 3, "keys_in_2plus_scenarios": 2}, "item": items_only["item"]}
    why = not_applicable(cfgs["Single Item Embedding"], items_only)
    assert why == "no pre-training pairs for its tasks (user pairs 0)"
    assert not_applicable(cfgs["Single Item Embedding"], both) is None
    assert not_applicable(cfgs["SASS"], items_only) is None and not_applicable(cfgs["SASS-Base"], None) is None
    zeros = row_config("sass_base", ["model.params.gate=product"], ["model.params.s0_init=zeros"], 0, None)
    assert not_applicable(zeros, None, _schema()).startswith("config refused (retrieval model 'sass': gate 'product' with s0_init")
    assert not_applicable(cfgs["SASS*+Production Gate"], None, _schema()) is None
    info = {"a": {"train_positives": 7, "test_queries": 5, "corpus": 9, "coverage": 1.0}}
    md = markdown({"k": 20, "seeds": [0], "datasets": {"ml": {
        "data": "/d", "scenarios": ["a"], "scenario_info": info, "pairs": items_only,
        "rows": {"Single Item Embedding": {"source": "Table 5", "aggregate": None, "not_applicable": why}}}}})
    assert f"| Single Item Embedding | Table 5 | n/a: {why} | | | |" in md


def test_benchmark_reuses_a_run_from_before_a_new_switch_with_its_default():
    """A finished run whose config lacks a model param added later (at a default that keeps the old
    behaviour) is the same run; a non-default value of that param is not."""
    from pipelines.retrieval_benchmark import _comparable, row_config

    cfg = row_config("dssm", [], [], 0, None)
    old = json.loads(json.dumps(cfg))
    del old["model"]["params"]["negatives_from"]
    assert _comparable(old) == _comparable(cfg)
    batch = row_config("dssm", ["model.params.negatives_from=batch"], [], 0, None)
    assert _comparable(batch) != _comparable(cfg)
    # the sampler matters to sampled negatives only
    flip = {"unigram": "uniform", "uniform": "unigram"}[cfg["model"]["params"]["negative_sampler"]]
    other = [f"model.params.negative_sampler={flip}"]
    assert _comparable(row_config("dssm", other, [], 0, None)) != _comparable(cfg)
    assert _comparable(row_config("dssm", ["model.params.negatives_from=batch"] + other, [], 0, None)) == _comparable(batch)


def test_sass_shared_negatives_rank_their_scenario_pool(data):
    """``negatives_from: shared``: a batch carries ``negatives`` items per scenario, pool r drawn from scenario
    r's corpus; eq. (11) ranks each user's positive against its own scenario's pool (the pool's vectors in
    that scenario), eq. (12) against the pool's global vectors; one scenario's model gets one pool."""
    m = 5
    params = {**TINY, "dim": 8, "layers": 2, "aux_hidden": [8], "seq_pooling": "mean", "gate_init": "transfer",
              "pairwise_form": "softplus", "pairwise_scale": 10.0, "negatives_from": "shared", "negatives": m}
    model = trainer.new_model(quick("sass", params), data)
    S = data.num_scenarios
    assert model.negatives == m and model.shared_negatives and not model.needs_probability
    batch = next(iter(data.finetune_dataset(64, m, seed=0, shared=True)[0]))
    pool = batch["neg_id"].numpy().reshape(S, m)
    for r in range(S):
        assert np.isin(pool[r], data.corpus(r)).all()
    logs = {k: float(v) for k, v in model.compute_losses(batch, training=False).items()}
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    e_u, g_u = (t.numpy() for t in model.user_towers(batch["request"]))
    e_p, g_p = (t.numpy() for t in model.item_towers(batch["pos"]))
    e_n, g_n = (t.numpy() for t in model.item_towers(batch["neg"]))
    s, rows = batch["request"]["scenario"].numpy(), np.arange(64)
    u, p = unit(e_u[rows, s]), unit(e_p[rows, s])
    n = unit(e_n.reshape(S, m, S, -1)[s, :, s])                                 # user b: pool s_b in scenario s_b
    pairwise = lambda pos, neg: np.mean(np.log1p(np.exp(10 * (neg - pos[:, None]))))
    assert logs["scenario_loss"] == pytest.approx(pairwise((u * p).sum(-1), np.einsum("bd,bmd->bm", u, n)), rel=1e-4)
    gn = unit(g_n.reshape(S, m, -1))[s]
    assert logs["global_loss"] == pytest.approx(
        pairwise((unit(g_u) * unit(g_p)).sum(-1), np.einsum("bd,bmd->bm", unit(g_u), gn)), rel=1e-4)
    one = next(iter(data.finetune_dataset(32, m, seed=0, scenario=1, shared=True)[0]))
    assert one["neg_id"].shape == (m,) and np.isin(one["neg_id"].numpy(), data.corpus(1)).all()
    single = trainer.new_model(quick("sass", params), data, scenario=1)
    assert np.isfinite(float(single.total_loss(single.compute_losses(one, training=False))))
