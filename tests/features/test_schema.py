"""Schema: YAML round trip and one clear error per mistake."""
import copy

import pytest
import yaml

from tfmsr.features import Schema, SchemaError

GOOD = {
    "scenario": {"name": "scenario", "values": ["home", "search"]},
    "labels": ["click"],
    "features": [
        {"name": "user_id", "kind": "categorical", "group": "user", "vocab_size": 100, "dim": 8},
        {"name": "item_id", "kind": "categorical", "group": "item", "vocab_size": 50},
        {"name": "query", "kind": "categorical", "group": "query", "hash_buckets": 1000},
        {"name": "price", "kind": "numeric", "group": "item", "mean": 2.0, "std": 0.5},
        {"name": "hist_item_id", "kind": "sequence", "group": "behavior", "share": "item_id", "length": 20},
    ],
    "extras": {"oracle_p": "float32"},
    "oracle": "oracle_p",
}


def broken(path, value):
    raw = copy.deepcopy(GOOD)
    node = raw
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return raw


def test_round_trip(tmp_path):
    schema = Schema.from_dict(GOOD, source="good.yaml")
    path = str(tmp_path / "schema.yaml")
    schema.save(path)
    again = Schema.load(path)
    assert again == schema
    assert again.num_scenarios == 2 and again.label == "click"
    assert [f.name for f in again.group("item")] == ["item_id", "price"]
    assert again.feature("hist_item_id").table == "item_id"
    assert set(again.tables()) == {"user_id", "item_id", "query"}
    assert again.table_owner(again.feature("hist_item_id")).vocab_size == 50


@pytest.mark.parametrize("path,value,message", [
    (("features", 0, "kind"), "embedding", "feature 'user_id': unknown kind 'embedding'"),
    (("features", 0, "group"), "profile", "feature 'user_id': unknown group 'profile'"),
    (("features", 1, "vocab_size"), None, "feature 'item_id': missing vocabulary"),
    (("features", 4, "share"), "movie_id", "feature 'hist_item_id': shares the table of 'movie_id', which does not exist"),
    (("features", 4, "share"), "price", "shares 'price', which owns no embedding table"),
    (("features", 4, "length"), None, "feature 'hist_item_id': a sequence needs 'length'"),
    (("features", 2, "name"), "user_id", "duplicate name 'user_id'"),
    (("scenario",), None, "no scenario"),
    (("scenario", "values"), [], "'values' must be a non-empty list"),
    (("labels",), [], "no labels"),
    (("oracle",), "p_true", "oracle 'p_true' must name one of the extras"),
    (("extras", "oracle_p"), "double", "extra 'oracle_p': unknown dtype 'double'"),
])
def test_each_mistake_has_one_clear_error(tmp_path, path, value, message):
    raw = broken(path, value)
    file = tmp_path / "schema.yaml"
    file.write_text(yaml.safe_dump(raw))
    with pytest.raises(SchemaError) as err:
        Schema.load(str(file))
    assert str(err.value).startswith(str(file) + ": ")
    assert message in str(err.value)


def test_unknown_feature_key_and_unreadable_file(tmp_path):
    raw = broken(("features", 0, "vocabulary"), 10)
    with pytest.raises(SchemaError, match="feature 'user_id': unknown key"):
        Schema.from_dict(raw, source="x.yaml")
    with pytest.raises(SchemaError, match="cannot read the schema"):
        Schema.load(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("features: [unclosed")
    with pytest.raises(SchemaError, match="not valid YAML"):
        Schema.load(str(bad))
