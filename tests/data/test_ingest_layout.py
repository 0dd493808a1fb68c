"""Record layouts of ingested and converted datasets (``tfmsr.data.layout``): ``tfmsr data ingest --layout packed``
(or the spec's ``output.layout``) and a converter's ``--layout packed`` give the rows of the per-feature dataset,
``--vocab-from`` reads a packed previous dataset, and the packed encoder's bytes parse with protobuf."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import datasets_dir
from test_ingest import CODES, INTS, SEQ, VALS, encoder_dictionaries, ml_small_spec, write_spec

from tfmsr.data.ingest import encode, ingest
from tfmsr.data.ingest.rows import read_split
from tfmsr.data.layout import PACKED, packed_columns
from tfmsr.data.pipeline import layout_of_files, make_dataset, parse_records, parse_spec, split_files
from tfmsr.features import Schema

SPLITS = ("train", "valid", "test")


def parsed_split(out, split):
    """Every record of a split parsed in its schema's layout (raw values), plus the schema."""
    schema = Schema.load(os.path.join(out, "schema.yaml"))
    raw = tf.constant([r.numpy() for r in tf.data.TFRecordDataset(split_files(out, split))])
    return parse_records(raw, parse_spec(schema), schema), schema


def assert_same_rows(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, tf.RaggedTensor):
            assert x.to_list() == y.to_list(), k
        else:
            np.testing.assert_array_equal(x.numpy(), y.numpy(), err_msg=k)


def assert_same_dataset(features_dir, packed_dir):
    """Both datasets hold the same rows (raw parse and the training pipeline's batches); only the layout differs."""
    for split in SPLITS:
        a, sa = parsed_split(features_dir, split)
        b, sb = parsed_split(packed_dir, split)
        assert (sa.layout, sb.layout) == ("features", PACKED) and sa == sb
        assert layout_of_files(split_files(packed_dir, split), every=True) == PACKED
        assert_same_rows(a, b)
    xa, ya = next(iter(make_dataset(split_files(features_dir, "train"), sa, 512, training=False)))
    xb, yb = next(iter(make_dataset(split_files(packed_dir, "train"), sb, 512, training=False)))
    np.testing.assert_array_equal(ya.numpy(), yb.numpy())
    assert_same_rows(xa, xb)


@pytest.fixture(scope="module")
def ratings_dir(tmp_path_factory):
    import pandas as pd

    src = datasets_dir("ml-latest-small")
    d = tmp_path_factory.mktemp("in")
    pd.read_csv(os.path.join(src, "ratings.csv")).head(3000).to_csv(d / "r.csv", index=False)
    return str(d)


def rich_spec():
    """Every kind of column the packed lists hold: int (scenario, bucketised, ids, int vocab, int extra), float
    (label, numeric feature, float extra), string (hashed ids, string vocab, string extra) and sequences."""
    spec = ml_small_spec("r.csv", scenario={"from": "bucket", "names": ["a", "b", "c"]},
                         derive={"bucket": {"bucketize": "rating", "boundaries": [3, 4]},
                                 "item_key": {"concat": ["movieId", "bucket"], "sep": ":"}},
                         extras={"rating": "float32", "timestamp": "int64", "item_key": "string"})
    spec["features"].update({
        "rating_z": {"from": "rating", "group": "context", "transform": ["log1p", "standardize"]},
        "ts_bucket": {"from": "timestamp", "group": "context", "boundaries": [1e9, 1.2e9, 1.4e9]},
        "item_hash": {"from": "movieId", "group": "item", "hash_buckets": 1000},
        "key_id": {"from": "item_key", "group": "item", "min_count": 2},
    })
    return spec


def test_packed_ingest_gives_the_rows_of_the_per_feature_ingest(tmp_path, ratings_dir):
    spec = rich_spec()
    feats, packed = str(tmp_path / "features"), str(tmp_path / "packed")
    ingest(write_spec(tmp_path, spec), feats, root=ratings_dir, log=None)
    ingest(write_spec(tmp_path, spec), packed, root=ratings_dir, log=None, layout="packed")
    fields = packed_columns(Schema.load(os.path.join(packed, "schema.yaml")))
    assert sorted(fields) == ["__float32", "__int64", "__string"]                 # every packed list is exercised
    assert_same_dataset(feats, packed)
    assert os.path.getsize(split_files(packed, "train")[0]) < 0.8 * os.path.getsize(split_files(feats, "train")[0])


