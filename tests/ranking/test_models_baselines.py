"""Baseline models: each builds from the planted schema, trains a quick epoch, and multi-scenario models
keep their scenario-specific parameters to their own scenario's examples."""
import re

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from conftest import quick_config
from tfmsr.data.pipeline import make_dataset, split_files
from tfmsr.ranking.models import available, build
from tfmsr.ranking.train import compile_model

BASELINES = ["wdl", "deepfm", "dcnv2", "din", "bst", "mmoe", "ple", "star", "pepnet", "sarnet", "hinet"]
# small shapes: the point is the wiring, not capacity
SMALL = {
    "wdl": {"hidden": [32, 16]},
    "deepfm": {"hidden": [32, 32]},
    "dcnv2": {"hidden": [32, 16], "cross_layers": 2},
    "din": {"hidden": [32, 16]},
    "bst": {"hidden": [64, 32], "num_heads": 4},
    "mmoe": {"expert_hidden": [32, 16], "tower": [8]},
    "ple": {"expert_hidden": [[32], [16]], "tower": [8]},
    "star": {"hidden": [32, 16]},
    "pepnet": {"hidden": [32, 16], "gate_hidden": 16},
    "sarnet": {"expert_hidden": [16], "shared_experts": 2, "tower": [8]},
    "hinet": {"expert_hidden": [16], "shared_experts": 2, "specific_experts": 2, "san_hidden": [8],
              "task_expert_hidden": [16], "tower": [8]},
}
# models with one tower per scenario (tower_<s> / head_<s> variables), with the params that give them
TOWER_MODELS = {"mmoe": {}, "ple": {}, "hinet": {}, "shared_bottom": {"bottom": [32], "tower": [8]},
                "pepnet": {"scenario_towers": True}}
# models whose scenario-specific parameters are rows of one variable (row s belongs to scenario s)
# (sarnet's specific experts: one bank of S x specific experts, rows s*specific.. are scenario s's)
ROW_PARTITIONED = {"star": r"/(W_p|b_p|gamma_p|beta_p|moving_mean|moving_var):",
                   "sarnet": r"/(w_s|b_s|specific_experts/kernel_\d+|specific_experts/bias_\d+):"}


def batches(data_dir, schema, split, batch, n):
    ds = make_dataset(split_files(data_dir, split), schema, batch, training=False)
    return list(ds.take(n))


def bce(p, y):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def test_every_baseline_is_registered():
    names = set(available())
    assert set(BASELINES) | {"dnn", "shared_bottom"} <= names


@pytest.mark.parametrize("name", BASELINES)
def test_trains_one_epoch(name, synth_dir, synth_schema):
    cfg = quick_config(name, SMALL[name], learning_rate=0.003)
    keras.utils.set_random_seed(0)
    model = compile_model(build(name, synth_schema, cfg["model"]["params"]), cfg)
    (xv, yv), = batches(synth_dir, synth_schema, "valid", 1000, 1)
    before = bce(model(xv).numpy(), yv.numpy())
    ds = make_dataset(split_files(synth_dir, "train"), synth_schema, 256, training=True, seed=0)
    hist = model.fit(ds, epochs=1, steps_per_epoch=19, verbose=0)
    p = model(xv).numpy()
    assert np.all(np.isfinite(p)) and p.min() > 0 and p.max() < 1
    assert np.isfinite(hist.history["loss"][-1])
    assert bce(p, yv.numpy()) < before
    # every scenario head answers, and the own-scenario column is the model's output
    probs = model.scenario_probs(xv).numpy()
    assert probs.shape == (len(p), synth_schema.num_scenarios)
    own = probs[np.arange(len(p)), xv[synth_schema.scenario.name].numpy()]
    np.testing.assert_allclose(own, p, rtol=1e-4, atol=1e-5)


def one_scenario_batch(synth_dir, synth_schema, s):
    (x, y), = batches(synth_dir, synth_schema, "train", 1000, 1)
    keep = tf.equal(x[synth_schema.scenario.name], s)
    return {k: tf.boolean_mask(v, keep) for k, v in x.items()}, tf.boolean_mask(y, keep)


