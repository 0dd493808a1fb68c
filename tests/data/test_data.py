"""TFRecord encoding, the input pipeline, and bad data (file + field in one clear error)."""
import os

import numpy as np
import pytest
import tensorflow as tf

from tfmsr.data import wire
from tfmsr.data.pipeline import DataError, check_first_record, make_dataset, read_errors, split_files, stage_streams
from tfmsr.data.tfrecord import DatasetWriter, encode_examples
from tfmsr.features import Schema

SCHEMA = Schema.from_dict({
    "scenario": {"name": "scenario", "values": ["a", "b", "c"]},
    "labels": ["click"],
    "features": [
        {"name": "user_id", "kind": "categorical", "group": "user", "vocab_size": 50},
        {"name": "item_id", "kind": "categorical", "group": "item", "vocab_size": 40},
        {"name": "query", "kind": "categorical", "group": "query", "hash_buckets": 64},
        {"name": "price", "kind": "numeric", "group": "item"},
        {"name": "hist_item_id", "kind": "sequence", "group": "behavior", "share": "item_id", "length": 4},
        {"name": "hist_query", "kind": "sequence", "group": "behavior", "share": "query", "length": 3},
    ],
    "extras": {"oracle_p": "float32", "tag": "string", "big": "int64"},
    "oracle": "oracle_p",
}, source="test")


def columns(n, seed=0):
    rng = np.random.default_rng(seed)
    hist = rng.integers(0, 40, (n, 6))
    hist[:, 3:] *= rng.integers(0, 2, (n, 1))  # some rows shorter
    return {
        "scenario": rng.integers(0, 3, n), "click": rng.integers(0, 2, n).astype(np.float32),
        "user_id": rng.integers(1, 60, n),  # some ids >= vocab 50: OOV
        "item_id": rng.integers(1, 40, n), "query": [f"q{i % 7}" for i in range(n)],
        "price": rng.normal(size=n).astype(np.float32), "hist_item_id": hist,
        "hist_query": [[f"q{j}" for j in range(i % 5)] for i in range(n)],
        "oracle_p": rng.random(n).astype(np.float32), "tag": [f"t{i}".encode() for i in range(n)],
        "big": rng.integers(-2**62, 2**62, n),
    }


def test_wire_encoder_matches_protobuf():
    cols = columns(200)
    for i, rec in enumerate(encode_examples(cols, SCHEMA)):
        f = tf.train.Example.FromString(rec).features.feature
        assert list(f["user_id"].int64_list.value) == [cols["user_id"][i]]
        assert list(f["big"].int64_list.value) == [cols["big"][i]]  # negative and 9-byte varints
        assert f["price"].float_list.value[0] == cols["price"][i]
        assert list(f["hist_item_id"].int64_list.value) == [v for v in cols["hist_item_id"][i] if v]
        assert [v.decode() for v in f["hist_query"].bytes_list.value] == cols["hist_query"][i]
        assert f["tag"].bytes_list.value[0] == cols["tag"][i]
        assert f["query"].bytes_list.value[0] == cols["query"][i].encode()
        assert len(f) == 11


def test_varints_edge_values():
    values = np.array([0, 1, 127, 128, 16383, 16384, 2**35, 2**63 - 1, -1, -(2**63)])
    buf, off = wire.varints(values)
    msg = tf.train.Int64List()
    for i, v in enumerate(values):
        payload = buf[off[i]:off[i + 1]].tobytes()
        msg.ParseFromString(bytes([0x08]) + payload)  # field 1 varint (unpacked)
        assert msg.value[-1] == v


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("d") / "data")
    with DatasetWriter(out, SCHEMA, rows_per_shard=100) as w:
        w.write("train", columns(450, seed=1))
        w.write("valid", columns(120, seed=2))
    return out


def test_writer_layout_and_stats(small_dir):
    assert sorted(os.listdir(small_dir)) == ["schema.yaml", "stats.json", "train", "valid"]
    assert len(split_files(small_dir, "train")) == 5
    assert not any(".tmp-" in name for name in os.listdir(os.path.dirname(small_dir)))
    import json

    stats = json.load(open(os.path.join(small_dir, "stats.json")))
    train = stats["splits"]["train"]
    assert train["rows"] == 450 and sum(s["rows"] for s in train["scenarios"].values()) == 450
    assert 0 < train["scenarios"]["a"]["repeat_rate"] < 1


def test_writer_leaves_nothing_on_failure(tmp_path):
    out = str(tmp_path / "data")
    bad = columns(10)
    del bad["price"]
    with pytest.raises(KeyError, match="price"):
        with DatasetWriter(out, SCHEMA) as w:
            w.write("train", columns(10))
            w.write("train", bad)
    assert os.listdir(tmp_path) == []


