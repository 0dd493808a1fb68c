"""SAINet modules against NumPy re-computations of their equations (SAINet.md section 4), and the model."""
import numpy as np
import pytest
import tensorflow as tf
from conftest import quick_config

from tfmsr.features import Schema, SchemaError
from tfmsr.layers.sainet import (ScenarioAdaptiveBlock, ScenarioAwareDNNTower, ScenarioAwareInterestExtracting,
                                 ScenarioTailoring, TargetAwareInterestFusion)
from tfmsr.ranking.models import build

RNG = np.random.default_rng(0)
B, N, D, DS, H = 3, 5, 8, 4, 2


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def masked_softmax(s, mask):
    s = np.where(mask, s, -1e9)
    e = np.exp(s - s.max(-1, keepdims=True)) * mask
    return e / np.maximum(e.sum(-1, keepdims=True), 1e-30)


def inputs():
    x = RNG.normal(size=(B, N, D)).astype(np.float32)
    m_s = RNG.normal(size=(B, N, DS)).astype(np.float32)
    e_st = RNG.normal(size=(B, DS)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)
    return x, m_s, e_st, mask


def np_sie(layer, x, m_s, mask):
    """Eq. 2-3 with the separate item and scenario projections W_i and W_S."""
    mha = layer.mha
    wq, wk, wv, wo = (w.numpy() for w in (mha.wq, mha.wk, mha.wv, mha.wo))
    q = x @ wq[:D] + m_s @ wq[D:]
    k = x @ wk[:D] + m_s @ wk[D:]
    v = x @ wv[:D] + m_s @ wv[D:]
    dk = D // H
    heads = []
    for h in range(H):
        sl = slice(h * dk, (h + 1) * dk)
        s = np.einsum("bik,bjk->bij", q[..., sl], k[..., sl]) / np.sqrt(dk)
        heads.append(np.einsum("bij,bjk->bik", masked_softmax(s, mask[:, None, :]), v[..., sl]))
    return np.concatenate(heads, -1) @ wo


def test_sie_matches_equations_2_3():
    x, m_s, _, mask = inputs()
    layer = ScenarioAwareInterestExtracting(num_heads=H)
    out = layer(tf.constant(x), tf.constant(m_s), mask=tf.constant(mask)).numpy()
    assert out.shape == (B, N, D)
    np.testing.assert_allclose(out, np_sie(layer, x, m_s, mask), rtol=1e-4, atol=1e-5)
    # padding behaviours do not change the real positions' output
    x2 = x.copy()
    x2[0, 3:] = 100.0
    out2 = layer(tf.constant(x2), tf.constant(m_s), mask=tf.constant(mask)).numpy()
    np.testing.assert_allclose(out2[0, :3], out[0, :3], rtol=1e-4, atol=1e-5)


def test_sie_residual_adds_the_input():
    """residual=True: X + MultiHead(X) (the [21] sublayer); the attention part is eq. 2-3 unchanged."""
    x, m_s, _, mask = inputs()
    layer = ScenarioAwareInterestExtracting(num_heads=H, residual=True)
    out = layer(tf.constant(x), tf.constant(m_s), mask=tf.constant(mask)).numpy()
    np.testing.assert_allclose(out, x + np_sie(layer, x, m_s, mask), rtol=1e-4, atol=1e-5)


def test_stm_matches_equations_4_5():
    x, _, e_st, _ = inputs()
    layer = ScenarioTailoring(gamma=2.0)
    out = layer(tf.constant(x), tf.constant(e_st)).numpy()
    w, b = (v.numpy() for v in layer.gate.weights)
    cat = np.concatenate([x, np.broadcast_to(e_st[:, None], (B, N, DS))], -1)
    np.testing.assert_allclose(out, x * 2.0 * sigmoid(cat @ w + b), rtol=1e-5, atol=1e-6)


