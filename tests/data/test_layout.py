"""Record layouts (tfmsr/data/layout.py): per-feature and packed shards parse to the same batches and train the
same; a dataset written before the layouts (no ``layout`` key) still reads; bad packed records are named."""
import os

import numpy as np
import pytest
import tensorflow as tf
import yaml
from conftest import quick_config
from test_data import SCHEMA, columns

from tfmsr.data.layout import FEATURES, PACKED, packed_columns
from tfmsr.data.pipeline import DataError, check_first_record, make_dataset, read_errors, split_files
from tfmsr.data.tfrecord import DatasetWriter, encode_examples
from tfmsr.features import Schema
from tfmsr.features.schema import SchemaError


def _dataset(root, layout, n=300):
    out = os.path.join(str(root), layout)
    with DatasetWriter(out, SCHEMA, rows_per_shard=120, layout=layout) as w:
        w.write("train", columns(n))
    return out


def _batches(data, **kw):
    schema = Schema.load(os.path.join(data, "schema.yaml"))
    files = split_files(data, "train")
    ds = make_dataset(files, schema, 64, **kw)
    return list(ds.take(6)) if kw.get("training") else list(ds)


def _assert_same(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert sorted(xa) == sorted(xb)
        for k in xa:
            assert xa[k].dtype == xb[k].dtype and xa[k].shape == xb[k].shape, k
            np.testing.assert_array_equal(xa[k].numpy(), xb[k].numpy(), err_msg=k)
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())


def test_both_layouts_parse_to_identical_batches(tmp_path):
    feat, packed = _dataset(tmp_path, FEATURES), _dataset(tmp_path, PACKED)
    with open(os.path.join(feat, "schema.yaml")) as fh:
        assert "layout" not in yaml.safe_load(fh)  # per-feature: the schema.yaml of before
    with open(os.path.join(packed, "schema.yaml")) as fh:
        assert yaml.safe_load(fh)["layout"] == "packed"
    size = {d: sum(os.path.getsize(f) for f in split_files(d, "train")) for d in (feat, packed)}
    assert size[packed] < 0.7 * size[feat]
    _assert_same(_batches(feat, training=False), _batches(packed, training=False))
    _assert_same(_batches(feat, training=True, seed=3, shuffle_buffer=100),
                 _batches(packed, training=True, seed=3, shuffle_buffer=100))


def test_dataset_written_before_the_layouts_still_reads(tmp_path):
    data = tmp_path / "old"
    (data / "train").mkdir(parents=True)
    raw = SCHEMA.to_dict()
    assert "layout" not in raw
    with open(data / "schema.yaml", "w") as fh:
        yaml.safe_dump(raw, fh, sort_keys=False)
    with tf.io.TFRecordWriter(str(data / "train" / "part-00000.tfrecord")) as w:
        for r in encode_examples(columns(100), SCHEMA):  # one feature per column, as always
            w.write(r)
    old = Schema.load(str(data / "schema.yaml"))
    assert old.layout == FEATURES
    check_first_record(split_files(str(data), "train")[0], old)
    _assert_same(_batches(str(data), training=False), _batches(_dataset(tmp_path, PACKED, 100), training=False))
    with pytest.raises(SchemaError, match="layout 'columnar': expected one of features, packed"):
        Schema.from_dict({**raw, "layout": "columnar"}, source="s.yaml")


def _packed_shard(tmp_path, edit, row, n=30):
    """A packed shard of ``n`` rows whose record ``row`` went through ``edit(features)``."""
    schema = Schema.from_dict({**SCHEMA.to_dict(), "layout": PACKED}, source="test")
    recs = encode_examples(columns(n), schema, PACKED)
    ex = tf.train.Example.FromString(recs[row])
    edit(ex.features.feature)
    recs[row] = ex.SerializeToString()
    (tmp_path / "train").mkdir(parents=True)
    with tf.io.TFRecordWriter(str(tmp_path / "train" / "part-00003.tfrecord")) as w:
        for r in recs:
            w.write(r)
    return split_files(str(tmp_path), "train"), schema


def _read_error(files, schema) -> str:
    with pytest.raises(DataError) as err:
        with read_errors(files, schema):
            for _ in make_dataset(files, schema, 8, training=False):
                pass
    return str(err.value)