def sgd_step(name, params, synth_dir, synth_schema, s, lr=0.5):
    """Build, take one plain-SGD step on a batch of scenario ``s``; (model, before, after) by variable name."""
    keras.utils.set_random_seed(0)
    model = build(name, synth_schema, params)
    x, y = one_scenario_batch(synth_dir, synth_schema, s)
    model(x)
    before = {v.name: v.numpy().copy() for v in model.variables}
    with tf.GradientTape() as tape:
        loss = keras.losses.BinaryCrossentropy()(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    for v, g in zip(model.trainable_variables, grads):
        if g is not None:
            v.assign_sub(lr * tf.convert_to_tensor(g))
    return model, before, {v.name: v.numpy() for v in model.variables}


def moved_rows(before, after, names, groups):
    """Per name, which of ``groups`` equal row blocks of the stacked variable (axis 0) changed."""
    out = {}
    for n in names:
        diff = np.any(before[n] != after[n], axis=tuple(range(1, before[n].ndim)))
        assert len(diff) % groups == 0, f"{n}: {len(diff)} rows for {groups} scenarios"
        out[n] = diff.reshape(groups, -1).any(axis=1)
    return out


@pytest.mark.parametrize("name", sorted(TOWER_MODELS))
def test_scenario_towers_only_learn_from_their_scenario(name, synth_dir, synth_schema):
    S, s = synth_schema.num_scenarios, 1
    params = {**SMALL.get(name, {}), **TOWER_MODELS[name]}
    model, before, after = sgd_step(name, params, synth_dir, synth_schema, s)
    stacked = [n for n in before if re.search(r"/(towers|heads)/", n)]   # [S, ...] variables: row t is tower t
    if stacked:
        assert len(stacked) >= 4 and all(before[n].shape[0] == S for n in stacked), f"{name}: {stacked}"
        for n, rows in moved_rows(before, after, stacked, S).items():
            assert rows.tolist() == [t == s for t in range(S)], f"{name}: {n} rows moved {rows.tolist()}"
        return
    towers = {}
    for n in before:
        m = re.search(r"/(?:tower|head)_(\d+)/", n)
        if m:
            towers.setdefault(int(m.group(1)), []).append(n)
    assert sorted(towers) == list(range(S)), f"{name}: expected one tower per scenario, got {sorted(towers)}"
    for t, names in towers.items():
        moved = any(not np.array_equal(before[n], after[n]) for n in names)
        assert moved == (t == s), f"{name}: tower {t} {'moved' if moved else 'did not move'} on a scenario-{s} batch"


@pytest.mark.parametrize("name", sorted(ROW_PARTITIONED))
def test_scenario_parameters_only_learn_from_their_scenario(name, synth_dir, synth_schema):
    s = 2
    model, before, after = sgd_step(name, SMALL[name], synth_dir, synth_schema, s)
    rows = [n for n in before if re.search(ROW_PARTITIONED[name], n)]
    assert rows, f"{name}: no scenario-partitioned variables found"
    own_moved = False
    for n, changed in moved_rows(before, after, rows, synth_schema.num_scenarios).items():
        assert not np.delete(changed, s).any(), f"{name}: {n} changed for another scenario"
        own_moved |= bool(changed[s])
    assert own_moved


@pytest.mark.parametrize("pooling", ["target", "flatten", "mean"])
def test_bst_pooling_default_target(pooling, synth_dir, synth_schema):
    """BST pools the Transformer outputs by the candidate's token (default), all slots (flatten) or their mean."""
    from tfmsr.layers import context_inputs, embed_behavior

    params = {**SMALL["bst"], **({} if pooling == "target" else {"pooling": pooling})}
    model = build("bst", synth_schema, params)
    assert model.params.pooling == pooling
    (x, _), = batches(synth_dir, synth_schema, "valid", 64, 1)
    z = model.logits(x).numpy()
    beh = embed_behavior(model.embedding, x, synth_schema)
    mask = tf.concat([tf.ones_like(beh.mask[:, :1]), beh.mask], axis=1)
    t = model.blocks[0](model.positions(tf.concat([beh.target[:, None], beh.keys], axis=1)), mask=mask).numpy()
    m = mask.numpy()[..., None].astype(np.float32)
    seq = {"target": t[:, 0], "flatten": (t * m).reshape(len(t), -1), "mean": (t * m).sum(1) / m.sum(1)}[pooling]
    h = np.concatenate([context_inputs(model, x, beh.features).numpy(), seq], axis=-1)
    np.testing.assert_allclose(z, model.out(model.mlp(tf.constant(h))).numpy()[:, 0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("l2", [0.0, 1e-3])
def test_embedding_l2_penalises_every_table(l2, synth_dir, synth_schema):
    """``embedding_l2``: the model's regularisation loss is l2 * the sum of squares of every embedding table
    (and none without it)."""
    model = build("dnn", synth_schema, {"hidden": [8], "embedding_l2": l2})
    (x, _), = batches(synth_dir, synth_schema, "valid", 16, 1)
    model(x)
    tables = [w.numpy() for w in model.embedding.weights if "embeddings" in w.name]
    assert tables
    expected = l2 * sum(float(np.sum(t.astype(np.float64) ** 2)) for t in tables)
    got = float(tf.add_n(model.losses)) if model.losses else 0.0
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_ple_shared_gate_own_keeps_every_level_to_its_scenario(synth_dir, synth_schema):
    """``shared_gate: own``: a scenario-s batch moves only scenario s's specific experts at every level (the
    paper's reading moves every scenario's lower-level experts through the shared gate), and every scenario's
    head (the model re-run in it) answers the model's output in the row's own scenario."""
    S, s = synth_schema.num_scenarios, 2
    model, before, after = sgd_step("ple", {**SMALL["ple"], "shared_gate": "own"}, synth_dir, synth_schema, s)
    banks = [n for n in before if re.search(r"cgc_\d/specific/(kernel|bias)_0:", n)]
    assert len(banks) == 4, banks
    for n, rows in moved_rows(before, after, banks, S).items():
        assert rows.tolist() == [t == s for t in range(S)], f"{n} rows moved {rows.tolist()}"
    (x, _), = batches(synth_dir, synth_schema, "valid", 200, 1)
    probs = model.scenario_probs(x).numpy()
    own = probs[np.arange(len(probs)), x[synth_schema.scenario.name].numpy()]
    np.testing.assert_allclose(own, model(x).numpy(), rtol=1e-4, atol=1e-5)


def test_hinet_san_top_k_own_head_is_its_column_of_every_head(synth_dir, synth_schema):
    """``san_top_k: 1``: the own pass (own and top scenario's sub-experts only) answers each row's column of the
    every-scenario pass (which masks SAN to the same top weights)."""
    keras.utils.set_random_seed(0)
    model = build("hinet", synth_schema, {**SMALL["hinet"], "san_top_k": 1})
    assert synth_schema.num_scenarios > 2 and model.extraction.top_k == 1
    (x, _), = batches(synth_dir, synth_schema, "valid", 200, 1)
    p = model(x).numpy()
    probs = model.scenario_probs(x).numpy()
    np.testing.assert_allclose(probs[np.arange(len(p)), x[synth_schema.scenario.name].numpy()], p,
                               rtol=1e-4, atol=1e-5)