def test_block_stacks_sie_then_stm_and_switches_remove_them():
    x, m_s, e_st, mask = inputs()
    args = [tf.constant(x), tf.constant(m_s), tf.constant(e_st)]
    block = ScenarioAdaptiveBlock(num_heads=H)
    out = block(*args, mask=tf.constant(mask)).numpy()
    x_hat = np_sie(block.sie, x, m_s, mask)
    w, b = (v.numpy() for v in block.stm.gate.weights)
    gate = 2.0 * sigmoid(np.concatenate([x_hat, np.broadcast_to(e_st[:, None], (B, N, DS))], -1) @ w + b)
    np.testing.assert_allclose(out[mask], (x_hat * gate)[mask], rtol=1e-4, atol=1e-5)
    no_sie = ScenarioAdaptiveBlock(num_heads=H, sie=False)
    assert no_sie.sie is None and no_sie(*args, mask=tf.constant(mask)).shape == (B, N, D)
    no_stm = ScenarioAdaptiveBlock(num_heads=H, stm=False)
    np.testing.assert_allclose(no_stm(*args, mask=tf.constant(mask)).numpy()[mask],
                               np_sie(no_stm.sie, x, m_s, mask)[mask], rtol=1e-4, atol=1e-5)


def test_tif_matches_equations_7_8():
    x, _, e_st, mask = inputs()
    z = RNG.normal(size=(B, 6)).astype(np.float32)
    layer = TargetAwareInterestFusion(attention_dim=5)
    out = layer(tf.constant(z), tf.constant(x), mask=tf.constant(mask)).numpy()
    wq, wk, wv = (l.kernel.numpy() for l in (layer.w_q, layer.w_k, layer.w_v))
    alpha = np.einsum("ba,bna->bn", z @ wq, x @ wk)  # eq. 8, unscaled
    mu = masked_softmax(alpha, mask)
    np.testing.assert_allclose(out, np.einsum("bn,bnd->bd", mu, x @ wv), rtol=1e-4, atol=1e-5)
    assert mu[2, 1:].sum() == 0 and np.allclose(mu.sum(1), 1)


@pytest.mark.parametrize("gamma", [1.0, 2.0])
def test_sdt_matches_equation_11(gamma):
    """gamma = 1: eq. 11 as printed; gamma = 2: the LHUC gate 2 sigmoid the section builds on."""
    h0 = RNG.normal(size=(B, 7)).astype(np.float32)
    _, _, e_st, _ = inputs()
    layer = ScenarioAwareDNNTower(hidden=[6, 3], gamma=gamma)
    out = layer(tf.constant(h0), tf.constant(e_st)).numpy()
    h = h0
    for gate, dense in zip(layer.gates, layer.dense):
        wg, bg = (v.numpy() for v in gate.weights)
        wt, bt = (v.numpy() for v in dense.weights)
        h = np.maximum((h * gamma * sigmoid(np.concatenate([h, e_st], -1) @ wg + bg)) @ wt + bt, 0)
    np.testing.assert_allclose(out, h, rtol=1e-4, atol=1e-5)


def test_sainet_trains(synth_dir, tmp_path):
    from tfmsr.ranking.train import train

    summary = train(quick_config("sainet", {"tower": [32, 16], "blocks": 1}, validate=False), synth_dir,
                    str(tmp_path / "run"), log=lambda m: None)
    assert np.isfinite(summary["history"]["loss"]).all() and summary["steps"] == 19


@pytest.mark.parametrize("ablation", [{"sie": False}, {"stm": False}, {"tif": False}, {"sdt": False}])
def test_table3_ablations_take_a_gradient_step(synth_dir, synth_schema, ablation):
    from tfmsr.data.pipeline import make_dataset, split_files
    from tfmsr.ranking.train import compile_model

    x, y = next(iter(make_dataset(split_files(synth_dir, "valid"), synth_schema, 64, training=False)))
    model = compile_model(build("sainet", synth_schema, {"tower": [16], "blocks": 1, **ablation}), quick_config())
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])
    p = model(x).numpy()
    assert ((p > 0) & (p < 1)).all()


