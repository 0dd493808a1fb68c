"""Typed model parameters (tfmsr/core/params.py): every kind of annotation refuses a wrong value naming the
key, unknown keys are refused with the known ones, fields and defaults are inherited, and the plain dict a
run stores is the one the former ``defaults`` dicts gave, for every registered model and shipped config."""
import glob
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional

import pytest
import yaml

from tfmsr.core.errors import ConfigError
from tfmsr.core.params import Initializer, Params, build_params, default, refuse
from tfmsr.ranking.config import load_config
from tfmsr.ranking.models import get_class as ranking_class
from tfmsr.ranking.models.base import RankingModel
from tfmsr.ranking.models.base import available as ranking_models
from tfmsr.retrieval.models.base import available as retrieval_models
from tfmsr.retrieval.models.base import get_class as retrieval_class

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tfmsr",
                       "configs")


@dataclass
class Base(Params):
    width: Optional[int] = None


@dataclass
class Every(Base):
    width: int = 8                                  # overrides the base's type and default
    rate: float = 0.5
    on: bool = True
    name: str = "relu"
    hidden: List[int] = default([4, 2])
    levels: List[List[int]] = default([[4], [2]])
    choice: Literal["a", "b"] = "a"
    init: Initializer = default({"normal": 0.05})
    per: Optional[Dict[Any, Dict[str, float]]] = None

    def check(self):
        if self.rate < 0:
            raise refuse("rate", f"rate must be >= 0, got {self.rate!r}")


@pytest.mark.parametrize("key,value,want", [
    ("width", 2.5, "an integer (like its default 8), got 2.5"),
    ("width", True, "an integer (like its default 8), got True"),
    ("rate", "high", "a number (like its default 0.5), got 'high'"),
    ("on", "yes", "true or false (like its default True), got 'yes'"),
    ("name", 3, "a string (like its default 'relu'), got 3"),
    ("hidden", "abc", "a list of integers (like its default [4, 2]), got 'abc'"),
    ("hidden", [4, "x"], "a list of integers (like its default [4, 2]), got [4, 'x']"),
    ("levels", [4, 2], "a list of lists of integers (like its default [[4], [2]]), got [4, 2]"),
    ("choice", "c", "a or b (like its default 'a'), got 'c'"),
    ("init", [1], "a string or a mapping of strings to numbers (like its default {'normal': 0.05}), got [1]"),
    ("init", {"normal": "big"}, "a string or a mapping of strings to numbers (like its default "
                                "{'normal': 0.05}), got {'normal': 'big'}"),
    ("per", {"a": 3}, "a mapping of anything to mappings of strings to numbers or null (like its default None), "
                      "got {'a': 3}"),
])
def test_a_wrong_type_names_the_key_and_what_it_must_be(key, value, want):
    with pytest.raises(ConfigError) as e:
        build_params(Every, {key: value}, "model 'm'")
    assert str(e.value) == f"model 'm': parameter '{key}' must be {want}" and e.value.key == key


def test_right_values_of_every_kind_are_kept_as_given():
    raw = {"width": 3, "rate": 1, "on": False, "name": "tanh", "hidden": [], "levels": [[1, 2]], "choice": "b",
           "init": "glorot_uniform", "per": {0: {"rows": 10}, "b": {"rows": 2.5}}}
    assert build_params(Every, raw, "m").to_dict() == raw
    assert build_params(Every, {"init": {"normal": 1}}, "m").init == {"normal": 1}


def test_unknown_keys_are_refused_listing_the_known_ones():
    with pytest.raises(ConfigError, match=r"^model 'm': unknown parameter\(s\) \['hiden', 'x'\] \(known: choice, "
                                          r"hidden, init, levels, name, on, per, rate, width\)$"):
        build_params(Every, {"hiden": [1], "x": 1, "rate": 0.1}, "model 'm'")