def test_parsed_batch_is_dense_and_padded(small_dir):
    files = split_files(small_dir, "train")
    x, y = next(iter(make_dataset(files, SCHEMA, 450, training=False)))
    cols = columns(450, seed=1)
    np.testing.assert_array_equal(x["user_id"].numpy(), cols["user_id"])
    np.testing.assert_array_equal(y.numpy(), cols["click"])
    assert x["hist_item_id"].shape == (450, 4) and x["hist_item_id"].dtype == tf.int64
    kept = [[v for v in row if v][:4] for row in cols["hist_item_id"]]
    expect = np.array([k + [0] * (4 - len(k)) for k in kept])
    np.testing.assert_array_equal(x["hist_item_id"].numpy(), expect)  # most recent first, truncated
    assert x["hist_query"].shape == (450, 3) and x["hist_query"].dtype == tf.string
    assert x["hist_query"].numpy()[0, 0] == b""  # row 0 has an empty sequence


def test_training_stream_is_deterministic_and_skip_resumes_exactly(small_dir):
    files = split_files(small_dir, "train")

    def batches(skip, n):
        ds = make_dataset(files, SCHEMA, 64, training=True, seed=3, shuffle_buffer=200, skip_batches=skip)
        return [x["user_id"].numpy() for x, _ in ds.take(n)]

    full = batches(0, 12)  # crosses an epoch boundary (8 batches per epoch)
    resumed = batches(5, 7)
    for a, b in zip(full[5:], resumed):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(full[:8], full[8:]))  # reshuffled each epoch


def test_input_context_gives_disjoint_shards(small_dir):
    files = split_files(small_dir, "train")
    seen = []
    for pid in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pid)
        ds = make_dataset(files, SCHEMA, 1000, training=False, input_context=ctx)
        seen.append(np.concatenate([x["user_id"].numpy() for x, _ in ds]))
    assert len(seen[0]) + len(seen[1]) == 450 and len(seen[0]) == 250  # shards 0,2,4 (100+100+50) and 1,3


def test_oov_ids_map_to_zero_and_are_counted():
    from tfmsr.layers import FeatureEmbedding

    emb = FeatureEmbedding(SCHEMA)
    x = {"user_id": tf.constant([0, 3, 49, 50, 77, -4], tf.int64)}
    np.testing.assert_array_equal(emb.ids(x, "user_id").numpy(), [0, 3, 49, 0, 0, 0])
    assert int(emb.oov_count(x)) == 3
    q = emb.ids({"query": tf.constant(["", "a", "a"])}, "query").numpy()
    assert q[0] == 0 and q[1] == q[2] and 1 <= q[1] < 64


def test_not_a_tfrecord_names_the_file(tmp_path, small_dir):
    bad = tmp_path / "train"
    bad.mkdir()
    (bad / "part-00000.tfrecord").write_bytes(b"this is a csv,not,a,tfrecord\n" * 50)
    with pytest.raises(DataError, match=r"part-00000.tfrecord: not a readable TFRecord file"):
        check_first_record(str(bad / "part-00000.tfrecord"), SCHEMA)
    files = split_files(str(tmp_path), "train")
    with pytest.raises(DataError, match=r"part-00000.tfrecord: not a readable TFRecord file"):
        with read_errors(files, SCHEMA):
            for _ in make_dataset(files, SCHEMA, 10, training=False):
                pass


def _write_records(path, records):
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r)


def test_missing_feature_names_file_record_and_field(tmp_path):
    recs = encode_examples(columns(30), SCHEMA)
    ex = tf.train.Example.FromString(recs[17])
    del ex.features.feature["price"]
    recs[17] = ex.SerializeToString()
    (tmp_path / "train").mkdir()
    _write_records(tmp_path / "train" / "part-00001.tfrecord", recs)
    files = split_files(str(tmp_path), "train")
    with pytest.raises(DataError) as err:
        with read_errors(files, SCHEMA):
            for _ in make_dataset(files, SCHEMA, 8, training=False):
                pass
    assert "part-00001.tfrecord: record 17 is missing required feature 'price'" in str(err.value)


def test_wrong_dtype_names_file_and_field(tmp_path):
    recs = encode_examples(columns(10), SCHEMA)
    ex = tf.train.Example.FromString(recs[3])
    ex.features.feature["user_id"].Clear()
    ex.features.feature["user_id"].float_list.value.append(1.5)
    recs[3] = ex.SerializeToString()
    (tmp_path / "valid").mkdir()
    _write_records(tmp_path / "valid" / "part-00000.tfrecord", recs)
    files = split_files(str(tmp_path), "valid")
    with pytest.raises(DataError, match=r"part-00000.tfrecord: record 3 has feature 'user_id' of the wrong type"):
        with read_errors(files, SCHEMA):
            for _ in make_dataset(files, SCHEMA, 4, training=False):
                pass


