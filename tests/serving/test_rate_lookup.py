"""Servables that take the raw item id alone (``tfmsr/serving/rates.py``): a small log ingested with the
shipped specs' ``item_rate`` (rate_per, out of fold) and ``item_train_n`` (train_count_per, log1p), a dnn
trained on it and exported; in a python that never imports tfmsr, ``serving_default`` without the two
features equals the shard-fed scores of every test row (the model on the shards' values, and the
``examples`` signature on the shard records, with and without the two fields, and ``tfmsr score``), an
unknown item gets the prior, a dataset without ``rates/`` keeps them request inputs, a spec edited after
ingest keeps the feature it no longer describes an input, and a ``--vocab-from`` day's table carries the
previous day's counts."""
import json
import os
import shutil
import tempfile

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
import yaml
from conftest import quick_config
from rate_log import COMPUTED, day
from raw_serving import graph_ops, raw_requests, score_split, serve_fresh

from tfmsr.data.pipeline import make_parser
from tfmsr.features import Schema
from tfmsr.features.lookup import VocabLookups
from tfmsr.ranking.evaluate import load_trained
from tfmsr.ranking.export import export
from tfmsr.ranking.train import train
from tfmsr.serving.rates import from_dataset
from tfmsr.serving.signatures import feature_signatures

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("rates"))
    data = day(root, "day1", range(1, 81), 0)
    train(quick_config("dnn"), data, os.path.join(root, "run"), log=lambda m: None)
    export(os.path.join(root, "run"), os.path.join(root, "export"), log=lambda m: None)
    return root, data


def strip(records, drop=COMPUTED, **set_values):
    """Serialized records without the ``drop`` fields, with ``set_values`` {field: (kind, [values per row])}."""
    out = []
    for i, r in enumerate(records):
        ex = tf.train.Example.FromString(r)
        for name in drop:
            del ex.features.feature[name]
        for name, (kind, values) in set_values.items():
            getattr(ex.features.feature[name], kind).value[:] = [values[i]]
        out.append(ex.SerializeToString())
    return np.array(out, dtype=object)


def shard_scores(root, data, records):
    """The trained model (Python) on the records' own values: what evaluation / the shards give."""
    model, schema, _ = load_trained(os.path.join(root, "run"))
    x = make_parser(schema, inputs_only=True)(tf.constant(records))
    return tf.reshape(model(x, training=False), [-1]).numpy(), schema


def test_raw_item_id_alone_scores_test_rows_like_the_shards(trained, tmp_path):
    root, data = trained
    all1 = os.path.join(root, "export", "all", "1")
    meta = json.load(open(os.path.join(all1, "assets", "export.json")))
    assert set(meta["computed_inputs"]) == set(COMPUTED)
    assert not set(COMPUTED) & set(meta["signatures"]["serving_default"]["inputs"])
    assert "rates_item_key.tsv" in os.listdir(os.path.join(all1, "assets"))
    assert not graph_ops(all1) & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
    x, records = raw_requests(data, "test", n=1000)
    n = len(records)
    expected, schema = shard_scores(root, data, records)
    request = {k: v for k, v in x.items() if k not in COMPUTED}
    unknown = {**request, "item_id": np.array([b"zz:never-seen"] * n, dtype=object)}
    prior = meta["computed_inputs"]["item_rate"]["prior"]
    unknown_ref = strip(records, drop=(), item_id=("bytes_list", [b"zz:never-seen"] * n),
                        item_rate=("float_list", [prior] * n), item_train_n=("float_list", [0.0] * n))
    scen = schema.scenario.values[0]
    in_a = x["scenario"] == 0
    got = serve_fresh([(all1, "serving_default", request),
                       (all1, "examples", {"examples": records}),
                       (all1, "examples", {"examples": strip(records)}),
                       (all1, "serving_default", unknown),
                       (all1, "examples", {"examples": unknown_ref}),
                       (os.path.join(root, "export", scen, "1"), "serving_default",
                        {k: v[in_a] for k, v in request.items() if k != "scenario"})], str(tmp_path / "fresh"))
    assert n > 100 and expected.std() > 1e-3
    for i in range(3):   # raw ids only; shard records; shard records without the two fields
        np.testing.assert_allclose(got[i]["prob"], expected, atol=1e-6, err_msg=f"call {i}")
    np.testing.assert_allclose(got[3]["prob"], got[4]["prob"], atol=1e-6)   # unknown item: prior p, n 0
    assert np.abs(got[3]["prob"] - expected).max() > 1e-4                   # ... which is not the item's own
    np.testing.assert_allclose(got[5]["prob"], expected[in_a], atol=1e-6)   # a scenario servable
    scored, summary = score_split(os.path.join(root, "export", "all"), data, "test", str(tmp_path / "s.parquet"))
    assert summary["scored"] == n   # tfmsr score: the shards' rows, their two fields checked, not fed
    np.testing.assert_allclose(scored, expected, atol=1e-6)