def test_fields_and_defaults_are_inherited_and_overridden():
    assert Base().to_dict() == {"width": None}
    assert Every().width == 8 and list(Every().to_dict())[0] == "width"
    assert ranking_class("dnn").all_defaults()["embedding_dim"] is None      # RankingModel's field
    assert ranking_class("deepfm").all_defaults()["embedding_dim"] == 16      # overridden by DeepFM
    assert retrieval_class("dssm").all_defaults()["embedding_dim"] == 16      # RetrievalModel's field
    for name in ranking_models():
        assert issubclass(ranking_class(name).Params, RankingModel.Params), name


def test_values_are_copies_never_shared_with_the_defaults_or_the_caller():
    raw = {"hidden": [8, 4]}
    a, b = build_params(Every, raw, "m"), build_params(Every, {}, "m")
    a.hidden.append(1)
    b.levels[0].append(9)
    assert raw == {"hidden": [8, 4]} and Every().hidden == [4, 2] and Every().levels == [[4], [2]]
    d = b.to_dict()
    d["levels"].append([0])
    assert b.levels == [[4, 9], [2]]


def test_a_models_value_check_names_the_model_and_the_key():
    with pytest.raises(ConfigError, match=r"^model 'deepfm': at least one of fm / dnn must be true$") as e:
        ranking_class("deepfm").typed_params({"fm": False, "dnn": False})
    assert e.value.key == "fm"
    with pytest.raises(ConfigError, match=r"^retrieval model 'sass': tau must be > 0, got 0$"):
        retrieval_class("sass").typed_params({"tau": 0})


def test_a_type_error_given_by_set_names_set():
    with pytest.raises(ConfigError, match=r"^--set model.params.num_experts=2.5: model 'mmoe': parameter "
                                          r"'num_experts' must be an integer \(like its default 4\), got 2.5$"):
        load_config(raw={"model": {"name": "mmoe"}}, overrides=["model.params.num_experts=2.5"])


def _shipped():
    """(config file, model class, its params) of every shipped config naming a model."""
    retrieval = set(retrieval_models())
    for path in sorted(glob.glob(os.path.join(CONFIGS, "*.yaml"))):
        model = (yaml.safe_load(open(path)) or {}).get("model") or {}
        if "name" in model:
            get = retrieval_class if model["name"] in retrieval else ranking_class
            yield os.path.basename(path), get(model["name"]), model.get("params") or {}


def test_the_stored_dict_is_the_former_defaults_merge_for_every_model_and_shipped_config():
    """What the former ``resolve`` stored (the class defaults updated by the config's params), and a fixed
    point: resolving a stored dict again, or through YAML, gives it back (a re-run compares equal)."""
    cases = [(n, ranking_class(n), {}) for n in ranking_models()]
    cases += [(n, retrieval_class(n), {}) for n in retrieval_models()] + list(_shipped())
    assert len(cases) >= 40
    for name, cls, params in cases:
        stored = cls.resolve(params)
        assert stored == {**cls.all_defaults(), **params}, name
        assert cls.resolve(stored) == stored == cls.typed_params(stored).to_dict(), name
        assert cls.resolve(yaml.safe_load(yaml.safe_dump(stored))) == stored, name


def test_a_built_model_keeps_plain_lists_keras_never_wraps_them(synth_dir, synth_schema):
    """The model's layers track their own lists; the params dataclass (not a Keras-tracked container) keeps
    plain ones, so the dict a run stores is plain YAML and the class defaults stay untouched."""
    from tfmsr.data.pipeline import make_dataset, split_files
    from tfmsr.ranking.models import build

    model = build("mmoe", synth_schema, {"expert_hidden": [8], "tower": [4]})
    x, _ = next(iter(make_dataset(split_files(synth_dir, "valid"), synth_schema, 8, training=False)))
    model(x)
    assert type(model.params.expert_hidden) is list and type(model.params.tower) is list
    stored = model.get_config()["params"]
    assert yaml.safe_load(yaml.safe_dump(stored)) == stored == {**ranking_class("mmoe").all_defaults(),
                                                                "expert_hidden": [8], "tower": [4]}
    assert ranking_class("mmoe").Params().expert_hidden == [256, 128]