def test_vocab_from_a_packed_dataset(tmp_path, ratings_dir):
    import pandas as pd

    rows = pd.read_csv(os.path.join(ratings_dir, "r.csv"))
    cut = rows.timestamp.quantile(0.7)
    rows[rows.timestamp < cut].to_csv(tmp_path / "day1.csv", index=False)
    rows[rows.timestamp >= cut].to_csv(tmp_path / "day2.csv", index=False)
    day1, day2 = str(tmp_path / "d1"), str(tmp_path / "d2")
    spec = ml_small_spec("day1.csv", output={"layout": "packed"})           # the spec's key; --layout on day 2
    ingest(write_spec(tmp_path, spec, "d1.yaml"), day1, root=str(tmp_path), log=None)
    assert Schema.load(os.path.join(day1, "schema.yaml")).layout == PACKED
    ingest(write_spec(tmp_path, ml_small_spec("day2.csv"), "d2.yaml"), day2, root=str(tmp_path), log=None,
           vocab_from=day1, layout="packed")
    old = open(os.path.join(day1, "vocab", "item_id.txt")).read().split()
    new = open(os.path.join(day2, "vocab", "item_id.txt")).read().split()
    assert new[:len(old)] == old and len(new) > len(old)
    with open(os.path.join(day1, "stats.json")) as fh:
        rows1 = json.load(fh)["splits"]["train"]["rows"]
    df1 = read_split(day1, "train")                                          # rows.read_columns reads packed shards
    assert len(df1) == rows1 and set(old) <= set(df1.item_id.astype(str))


def test_converter_writes_packed(tmp_path):
    from tfmsr.cli import main

    src = datasets_dir("ali-ccp-sample")
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for out, extra in ((a, []), (b, ["--record-layout", "packed"])):  # Ali-CCP's --layout: its input files
        assert main(["data", "convert", "ali-ccp", "--src", src, "--out", out, "--layout", "preprocessed",
                     "--quiet"] + extra) == 0
    assert_same_dataset(a, b)


def test_packed_encoder_bytes_parse_with_protobuf():
    words, nums = encoder_dictionaries()
    keep = SEQ >= 0
    fields = {"__float32": ["f", "g"], "__int64": ["i", "n"], "__string": ["s", "t"]}
    ints, floats = np.array([1, -5, 300, 2 ** 40]), np.array([[0.5, -1.5], [1, 0], [2, 7], [3, 1e9]])
    rows = encode.split_records(encode.packed_examples(
        4, fields, [("i", "int", ints), ("f", "float", floats[:, 0]), ("g", "float", floats[:, 1])],
        [("s", CODES, words), ("n", CODES, nums), ("t", CODES[::-1], words)], [("q", SEQ[keep], keep.sum(1), words)]))
    vals, raw = VALS + [b""], INTS + [0]                                    # code -1: the missing value, last
    for r, c, c2, q, i, f in zip(rows, CODES, CODES[::-1], SEQ, ints, floats):
        feat = tf.train.Example.FromString(r).features.feature
        assert sorted(feat) == ["__float32", "__int64", "__string", "q"]
        assert feat["__float32"].float_list.value == list(f)
        assert feat["__int64"].int64_list.value == [i, raw[c]]
        assert feat["__string"].bytes_list.value == [vals[c], vals[c2]]
        assert feat["q"].bytes_list.value == [vals[x] for x in q if x >= 0]
    with pytest.raises(ValueError, match="do not match"):
        encode.packed_examples(4, {"__int64": ["i", "x"]}, [("i", "int", ints)], [], [])


def test_spec_output_layout_is_checked(tmp_path):
    from tfmsr.data.ingest import SpecError, load_spec

    spec = ml_small_spec("r.csv", output={"layout": "columns"})
    with pytest.raises(SpecError, match="output.layout.*features, packed"):
        load_spec(write_spec(tmp_path, spec))
    spec["output"]["layout"] = "packed"
    assert load_spec(write_spec(tmp_path, spec)).output["layout"] == "packed"