def test_first_record_check_and_missing_split(tmp_path):
    recs = encode_examples(columns(3), SCHEMA)
    ex = tf.train.Example.FromString(recs[0])
    del ex.features.feature["hist_query"]
    (tmp_path / "train").mkdir()
    _write_records(tmp_path / "train" / "part-00000.tfrecord", [ex.SerializeToString()])
    with pytest.raises(DataError, match="record 0 has no feature 'hist_query'"):
        check_first_record(str(tmp_path / "train" / "part-00000.tfrecord"), SCHEMA)
    with pytest.raises(DataError, match="no shards for split 'test'"):
        split_files(str(tmp_path), "test")


@pytest.mark.parametrize("cache", [True, False])
def test_training_counts_every_oov_id_once_per_epoch(small_dir, tmp_path, cache):
    from conftest import quick_config

    from tfmsr.ranking.train import train

    cfg = quick_config("dnn", {"hidden": [8]}, validate=False)
    cfg["data"].update(batch_size=64, cache=cache, shuffle_buffer=100)
    summary = train(cfg, small_dir, str(tmp_path / "run"), log=lambda m: None)
    cols = columns(450, seed=1)
    expected = int((cols["user_id"] >= 50).sum())  # the only feature with ids outside its vocabulary
    assert expected > 0 and summary["oov_ids"] == expected


# ---------------------------------------------------------------------------------------- data.cache
def _by_key(x, y):
    """Rows of a parsed batch keyed by the unique extra ``big``: {big: (features..., label)}."""
    cols = {k: v.numpy() for k, v in x.items()}
    return {int(b): tuple(repr(np.asarray(cols[k][i]).tolist()) for k in sorted(cols)) + (float(y[i]),)
            for i, b in enumerate(cols["big"])}


@pytest.mark.parametrize("cache", [True, False])
def test_training_stream_serves_each_parsed_row_once_per_epoch_and_resumes_exactly(small_dir, cache):
    """Cached (a permutation per epoch) and read from the shards (files permuted, rows permuted within
    windows of ``shuffle_buffer`` rows, records in blocks): each epoch every row once, with its shard."""
    from tfmsr.data.pipeline import SHARD_KEY

    files = split_files(small_dir, "train")
    x, y = next(iter(make_dataset(files, SCHEMA, 1000, training=False, tag_shards=True)))
    rows = _by_key(x, y)  # the uncached parse of every row (with its shard index)

    def batches(skip, n, seed=3):
        tf.random.set_seed(seed + skip)  # the stream must not depend on the global seed (make-up rebuilds it)
        ds = make_dataset(files, SCHEMA, 64, training=True, seed=seed, skip_batches=skip, tag_shards=True,
                          cache=cache, shuffle_buffer=100)
        return [(bx, by) for bx, by in ds.take(n)]

    full = batches(0, 16)  # two epochs of 8 batches (the last one 450 - 7 * 64 = 2 rows)
    assert [int(by.shape[0]) for _, by in full[:8]] == [64] * 7 + [2]
    for epoch in (full[:8], full[8:]):
        seen = {}
        for bx, by in epoch:
            seen.update(_by_key(bx, by))
        assert sum(int(by.shape[0]) for _, by in epoch) == 450 and seen == rows  # every row once, values as parsed
    assert sorted(set(full[0][0][SHARD_KEY].numpy())) != [0]  # shard tags travel with the cached rows
    order = lambda bs: np.concatenate([bx["big"].numpy() for bx, _ in bs])
    assert not np.array_equal(order(full[:8]), order(full[8:]))  # reshuffled each epoch
    np.testing.assert_array_equal(order(full[5:]), order(batches(5, 11)))  # resume: the same continuation
    np.testing.assert_array_equal(order(full), order(batches(0, 16)))  # deterministic by seed
    assert not np.array_equal(order(full[:8]), order(batches(0, 8, seed=4)))


def test_cache_choice(small_dir, tmp_path):
    from tfmsr.core.errors import ConfigError
    from tfmsr.data.pipeline import cache_fits, use_cache
    from tfmsr.ranking.config import load_config

    files = split_files(small_dir, "train")
    size = sum(os.path.getsize(f) for f in files)
    assert cache_fits(files, available=16 * size) and not cache_fits(files, available=15 * size)
    assert use_cache(True, files, "error") and not use_cache(False, files, "error")
    assert not use_cache("auto", files, "zero")  # counted per epoch as rows are read
    with pytest.raises(ValueError, match="data.non_finite is 'count'"):
        use_cache(True, files, "count")
    with pytest.raises(ValueError, match="tf.data service"):
        use_cache(True, files, "error", service=lambda ds: ds)
    assert load_config(raw={"data": {"cache": False}})["data"]["cache"] is False
    assert load_config()["data"]["cache"] == "auto"
    with pytest.raises(ConfigError, match="data.cache must be true, false or auto, got 'yes'"):
        load_config(raw={"data": {"cache": "yes"}})


