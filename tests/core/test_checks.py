"""Parameter type checks (tfmsr/core/params.py) accept every documented form of a value: a named choice
given as a string or spelled out as a mapping (an initializer ``{normal: 0.05}``), and refuse the rest."""
import pytest

from tfmsr.core.errors import ConfigError
from tfmsr.ranking.config import load_config


@pytest.mark.parametrize("model", ["sainet", "fimn"])
def test_gaussian_attention_init_switch_is_accepted(model):
    cfg = load_config(raw={"model": {"name": model, "params": {"attention_init": {"normal": 0.05}}}})
    assert cfg["model"]["params"]["attention_init"] == {"normal": 0.05}


def test_a_list_for_a_named_choice_is_refused():
    with pytest.raises(ConfigError, match=r"parameter 'attention_init' must be a string or a mapping of strings to "
                                          r"numbers \(like its default 'glorot_uniform'\), got \[1\]"):
        load_config(raw={"model": {"name": "sainet", "params": {"attention_init": [1]}}})


def test_a_setting_added_since_a_run_is_not_a_difference():
    """``with_added_keys``: keys the stored config lacks come from the new one; keys both have keep the old value
    (so a real change still shows)."""
    from tfmsr.core.checks import config_diff, with_added_keys

    old = {"model": {"name": "dnn", "params": {"hidden": [8]}}, "train": {"epochs": 2}}
    new = {"model": {"name": "dnn", "params": {"hidden": [8], "embedding_l2": 0.0}}, "train": {"epochs": 2},
           "data": {"cache": "auto"}}
    assert config_diff(with_added_keys(old, new), new) == []
    changed = {**new, "train": {"epochs": 3}}
    assert config_diff(with_added_keys(old, changed), changed) == ["train.epochs: 2 -> 3"]
    assert with_added_keys(None, new) is None
