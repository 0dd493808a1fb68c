"""SAML: every module against a NumPy re-computation of its equation, the gradient mask, the auxiliary loss,
the Table IV ablation switches, training and the alpha/g figure."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from conftest import quick_config

from tfmsr.core.errors import ConfigError
from tfmsr.data.pipeline import make_dataset, split_files
from tfmsr.features import Schema, SchemaError
from tfmsr.layers.saml import (AuxiliaryNetwork, MultiBranchNetwork, MutualUnit, ScenarioAwareAttention,
                               ScenarioAwareEmbedding)
from tfmsr.ranking.models import build

RNG = np.random.default_rng(7)


def random_batch(schema, b=16, rng=RNG):
    """Random ids inside each vocabulary (0 = padding included), right-padded sequences, scenarios, numerics."""
    x = {schema.scenario.name: tf.constant(rng.integers(0, schema.num_scenarios, b), tf.int64)}
    for f in schema.features:
        vocab = schema.table_owner(f).vocab_size
        if f.kind == "numeric":
            x[f.name] = tf.constant(rng.normal(size=b), tf.float32)
        elif f.kind == "categorical":
            x[f.name] = tf.constant(rng.integers(0, vocab, b), tf.int64)
        else:
            ids = rng.integers(1, vocab, (b, f.length))
            lengths = rng.integers(0, f.length + 1, b)
            ids[np.arange(f.length)[None, :] >= lengths[:, None]] = 0
            x[f.name] = tf.constant(ids, tf.int64)
    return x


def relu(z):
    return np.maximum(z, 0.0)


def softmax(z, mask=None):
    if mask is not None:
        z = np.where(mask, z, -np.inf)
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    e = e if mask is None else e * mask
    return e / e.sum(axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- III-C-1 embedding
def test_scenario_aware_embedding_matches_numpy(synth_schema):
    schema, dg, dl = synth_schema, 6, 3
    layer = ScenarioAwareEmbedding(schema, global_dim=dg, specific_dim=dl)
    x = random_batch(schema)
    f = layer(x)
    s = x["scenario"].numpy()
    S = schema.num_scenarios
    G = {n: t.embeddings.numpy() for n, t in layer.global_embedding.tables.items()}
    L = {n: t.embeddings.numpy().reshape(-1, S, dl)                    # row v * S + s = E_l^{t,s}[v]
         for n, t in layer.specific_embedding.tables.items()}
    Gs = layer.global_embedding.scenario_table.embeddings.numpy()
    Ls = layer.specific_embedding.scenario_table.embeddings.numpy()       # [S, d_l]: scenario s in subspace s

    def glob(name):
        return G[schema.feature(name).table][x[name].numpy()]

    def spec(name):
        ids = x[name].numpy()
        table = L[schema.feature(name).table]
        return table[ids, s] if ids.ndim == 1 else table[ids, s[:, None]]

    def mmean(e, name):
        m = (x[name].numpy() > 0)[..., None].astype(np.float32)
        return (e * m).sum(1) / np.maximum(m.sum(1), 1.0)

    cats = [f_.name for g in ("user", "item", "context", "query") for f_ in schema.group(g, "categorical")]
    nums = [f_ for f_ in schema.of_kind("numeric")]
    indep = np.concatenate([glob(n) for n in cats] + [Gs[s], mmean(glob("hist_scenario"), "hist_scenario")]
                           + [((x[f_.name].numpy() - f_.mean) / f_.std)[:, None] for f_ in nums], axis=1)
    dep = np.concatenate([spec(n) for n in cats] + [Ls[s], mmean(spec("hist_scenario"), "hist_scenario")], axis=1)
    np.testing.assert_allclose(f.independent.numpy(), indep, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f.dependent.numpy(), dep, rtol=1e-5, atol=1e-6)
    # attention tokens: [candidate, behaviours], item id then category, in both subspaces
    tok_g = np.concatenate([np.concatenate([glob("item_id"), glob("cate_id")], 1)[:, None],
                            np.concatenate([glob("hist_item_id"), glob("hist_cate_id")], 2)], axis=1)
    tok_l = np.concatenate([np.concatenate([spec("item_id"), spec("cate_id")], 1)[:, None],
                            np.concatenate([spec("hist_item_id"), spec("hist_cate_id")], 2)], axis=1)
    np.testing.assert_allclose(f.tokens_global.numpy(), tok_g, rtol=1e-6)
    np.testing.assert_allclose(f.tokens_specific.numpy(), tok_l, rtol=1e-6)
    mask = np.concatenate([np.ones((len(s), 1), bool), x["hist_item_id"].numpy() > 0], axis=1)
    np.testing.assert_array_equal(f.mask.numpy(), mask)
    assert f.tokens_global.shape[-1] == 2 * dg and f.tokens_specific.shape[-1] == 2 * dl


def test_embedding_needs_a_behaviour_sequence(synth_schema):
    d = synth_schema.to_dict()
    d["features"] = [f for f in d["features"] if f.get("group") != "behavior"]
    with pytest.raises(SchemaError, match="'saml' needs a user behaviour sequence"):
        build("saml", Schema.from_dict(d, "nobehaviour.yaml"))


# ----------------------------------------------------------------------------- III-C-2 attention
def multi_head(q, k, v, wq, wk, wv, wo, heads, mask):
    """eq. 1-2 in NumPy: Concat_h(Softmax(Q W_h^Q (K W_h^K)^T / sqrt(d_k)) V W_h^V) W^O."""
    d = wv.shape[1]
    dk = d // heads
    qp, kp, vp = q @ wq, k @ wk, v @ wv
    out = []
    for h in range(heads):
        sl = slice(h * dk, (h + 1) * dk)
        scores = qp[..., sl] @ np.swapaxes(kp[..., sl], 1, 2) / np.sqrt(dk)
        out.append(softmax(scores, mask[:, None, :]) @ vp[..., sl])
    return np.concatenate(out, axis=-1) @ wo


@pytest.mark.parametrize("pooling", ["flatten", "mean", "target"])
def test_scenario_aware_attention_matches_numpy(pooling):
    b, l, dg, dl, heads = 4, 5, 8, 4, 2
    tg = RNG.normal(size=(b, l, dg)).astype(np.float32)
    tl = RNG.normal(size=(b, l, dl)).astype(np.float32)
    mask = np.ones((b, l), bool)
    mask[0, 3:] = False
    mask[1, 1:] = False
    layer = ScenarioAwareAttention(heads, length=l, pooling=pooling)
    a_g, a_l = layer(tf.constant(tg), tf.constant(tl), mask=tf.constant(mask))
    pg, pl = (p.table.numpy() for p in layer.positions)
    ga, sa = layer.global_attention, layer.specific_attention
    assert sa.wq.shape == (dl, dg) and sa.wv.shape == (dg, dg)
    xg, xl = tg + pg[None], tl + pl[None]
    ref_g = multi_head(xg, xg, xg, *(w.numpy() for w in (ga.wq, ga.wk, ga.wv, ga.wo)), heads, mask)
    ref_l = multi_head(xl, xl, xg, *(w.numpy() for w in (sa.wq, sa.wk, sa.wv, sa.wo)), heads, mask)
    m = mask[..., None].astype(np.float32)
    pool = {"flatten": lambda t: (t * m).reshape(b, -1), "mean": lambda t: (t * m).sum(1) / m.sum(1),
            "target": lambda t: t[:, 0]}[pooling]
    np.testing.assert_allclose(a_g.numpy(), pool(ref_g), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a_l.numpy(), pool(ref_l), rtol=1e-4, atol=1e-5)
    # the specific attention weighs the *global* values: changing V_g changes A_l, changing Q_l/K_l too
    a_l2 = layer(tf.constant(tg * 2.0), tf.constant(tl), mask=tf.constant(mask))[1]
    assert not np.allclose(a_l2.numpy(), a_l.numpy())


def layer_norm(x, ln):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + ln.epsilon) * ln.gamma.numpy() + ln.beta.numpy()


def transformer_numpy(q, k, v, block, heads, mask):
    """BST's layer around eq. 1-2: S' = LN(V + MH(Q, K, V)), LN(S' + LeakyReLU(S' W1 + b1) W2 + b2)."""
    mha = block.mha
    s1 = layer_norm(v + multi_head(q, k, v, *(w.numpy() for w in (mha.wq, mha.wk, mha.wv, mha.wo)), heads, mask),
                    block.norm1)
    h = s1 @ block.ff1.kernel.numpy() + block.ff1.bias.numpy()
    h = np.where(h > 0, h, 0.2 * h) @ block.ff2.kernel.numpy() + block.ff2.bias.numpy()
    return layer_norm(s1 + h, block.norm2)


def test_scenario_aware_attention_transformer_block_matches_numpy():
    """attention_block: transformer: residual + LayerNorm + feed-forward around both attentions; the specific
    one's residual stream is the global tokens (its values)."""
    b, l, dg, dl, heads = 4, 5, 8, 4, 2
    tg = RNG.normal(size=(b, l, dg)).astype(np.float32)
    tl = RNG.normal(size=(b, l, dl)).astype(np.float32)
    mask = np.ones((b, l), bool)
    mask[2, 2:] = False
    layer = ScenarioAwareAttention(heads, length=None, pooling="target", block="transformer")
    layer(tf.constant(tg), tf.constant(tl), mask=tf.constant(mask))
    for blk in (layer.global_attention, layer.specific_attention):   # non-trivial LayerNorm scales and shifts
        for ln in (blk.norm1, blk.norm2):
            ln.gamma.assign(RNG.normal(1.0, 0.3, dg).astype(np.float32))
            ln.beta.assign(RNG.normal(0.0, 0.3, dg).astype(np.float32))
    a_g, a_l = layer.attend(tf.constant(tg), tf.constant(tl), mask=tf.constant(mask))
    assert layer.specific_attention.mha.wq.shape == (dl, dg)
    ref_g = transformer_numpy(tg, tg, tg, layer.global_attention, heads, mask)
    ref_l = transformer_numpy(tl, tl, tg, layer.specific_attention, heads, mask)
    np.testing.assert_allclose(a_g.numpy()[mask], ref_g[mask], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(a_l.numpy()[mask], ref_l[mask], rtol=1e-4, atol=1e-4)
    assert not a_g.numpy()[~mask].any() and not a_l.numpy()[~mask].any()  # padding: over real tokens only
    pooled = layer(tf.constant(tg), tf.constant(tl), mask=tf.constant(mask))
    np.testing.assert_allclose(pooled[1].numpy(), ref_l[:, 0], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="block must be one of"):
        ScenarioAwareAttention(heads, block="post")


# ----------------------------------------------------------------------------- III-D-1 / eq. 4
def test_auxiliary_and_multi_branch_match_eq4():
    b, d_ind, d_dep, hidden, S = 6, 7, 5, [8, 4], 3
    v_a0 = RNG.normal(size=(b, d_ind)).astype(np.float32)
    v_m0 = RNG.normal(size=(b, d_dep)).astype(np.float32)
    aux = AuxiliaryNetwork(hidden)
    aux_hidden, aux_logit = aux(tf.constant(v_a0))
    ref, h = [], v_a0
    for dense in aux.mlp.dense:
        h = relu(h @ dense.kernel.numpy() + dense.bias.numpy())          # V_a^l = delta(V_a^{l-1} W_a^l + b_a^l)
        ref.append(h)
    for got, want in zip(aux_hidden, ref):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux_logit.numpy(), (h @ aux.out.kernel.numpy() + aux.out.bias.numpy())[:, 0],
                               rtol=1e-5, atol=1e-6)

    branches = MultiBranchNetwork(S, hidden, aux_widths=hidden)
    v = branches(tf.constant(v_m0), aux_hidden)
    assert v.shape == (b, S, hidden[-1])
    assert [l.kernel.shape for l in branches.dense] == [(S, d_dep + 8, 8), (S, 8 + 4, 4)]   # [S, D_in, D_l]
    want = np.zeros((b, S, hidden[-1]), np.float32)
    for i in range(S):
        h = v_m0
        for l in range(len(hidden)):                                    # [V_mi^{l-1}, V_a^l] W_mi^l + b_mi^l
            w, bias = branches.dense[l].kernel.numpy()[i], branches.dense[l].bias.numpy()[i]
            h = relu(np.concatenate([h, ref[l]], 1) @ w + bias)
        want[:, i] = h
    np.testing.assert_allclose(v.numpy(), want, rtol=1e-5, atol=1e-6)
    scenario = RNG.integers(0, S, b)                                     # own branch only: row s of the above
    own = branches(tf.constant(v_m0), aux_hidden, scenario=tf.constant(scenario))
    np.testing.assert_allclose(own.numpy(), want[np.arange(b), scenario], rtol=1e-5, atol=1e-6)
    # w/o aux: a layer reads only the previous layer
    plain = MultiBranchNetwork(S, hidden)
    v = plain(tf.constant(v_m0))
    h = v_m0
    for l in range(len(hidden)):
        h = relu(h @ plain.dense[l].kernel.numpy()[1] + plain.dense[l].bias.numpy()[1])
    np.testing.assert_allclose(v[:, 1].numpy(), h, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="built for 2 auxiliary outputs, got 1"):
        branches(tf.constant(v_m0), aux_hidden[:1])
    with pytest.raises(ValueError, match="built for 0 auxiliary outputs, got 2"):
        plain(tf.constant(v_m0), aux_hidden)