def test_a_short_packed_record_names_file_record_and_field(tmp_path):
    files, schema = _packed_shard(tmp_path, lambda f: f["__int64"].int64_list.value.pop(), 13)
    ints = packed_columns(schema)["__int64"]
    assert ints == ["scenario", "user_id", "item_id", "big"]
    msg = _read_error(files, schema)
    assert ("part-00003.tfrecord: record 13 has packed field '__int64' (4 values: scenario, user_id, item_id, big) "
            "of the wrong type or shape (expected 4 int64 values;") in msg


def test_a_packed_record_without_its_floats_or_with_a_bad_label_is_named(tmp_path):
    files, schema = _packed_shard(tmp_path / "a", lambda f: f.__delitem__("__float32"), 5)
    assert ("part-00003.tfrecord: record 5 is missing required packed field '__float32' (3 values: click, price, "
            "oracle_p)") in _read_error(files, schema)

    def bad_label(f):
        f["__float32"].float_list.value[0] = 2.0  # the label, first float column

    files, schema = _packed_shard(tmp_path / "b", bad_label, 9)
    msg = _read_error(files, schema)
    assert "part-00003.tfrecord: record 9" in msg and "'click'" in msg


def test_first_record_check_knows_the_layouts(tmp_path):
    files, schema = _packed_shard(tmp_path / "a", lambda f: f["__string"].bytes_list.value.pop(), 0)
    with pytest.raises(DataError, match=r"part-00003.tfrecord: record 0 has 1 values in the packed field "
                                        r"'__string' \(2 values: query, tag\), expected 2"):
        check_first_record(files[0], schema)
    with pytest.raises(DataError, match=r"record 0 is in the packed layout, but test declares the features layout"):
        check_first_record(files[0], SCHEMA)
    feat = _dataset(tmp_path / "b", FEATURES, 20)
    with pytest.raises(DataError, match=r"record 0 is in the features layout, but test declares the packed layout"):
        check_first_record(split_files(feat, "train")[0], schema)


def test_both_layouts_train_the_same_loss_trajectory(tmp_path):
    from tfmsr.data.synth import generate
    from tfmsr.ranking.train import train

    losses = {}
    for layout in (FEATURES, PACKED):
        data = str(tmp_path / layout)
        generate(data, rows=1000, users=100, items=80, categories=10, brands=20, progress=False, layout=layout)
        cfg = quick_config("dnn", {"hidden": [16]}, epochs=3, steps_per_epoch=2, validate=False)
        cfg["data"]["cache"] = False  # the streaming parse, both layouts
        losses[layout] = train(cfg, data, str(tmp_path / f"run-{layout}"), log=lambda m: None)["history"]["loss"]
    assert len(losses[PACKED]) == 3
    np.testing.assert_allclose(losses[PACKED], losses[FEATURES], rtol=1e-6)




def test_relayout_writes_the_same_rows_in_the_other_layout():
    from tfmsr.data.tfrecord import relayout

    packed = Schema.from_dict({**SCHEMA.to_dict(), "layout": PACKED}, source="test")
    cols = columns(40)
    feat, pack = encode_examples(cols, SCHEMA), encode_examples(cols, packed, PACKED)
    assert relayout(pack, SCHEMA, FEATURES) == feat and relayout(feat, SCHEMA, PACKED) == pack
    assert relayout([], SCHEMA, PACKED) == []


def test_field_of_finds_a_column_in_either_layout():
    from tfmsr.data.layout import field_of

    packed = Schema.from_dict({**SCHEMA.to_dict(), "layout": PACKED}, source="test")
    recs = {s.layout: tf.train.Example.FromString(encode_examples(columns(5), s, s.layout)[3]).features.feature
            for s in (SCHEMA, packed)}
    for name in ("scenario", "click", "price", "big", "tag", "hist_item_id"):
        got = []
        for s in (SCHEMA, packed):
            key, i = field_of(s, name)
            feat = recs[s.layout][key]
            values = list(getattr(feat, feat.WhichOneof("kind")).value)
            got.append(values if i is None else [values[i]])
        assert got[0] == got[1], name
    with pytest.raises(KeyError, match="no column named 'nope'"):
        field_of(packed, "nope")


def test_a_dataset_holds_one_layout(tmp_path):
    out = str(tmp_path / "d")
    with pytest.raises(ValueError, match=r"records in the features layout after records in the packed layout"):
        with DatasetWriter(out, SCHEMA, layout=PACKED) as w:
            w.write("train", columns(10))
            w.write("train", columns(5), encode_examples(columns(5), SCHEMA))  # records already written, per feature
    assert not os.path.exists(out)
    with pytest.raises(ValueError, match="unknown layout 'rows'"):
        DatasetWriter(out, SCHEMA, layout="rows")
