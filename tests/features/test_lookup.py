"""Raw values -> ids (tfmsr.features.lookup) through the input pipeline: a dataset storing raw string and
int64 ids with vocabulary files parses to the ids a NumPy re-computation gives; missing values are id 0;
unknown values are clamped to row 0 and counted as OOV exactly like out-of-range ids; a model trains on it;
bad vocabulary files fail with the file and line."""
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from conftest import quick_config
from raw_dataset import ITEMS, USERS, expected_ids, raw_schema, read_vocab, write_raw_dataset, write_vocab

from tfmsr.data.pipeline import DataError, check_first_record, make_dataset, make_parser, split_files
from tfmsr.data.tfrecord import DatasetWriter
from tfmsr.features import Schema
from tfmsr.layers.embedding import FeatureEmbedding
from tfmsr.features.lookup import VocabError, VocabLookup, VocabLookups, shared_lookups


@pytest.fixture(scope="module")
def raw_data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("raw") / "data")
    return out, write_raw_dataset(out)


def parsed(data_dir, split, batch=4096):
    """Every row of a split through ``make_dataset`` (file order), as NumPy."""
    schema = Schema.load(os.path.join(data_dir, "schema.yaml"))
    parts = [x for x, _ in make_dataset(split_files(data_dir, split), schema, batch, training=False)]
    return schema, {k: np.concatenate([p[k].numpy() for p in parts]) for k in parts[0]}


def test_pipeline_maps_raw_values_to_ids_like_numpy(raw_data):
    data_dir, cols = raw_data
    schema, x = parsed(data_dir, "train")
    want = expected_ids(data_dir, cols["train"])
    for name in ("user_id", "item_id", "hist_item_id"):
        assert x[name].dtype == np.int64
        np.testing.assert_array_equal(x[name], want[name], err_msg=name)
    # every kind of value occurs: known, missing (0) and unknown (-1), in scalars and in sequences
    for name in want:
        assert {0, -1} <= set(np.unique(want[name])) and want[name].max() > 0, name
    # tables without a vocabulary are parsed as before: ids as stored, hashed strings as stored
    np.testing.assert_array_equal(x["category"], cols["train"]["category"])
    np.testing.assert_array_equal(x["city"].astype(str), cols["train"]["city"].astype(str))
    assert x["hist_item_id"].shape == (len(cols["train"]["item_id"]), schema.feature("hist_item_id").length)


def test_unknown_raw_values_are_row_zero_and_counted_like_out_of_range_ids(raw_data):
    data_dir, cols = raw_data
    schema, x = parsed(data_dir, "valid")
    emb = FeatureEmbedding(schema)
    tx = {k: tf.constant(v) for k, v in x.items()}
    want = expected_ids(data_dir, cols["valid"])
    unknown = sum(int((want[n] == -1).sum()) for n in want)
    out_of_range = int((cols["valid"]["category"] >= 6).sum())  # the id table's OOV, counted as before
    assert unknown > 0 and out_of_range > 0
    assert int(emb.oov_count(tx)) == unknown + out_of_range
    for name in want:
        ids = emb.ids(tx, name).numpy()
        np.testing.assert_array_equal(ids, np.where(want[name] > 0, want[name], 0), err_msg=name)
    # a row with an unknown value embeds exactly like the same row with the value missing (row 0)
    row = int(np.flatnonzero(want["item_id"] == -1)[0])
    missing = dict(tx, item_id=tf.zeros_like(tx["item_id"]))
    np.testing.assert_array_equal(emb.embed(tx, "item_id")[row], emb.embed(missing, "item_id")[row])


def test_lookup_shapes_reverse_and_sharing(raw_data):
    data_dir, _ = raw_data
    schema = Schema.load(os.path.join(data_dir, "schema.yaml"))
    items = read_vocab(data_dir, "item_id", int)
    lk = VocabLookups(schema)
    item = lk.of("hist_item_id")
    assert item is lk.of("item_id") and lk.of("category") is None and lk.of("price") is None
    raw = np.array([[items[3], 0, 77], [items[0], items[-1], 0]], np.int64)
    np.testing.assert_array_equal(item(tf.constant(raw)), [[4, 0, -1], [1, len(items), 0]])
    rag = item(tf.ragged.constant([[items[1]], [], [5, items[2]]], dtype=tf.int64))
    assert rag.to_list() == [[2], [], [-1, 3]]
    np.testing.assert_array_equal(item.raw_values(tf.constant([1, 4, 0, 99, -1])), [items[0], items[3], 0, 0, 0])
    users = read_vocab(data_dir, "user_id", str)
    back = lk.of("user_id").raw_values(tf.constant([[2, 0]])).numpy().astype(str)
    np.testing.assert_array_equal(back, [[users[1], ""]])
    # the pipeline's tables are created once per process and shared by every parser
    assert shared_lookups(schema).of("user_id") is shared_lookups(Schema.load(schema.source)).of("user_id")


def test_parser_keeps_raw_values_when_asked(raw_data):
    data_dir, cols = raw_data
    schema = Schema.load(os.path.join(data_dir, "schema.yaml"))
    records = next(iter(tf.data.TFRecordDataset(split_files(data_dir, "test")[0]).batch(50)))
    x = make_parser(schema, with_labels=False, raw=True)(records)
    assert x["user_id"].dtype == tf.string and x["item_id"].dtype == tf.int64
    np.testing.assert_array_equal(x["user_id"].numpy().astype(str), cols["test"]["user_id"][:50].astype(str))
    np.testing.assert_array_equal(x["item_id"], cols["test"]["item_id"][:50])