@pytest.mark.parametrize("activation, aux", [("relu", True), ("tanh", True), ("relu", False)])
def test_all_and_own_is_every_branch_and_the_own_branch_gradient(activation, aux):
    """``with_all``: every branch (no gradient) and the own branch's value read from that pass, whose gradient
    (written out per layer) is autodiff's through the own branch alone (:meth:`MultiBranchNetwork.own`)."""
    b, hidden, S = 12, [8, 4], 3
    net = MultiBranchNetwork(S, hidden, activation=activation, aux_widths=hidden if aux else None)
    v = tf.constant(RNG.normal(size=(b, 5)).astype(np.float32))
    aux_hidden = [tf.constant(relu(RNG.normal(size=(b, h))).astype(np.float32)) for h in hidden] if aux else None
    scenario = tf.constant(np.r_[0, 1, RNG.integers(0, S - 1, b - 2)])   # branch S - 1 reads no row
    net(v, aux_hidden)
    for layer in net.dense:                                               # non-zero biases
        layer.bias.assign(RNG.normal(size=layer.bias.shape).astype(np.float32))
    w = tf.constant(RNG.normal(size=(b, hidden[-1])).astype(np.float32))
    sources = [v] + (aux_hidden or [])
    got = []
    for with_all in (False, True):
        with tf.GradientTape() as tape:
            tape.watch(sources)
            out = net(v, aux_hidden, scenario=scenario, with_all=with_all)
            own = out[1] if with_all else out
            loss = tf.reduce_sum(own * w)
        got.append((out, tape.gradient(loss, sources + net.trainable_variables)))
    (own, grads), ((every, own_new), grads_new) = got
    np.testing.assert_allclose(every.numpy(), net(v, aux_hidden).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(own_new.numpy(), own.numpy(), rtol=1e-5, atol=1e-6)
    for g, want in zip(grads_new, grads):
        np.testing.assert_allclose(tf.convert_to_tensor(g).numpy(), tf.convert_to_tensor(want).numpy(),
                                   rtol=1e-4, atol=1e-5)
    for g in grads_new[len(sources):]:                                   # only the branches of the rows learn
        rows = np.abs(tf.convert_to_tensor(g).numpy()).reshape(S, -1).sum(1)
        assert rows[0] > 0 and rows[1] > 0 and rows[S - 1] == 0


# ----------------------------------------------------------------------------- eq. 6-8
def mutual_numpy(v, w, bias):
    b, S, _ = v.shape
    n = v / np.linalg.norm(v, axis=-1, keepdims=True)
    alpha, gate, m = np.zeros((b, S, S)), np.zeros((b, S)), np.zeros_like(v)
    for i in range(S):
        others = [j for j in range(S) if j != i]
        cos = np.stack([(n[:, i] * n[:, j]).sum(-1) for j in others], axis=1)  # cos<V_i, V_j>
        alpha[:, i, others] = softmax(cos / cos.sum(1, keepdims=True))         # eq. 8
        gate[:, i] = 1 / (1 + np.exp(-(v[:, i] @ w[i] + bias[i])))              # eq. 7
        m[:, i] = v[:, i] + gate[:, i, None] * np.einsum("bj,bjd->bd", alpha[:, i, others], v[:, others])  # eq. 6
    return m, alpha, gate


def test_mutual_unit_matches_eq6_to_8():
    v = relu(RNG.normal(size=(8, 4, 6))).astype(np.float32) + 0.01   # ReLU branch outputs, non-zero
    unit = MutualUnit()
    m, alpha, gate = unit(tf.constant(v))
    unit.gate_b.assign(RNG.normal(size=4).astype(np.float32))         # a non-trivial bias too
    m, alpha, gate = unit(tf.constant(v))
    rm, ra, rg = mutual_numpy(v, unit.gate_w.numpy(), unit.gate_b.numpy())
    np.testing.assert_allclose(alpha.numpy(), ra, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gate.numpy(), rg, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.numpy(), rm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alpha.numpy().sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.diagonal(alpha.numpy(), axis1=1, axis2=2) == 0)
    s = RNG.integers(0, 4, 8)                                            # the own row only: row s of eq. 6-8
    rows = np.arange(8)
    m_s, alpha_s, gate_s = unit(tf.constant(v), tf.constant(v[rows, s]), tf.constant(s))
    np.testing.assert_allclose(m_s.numpy(), rm[rows, s], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alpha_s.numpy(), ra[rows, s], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gate_s.numpy(), rg[rows, s], rtol=1e-5, atol=1e-6)


def test_mutual_unit_gradient_mask():
    v = tf.constant(relu(RNG.normal(size=(5, 3, 4))).astype(np.float32) + 0.01)
    for masked in (True, False):
        unit = MutualUnit(gradient_mask=masked)
        with tf.GradientTape() as tape:
            tape.watch(v)
            m, _, _ = unit(v)
            loss = tf.reduce_sum(m[:, 0])                                   # only branch 0's output M_0
        grad = tape.gradient(loss, v).numpy()
        assert np.abs(grad[:, 0]).sum() > 0
        assert (np.abs(grad[:, 1:]).sum() == 0) == masked
        v_own = tf.constant(v.numpy()[:, 0])                              # the own-row path: V_0 given apart
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([v, v_own])
            loss = tf.reduce_sum(unit(v, v_own, tf.zeros([5], tf.int32))[0])
        assert np.abs(tape.gradient(loss, v_own).numpy()).sum() > 0
        grad = tape.gradient(loss, v)                                     # None: no path at all (masked)
        assert (grad is None or not np.any(grad.numpy())) == masked
    zero = v.numpy().copy()
    zero[0, 1] = zero[1, 0] = 0.0                                         # all-zero ReLU outputs, own and other
    v, s = tf.constant(zero), tf.constant([0, 0, 1, 2, 1])
    for masked in (True, False):
        unit = MutualUnit(gradient_mask=masked)
        with tf.GradientTape() as tape:
            tape.watch(v)
            loss = tf.reduce_sum(unit(v)[0]) + tf.reduce_sum(unit(v, tf.gather(v, s, batch_dims=1), s)[0])
        assert np.all(np.isfinite(tape.gradient(loss, v).numpy())), masked  # |V| = 0: no 0/0 in the gradient


# ----------------------------------------------------------------------------- whole model
def _batch(synth_dir, schema, n=256):
    return next(iter(make_dataset(split_files(synth_dir, "train"), schema, n, training=False)))


def _weights(model):
    return {w.name: w.numpy().copy() for w in model.trainable_weights}


@pytest.mark.parametrize("masked", [True, False])
def test_scenario_batch_leaves_other_branches_unchanged(synth_dir, synth_schema, masked):
    """eq. 5 + III-D-2: one SGD step on a scenario-1 batch changes branch 1 (and shared parts) only."""
    model = build("saml", synth_schema, {"hidden": [16, 8], "gradient_mask": masked})
    x, y = _batch(synth_dir, synth_schema, 64)
    x = dict(x)
    x["scenario"] = tf.ones_like(x["scenario"])                          # every example in scenario 1
    model(x)
    model.compile(optimizer=keras.optimizers.SGD(0.5))                     # the model's own losses (eq. 5)
    before = _weights(model)
    model.train_on_batch(x, y)
    after = _weights(model)
    changed = {n for n in before if not np.array_equal(before[n], after[n])}
    rows_changed = lambda n: [i for i in range(5) if not np.array_equal(before[n][i], after[n][i])]
    stacked = [n for n in before if "/branches/" in "/" + n or "/heads/" in "/" + n]
    assert len(stacked) == 2 * 2 + 2                                      # W_l, b_l of 2 layers; output w, b
    assert any("auxiliary" in n for n in changed) and any("specific" in n for n in changed)
    gate_w = [n for n in before if "mutual_unit" in n and n.endswith("W:0")][0]
    assert rows_changed(gate_w) == [1]                                    # g_1 only (eq. 7)
    for n in stacked:                                                     # row s = branch s: every layer + output
        if masked or "heads" in n:
            assert rows_changed(n) == [1], n
        else:                                                             # without the mask they learn too
            assert len(rows_changed(n)) > 1, n
    # the scenario-specific embedding slices of the other scenarios are untouched (the lookup is scenario 1's)
    name = [n for n in before if "specific" in n and "emb_item_id" in n][0]
    delta = np.abs(after[name] - before[name]).reshape(-1, 5, before[name].shape[-1]).sum(axis=(0, 2))
    assert delta[1] > 0 and np.all(delta[[0, 2, 3, 4]] == 0)


@pytest.mark.parametrize("aux_gradient", [True, False])
def test_aux_gradient_switch(synth_dir, synth_schema, aux_gradient):
    """aux_gradient: false = the auxiliary network learns from L_aux alone: the branch loss gives it no gradient."""
    model = build("saml", synth_schema, {"hidden": [16, 8], "aux_gradient": aux_gradient})
    x, y = _batch(synth_dir, synth_schema, 64)
    with tf.GradientTape() as tape:
        out = model.forward(x, training=True)                             # the branches' loss only, no L_aux
        loss = tf.reduce_mean(keras.losses.binary_crossentropy(y[:, None], tf.sigmoid(out["logits"][:, :1])))
    aux = [w for w in model.trainable_weights if "auxiliary" in w.name and "logit" not in w.name]
    grads = tape.gradient(loss, aux)
    assert aux and all((g is None or not np.any(g.numpy())) != aux_gradient for g in grads)
    with tf.GradientTape() as tape:                                       # L_aux still trains it either way
        aux_loss = tf.reduce_mean(model.forward(x, training=True)["aux_logit"])
    assert all(g is not None and np.any(g.numpy()) for g in tape.gradient(aux_loss, aux))


def test_aux_loss_is_bce_of_the_auxiliary_logit(synth_dir, synth_schema):
    """Eq. 5: ``compute_losses`` = the own branch's BCE and L_aux, the BCE of the auxiliary logit; the total
    weights L_aux by aux_weight; nothing goes through add_loss."""
    model = build("saml", synth_schema, {"hidden": [16, 8], "aux_weight": 0.3})
    x, y = _batch(synth_dir, synth_schema, 128)
    losses = model.compute_losses(x, y, training=False)
    assert set(losses) == {"bce", "aux"} and not model.losses
    bce = lambda p, t: -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    out = model.forward(x, training=False)
    yy = y.numpy()
    want_aux = bce(1 / (1 + np.exp(-out["aux_logit"].numpy())), yy)
    own = out["logits"].numpy()[np.arange(len(yy)), x["scenario"].numpy()]
    want_bce = bce(1 / (1 + np.exp(-own)), yy)
    np.testing.assert_allclose(float(losses["aux"]), want_aux, rtol=1e-4)
    np.testing.assert_allclose(float(losses["bce"]), want_bce, rtol=1e-4)
    np.testing.assert_allclose(float(model.total_loss(losses)), want_bce + 0.3 * want_aux, rtol=1e-4)
    assert model.compute_losses(x, y, training=False, outputs=model.step_outputs(x)).keys() == losses.keys()


@pytest.mark.parametrize("params,heads,aux", [
    ({}, True, True), ({"mutual_gate": False}, True, True), ({"aux": False}, True, False),
    ({"mutual": False}, False, False), ({"attention_block": "transformer", "pooling": "target"}, True, True),
    ({"attention_block": "bare", "pooling": "flatten", "aux_gradient": False}, True, True)])
def test_ablation_switches(synth_dir, synth_schema, params, heads, aux):
    model = build("saml", synth_schema, {"hidden": [16, 8], **params})
    x, _ = _batch(synth_dir, synth_schema, 32)
    out = model.forward(x)
    assert model.multi_head is heads
    assert out["logits"].shape == ((32, 5) if heads else (32,))
    assert ("aux_logit" in out) is aux
    assert ("alpha" in out) is (heads and params.get("mutual_gate", True))
    probs = model.scenario_probs(x).numpy()
    assert probs.shape == (32, 5)
    own = probs[np.arange(32), x["scenario"].numpy()]
    np.testing.assert_allclose(model(x).numpy(), own, rtol=1e-5, atol=1e-6)
    if "alpha" not in out:
        with pytest.raises(ConfigError, match="alpha and g exist only"):
            model.mutual_coefficients(x)


def test_config_errors(synth_schema):
    with pytest.raises(ConfigError, match="cannot be combined with aux=false"):
        build("saml", synth_schema, {"mutual": False, "aux": False})
    with pytest.raises(ConfigError, match="parameter 'pooling' must be flatten, mean or target"):
        build("saml", synth_schema, {"pooling": "max"})
    with pytest.raises(ConfigError, match="parameter 'attention_block' must be transformer or bare"):
        build("saml", synth_schema, {"attention_block": "pre_norm"})
    with pytest.raises(ConfigError, match="unknown parameter"):
        build("saml", synth_schema, {"mutual_gates": False})


@pytest.mark.slow
def test_train_evaluate_and_figure(synth_dir, tmp_path):
    from pipelines import saml_figure
    from tfmsr.ranking.evaluate import evaluate
    from tfmsr.ranking.train import train

    model_dir = str(tmp_path / "saml")
    cfg = quick_config("saml", {"hidden": [32, 16]}, epochs=2, learning_rate=0.003)
    summary = train(cfg, synth_dir, model_dir, log=lambda _: None)
    assert np.isfinite(summary["history"]["loss"]).all()
    res = evaluate(model_dir, synth_dir, "test")
    assert 0.55 < res["auc"] < res["oracle_auc"]
    out = str(tmp_path / "fig" / "alpha.png")
    fig = saml_figure.main(["--model-dir", model_dir, "--data", synth_dir, "--out", out])
    assert os.path.getsize(out) > 10_000
    saved = json.load(open(str(tmp_path / "fig" / "alpha.json")))
    assert saved == fig and saved["examples"] == res["rows"]
    ma = np.array(fig["mean_alpha"])
    off = ~np.eye(5, dtype=bool)
    np.testing.assert_allclose(ma.sum(1), 1.0, rtol=1e-4)
    assert np.all(ma[~off] == 0) and np.all(ma[off] > 0)
    assert -1 <= fig["spearman_alpha_vs_similarity"] <= 1
    assert set(fig["top_alpha_is_most_similar"]) == {"s0", "s1", "s2", "s3", "s4"}
    for g in fig["gate"].values():
        assert 0 < g["mean"] < 1
