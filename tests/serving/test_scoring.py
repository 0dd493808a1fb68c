"""Batch scoring through an exported SavedModel: equals ``tfmsr evaluate`` row for row, output formats,
unknown scenarios and missing features counted (never silently scored), no Python model code."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from test_export import exported, expected_probs, sample_rows  # noqa: F401  (session fixture)

from tfmsr.cli import main
from tfmsr.data.layout import FEATURES
from tfmsr.data.pipeline import DataError, split_files
from tfmsr.data.tfrecord import relayout
from tfmsr.ranking.evaluate import load_trained
from tfmsr.serving.scoring import score
from tfmsr.serving.signatures import servable_names

QUIET = dict(progress=lambda s: None)


def test_score_equals_evaluate_row_for_row(exported, synth_dir, tmp_path, capsys):
    model_dir, out = exported["shared_bottom"]
    pred = str(tmp_path / "pred.csv")
    assert main(["evaluate", "--model-dir", model_dir, "--data", synth_dir, "--out", str(tmp_path / "m.json"),
                 "--predictions", pred]) == 0
    scores = str(tmp_path / "scores.parquet")
    assert main(["score", "--saved-model", out, "--input", os.path.join(synth_dir, "test", "*.tfrecord*"),
                 "--output", scores, "--keep", "user_id,scenario,click"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ev, sc = pd.read_csv(pred), pd.read_parquet(scores)
    assert list(sc.columns) == ["user_id", "scenario", "click", "prob"]
    assert summary["rows"] == summary["scored"] == len(ev) == len(sc) == 600
    assert summary["unknown_scenario"] == summary["missing_features"] == 0 and summary["examples_per_sec"] > 0
    np.testing.assert_array_equal(sc["user_id"], ev["user_id"])
    np.testing.assert_array_equal(sc["click"], ev["label"])
    np.testing.assert_allclose(sc["prob"], ev["prob"], atol=1e-5, rtol=0)


def test_csv_and_tfrecord_outputs_match_parquet(exported, synth_dir, tmp_path):
    _, out = exported["dnn"]
    test = os.path.join(synth_dir, "test")
    res = {fmt: score(out, test, str(tmp_path / f"s.{fmt}"), keep=["user_id", "oracle_p"], **QUIET)
           for fmt in ("parquet", "csv", "tfrecord")}
    assert {r["rows"] for r in res.values()} == {600}
    pq, csv = pd.read_parquet(tmp_path / "s.parquet"), pd.read_csv(tmp_path / "s.csv")
    np.testing.assert_allclose(csv["prob"], pq["prob"], atol=1e-6)
    np.testing.assert_array_equal(csv["user_id"], pq["user_id"])
    spec = {"prob": tf.io.FixedLenFeature([], tf.float32), "user_id": tf.io.FixedLenFeature([], tf.int64),
            "oracle_p": tf.io.FixedLenFeature([], tf.float32)}
    rec = tf.io.parse_example(next(iter(tf.data.TFRecordDataset(str(tmp_path / "s.tfrecord")).batch(1000))), spec)
    np.testing.assert_array_equal(rec["prob"].numpy(), pq["prob"].to_numpy(np.float32))
    np.testing.assert_array_equal(rec["user_id"].numpy(), pq["user_id"])
    np.testing.assert_array_equal(rec["oracle_p"].numpy(), pq["oracle_p"].to_numpy(np.float32))
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]


def _bad_shard(synth_dir, path, schema):
    """20 test records: rows 3-4 with an unknown scenario, row 5 without 'age', row 6 without the
    label 'click', row 7 without its behaviour sequence (an empty history: fine), row 8 with two values
    of 'user_level' and row 9 with an empty 'device' list (both: the feature is missing)."""
    raw = next(iter(tf.data.TFRecordDataset(split_files(synth_dir, "test")[0]).batch(20))).numpy()
    raw = relayout(raw, schema, FEATURES)  # one feature per column, whatever the layout of the shards
    with tf.io.TFRecordWriter(path) as w:
        for i, r in enumerate(raw):
            ex = tf.train.Example.FromString(r)
            feat = ex.features.feature
            if i in (3, 4):
                feat[schema.scenario.name].int64_list.value[:] = [schema.num_scenarios + i]
            drop = {5: "age", 6: "click", 7: "hist_item_id"}.get(i)
            if drop:
                del feat[drop]
            if i == 8:
                feat["user_level"].int64_list.value.append(1)
            if i == 9:
                del feat["device"].int64_list.value[:]
            w.write(ex.SerializeToString())
    return raw


def test_unknown_scenarios_and_missing_features_are_counted_not_scored(exported, synth_dir, synth_schema, tmp_path):
    _, out = exported["dnn"]
    shard = str(tmp_path / "bad.tfrecord")
    _bad_shard(synth_dir, shard, synth_schema)
    unscored = (3, 4, 5, 8, 9)
    # batch 4: rows 8-11 are a batch the fast dense parse rejects (several / zero values), parsed again exactly;
    # batch 1: rows 8 and 9 are two rejected batches, re-read by one reader moving forward
    for batch_size in (4096, 4, 1):
        res = score(out, shard, str(tmp_path / f"s{batch_size}.parquet"), keep=["click"], batch_size=batch_size,
                    **QUIET)
        assert (res["rows"], res["scored"], res["unknown_scenario"], res["missing_features"]) == (20, 15, 2, 3)
        assert res["missing_by_feature"] == {"age": 1, "user_level": 1, "device": 1}
        assert res["missing_keep"] == {"click": 1}
        assert res["first_unscored"] == [
            {"row": 3, "reason": "unknown_scenario"}, {"row": 4, "reason": "unknown_scenario"},
            {"row": 5, "reason": "missing age"}, {"row": 8, "reason": "missing user_level"},
            {"row": 9, "reason": "missing device"}]
        df = pd.read_parquet(tmp_path / f"s{batch_size}.parquet")
        assert df["prob"].isna().tolist() == [i in unscored for i in range(20)]
        assert df["click"].isna().tolist() == [i == 6 for i in range(20)]
    # the scored rows equal the SavedModel's own tf.Example signature on the same records
    m = tf.saved_model.load(os.path.join(out, "all", "1"))
    good = [i for i in range(20) if i not in unscored]
    recs = next(iter(tf.data.TFRecordDataset(shard).batch(20))).numpy()
    want = m.signatures["examples"](examples=tf.constant(recs[good]))["prob"].numpy()
    np.testing.assert_allclose(df["prob"].to_numpy()[good], want, atol=1e-6)

    # a scenario servable ignores the scenario value: only the records missing a feature are left unscored
    s1 = os.path.join(out, servable_names(synth_schema)[1])
    res = score(s1, shard, str(tmp_path / "s1.csv"), **QUIET)
    assert (res["rows"], res["scored"], res["unknown_scenario"], res["missing_features"]) == (20, 17, 0, 3)
    assert res["servable"] == servable_names(synth_schema)[1]


def test_scenario_servable_scores_every_row_in_its_scenario(exported, synth_dir, synth_schema, tmp_path):
    model_dir, out = exported["shared_bottom"]
    model, schema, _ = load_trained(model_dir)
    x, _ = sample_rows(synth_dir, schema, n=600)
    _, _, fixed = expected_probs(model, schema, x)
    name = servable_names(schema)[3]
    score(os.path.join(out, name, "1"), os.path.join(synth_dir, "test"), str(tmp_path / "s.parquet"), **QUIET)
    np.testing.assert_allclose(pd.read_parquet(tmp_path / "s.parquet")["prob"], fixed[3], atol=1e-5)


def test_scoring_runs_the_saved_model_not_python_model_code(exported, synth_dir, tmp_path):
    _, out = exported["dnn"]
    code = ("import sys, json\nfrom tfmsr.serving.scoring import score\n"
            f"r = score({out!r}, {os.path.join(synth_dir, 'test')!r}, {str(tmp_path / 's.csv')!r}, progress=print)\n"
            "bad = [m for m in sys.modules if m.startswith(('tfmsr.ranking', 'tfmsr.retrieval', 'tfmsr.layers', 'tfmsr.distribute'))]\n"
            "assert not bad, bad\nprint(json.dumps(r))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[score] done: 600 rows (600 scored)" in proc.stdout
    assert json.loads(proc.stdout.strip().splitlines()[-1])["scored"] == 600


def test_scoring_errors_name_the_problem(exported, synth_dir, tmp_path):
    _, out = exported["dnn"]
    test = os.path.join(synth_dir, "test")
    dest = str(tmp_path / "s.parquet")
    with pytest.raises(DataError, match="--keep hist_item_id: is a sequence"):
        score(out, test, dest, keep=["hist_item_id"], **QUIET)
    with pytest.raises(DataError, match="--keep nope: is not a column"):
        score(out, test, dest, keep=["nope"], **QUIET)
    with pytest.raises(DataError, match="no input files match"):
        score(out, str(tmp_path / "none-*.tfrecord"), dest, **QUIET)
    with pytest.raises(DataError, match="unknown output format"):
        score(out, test, str(tmp_path / "s.json"), **QUIET)
    with pytest.raises(FileNotFoundError, match="not a SavedModel"):
        score(str(tmp_path), test, dest, **QUIET)
    score(out, test, dest, **QUIET)
    with pytest.raises(FileExistsError, match="--overwrite"):
        score(out, test, dest, **QUIET)
    bad = tmp_path / "bad.tfrecord"
    ex = tf.train.Example()
    ex.features.feature["age"].float_list.value[:] = [1.5]  # int64 expected
    with tf.io.TFRecordWriter(str(bad)) as w:
        w.write(ex.SerializeToString())
    with pytest.raises(DataError, match="bad.tfrecord: record 0 has feature 'age' of the wrong type"):
        score(out, str(bad), str(tmp_path / "b.parquet"), **QUIET)
    assert not os.path.exists(tmp_path / "b.parquet") and not [f for f in os.listdir(tmp_path) if ".tmp-" in f]


def test_batches_score_the_same_rows_in_order_and_report_their_cpu(exported, synth_dir, tmp_path):
    """The batch size changes neither the scores nor their order (600 rows: one batch, or five with a short
    last one); the summary splits the CPU into the SavedModel load, the first batch and a steady rate
    (from the batch ending past row 150 to the last ending by row 450: rows 256-384 at batch 128)."""
    _, out = exported["dnn"]
    test = os.path.join(synth_dir, "test")
    one = score(out, test, str(tmp_path / "one.parquet"), keep=["user_id"], batch_size=4096, **QUIET)
    five = score(out, test, str(tmp_path / "five.parquet"), keep=["user_id"], batch_size=128, **QUIET)
    a, b = pd.read_parquet(tmp_path / "one.parquet"), pd.read_parquet(tmp_path / "five.parquet")
    np.testing.assert_array_equal(a["user_id"], b["user_id"])
    np.testing.assert_allclose(a["prob"], b["prob"], atol=1e-6, rtol=0)
    for res in (one, five):
        assert res["rows"] == 600 and res["load_cpu_seconds"] > 0
        assert 0 < res["first_batch_cpu_seconds"] <= res["cpu_seconds"]
        assert res["examples_per_cpu_sec"] == pytest.approx(600 / res["cpu_seconds"], rel=0.01)
    assert one["steady_examples_per_cpu_sec"] is None  # one batch: no steady stretch
    assert five["steady_examples_per_cpu_sec"] > 0
    # the steady stretch (128 rows) lies within the CPU after the first batch: at least 128 rows over all of it
    after_first = five["cpu_seconds"] - five["first_batch_cpu_seconds"]
    assert five["steady_examples_per_cpu_sec"] >= 0.95 * 128 / after_first