def test_sainet_defaults_and_missing_behaviour_scenarios(synth_schema):
    model = build("sainet", synth_schema)
    assert model.params.blocks == 2 and model.params.heads == 4 and model.params.gamma == 2.0
    assert model.params.tower == [512, 256, 128, 64]
    # SIE keeps the Add of the attention sublayer by default; residual: false is eq. 2 as printed
    assert [b.sie.residual for b in model.blocks] == [True, True]
    assert [b.sie.residual for b in build("sainet", synth_schema, {"residual": False}).blocks] == [False, False]
    raw = synth_schema.to_dict()
    raw["features"] = [f for f in raw["features"] if f["name"] != "hist_scenario"]
    no_scen = Schema.from_dict(raw, source="noscen.yaml")
    with pytest.raises(SchemaError, match="noscen.yaml: sainet's SIE needs the scenario of each behaviour"):
        build("sainet", no_scen)
    assert build("sainet", no_scen, {"sie_scenario": False}).params.sie_scenario is False


@pytest.mark.parametrize("attention_init,gaussian", [(None, False), ({"normal": 0.05}, True)])
def test_attention_projections_start_glorot_unless_gaussian(synth_dir, synth_schema, attention_init, gaussian):
    """SIE's and TIF's projections follow ``attention_init`` (default Glorot), STM's gate and the tower ``init``."""
    from tfmsr.data.pipeline import make_dataset, split_files

    params = {"tower": [16], "blocks": 1} if attention_init is None else {
        "tower": [16], "blocks": 1, "attention_init": attention_init}
    model = build("sainet", synth_schema, params)
    model(next(iter(make_dataset(split_files(synth_dir, "valid"), synth_schema, 8, training=False)))[0])
    mha, tif = model.blocks[0].sie.mha, model.tif
    attention = [mha.wq, mha.wk, mha.wv, mha.wo, tif.w_q.kernel, tif.w_k.kernel, tif.w_v.kernel]
    for w in attention:
        fan_in, fan_out = w.shape
        glorot = np.sqrt(2.0 / (fan_in + fan_out))  # std of Glorot uniform
        want = 0.05 if gaussian else glorot
        assert np.std(w.numpy()) == pytest.approx(want, rel=0.25), (w.name, glorot)
        assert abs(glorot - 0.05) > 0.25 * 0.05  # the two readings are told apart
    for w in (model.blocks[0].stm.gate.kernel, model.tower.dense[0].kernel):
        assert np.std(w.numpy()) == pytest.approx(0.05, rel=0.25), w.name


def test_behaviours_looked_up_at_real_positions_equal_the_gathered_sequence(synth_dir, synth_schema):
    """``interests`` looks each behaviour field and scenario up at the real positions only: the logits and every
    gradient (tables included) equal the lookups of the whole ``[B, N]`` sequences gathered at those positions."""
    from tfmsr.data.pipeline import make_dataset, split_files
    from tfmsr.layers import behavior_scenario_embedding, embed_behavior
    from tfmsr.layers.attention import pack

    x = next(iter(make_dataset(split_files(synth_dir, "valid"), synth_schema, 32, training=False)))[0]
    model = build("sainet", synth_schema, {"tower": [16], "blocks": 2})
    model(x)

    def gathered(self, x):
        beh = embed_behavior(self.embedding, x, self.schema)
        packed = pack(beh.mask)
        h, m_s = packed.gather(beh.keys), packed.gather(behavior_scenario_embedding(self.embedding, x, self.schema))
        e_st = self.embedding.scenario(x)
        for block in self.blocks:
            h = block(h, m_s, e_st, packed=packed)
        return h, packed, beh.target, e_st, beh.features + (self.behavior_scenario.name,)

    def logits_and_grads(interests):
        model.interests = interests.__get__(model)
        with tf.GradientTape() as tape:
            logits = model.logits(x)
        del model.interests
        return logits, [tf.convert_to_tensor(g) for g in tape.gradient(logits, model.trainable_variables)]

    real = model.embedding.mask(x, "hist_item_id").numpy()
    assert 0 < real.sum() < real.size  # some behaviours are padding
    want, want_grads = logits_and_grads(gathered)
    got, got_grads = logits_and_grads(type(model).interests)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for w, g, v in zip(want_grads, got_grads, model.trainable_variables):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6, err_msg=v.name)
