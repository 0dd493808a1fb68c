"""``tfmsr score`` reads both record layouts (tfmsr/data/layout.py), whatever the layout the model trained on:
the same scores row for row; in the packed layout a packed field with the wrong number of values counts its
columns missing (not scored), and a mixed input is refused."""
import os

import pandas as pd
import pytest
import tensorflow as tf
from test_export import exported  # noqa: F401  (session fixture)

from tfmsr.data.layout import FEATURES, PACKED, packed_columns
from tfmsr.data.pipeline import DataError, split_files
from tfmsr.data.synth import generate
from tfmsr.features import Schema
from tfmsr.serving.scoring import score

QUIET = dict(progress=lambda s: None)
SIZES = dict(rows=2000, users=300, items=200, categories=20, brands=60, rows_per_shard=100, seed=5)


@pytest.fixture(scope="module")
def both_layouts(tmp_path_factory):
    """The same planted rows written in each layout (the test split: 200 rows, 2 shards)."""
    root = tmp_path_factory.mktemp("layouts")
    out = {}
    for layout in (FEATURES, PACKED):
        out[layout] = str(root / layout)
        generate(out[layout], progress=False, layout=layout, **SIZES)
    return out


def test_scores_of_a_packed_dataset_equal_those_of_the_per_feature_one(exported, both_layouts, tmp_path):
    _, saved = exported["dnn"]
    res = {lay: score(saved, os.path.join(d, "test"), str(tmp_path / f"{lay}.parquet"),
                      keep=["user_id", "scenario", "click", "oracle_p"], batch_size=64, **QUIET)
           for lay, d in both_layouts.items()}
    assert res[PACKED]["rows"] == res[PACKED]["scored"] == res[FEATURES]["scored"] == 200
    assert res[PACKED]["oov_values"] == res[FEATURES]["oov_values"]
    a, b = pd.read_parquet(tmp_path / f"{FEATURES}.parquet"), pd.read_parquet(tmp_path / f"{PACKED}.parquet")
    pd.testing.assert_frame_equal(a, b)
    with pytest.raises(DataError, match="features layout but .* in the packed layout"):
        score(saved, ",".join(os.path.join(d, "test") for d in both_layouts.values()), str(tmp_path / "x.csv"),
              **QUIET)


def test_a_packed_record_with_a_short_field_is_counted_missing(exported, both_layouts, tmp_path):
    _, saved = exported["dnn"]
    data = both_layouts[PACKED]
    schema = Schema.load(os.path.join(data, "schema.yaml"))
    recs = next(iter(tf.data.TFRecordDataset(split_files(data, "test")[0]).batch(12))).numpy().tolist()
    ex = tf.train.Example.FromString(recs[4])
    ex.features.feature["__float32"].float_list.value.pop()  # a value short: every float column missing
    recs[4] = ex.SerializeToString()
    shard = str(tmp_path / "bad.tfrecord")
    with tf.io.TFRecordWriter(shard) as w:
        for r in recs:
            w.write(r)
    floats = [f.name for f in schema.of_kind("numeric")]
    assert floats and set(floats) <= set(packed_columns(schema)["__float32"])
    res = score(saved, shard, str(tmp_path / "s.parquet"), keep=["click"], batch_size=4, **QUIET)
    assert (res["rows"], res["scored"], res["missing_features"]) == (12, 11, 1)  # its batch parsed again exactly
    assert res["missing_by_feature"] == {n: 1 for n in floats}
    assert res["missing_keep"] == {"click": 1}
    df = pd.read_parquet(tmp_path / "s.parquet")
    assert df["prob"].isna().tolist() == [i == 4 for i in range(12)]
