"""The behaviour sequence found from the schema's groups (tfmsr/layers/behavior.py)."""
import pytest

from tfmsr.features import SchemaError
from tfmsr.layers import behavior_pairs, behavior_scenario, require_behavior


def test_behavior_found_from_groups(synth_schema):
    pairs = [(s.name, t.name) for s, t in behavior_pairs(synth_schema)]
    assert pairs == [("hist_item_id", "item_id"), ("hist_cate_id", "cate_id")]
    assert behavior_scenario(synth_schema).name == "hist_scenario"


def test_models_needing_behaviour_fail_clearly(synth_schema):
    from tfmsr.features import Schema

    d = synth_schema.to_dict()
    d["features"] = [f for f in d["features"] if f["group"] != "behavior"]
    schema = Schema.from_dict(d, source="nobehaviour.yaml")
    with pytest.raises(SchemaError, match="nobehaviour.yaml: model 'din' needs a user behaviour sequence"):
        require_behavior(schema, "din")