def test_table_is_the_full_train_statistics_of_the_test_rows(trained):
    """What the graph computes, in NumPy from the asset: equal to the test shards' values; train rows hold
    out-of-fold values (not the table's)."""
    root, data = trained
    meta = json.load(open(os.path.join(root, "export", "all", "1", "assets", "export.json")))
    tsv = pd.read_csv(os.path.join(root, "export", "all", "1", "assets", "rates_item_key.tsv"), sep="\t",
                      header=None, names=["key", "rows", "pos"], keep_default_na=False).set_index("key")
    t = pq.read_table(os.path.join(data, "rates", "item_key.parquet"))
    meta_pq = t.schema.metadata
    assert meta["computed_inputs"]["item_rate"]["prior"] == pytest.approx(
        (int(meta_pq[b"train_positives"]) + 1) / (int(meta_pq[b"train_rows"]) + 2))
    assert tsv["rows"].sum() == int(meta_pq[b"train_rows"])
    prior = meta["computed_inputs"]["item_rate"]["prior"]
    for split, exact in (("test", True), ("train", False)):
        x, _ = raw_requests(data, split, n=5000)
        keys = [k.decode() for k in x["item_id"]]   # item_id's raw value is the rate key
        n = tsv["rows"].reindex(keys).fillna(0).to_numpy()
        rate = (tsv["pos"].reindex(keys).fillna(0).to_numpy() + 10 * prior) / (n + 10)
        ok = np.allclose(rate, x["item_rate"], atol=1e-6) and np.allclose(np.log1p(n), x["item_train_n"], atol=1e-6)
        assert ok == exact, split


def test_dataset_without_rates_keeps_request_inputs(trained, tmp_path):
    root, data = trained
    run = str(tmp_path / "run")
    shutil.copytree(os.path.join(root, "run"), run)
    gone = str(tmp_path / "rates-gone")
    shutil.move(os.path.join(data, "rates"), gone)
    try:
        logs = []
        export(run, str(tmp_path / "export"), log=logs.append, scenarios=[])
    finally:
        shutil.move(gone, os.path.join(data, "rates"))
    meta = json.load(open(str(tmp_path / "export" / "all" / "1" / "assets" / "export.json")))
    assert set(COMPUTED) <= set(meta["signatures"]["serving_default"]["inputs"]) and "computed_inputs" not in meta
    assert any("stays a request input" in m and "item_key.parquet" in m for m in logs)


def test_vocab_from_day_carries_the_previous_counts(trained, tmp_path):
    """Day 2 (``--vocab-from`` day 1): the servable's table is day 2's rates file, whose counts include
    day 1's train rows, and the graph's values equal day 2's test shards (computed eagerly: same ops)."""
    root, day1 = trained
    day2 = day(str(tmp_path), "day2", range(60, 120), 1, vocab_from=day1)
    one, two = (pq.read_table(os.path.join(d, "rates", "item_key.parquet")).to_pandas().set_index("key")
                for d in (day1, day2))
    assert (two["rows"].reindex(one.index).fillna(0) >= one["rows"]).all() and two["rows"].sum() > one["rows"].sum()
    schema = Schema.load(os.path.join(day2, "schema.yaml"))
    rates = from_dataset(schema, day2, str(tmp_path), log=lambda m: None)
    tsv = pd.read_csv(rates.files()[0], sep="\t", header=None, names=["key", "rows", "pos"], keep_default_na=False)
    assert tsv["rows"].sum() == two["rows"].sum()
    x, _ = raw_requests(day2, "test", n=1000)
    got = rates({k: tf.constant(v) for k, v in x.items()})
    for name in COMPUTED:
        np.testing.assert_allclose(got[name].numpy(), x[name], atol=1e-6, err_msg=name)


def test_feature_signatures_of_a_tower_compute_the_item_features(trained):
    """The retrieval towers' signatures (``feature_signatures``): the item features computed from the raw
    item id equal the test shards' values, by name and from records without them."""
    _, data = trained
    schema = Schema.load(os.path.join(data, "schema.yaml"))
    with tempfile.TemporaryDirectory() as work:
        rates = from_dataset(schema, data, work, log=lambda m: None)
        lookups = VocabLookups(schema)
        names = [f.name for f in schema.group("item")]
        sigs = feature_signatures(schema, names, lambda x: {n: x[n] for n in COMPUTED}, lookups, rates)
        x, records = raw_requests(data, "test", n=1000)
        assert set(sigs["serving_default"].structured_input_signature[0][0]) == {"item_id"}
        named = sigs["serving_default"]({"item_id": tf.constant(x["item_id"])})
        parsed = sigs["examples"](tf.constant(strip(records)))
    for name in COMPUTED:
        np.testing.assert_allclose(named[name].numpy(), x[name], atol=1e-6, err_msg=name)
        np.testing.assert_allclose(parsed[name].numpy(), x[name], atol=1e-6, err_msg=name)


def test_a_spec_edited_after_ingest_keeps_the_feature_a_request_input(trained, tmp_path):
    """The export checks the computed values against the valid shard: a spec whose item_rate transform
    changed after ingest no longer describes the shards, so that feature stays a request input."""
    _, data = trained
    stats = json.load(open(os.path.join(data, "stats.json")))
    with open(stats["ingest"]["spec"]) as fh:
        spec = yaml.safe_load(fh)
    spec["features"]["item_rate"]["transform"] = ["log1p", "standardize"]
    with open(str(tmp_path / "spec.yaml"), "w") as fh:
        yaml.safe_dump(spec, fh)
    edited = str(tmp_path / "ds")
    shutil.copytree(data, edited)
    stats["ingest"]["spec"] = str(tmp_path / "spec.yaml")
    with open(os.path.join(edited, "stats.json"), "w") as fh:
        json.dump(stats, fh)
    logs = []
    rates = from_dataset(Schema.load(os.path.join(edited, "schema.yaml")), edited, str(tmp_path), log=logs.append)
    assert rates.names == ["item_train_n"]
    assert any("'item_rate' stays a request input" in m and "valid shard" in m for m in logs)
