"""The retrieval corpus is scored with what a server computes: on a small log ingested with ``item_rate`` /
``item_train_n`` (``tests/serving/test_rate_lookup.py``'s spec), the evaluation's item table holds the items'
full-train values (the test shards' values, not the train rows' out-of-fold ones), training keeps the
out-of-fold ones, and in a python that never imports tfmsr the ``item_<s>`` servable, given the raw item
ids alone, returns the exported top-K corpus vectors, and ``topk_<s>`` scores with them."""
import json
import os

import numpy as np
import pytest
from rate_log import COMPUTED, day
from raw_serving import raw_requests, serve_fresh

from tfmsr.retrieval.config import load_config
from tfmsr.retrieval.data import RetrievalData, iter_split
from tfmsr.retrieval.evaluate import ModelScorer
from tfmsr.retrieval.export import export_retrieval
from tfmsr.retrieval.train import load_trained, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("served"))
    data_dir = day(root, "day1", range(1, 81), 0)
    cfg = load_config(raw={"model": {"name": "dssm", "params": {"embedding_dim": 8}}, "data": {"batch_size": 128},
                           "pretrain": {"enabled": False}, "train": {"epochs": 1}})
    train(cfg, data_dir, os.path.join(root, "run"), log=lambda m: None)
    return root, data_dir


def test_evaluation_corpus_reads_the_full_train_values(run):
    root, data_dir = run
    models, data, _ = load_trained(os.path.join(root, "run"))
    shard = {}   # the test shards' value of each item (full train), by item id
    for xs, _ in iter_split(data_dir, data.schema, "test"):
        for name in COMPUTED:
            shard.setdefault(name, {}).update(zip(xs["item_id"].tolist(), xs[name].tolist()))
    items = np.array(sorted(i for i in shard["item_rate"] if 0 < i < data.num_items))
    assert len(items) > 10
    for name in COMPUTED:
        want = np.array([shard[name][i] for i in items], np.float32)
        np.testing.assert_allclose(data.numpy_items(items)[name], want, atol=1e-6, err_msg=name)
        assert np.abs(data.numpy_items(items, served=False)[name] - want).max() > 1e-3, name   # out of fold
    corpus = data.corpus(0)
    model = models[0]
    got = ModelScorer(model, data).item_vectors(0, corpus)
    served = model.item_vectors(data.numpy_items(corpus), 0).numpy()
    trained = model.item_vectors(data.numpy_items(corpus, served=False), 0).numpy()
    norm = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731 (DSSM: cosine)
    np.testing.assert_allclose(got, norm(served), atol=1e-6)
    assert np.abs(got - norm(trained)).max() > 1e-4


@pytest.mark.slow
def test_exported_corpus_vectors_are_what_the_item_servable_gives(run, tmp_path):
    root, data_dir = run
    logs = []
    res = export_retrieval(os.path.join(root, "run"), str(tmp_path / "export"), k=5, scenarios=["a"],
                           log=logs.append)
    built = [m for m in logs if "computed from the raw key" in m]
    assert len(built) == 1 and built[0].startswith("[export] "), built     # the corpus reuses the export's tables
    x, _ = raw_requests(data_dir, "test", n=50)
    calls, corpora = [], {}
    for s in res["scenarios"]:
        item, user = res["servables"][f"item_{s}"], res["servables"][f"user_{s}"]
        corpora[s] = np.load(os.path.join(item, "assets", "corpus.npz"), allow_pickle=True)
        calls.append((item, "serving_default", {"item_id": corpora[s]["raw_item_ids"]}))   # raw item id alone
        request = {c: x[c] for c in json.load(open(os.path.join(user, "assets", "export.json")))["inputs"]}
        calls += [(user, "serving_default", request), (res["servables"][f"topk_{s}"], "serving_default", request)]
    got = serve_fresh(calls, str(tmp_path / "fresh"))
    for i, s in enumerate(res["scenarios"]):
        item, user, top = got[3 * i: 3 * i + 3]
        vectors = corpora[s]["vectors"]
        assert len(vectors) > 10 and vectors.std() > 1e-3
        np.testing.assert_allclose(vectors, item["vector"], atol=1e-5, err_msg=f"item_{s}")
        raw = list(corpora[s]["raw_item_ids"])
        pos = np.array([[raw.index(v) for v in row] for row in top["item_ids"]])
        np.testing.assert_allclose(top["scores"], np.take_along_axis(user["vector"] @ item["vector"].T, pos, 1),
                                   atol=1e-5, err_msg=f"topk_{s}")


def test_a_dataset_without_rates_serves_the_training_table(synth_dir):
    data = RetrievalData.load(synth_dir, eval_splits=())
    assert data.served is data.items
