"""The shipped configs carry the defaults measured on the real datasets (issue 32; each config's header
gives the numbers); the papers' readings they replace stay switches."""
import copy

import pytest

from tfmsr.core.errors import ConfigError
from tfmsr.ranking.config import load_config
from tfmsr.ranking.models import build


def without_context(schema):
    """``schema`` without context / query features, as MovieLens, ml-latest-small and Douban are."""
    out = copy.deepcopy(schema)
    out.features = [f for f in out.features if f.group not in ("context", "query")]
    return out


def test_musenet_without_context_ships_one_module_and_keeps_the_learner_as_a_switch(synth_schema):
    schema = without_context(synth_schema)
    with pytest.raises(ConfigError, match="has no context features"):  # the paper's learner needs context
        build("musenet", schema, load_config("musenet")["model"]["params"])
    params = load_config("musenet_movielens")["model"]["params"]
    assert (params["assignment"], params["repeat_module"], params["embedding_batch_l2"]) == ("none", False, 0.03)
    model = build("musenet", schema, params)
    assert model.assignment == "none" and model.learner is None
    soft = build("musenet", schema, {**params, "assignment": "soft"})
    assert soft.assignment == "soft" and soft.learner.K == 4


def test_sainet_ships_the_batch_that_trains_it_within_the_benchmark_budget():
    cfg = load_config("sainet")
    assert (cfg["data"]["batch_size"], cfg["train"]["learning_rate"]) == (1024, 0.001)
    assert cfg["model"]["params"]["sdt"] is True  # SDT stays: w/o SDT did not win on every dataset


def test_fimn_ships_batch_1024():
    cfg = load_config("fimn")
    assert (cfg["data"]["batch_size"], cfg["train"]["learning_rate"]) == (1024, 0.001)
