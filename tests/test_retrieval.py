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
from tfmsr.models.base import ConfigError
from tfmsr.retrieval import trainer
from tfmsr.retrieval.config import load_config
from tfmsr.retrieval.data import RetrievalData, iter_split
from tfmsr.retrieval.evaluation import PopularityScorer, evaluate, target_ranks
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
    scores = np.array([[0.1, 0.9, 0.5, 0.3], [0.2, 0.2, 0.8, -np.inf]])
    np.testing.assert_array_equal(target_ranks(scores, np.array([2, 0])), [1, 1])
    assert np.isinf(target_ranks(scores, np.array([-1, 1]))[0])

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
    ("dssm", {"hidden": [16]}, "mix"),
    pytest.param("youtubednn", {"hidden": [16]}, "single", marks=pytest.mark.slow),
    ("sass", {"gate": "simnet", "item_per_scenario": False, "bias_fusion": False, "beta": 0.0, "dim": 8,
              "layers": 1, "seq_pooling": "mean", "finetune_loss": "softmax"}, "mix"),
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


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown parameter"):
        quick("sass", {"gates": "sass"})
    with pytest.raises(ConfigError, match="no pre-training stage"):
        quick("dssm", pretrain=True)
    with pytest.raises(ConfigError, match="multi-scenario model"):
        quick("sass", mode="single")
    with pytest.raises(ConfigError, match="gate 'cross'"):
        trainer.build("sass", _schema(), {"gate": "cross"})
    with pytest.raises(ConfigError, match="unknown retrieval model"):
        quick("mind")


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


LOAD_WITHOUT_TFMSR = r"""
import json, sys
import numpy as np
import tensorflow as tf
root, scen, inputs = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
user = tf.saved_model.load(f"{root}/user_{scen}/1").signatures["serving_default"]
topk = tf.saved_model.load(f"{root}/topk_{scen}/1").signatures["serving_default"]
item = tf.saved_model.load(f"{root}/item_{scen}/1").signatures["serving_default"]
req = {k: tf.constant(v, tf.float32 if k in inputs["floats"] else tf.int64) for k, v in inputs["request"].items()}
its = {k: tf.constant(v, tf.float32 if k in inputs["floats"] else tf.int64) for k, v in inputs["items"].items()}
top = topk(**req)
print(json.dumps({"tfmsr_loaded": "tfmsr" in sys.modules, "vector": user(**req)["vector"].numpy().tolist(),
                  "item_vector": item(**its)["vector"].numpy().tolist(),
                  "item_ids": top["item_ids"].numpy().tolist(), "scores": top["scores"].numpy().tolist()}))
"""


@pytest.mark.slow
def test_export_user_item_topk_servables_load_without_tfmsr(synth_dir, tmp_path, data):
    import subprocess
    import sys

    from tfmsr.retrieval.evaluation import ModelScorer
    from tfmsr.retrieval.export import export_retrieval

    run = str(tmp_path / "run")
    cfg = quick("sass", {"layers": 1, "dim": 8, "aux_hidden": [8], "seq_pooling": "mean"})
    trainer.train(cfg, synth_dir, run, log=lambda m: None, data=data)
    out = str(tmp_path / "export")
    res = export_retrieval(run, out, k=5, scenarios=["s2"], data=data, log=lambda m: None)
    assert sorted(res["servables"]) == ["item_s2", "topk_s2", "user_s2"] and os.path.isfile(res["models_config"])
    corpus = np.load(os.path.join(out, "corpus", "s2.npz"))
    np.testing.assert_array_equal(corpus["item_ids"], data.corpus(2))
    # in-process reference: the trained model's own vectors for a few test requests of scenario s2
    model = trainer.load_trained(run, data=data)[0][0]
    rows = {c: v[:4] for c, v in data.positives("test", 2).items()}
    scorer = ModelScorer(model, data)
    want_scores = scorer.scores(2, data.corpus(2), rows)
    request = {c: rows[c].tolist() for c in data.request_names}
    items = {c: v[:3].tolist() for c, v in data.numpy_items(data.corpus(2)).items() if c != "item_stats"}
    floats = [f.name for f in data.schema.of_kind("numeric")]
    path = tmp_path / "inputs.json"
    path.write_text(json.dumps({"request": request, "items": items, "floats": floats}))
    script = tmp_path / "load.py"
    script.write_text(LOAD_WITHOUT_TFMSR)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(script), out, "s2", str(path)], capture_output=True, text=True,
                          cwd=str(tmp_path), env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["tfmsr_loaded"] is False
    vec = np.array(got["vector"])
    np.testing.assert_allclose(vec @ corpus["vectors"].T, want_scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.array(got["item_vector"]), corpus["vectors"][:3], rtol=1e-4, atol=1e-5)
    top = np.argsort(-want_scores, axis=1)[:, :5]
    np.testing.assert_array_equal(np.array(got["item_ids"]), corpus["item_ids"][top])
    with pytest.raises(FileExistsError, match="never overwrite"):
        export_retrieval(run, out, version=1, scenarios=["s2"], data=data, log=lambda m: None)


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
