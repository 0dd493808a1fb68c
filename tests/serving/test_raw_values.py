"""Exports of a model trained on raw values (tables with vocabulary files): the servables take raw string /
int64 ids, carry the vocabularies under assets/ (a python that never imports tfmsr loads them, the run's
and the dataset's files gone), agree with ``tfmsr score`` on raw TFRecords, score an unknown raw id like
id 0 and count it; retrieval top-K servables return raw item ids. Helpers: tests/raw_serving.py."""
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from raw_dataset import expected_ids, write_raw_dataset
from raw_serving import check_raw_parity, check_raw_topk, raw_requests, score_split, serve_fresh

from tfmsr.features import Schema
from tfmsr.serving.signatures import servable_names
from tfmsr.serving.warmup import read_warmup

pytestmark = pytest.mark.slow  # each trains and exports (about 2 minutes for the module on 2 cores)


@pytest.fixture(scope="module")
def raw_data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("raw") / "data")
    return out, write_raw_dataset(out)


@pytest.fixture(scope="module")
def parity(raw_data, tmp_path_factory):
    """dnn trained on a copy of the dataset whose vocabularies are deleted before the export (the run
    dir's copies are what the export reads), exported, scored and served from a fresh process."""
    data_dir, _ = raw_data
    work = str(tmp_path_factory.mktemp("parity"))
    copy = os.path.join(work, "data")
    shutil.copytree(data_dir, copy)

    def drop_dataset_vocab():
        assert sorted(os.listdir(os.path.join(work, "run", "vocab"))) == ["item_id.txt", "user_id.txt"]
        shutil.rmtree(os.path.join(copy, "vocab"))

    return check_raw_parity(copy, work, before_export=drop_dataset_vocab)


def test_serving_default_with_raw_ids_equals_tfmsr_score(parity, raw_data):
    figures = parity
    data_dir, cols = raw_data
    assert figures["max_abs_diff"] < 1e-5 and figures["rows_compared"] == 200
    want = expected_ids(data_dir, cols["test"])
    unknown = {n: int((ids == -1).sum()) for n, ids in want.items()}
    unknown["category"] = int((cols["test"]["category"] >= 6).sum())  # an id table: out-of-range ids, as before
    assert figures["scored"] == len(cols["test"]["item_id"])
    assert figures["oov_by_feature"] == unknown and figures["oov_values"] == sum(unknown.values())


def test_oov_counted_by_all_graph_equals_the_parsers_count(parity, raw_data, tmp_path):
    """``all`` counts the out-of-vocabulary ids in its ``scoring`` function, from the graph's own lookups; a
    scenario servable (no such function) has ``tfmsr score``'s parser look them up: the same counts."""
    data_dir, _ = raw_data
    all_dir, one = (os.path.join(parity["export"], s, "1") for s in ("all", "feed"))
    assert hasattr(tf.saved_model.load(all_dir), "scoring") and not hasattr(tf.saved_model.load(one), "scoring")
    _, summary = score_split(os.path.dirname(one), data_dir, "test", str(tmp_path / "feed.parquet"))
    assert summary["scored"] == parity["scored"] and parity["oov_values"] > 0
    assert (summary["oov_values"], summary["oov_by_feature"]) == (parity["oov_values"], parity["oov_by_feature"])


def test_unknown_raw_id_is_accepted_and_scored_like_id_zero(parity, raw_data, tmp_path):
    figures = parity
    data_dir, _ = raw_data
    x, _ = raw_requests(data_dir, "test", 16)
    variants = {"unknown_user": dict(x, user_id=np.array([b"nobody-ever"] * 16, object)),
                "missing_user": dict(x, user_id=np.array([b""] * 16, object)),
                "unknown_item": dict(x, item_id=np.full(16, 424242, np.int64)),
                "missing_item": dict(x, item_id=np.zeros(16, np.int64))}
    servable = os.path.join(figures["export"], "all", "1")
    got = serve_fresh([(servable, "serving_default", v) for v in variants.values()] +
                      [(servable, "serving_default", x)], str(tmp_path))
    probs = dict(zip(list(variants) + ["as_is"], (g["prob"] for g in got)))
    np.testing.assert_allclose(probs["unknown_user"], probs["missing_user"], atol=1e-6)
    np.testing.assert_allclose(probs["unknown_item"], probs["missing_item"], atol=1e-6)
    assert np.abs(probs["unknown_item"] - probs["as_is"]).max() > 1e-4  # the item id matters


def test_export_carries_vocabularies_raw_inputs_and_raw_warmup(parity):
    figures = parity
    names = servable_names(Schema.load(os.path.join(figures["model_dir"], "schema.yaml")))
    for s in ["all"] + names:
        d = os.path.join(figures["export"], s, "1")
        schema = Schema.load(os.path.join(d, "assets", "schema.yaml"))
        assert schema.vocab_files() == {"user_id": os.path.join(d, "assets", "user_id.txt"),
                                        "item_id": os.path.join(d, "assets", "item_id.txt")}
        meta = json.load(open(os.path.join(d, "assets", "export.json")))
        assert meta["inputs"]["user_id"] == ["string", [None]] and meta["inputs"]["item_id"] == ["int64", [None]]
        assert meta["inputs"]["hist_item_id"] == ["int64", [None, None]] and meta["inputs"]["category"][0] == "int64"
        assert meta["vocabularies"]["user_id"]["raw"] == "string" and meta["vocabularies"]["item_id"]["values"] == 30
        m = tf.saved_model.load(d)
        requests = read_warmup(d)
        assert {sig for sig, _ in requests} == set(m.signatures)
        vocab = set(open(os.path.join(d, "assets", "user_id.txt")).read().split())
        for sig, inputs in requests:
            if "user_id" in inputs:  # raw values sampled from the vocabulary
                assert {v.decode() for v in inputs["user_id"]} <= vocab
            prob = m.signatures[sig](**{k: tf.constant(v) for k, v in inputs.items()})["prob"].numpy()
            assert prob.shape == (4,) and np.all((prob > 0) & (prob < 1))


def test_retrieval_topk_returns_raw_item_ids(raw_data, tmp_path):
    data_dir, _ = raw_data
    figures = check_raw_topk(data_dir, str(tmp_path))
    assert figures["scenarios"] == ["feed", "search"] and figures["vocabulary"] == 30
