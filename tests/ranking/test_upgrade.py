"""Checkpoints written before the stacked per-scenario layout (issue 31) still load: an old-layout checkpoint
(per-scenario towers ``towers/<s>/dense/<i>``, ``heads/<s>``; SAR-Net's ``specific_experts/<s>/kernel_<i>``) written with
tf.train.Checkpoint of plain variables is converted by tfmsr.ranking.upgrade and predicts as the model did."""
import re

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tfmsr.distribute.warm_start import object_paths
from tfmsr.ranking.models import build
from tfmsr.ranking.upgrade import upgrade_checkpoint
from tfmsr.serving.signatures import sample_batch
from tfmsr.serving.writer import build_model

PARAMS = {"mmoe": {"expert_hidden": [16], "tower": [8, 4]}, "shared_bottom": {"bottom": [16], "tower": [8]},
          "sarnet": {"expert_hidden": [8], "shared_experts": 2, "specific_experts": 2, "tower": [4]},
          "pepnet": {"hidden": [8, 4], "gate_hidden": 4, "scenario_towers": True}, "saml": {"hidden": [8, 4]}}


def old_layout(name: str, path: str, value: np.ndarray, num_scenarios: int) -> dict:
    """The pre-issue-31 checkpoint paths and values of one variable of the current model ``name``."""
    hidden, specific = len(PARAMS[name].get("tower", [])), PARAMS[name].get("specific_experts", 0)
    m = re.match(r"^(.+)/towers/mlp/dense/(\d+)/(kernel|bias)$", path)
    if m:                                                                # S towers: MLP layers, then a head
        p, i, w = m.groups()
        return {(f"{p}/towers/towers/{s}/dense/{i}/{w}" if int(i) < hidden else f"{p}/towers/heads/{s}/{w}"): v
                for s, v in enumerate(value)}
    m = re.match(r"^(model/(?:towers|heads))/(.+)$", path)
    if m and name == "pepnet":                                           # S PPNet towers and S heads
        return {f"{m[1]}/{s}/{m[2]}": v for s, v in enumerate(value)}
    if name == "saml":
        return old_saml_layout(path, value, num_scenarios)
    m = re.match(r"^(.+)/specific_experts/(kernel|bias)_(\d+)$", path)
    if m and specific:                                                   # S banks of `specific` experts
        p, w, i = m.groups()
        return {f"{p}/specific_experts/{s}/{w}_{i}": value[s * specific:(s + 1) * specific]
                for s in range(len(value) // specific)}
    return {path: value}


def old_saml_layout(path: str, value: np.ndarray, num_scenarios: int) -> dict:
    """SAML before issue 31: S Dense layers per branch layer (``branches/dense/<s>/<l>``) and S output units
    (``heads/<s>``); the specific tables ``[R, S d_l]`` (scenario s's slice s), the scenario table ``[S, S d_l]``
    whose off-diagonal slices no lookup read."""
    m = re.match(r"^(model/(?:branches/dense|heads))/(?:(\d+)/)?(kernel|bias)$", path)
    if m:
        return {f"{m[1]}/{s}/" + (f"{m[2]}/" if m[2] else "") + m[3]: v for s, v in enumerate(value)}
    if "/specific_embedding/scenario_table/" in path:
        S, d = value.shape
        table = np.random.default_rng(0).normal(size=(S, S * d)).astype(np.float32)
        for s in range(S):
            table[s, s * d:(s + 1) * d] = value[s]
        return {path: table}
    if "/specific_embedding/tables/" in path:
        return {path: value.reshape(-1, num_scenarios * value.shape[1])}
    return {path: value}


def write_tree(values: dict, prefix: str) -> str:
    """tf.train.Checkpoint of plain variables at the given object paths ("a/b/0/c": attribute, list, attribute)."""
    def node(items):
        children = {}
        for parts, v in items:
            children.setdefault(parts[0], []).append((parts[1:], v))
        built = {k: tf.Variable(c[0][1]) if not c[0][0] else node(c) for k, c in children.items()}
        if all(k.isdigit() for k in built):
            return [built[str(i)] for i in range(len(built))]
        mod = tf.Module()
        for k, v in built.items():
            setattr(mod, k, v)
        return mod

    tree = node([(p.split("/"), v) for p, v in values.items()])
    return tf.train.Checkpoint(**{k: getattr(tree, k) for k in vars(tree) if not k.startswith("_")}).write(prefix)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_old_per_scenario_checkpoint_converts_to_the_same_predictions(name, synth_schema, tmp_path):
    keras.utils.set_random_seed(0)
    trained = build(name, synth_schema, PARAMS[name])
    build_model(trained, synth_schema)
    batch = {k: tf.constant(v) for k, v in sample_batch(synth_schema, 64, seed=3).items()}
    want = trained(batch).numpy()
    old = {}
    for path, var in object_paths(tf.train.Checkpoint(model=trained)).items():
        old.update(old_layout(name, path, var.numpy(), synth_schema.num_scenarios))
    assert len(old) > len(trained.variables)                              # the old layout had more variables
    old_prefix = write_tree(old, str(tmp_path / "old" / "ckpt"))
    keras.utils.set_random_seed(1)                                       # a fresh model: other initial weights
    fresh = build(name, synth_schema, PARAMS[name])
    build_model(fresh, synth_schema)
    assert not np.allclose(fresh(batch).numpy(), want)
    counts = upgrade_checkpoint(fresh, old_prefix, str(tmp_path / "new" / "ckpt"))
    assert counts["joined"] >= 2
    tf.train.Checkpoint(model=fresh).read(str(tmp_path / "new" / "ckpt")).assert_existing_objects_matched()
    np.testing.assert_allclose(fresh(batch).numpy(), want, rtol=1e-5, atol=1e-6)


def test_a_missing_variable_is_named(synth_schema, tmp_path):
    model = build("shared_bottom", synth_schema, PARAMS["shared_bottom"])
    build_model(model, synth_schema)
    prefix = tf.train.Checkpoint(v=tf.Variable(1.0)).write(str(tmp_path / "other" / "ckpt"))
    with pytest.raises(KeyError, match="model/.*per-scenario layout"):
        upgrade_checkpoint(model, prefix, str(tmp_path / "new" / "ckpt"))