def test_a_model_trains_on_raw_values_and_counts_every_unknown(raw_data, tmp_path):
    from tfmsr.ranking.train import train

    data_dir, cols = raw_data
    summary = train(quick_config("dnn", validate=False), data_dir, str(tmp_path / "run"), log=lambda s: None)
    with open(os.path.join(data_dir, "stats.json")) as fh:
        rows = json.load(fh)["splits"]["train"]["rows"]
    assert summary["steps"] == -(-rows // 256)  # one epoch = one pass over the train split
    assert np.isfinite(summary["history"]["loss"]).all()
    want = expected_ids(data_dir, cols["train"])
    unknown = sum(int((want[n] == -1).sum()) for n in want) + int((cols["train"]["category"] >= 6).sum())
    assert summary["oov_ids"] == unknown


# ---------------------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("lines,raw,message", [
    (["a", "b", "a"], "string", "lines 1 and 3 hold the same raw value 'a'"),
    (["7", "x8"], "int64", "line 2 ('x8') is not a valid int64"),
    (["a", "", "b"], "string", "line 2 is empty (the empty string is the missing value"),
    ([""], "string", "line 1 is empty"),
    (["7", "0"], "int64", "line 2 holds the missing value 0"),
])
def test_bad_vocabulary_file_names_file_and_line(tmp_path, lines, raw, message):
    path = str(tmp_path / "vocab.txt")
    with open(path, "w") as fh:
        fh.write("".join(f"{v}\n" for v in lines))
    with pytest.raises(VocabError, match=re.escape(message)) as err:
        VocabLookup(path, raw)
    assert path in str(err.value)


def test_vocabulary_that_disagrees_with_the_schema_or_is_absent(raw_data, tmp_path):
    data_dir, _ = raw_data
    schema = Schema.load(os.path.join(data_dir, "schema.yaml"))
    other = raw_schema()
    other.source = str(tmp_path / "schema.yaml")
    os.makedirs(tmp_path / "vocab")
    write_vocab(str(tmp_path / "vocab" / "user_id.txt"), USERS[:-1])
    write_vocab(str(tmp_path / "vocab" / "item_id.txt"), ITEMS)
    with pytest.raises(VocabError, match=r"user_id.txt: 39 values, but .* vocab_size 41 \(expected 40 lines"):
        VocabLookups(other)
    os.remove(tmp_path / "vocab" / "user_id.txt")
    with pytest.raises(VocabError, match=r"user_id.txt: vocabulary file of table 'user_id'.*No such file"):
        make_parser(other)
    assert VocabLookups(schema)  # the real one is fine


def test_shards_holding_ids_for_a_string_vocabulary_are_refused_with_the_field(tmp_path):
    """A dataset written with ids where the schema declares raw strings: the pre-flight names the field."""
    schema = raw_schema()
    rng = np.random.default_rng(1)
    n = 20
    ids_schema = Schema.from_dict({**schema.to_dict(), "features": [
        {k: v for k, v in f.items() if k not in ("vocab", "raw")} for f in schema.to_dict()["features"]]})
    out = str(tmp_path / "ids")
    with DatasetWriter(out, ids_schema) as w:
        w.write("train", {"scenario": np.zeros(n, np.int64), "click": np.zeros(n, np.float32),
                          "user_id": rng.integers(1, 41, n), "item_id": rng.integers(1, 31, n),
                          "category": np.ones(n, np.int64), "city": np.array(["c"] * n, object),
                          "hist_item_id": [[1]] * n, "price": np.ones(n, np.float32)})
    schema.source = os.path.join(out, "schema.yaml")
    with pytest.raises(DataError, match=r"record 0 has feature 'user_id' as int64_list, but .* declares string "
                                        r"raw values of the vocabulary vocab/user_id.txt"):
        check_first_record(split_files(out, "train")[0], schema)


@pytest.mark.slow
def test_parameter_server_workers_map_raw_values_with_their_own_tables(raw_data, tmp_path):
    """``tfmsr cluster --workers 2 --ps 1`` on raw values: the trainer creates the tables under the strategy's
    scope (one copy per worker); a table first created inside the workers' dataset_fn would be refused, so a
    finished run shows the input pipelines used the per-worker copies."""
    from tfmsr.distribute.cluster import LocalCluster

    data_dir, _ = raw_data
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: dnn, params: {hidden: [16]}}\ndata: {batch_size: 64}\n"
                   "train: {epochs: 1, checkpoint_every: 1000, log_every: 10, early_stopping_patience: 0, "
                   "validate: false}\n")
    run = str(tmp_path / "run")
    c = LocalCluster(["train", "--config", str(cfg), "--data", data_dir, "--model-dir", run], workers=2, ps=1,
                     threads=1, log=lambda line: None)
    try:
        c.start()
        rc = c.wait(timeout=900)
    finally:
        c.stop()
    assert rc == 0, "\n".join(c.lines[-60:])
    assert os.path.isdir(os.path.join(run, "final"))
    assert sorted(os.listdir(os.path.join(run, "vocab"))) == ["item_id.txt", "user_id.txt"]
