"""SASS pre-training pairs from a dataset that stores RAW values (the layout ``tfmsr data ingest`` writes):
the pairs hold the looked-up ids, and pre-training then fine-tuning runs end to end on such a dataset."""
import numpy as np
import pytest
from raw_dataset import expected_ids, write_raw_dataset

from tfmsr.retrieval import train as trainer
from tfmsr.retrieval.config import load_config
from tfmsr.retrieval.data import RetrievalData
from tfmsr.retrieval.pairs import pair_datasets, write_pairs


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("raw") / "data")
    return out, write_raw_dataset(out)


def test_pairs_of_raw_values_read_back_as_vocabulary_ids(raw, tmp_path):
    data_dir, cols = raw
    pairs = str(tmp_path / "pairs")
    summary = write_pairs(data_dir, pairs, rows_per_shard=300)
    assert summary["user"]["pairs"] > 0 and summary["item"]["pairs"] > 0
    data = RetrievalData.load(data_dir, eval_splits=("valid", "test"))
    ds, steps, _ = pair_datasets(pairs, data, batch_size=16, sides=("user",))
    batch = next(iter(ds))
    known = set(expected_ids(data_dir, cols["train"])["user_id"].tolist())
    for view in ("user_a", "user_b"):
        users = batch[view]["user_id"].numpy()
        assert users.dtype == np.int64 and set(users.tolist()) <= known
        assert batch[view]["hist_item_id"].shape == (16, 4)
    # a user pair is one user seen in two scenarios
    np.testing.assert_array_equal(batch["user_a"]["user_id"].numpy(), batch["user_b"]["user_id"].numpy())
    assert (batch["user_a"]["scenario"].numpy() < batch["user_b"]["scenario"].numpy()).all()


def test_sass_pretrains_and_finetunes_on_raw_values(raw, tmp_path):
    data_dir, _ = raw
    params = {"embedding_dim": 8, "layers": 1, "dim": 8, "aux_hidden": [8], "seq_pooling": "mean"}
    cfg = load_config(raw={"model": {"name": "sass", "params": params}, "data": {"batch_size": 128},
                           "pretrain": {"enabled": True, "epochs": 1, "batch_size": 64}, "train": {"epochs": 1}})
    summary = trainer.train(cfg, data_dir, str(tmp_path / "run"), log=lambda m: None)
    pre = summary["history"]["all"]["pretrain"]
    assert pre["pairs"]["user"] > 0 and pre["pairs"]["item"] > 0
    res = summary["metrics"]
    assert res["queries"] > 0 and 0.0 <= res["hr@20"] <= 1.0
