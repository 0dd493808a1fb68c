"""FIMN modules against NumPy re-computations of their equations (FIMN.md section 4), SEM's monotonicity,
the model with every Table 3 ablation, explain() and the Fig. 4/5 script."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from conftest import quick_config

from tfmsr.core.errors import ConfigError
from tfmsr.core.rundir import read_stats
from tfmsr.data.pipeline import make_dataset, split_files
from tfmsr.features import Schema, SchemaError
from tfmsr.layers.fimn import (MultiAspectInterestExtractor, ScenarioAwareInterestFusion, ScenarioEnhancing,
                               ScenarioMutual, frequency_features)
from tfmsr.layers.interaction import fm_bi_interaction, fm_second_order
from tfmsr.ranking.models import build
from tfmsr.ranking.train import compile_model

RNG = np.random.default_rng(0)
B, L, A, D, DS, S = 4, 6, 3, 8, 5, 4


def build_fimn(schema, params=None):
    """FIMN with the statistics of the dataset beside ``schema``, as the trainer passes them."""
    return build("fimn", schema, params, read_stats(os.path.dirname(schema.source)))


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def softplus(z):
    return np.log1p(np.exp(z))


def softmax(s, mask=None, axis=-1):
    mask = np.ones_like(s, bool) if mask is None else np.broadcast_to(mask, s.shape)
    s = np.where(mask, s, -1e9)
    e = np.exp(s - s.max(axis, keepdims=True)) * mask
    return e / np.maximum(e.sum(axis, keepdims=True), 1e-30)


def f32(*shape):
    return RNG.normal(size=shape).astype(np.float32)


FREQ = frequency_features({"a": {"rows": 500}, "b": {"rows": 250}, "c": {"rows": 120}, "d": {"rows": 5}},
                          ["a", "b", "c", "d"])


# ------------------------------------------------------------------------------------------------ SEM
def test_frequency_features():
    rows = np.array([500, 250, 120, 5], float)
    np.testing.assert_allclose(FREQ[:, 0], rows / rows.sum(), rtol=1e-6)
    np.testing.assert_allclose(FREQ[:, 1], np.log1p(rows) / np.log1p(rows.sum()), rtol=1e-6)
    assert ((FREQ >= 0) & (FREQ <= 1)).all()
    with pytest.raises(ValueError, match=r"stats.json: no 'rows' \(impressions\) for scenario\(s\) \['b'\]"):
        frequency_features({"a": {"rows": 1}}, ["a", "b"], "stats.json")


def np_sem(layer, e_s, scenario):
    h = -layer.frequency.numpy()
    raws = [w.numpy() for w in layer.raw_kernels]
    for i, (w, b) in enumerate(zip(raws, layer.biases)):
        h = h @ softplus(w) + b.numpy()
        if i < len(raws) - 1:
            h = np.tanh(h)
    v_se = 2.0 * sigmoid(h)
    return e_s * v_se[scenario], v_se


def test_sem_matches_equations_1_2():
    e_s, scenario = f32(B, DS), np.array([0, 3, 1, 3])
    layer = ScenarioEnhancing(FREQ, hidden=[7, 6], gamma=2.0)
    out, v_se = (t.numpy() for t in layer(tf.constant(e_s), tf.constant(scenario)))
    want, table = np_sem(layer, e_s, scenario)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v_se, table[scenario], rtol=1e-5, atol=1e-6)
    assert all((k.numpy() > 0).all() for k in layer.kernels())  # positive reparameterisation
    assert ((table > 0) & (table < 2)).all()


@pytest.mark.parametrize("trial", range(4))
def test_sem_is_monotone_for_any_weights(trial):
    """Lower frequency -> larger v_se in every dimension, whatever the (trained) raw weights are."""
    layer = ScenarioEnhancing(FREQ, hidden=[16, 8])
    layer(tf.zeros((1, DS)), tf.zeros((1,), tf.int64))
    rng = np.random.default_rng(trial)
    scale = [0.05, 1.0, 3.0, 6.0][trial]
    for w in layer.raw_kernels + layer.biases:   # arbitrary "trained" values, large negative raws included
        w.assign(rng.normal(0, scale, w.shape))
    table = layer.scenario_weights().numpy()
    order = np.argsort(FREQ[:, 0])               # least traffic first: d, c, b, a
    assert np.all(np.diff(table[order], axis=0) <= 0)
    if trial < 2:                                # unsaturated weights: strictly larger
        assert np.all(np.diff(table[order], axis=0) < 0)
    # on arbitrary statistics: v <= v' entry-wise => MLP(-v) >= MLP(-v'), and d v_se / d v_s <= 0
    v = tf.constant(rng.uniform(0, 1, (64, 2)), tf.float32)
    v2 = v + tf.constant(rng.uniform(0, 0.5, (64, 2)), tf.float32)
    assert np.all(layer.monotonic_mlp(-v).numpy() >= layer.monotonic_mlp(-v2).numpy())
    with tf.GradientTape() as tape:
        tape.watch(v)
        y = 2.0 * tf.sigmoid(layer.monotonic_mlp(-v))
    jac = tape.batch_jacobian(y, v).numpy()
    assert np.all(jac <= 0)


def test_sem_default_init_favours_the_long_tail(synth_schema):
    model = build_fimn(synth_schema)
    model(next(iter(make_dataset(split_files(os.path.dirname(synth_schema.source), "valid"), synth_schema, 8,
                                 training=False)))[0])
    stats = json.load(open(os.path.join(os.path.dirname(synth_schema.source), "stats.json")))
    shares = [stats["splits"]["train"]["scenarios"][n]["share"] for n in synth_schema.scenario.values]
    np.testing.assert_allclose(model.sem.frequency.numpy()[:, 0], shares, rtol=1e-6)
    w = model.sem.scenario_weights().numpy().mean(axis=1)
    assert np.all(np.diff(w[np.argsort(shares)]) < 0), w


# ------------------------------------------------------------------------------------------------ MIE
def test_fm_bi_interaction_is_eq4_and_keeps_fm_second_order():
    a, b = f32(B, D), f32(B, D)
    np.testing.assert_allclose(fm_bi_interaction(tf.stack([a, b], 1)).numpy(), a * b, rtol=1e-5, atol=1e-6)
    fields = f32(B, 4, D)
    want = sum((fields[:, i] * fields[:, j]).sum(-1) for i in range(4) for j in range(i + 1, 4))
    np.testing.assert_allclose(fm_second_order(tf.constant(fields)).numpy(), want, rtol=1e-4, atol=1e-5)


def mie_inputs():
    e_s, target, beh = f32(B, DS), f32(B, A * D), f32(B, L, A * D)
    mask = np.array([[1, 1, 1, 0, 0, 0], [1] * 6, [1, 0, 0, 0, 0, 0], [0] * 6], bool)
    return e_s, target, beh, mask


def test_mie_matches_equations_3_to_7():
    e_s, target, beh, mask = mie_inputs()
    layer = MultiAspectInterestExtractor(A)
    inputs = [tf.constant(e_s), tf.constant(target), tf.constant(beh)]
    out = layer(*inputs, mask=tf.constant(mask)).numpy()
    assert out.shape == (B, A, D)
    weights = layer.attention(*inputs, mask=tf.constant(mask)).numpy()        # [B, A, L]
    e_hat = e_s @ layer.w_e.kernel.numpy()                                    # W_e e~_s
    for j, fta in enumerate(layer.fta):
        t_j = target[:, j * D:(j + 1) * D]                                    # eq. 3
        q = 0.5 * ((e_hat + t_j) ** 2 - (e_hat ** 2 + t_j ** 2))              # eq. 4
        kv = beh[:, :, j * D:(j + 1) * D]                                     # eq. 5
        wq, wk, wv, wo = (w.numpy() for w in (fta.wq, fta.wk, fta.wv, fta.wo))
        s = np.einsum("bk,blk->bl", q @ wq, kv @ wk) / np.sqrt(wk.shape[1])   # eq. 7
        head = np.einsum("bl,blk->bk", softmax(s, mask), kv @ wv)
        np.testing.assert_allclose(weights[:3, j], softmax(s, mask)[:3], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(out[:, j], head @ wo, rtol=1e-4, atol=1e-5)  # eq. 6
    np.testing.assert_allclose(out[3], 0.0)                                   # no behaviours: no interest
    beh2 = beh.copy()
    beh2[0, 3:] = 50.0                                                        # padding is ignored
    out2 = layer(tf.constant(e_s), tf.constant(target), tf.constant(beh2), mask=tf.constant(mask)).numpy()
    np.testing.assert_allclose(out2[0], out[0], rtol=1e-5, atol=1e-6)


def test_mie_all_fields_at_once_has_the_gradient_of_one_fta_per_field():
    """The masked call (every field in one gather and one segment softmax) against each field's own FTA layer:
    the same interests and the same gradient for every input and weight."""
    e_s, target, beh, mask = (tf.constant(t) for t in mie_inputs())
    layer = MultiAspectInterestExtractor(A)
    layer(e_s, target, beh, mask=mask)
    names = [w.name.split("/", 1)[1] for w in layer.fta[1].weights]
    assert names == [f"fta_1/{n}:0" for n in ("W_Q", "W_K", "W_V", "W_O")]          # as when called
    probe = tf.constant(f32(B, A, D))
    per_field = lambda: tf.stack([fta(q, k, k, mask=mask) for q, k, fta in
                                  zip(layer.queries(e_s, target), layer.split(beh), layer.fta)], axis=1)
    got, want = [], []
    for fn, out in ((lambda: layer(e_s, target, beh, mask=mask), got), (per_field, want)):
        with tf.GradientTape() as tape:
            tape.watch([e_s, target, beh])
            y = fn()
            loss = tf.reduce_sum(y * probe)
        out.extend([y] + tape.gradient(loss, [e_s, target, beh] + layer.trainable_variables))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ SIF
def test_sif_matches_equations_8_to_14_and_stops_the_gradient():
    e_s, interests = tf.constant(f32(B, DS)), tf.constant(f32(B, A, D))
    layer = ScenarioAwareInterestFusion(gate_dim=7, gamma=2.0)
    fused, e_ia, v_ie = (t.numpy() for t in layer(e_s, interests))
    E = interests.numpy()
    x = np.concatenate([e_s.numpy(), E.reshape(B, A * D)], -1)                # eq. 8
    w_fg, b_fg = (v.numpy() for v in layer.w_fg.weights)
    h = np.maximum(x @ w_fg + b_fg, 0)                                        # eq. 9
    w_ia, b_ia = (v.numpy() for v in layer.w_ia.weights)
    w_ie, b_ie = (v.numpy() for v in layer.w_ie.weights)
    want_ia = (2.0 * sigmoid(h @ w_ia + b_ia)).reshape(B, A, D)               # eq. 10, 12
    want_ie = softmax(h @ w_ie + b_ie)                                        # eq. 11
    np.testing.assert_allclose(e_ia, want_ia, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v_ie, want_ie, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused, (want_ie[..., None] * want_ia * E).sum(1), rtol=1e-5, atol=1e-6)  # 13-14
    # stop_gradient(E_I): the gates do not send gradient into the interests
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(interests)
        f, ia, ie = layer(e_s, interests)
        gates = tf.reduce_sum(ia) + tf.reduce_sum(ie * tf.range(A, dtype=tf.float32))
    g = tape.gradient(gates, interests)
    assert g is None or np.allclose(g.numpy(), 0)
    np.testing.assert_allclose(tape.gradient(f, interests).numpy(),
                               np.broadcast_to(want_ie[..., None] * want_ia, (B, A, D)), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ SMM
@pytest.mark.parametrize("hidden", [(), (7,)])
def test_smm_matches_equations_15_to_18(hidden):
    h = tf.constant(f32(B, 13))
    layer = ScenarioMutual(S, D, attention_dim=6, projection_hidden=hidden)
    out, alpha, theta = (t.numpy() for t in layer(h))
    x = h.numpy()
    for dense in layer.projection.dense:                                       # shared ReLU layers, if any
        k, b0 = (v.numpy() for v in dense.weights)
        x = np.maximum(x @ k + b0, 0.0)
    w, b = (v.numpy() for v in layer.w_m_proj.weights)
    m = (x @ w + b).reshape(B, S, D)                                           # eq. 15 (projection + reshape)
    wi, wj, z, wm = (l.kernel.numpy() for l in (layer.w_query, layer.w_key, layer.z, layer.w_gate))
    want_out, want_alpha, want_theta = np.zeros((B, S, D)), np.zeros((B, S, S)), np.zeros((B, S))
    for i in range(S):
        a = np.stack([np.tanh(m[:, i] @ wi + m[:, j] @ wj) @ z[:, 0] for j in range(S)], 1)  # eq. 16
        others = np.arange(S) != i
        want_alpha[:, i] = softmax(a, others[None])
        m_hat = np.einsum("bj,bjd->bd", want_alpha[:, i], m)                  # eq. 17
        th = sigmoid(np.concatenate([m[:, i], m_hat], -1) @ wm)[:, 0]          # eq. 18
        want_theta[:, i] = th
        want_out[:, i] = th[:, None] * m[:, i] + (1 - th[:, None]) * m_hat
    np.testing.assert_allclose(alpha, want_alpha, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.diagonal(alpha, axis1=1, axis2=2), 0.0)
    np.testing.assert_allclose(alpha.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(theta, want_theta, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, want_out, rtol=1e-4, atol=1e-5)
    own = RNG.integers(0, S, B)                                                 # row s of each example only
    rows = np.arange(B)
    out_s, alpha_s, theta_s = (t.numpy() for t in layer(h, tf.constant(own)))
    np.testing.assert_allclose(alpha_s, want_alpha[rows, own], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(theta_s, want_theta[rows, own], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_s, want_out[rows, own], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ model
SMALL = {"embedding_dim": 8, "sem_hidden": [4], "gate_dim": 16, "attention_dim": 8, "tower": [16]}
ABLATIONS = {"FIMN": {}, "FIMN-SEM": {"sem": False}, "FIMN-MIE": {"mie": False}, "FIMN-SIF": {"sif": False},
             "FIMN-SMM": {"smm": False}}
KEYS = {"sem_weight": "sem", "intra_gate": "sif", "intensity": "sif", "contribution": "sif", "mutual": "smm",
        "theta": "smm", "attention": "mie"}


def batch(synth_dir, schema, split="valid", n=512):
    return next(iter(make_dataset(split_files(synth_dir, split), schema, n, training=False)))


@pytest.mark.parametrize("variant", sorted(ABLATIONS))
def test_every_table3_variant_trains_and_explains(variant, synth_dir, synth_schema):
    """A few Adam steps (eager: tracing the train step costs more than the steps on a shared 2-core box;
    the graph path is covered by the figure and export tests) on one batch: every weight of the modules
    that are on gets a gradient and the loss goes down."""
    params = {**SMALL, **ABLATIONS[variant]}
    keras.utils.set_random_seed(0)
    model = compile_model(build_fimn(synth_schema, params), quick_config("fimn", params, learning_rate=0.01))
    model.run_eagerly = True
    x, y = batch(synth_dir, synth_schema, "train", 256)
    with tf.GradientTape() as tape:
        loss = keras.losses.BinaryCrossentropy()(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    assert not [v.name for v, g in zip(model.trainable_variables, grads) if g is None]
    for sub in ("sem", "mie", "sif", "smm"):
        assert any(f"/{sub}/" in v.name for v in model.trainable_variables) == params.get(sub, True), sub
    losses = [model.train_on_batch(x, y) for _ in range(6)]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    p = model(x).numpy()
    assert ((p > 0) & (p < 1)).all()
    probs = model.scenario_probs(x).numpy()
    own = probs[np.arange(len(p)), x[synth_schema.scenario.name].numpy()]
    np.testing.assert_allclose(own, p, rtol=1e-4, atol=1e-5)
    # explain(): exactly the quantities of the modules that are on, with the documented shapes
    e = {k: v.numpy() for k, v in model.explain(x).items()}
    assert set(e) == {k for k, m in KEYS.items() if params.get(m, True)}
    n, a, d, s = len(p), len(model.interest_names), SMALL["embedding_dim"], synth_schema.num_scenarios
    assert model.interest_names == ["item_id", "cate_id"]
    length = x["hist_item_id"].shape[1]
    shapes = {"sem_weight": (n, d), "intra_gate": (n, a, d), "intensity": (n, a), "contribution": (n, a),
              "mutual": (n, s, s), "theta": (n, s), "attention": (n, a, length)}
    for k, v in e.items():
        assert v.shape == shapes[k], k
    if "contribution" in e:
        np.testing.assert_allclose(e["contribution"].sum(-1), 1.0, rtol=1e-5)
        assert ((e["intensity"] > 0) & (e["intensity"] < 2)).all()
        np.testing.assert_allclose(e["intensity"], e["intra_gate"].mean(-1), rtol=1e-6)
    if "attention" in e:
        real = (x["hist_item_id"].numpy() > 0)[:, None, :]
        has = real.any(-1)[:, 0]
        np.testing.assert_allclose(e["attention"][has].sum(-1), 1.0, rtol=1e-5)
        assert (e["attention"][~np.broadcast_to(real, e["attention"].shape)] == 0).all()
    if "mutual" in e:
        np.testing.assert_allclose(e["mutual"].sum(-1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(np.diagonal(e["mutual"], axis1=1, axis2=2), 0.0)


def test_each_tower_learns_only_from_its_scenario(synth_dir, synth_schema):
    s = 3
    keras.utils.set_random_seed(0)
    model = build_fimn(synth_schema, SMALL)
    x, y = batch(synth_dir, synth_schema, "train", 1000)
    keep = tf.equal(x[synth_schema.scenario.name], s)
    x, y = {k: tf.boolean_mask(v, keep) for k, v in x.items()}, tf.boolean_mask(y, keep)
    model(x)
    before = [v.numpy().copy() for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        loss = keras.losses.BinaryCrossentropy()(y, model(x, training=True))
    for v, g in zip(model.trainable_variables, tape.gradient(loss, model.trainable_variables)):
        if g is not None:
            v.assign_sub(0.5 * tf.convert_to_tensor(g))
    towers = [(w, before[i]) for i, w in enumerate(model.trainable_variables) if "/towers/" in w.name]
    assert towers                                                               # stacked: row t = tower t
    for w, old in towers:
        rows = [t for t in range(synth_schema.num_scenarios) if not np.array_equal(old[t], w.numpy()[t])]
        assert rows == [s], w.name


def test_stats_source_param_errors_and_checkpoint(synth_dir, synth_schema, tmp_path):
    x, _ = batch(synth_dir, synth_schema, n=16)
    raw = synth_schema.to_dict()
    names = synth_schema.scenario.values
    # built without the dataset statistics: one clear error, or the statistics as a param
    lone = tmp_path / "lone"
    lone.mkdir()
    Schema.from_dict(raw).save(str(lone / "schema.yaml"))
    schema = Schema.load(str(lone / "schema.yaml"))
    with pytest.raises(SchemaError, match=r"lone/schema.yaml: fimn's SEM \(eq. 1\) needs each scenario's impressions"):
        build("fimn", schema, SMALL)
    build("fimn", schema, {**SMALL, "sem": False})(x)   # FIMN-SEM needs no statistics
    # the statistics are a constructor input: no stats.json is opened beside the schema
    from_input = build("fimn", schema, SMALL, read_stats(synth_dir))
    from_input(x)
    np.testing.assert_allclose(from_input.sem.frequency.numpy(), build_fimn(synth_schema, SMALL).frequency(
        read_stats(synth_dir)), rtol=1e-6)
    given = {n: {"rows": r} for n, r in zip(names, [10, 20, 30, 40, 50])}
    m = build("fimn", schema, {**SMALL, "scenario_stats": given})
    m(x)
    np.testing.assert_allclose(m.sem.frequency.numpy()[:, 0], np.arange(1, 6) / 15, rtol=1e-6)
    with pytest.raises(ConfigError, match=r"model param scenario_stats: no 'rows' \(impressions\) for scenario"):
        build("fimn", schema, {**SMALL, "scenario_stats": {"s0": {"rows": 3}}})
    with pytest.raises(ConfigError, match="parameter .embedding_dim. must be an integer"):
        build_fimn(synth_schema, {**SMALL, "embedding_dim": None})
    # the statistics are a checkpointed weight: a restored model keeps the training-time values
    trained = build_fimn(synth_schema, SMALL)
    trained(x)
    path = tf.train.Checkpoint(model=trained).write(str(tmp_path / "ckpt" / "c"))
    tf.train.Checkpoint(model=m).read(path).expect_partial()
    np.testing.assert_allclose(m.sem.frequency.numpy(), trained.sem.frequency.numpy())
    np.testing.assert_allclose(m(x).numpy(), trained(x).numpy(), rtol=1e-5, atol=1e-6)


def test_defaults_follow_section_5_1_5(synth_schema):
    model = build_fimn(synth_schema)
    p = model.params
    assert p.embedding_dim == 32 and p.gamma == 2.0 and p.init == {"normal": 0.05}
    assert p.sem and p.mie and p.sif and p.smm and model.multi_head
    assert synth_schema.feature("hist_item_id").length == 30
    # the Gaussian is for the DNN parameters; MIE's attention projections start as Glorot (attention_init)
    assert p.attention_init == "glorot_uniform" and model.mie.kernel_init == "glorot_uniform"
    assert build_fimn(synth_schema, {"attention_init": {"normal": 0.05}}).mie.kernel_init == {"normal": 0.05}
    assert model.sif.kernel_init == {"normal": 0.05}


@pytest.mark.slow
def test_figure_script_trains_then_loads(synth_dir, tmp_path):
    from pipelines import fimn_figure

    model_dir, out = str(tmp_path / "run"), str(tmp_path / "fig")
    sets = ["model.params.embedding_dim=8", "model.params.tower=[8]", "model.params.gate_dim=8",
            "train.epochs=1", "train.steps_per_epoch=5", "train.validate=false", "data.batch_size=128"]
    args = ["--model-dir", model_dir, "--data", synth_dir, "--out-dir", out, "--max-examples", "600"]
    summary = fimn_figure.main(args + [f"--set={s}" for s in sets])
    assert os.path.exists(os.path.join(model_dir, "stats.json"))  # the trainer keeps SEM's statistics
    for name in ("fimn_interests.png", "fimn_mutual.png", "fimn_figure.json"):
        with open(os.path.join(out, name), "rb") as fh:
            head = fh.read(8)
        assert head.startswith(b"\x89PNG") or name.endswith(".json")
    assert not [f for f in os.listdir(out) if ".tmp-" in f]
    assert summary["examples"] == 600 and summary["interests"] == ["item_id", "cate_id"]
    mean_alpha = np.array(summary["mean_alpha"], dtype=float)
    np.testing.assert_allclose(np.nansum(mean_alpha, axis=1), 1.0, rtol=1e-4)
    assert -1.0 <= summary["spearman_alpha_vs_similarity"] <= 1.0
    per = summary["per_scenario"]
    shares = [per[n]["traffic_share"] for n in summary["scenarios"]]
    weights = [per[n]["sem_weight_mean"] for n in summary["scenarios"]]
    assert np.all(np.diff(np.array(weights)[np.argsort(shares)]) < 0)
    for n in summary["scenarios"]:
        assert set(per[n]["fta_entropy"]) == {"item_id", "cate_id"}
        assert all(0.0 <= v <= 1.0 + 1e-5 for v in per[n]["fta_entropy"].values())
    again = fimn_figure.main(args)   # a finished run is loaded, not retrained
    assert again["mean_alpha"] == summary["mean_alpha"]
    with pytest.raises(ValueError, match="needs SIF and SMM"):
        from tfmsr.ranking.train import train
        train(quick_config("fimn", {**SMALL, "smm": False}, steps_per_epoch=2, validate=False), synth_dir,
              str(tmp_path / "nosmm"), log=lambda m: None)
        fimn_figure.main(["--model-dir", str(tmp_path / "nosmm"), "--data", synth_dir, "--out-dir", out])


def test_attention_entropy_is_one_for_uniform_weights_and_zero_for_one_behaviour():
    from pipelines.fimn_figure import attention_entropy

    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], bool)
    w = np.zeros((3, 2, 4), np.float32)
    w[0, 0] = 0.25                            # uniform over 4: mean pooling
    w[0, 1] = [1, 0, 0, 0]                    # all on one behaviour
    w[1, :, :2] = [[0.5, 0.5], [0.9, 0.1]]
    w[2, :, 0] = 1.0                          # a single behaviour: undefined
    h = attention_entropy(tf.constant(w), tf.constant(mask)).numpy()
    np.testing.assert_allclose(h[:2], [[1.0, 0.0], [1.0, -(0.9 * np.log(0.9) + 0.1 * np.log(0.1)) / np.log(2)]],
                               rtol=1e-5, atol=1e-6)
    assert np.isnan(h[2]).all()