def test_cache_load_names_the_bad_record(tmp_path):
    bad = columns(30, seed=5)
    bad["click"][17] = 2.0
    out = str(tmp_path / "bad")
    with DatasetWriter(out, SCHEMA, rows_per_shard=20) as w:
        w.write("train", bad)
    with pytest.raises(DataError, match=r"part-00000.tfrecord: record 17 has label 'click' = 2.0"):
        make_dataset(split_files(out, "train"), SCHEMA, 8, training=True, cache=True)


@pytest.mark.slow
def test_cached_training_reaches_the_same_auc(synth_dir, tmp_path):
    """data.cache changes the row order (a permutation per epoch instead of file + buffer shuffles), so the
    trained result is the same within noise, not bit for bit: validation AUC of the planted data."""
    from conftest import quick_config

    from tfmsr.ranking.train import train

    auc = {}
    for cache in (True, False):
        cfg = quick_config("dnn", {"hidden": [32]}, epochs=2)
        cfg["data"].update(batch_size=64, cache=cache)
        summary = train(cfg, synth_dir, str(tmp_path / f"run-{cache}"), log=lambda m: None)
        auc[cache] = summary["best_val_auc"]
    assert auc[True] > 0.6 and abs(auc[True] - auc[False]) < 0.02, auc


def test_scoring_parser_counts_oov_values_of_scored_rows_only():
    """``tfmsr score``'s parser counts the out-of-vocabulary ids per feature (a sequence: every kept entry)
    in the rows it scores; a row with an unknown scenario is not scored, so its ids are not counted."""
    from tfmsr.serving.scoring import _RowParser, column_dtypes

    cols = columns(300, seed=7)
    cols["hist_item_id"][::7, 0] = 45  # outside item_id's vocabulary (40)
    cols["scenario"][::5] = 3  # unknown scenario: not scored
    required = ["scenario"] + [f.name for f in SCHEMA.features if f.kind != "sequence"]
    parser = _RowParser(SCHEMA, column_dtypes(SCHEMA), required, [], routed=True)
    _, _, ok, unknown, _, oov, _ = parser.fast(tf.constant(encode_examples(cols, SCHEMA)))
    scored = cols["scenario"] < 3
    np.testing.assert_array_equal(ok.numpy(), scored)
    kept = np.array([([v for v in row if v] + [0] * 4)[:4] for row in cols["hist_item_id"]])  # truncated to 4
    want = [int(((cols["user_id"] >= 50) & scored).sum()), int(((cols["item_id"] >= 40) & scored).sum()),
            int(((kept >= 40) & scored[:, None]).sum())]
    assert [f.name for f in parser.tables] == ["user_id", "item_id", "hist_item_id"]
    assert want[0] > 0 and want[2] > 0 and oov.numpy().tolist() == want


def test_stage_streams_cut_the_same_training_stream(small_dir):
    from tfmsr.data.pipeline import make_parser
    from tfmsr.ranking.bench import input_stages

    files = split_files(small_dir, "train")
    streams = stage_streams(files, SCHEMA, 64, seed=3, shuffle_buffer=200)
    parse = make_parser(Schema.load(os.path.join(small_dir, "schema.yaml")))  # the layout the shards are in
    first = [parse(s)[0]["user_id"].numpy() for s in streams["read"].take(8)]  # one pass: 7 x 64 + 2
    np.testing.assert_array_equal(np.concatenate(first), columns(450, seed=1)["user_id"])
    cut = [parse(s)[0]["user_id"].numpy() for s in streams["shuffled"].take(8)]
    staged = [x["user_id"].numpy() for x, _ in streams["parsed"].take(8)]  # make_dataset's own stream
    for a, b in zip(cut, staged):
        np.testing.assert_array_equal(a, b)
    assert sorted(np.concatenate(staged)) == sorted(columns(450, seed=1)["user_id"])  # an epoch: each row once
    res = input_stages(small_dir, batch=64, steps=2, warmup=1, seed=3, shuffle_buffer=200, rounds=1)
    assert sorted(res) == ["parsed", "read", "shuffled"]
    assert all(r["examples"] == 2 * 64 and r["cpu_us_per_row"] > 0 for r in res.values())
