"""Shared layers of the baseline models, each against a NumPy re-computation of its equation."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tfmsr.features import SchemaError
from tfmsr.layers import (CGC, EPNet, ExpertBank, ExpertGates, GateNU, MultiHeadSelfAttention,
                          MultiHeadTargetAttention, PartitionedNormalization, PositionalEmbedding, PPNet,
                          ScenarioAffine, ScenarioExtraction, ScenarioMoE, StarDense, TargetAttention,
                          TransformerBlock, CrossNetV2, WideLinear, behavior_pairs, behavior_scenario,
                          fm_second_order, masked_mean, masked_softmax, partition_apply, require_behavior)

RNG = np.random.default_rng(0)
TOL = dict(rtol=1e-4, atol=1e-5)


def rand(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def relu(x):
    return np.maximum(x, 0.0)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def dense(layer, x, act=None):
    y = x @ layer.kernel.numpy() + layer.bias.numpy()
    return act(y) if act else y


def masked_np_softmax(s, mask):
    w = softmax(np.where(mask, s, -1e9))
    return w * mask


def mask_of(b, l):
    lengths = RNG.integers(0, l + 1, b)
    lengths[0] = l                      # one full row
    lengths[1] = 0                      # one empty row
    return np.arange(l)[None, :] < lengths[:, None]


# ---------------------------------------------------------------- interaction
def test_wide_linear_sums_one_weight_per_id_and_dense_values():
    rows = [5, 7]
    layer = WideLinear(rows, num_dense=2)
    for w in layer.tables + [layer.dense_w]:
        w.assign(rand(*w.shape))
    layer.bias.assign(0.3)
    ids = [RNG.integers(0, r, 6) for r in rows]
    num = rand(6, 2)
    got = layer([tf.constant(i) for i in ids], tf.constant(num)).numpy()
    t = [w.numpy() for w in layer.tables]
    want = 0.3 + t[0][ids[0]] + t[1][ids[1]] + num @ layer.dense_w.numpy()
    np.testing.assert_allclose(got, want, **TOL)


def test_fm_second_order_equals_pairwise_inner_products():
    v = rand(4, 6, 3)
    want = np.array([sum(v[b, i] @ v[b, j] for i in range(6) for j in range(i + 1, 6)) for b in range(4)])
    np.testing.assert_allclose(fm_second_order(tf.constant(v)).numpy(), want, **TOL)


@pytest.mark.parametrize("low_rank", [None, 2])
def test_cross_net_v2_recurrence(low_rank):
    x0 = rand(5, 6)
    layer = CrossNetV2(num_layers=2, low_rank=low_rank)
    got = layer(tf.constant(x0)).numpy()
    x = x0
    for kernel, b in zip(layer.kernels, layer.biases):
        w = kernel[0].numpy() @ kernel[1].numpy().T if low_rank else kernel.numpy()
        x = x0 * (x @ w.T + b.numpy()) + x          # x_{l+1} = x0 * (W x_l + b) + x_l
    np.testing.assert_allclose(got, x, **TOL)
    # different layers start with different weights (a reused unseeded initializer would repeat them)
    k = [np.asarray(kk[0] if low_rank else kk) for kk in layer.kernels]
    assert not np.allclose(k[0], k[1])


# ---------------------------------------------------------------- attention
def test_masked_mean_over_real_positions_and_zero_for_empty_rows():
    seq, mask = rand(5, 7, 3), RNG.random((5, 7)) > 0.4
    mask[0] = False
    m = mask[..., None].astype(np.float32)
    want = (seq * m).sum(1) / np.maximum(m.sum(1), 1.0)
    got = masked_mean(tf.constant(seq), tf.constant(mask)).numpy()
    np.testing.assert_allclose(got, want, **TOL)
    assert not got[0].any()


def test_masked_softmax_zero_for_padding_and_empty_rows():
    s = rand(3, 4)
    mask = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    got = masked_softmax(tf.constant(s), tf.constant(mask)).numpy()
    np.testing.assert_allclose(got, masked_np_softmax(s, mask), **TOL)
    assert got[1].sum() == 0.0 and np.allclose(got[[0, 2]].sum(1), 1.0)


@pytest.mark.parametrize("normalize,hidden", [(False, (6, 4)), (True, (6, 4)), (False, ())])
def test_din_activation_unit(normalize, hidden):
    b, l, d = 4, 5, 3
    q, k, mask = rand(b, d), rand(b, l, d), mask_of(b, l)
    layer = TargetAttention(hidden=hidden, activation="sigmoid", normalize=normalize)
    got = layer(tf.constant(q), tf.constant(k), tf.constant(mask)).numpy()
    qq = np.broadcast_to(q[:, None], k.shape)
    h = np.concatenate([k, qq, k - qq, k * qq], -1)
    for dl in layer.mlp.dense:
        h = dense(dl, h, sigmoid)
    s = dense(layer.out, h)[..., 0]
    w = masked_np_softmax(s, mask) if normalize else s * mask
    np.testing.assert_allclose(got, (w[..., None] * k).sum(1), **TOL)
    assert np.allclose(got[1], 0.0)                           # empty history pools to zeros


def test_multi_head_target_attention():
    b, l, h = 3, 6, 2
    q, k, v, mask = rand(b, 5), rand(b, l, 4), rand(b, l, 6), mask_of(b, l)
    layer = MultiHeadTargetAttention(num_heads=h, output_dim=8)
    got = layer([tf.constant(q), tf.constant(k), tf.constant(v)], mask=tf.constant(mask)).numpy()
    kd = layer.kd
    Q = (q @ layer.wq.numpy()).reshape(b, h, kd)
    K = (k @ layer.wk.numpy()).reshape(b, l, h, kd)
    V = (v @ layer.wv.numpy()).reshape(b, l, h, layer.vd)
    s = np.einsum("bhk,blhk->bhl", Q, K) / np.sqrt(kd)
    w = masked_np_softmax(s, mask[:, None, :])
    heads = np.einsum("bhl,blhv->bhv", w, V).reshape(b, -1)
    np.testing.assert_allclose(got, heads @ layer.wo.numpy(), **TOL)


def np_self_attention(layer, x, mask):
    b, l, d = x.shape
    h = layer.num_heads
    split = lambda t: t.reshape(b, l, h, d // h).transpose(0, 2, 1, 3)
    q, k, v = (split(x @ w.numpy()) for w in (layer.wq, layer.wk, layer.wv))
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // h)
    w = masked_np_softmax(s, mask[:, None, None, :])
    o = (w @ v).transpose(0, 2, 1, 3).reshape(b, l, d)
    return o @ layer.wo.numpy()


def test_multi_head_self_attention():
    x, mask = rand(3, 5, 8), mask_of(3, 5)
    mask[:, 0] = True
    layer = MultiHeadSelfAttention(num_heads=2)
    got = layer(tf.constant(x), tf.constant(mask)).numpy()
    np.testing.assert_allclose(got, np_self_attention(layer, x, mask), **TOL)
    assert not np.allclose(layer.wq.numpy(), layer.wk.numpy())


def layer_norm(x, ln):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return ln.gamma.numpy() * (x - mu) / np.sqrt(var + ln.epsilon) + ln.beta.numpy()


def test_transformer_block_bst():
    x, mask = rand(2, 4, 8), mask_of(2, 4)
    mask[:, 0] = True
    block = TransformerBlock(num_heads=4, ff_dim=12, dropout=0.2)
    got = block(tf.constant(x), tf.constant(mask), training=False).numpy()
    s = layer_norm(x + np_self_attention(block.mha, x, mask), block.norm1)
    leaky = lambda t: np.where(t > 0, t, 0.2 * t)
    f = dense(block.ff2, dense(block.ff1, s, leaky))
    np.testing.assert_allclose(got, layer_norm(s + f, block.norm2), **TOL)


def test_positional_embedding_adds_position_rows():
    x = rand(2, 3, 4)
    layer = PositionalEmbedding(5)
    got = layer(tf.constant(x)).numpy()
    np.testing.assert_allclose(got, x + layer.table.numpy()[None, :3], **TOL)


# ---------------------------------------------------------------- experts
def np_bank(bank, x):
    """ExpertBank in NumPy: x [B, D] or [B, E, D] -> [B, E, H]."""
    h = x if x.ndim == 3 else np.broadcast_to(x[:, None], (x.shape[0], bank.num_experts, x.shape[1]))
    for k, b in zip(bank.kernels, bank.biases):
        h = relu(np.einsum("bed,edh->beh", h, k.numpy()) + b.numpy())
    return h


def test_expert_bank_is_independent_mlps():
    bank = ExpertBank(3, [5, 4])
    x = rand(6, 7)
    got = bank(tf.constant(x)).numpy()
    for e in range(3):                                   # expert e alone, as a plain MLP
        h = x
        for k, b in zip(bank.kernels, bank.biases):
            h = relu(h @ k.numpy()[e] + b.numpy()[e])
        np.testing.assert_allclose(got[:, e], h, **TOL)
    k0 = bank.kernels[0].numpy()
    assert not np.allclose(k0[0], k0[1])                 # experts start different
    xe = rand(6, 3, 7)
    np.testing.assert_allclose(bank(tf.constant(xe)).numpy(), np_bank(bank, xe), **TOL)


def test_expert_gates_softmax_mixture():
    gates = ExpertGates(2, 3)
    x, experts = rand(4, 5), rand(4, 3, 6)
    got = gates(tf.constant(x), tf.constant(experts)).numpy()
    g = softmax(np.einsum("bd,gde->bge", x, gates.kernel.numpy()) + gates.bias.numpy())
    np.testing.assert_allclose(got, np.einsum("bge,beh->bgh", g, experts), **TOL)
    per_gate_x, per_gate_e = rand(4, 2, 5), rand(4, 2, 3, 6)
    got = gates(tf.constant(per_gate_x), tf.constant(per_gate_e)).numpy()
    g = softmax(np.einsum("bgd,gde->bge", per_gate_x, gates.kernel.numpy()) + gates.bias.numpy())
    np.testing.assert_allclose(got, np.einsum("bge,bgeh->bgh", g, per_gate_e), **TOL)


def np_gate(gates, x, experts):
    k, b = gates.kernel.numpy(), gates.bias.numpy()
    g = softmax(np.einsum("bd,gde->bge" if x.ndim == 2 else "bgd,gde->bge", x, k) + b)
    return np.einsum("bge,beh->bgh" if experts.ndim == 3 else "bge,bgeh->bgh", g, experts)


def np_cgc(layer, x):
    t, m = layer.num_tasks, layer.specific
    x_tasks, x_shared = (x[:, :t], x[:, t]) if x.ndim == 3 else (x, x)
    spec = np_bank(layer.specific_experts, np.repeat(x_tasks, m, axis=1) if x.ndim == 3 else x_tasks)
    shared = np_bank(layer.shared_experts, x_shared)
    per_task = [np.concatenate([spec[:, k * m:(k + 1) * m], shared], 1) for k in range(t)]
    out = np.stack([np_gate(layer.task_gates, x_tasks, np.stack(per_task, 1))[:, k] for k in range(t)], 1)
    if layer.shared_gate is None:
        return out
    every = np.concatenate([spec, shared], 1)
    return np.concatenate([out, np_gate(layer.shared_gate, x_shared, every)], 1)


def test_cgc_levels_ple():
    x = rand(5, 6)
    first = CGC(num_tasks=3, specific=2, shared=1, hidden=[4], shared_output=True)
    h = first(tf.constant(x))
    assert h.shape == (5, 4, 4)
    np.testing.assert_allclose(h.numpy(), np_cgc(first, x), **TOL)
    last = CGC(num_tasks=3, specific=2, shared=1, hidden=[3])
    out = last(h).numpy()
    assert out.shape == (5, 3, 3)
    np.testing.assert_allclose(out, np_cgc(last, h.numpy()), **TOL)


def test_scenario_extraction_hinet():
    S, b = 3, 6
    layer = ScenarioExtraction(S, shared=2, specific=2, hidden=[4], san_hidden=[5])
    x, sc, emb = rand(b, 7), RNG.integers(0, S, b), rand(b, 4)
    got = layer(tf.constant(x), tf.constant(sc), tf.constant(emb)).numpy()
    shared = np_gate(layer.shared_gate, x, np_bank(layer.shared_experts, x))[:, 0]
    spec = np_bank(layer.specific_experts, x).reshape(b, S, 2, 4)
    every = np_gate(layer.specific_gates, x, spec)                        # [B, S, H]
    own = every[np.arange(b), sc]
    h = emb
    for dl in layer.san_mlp.dense:
        h = dense(dl, h, relu)
    w = softmax(dense(layer.san_out, h)) * (1 - np.eye(S)[sc])           # own scenario zeroed
    transfer = np.einsum("bs,bsh->bh", w, every)
    np.testing.assert_allclose(got, np.concatenate([transfer, own, shared], 1), **TOL)


def test_scenario_moe_uses_own_specific_and_shared_experts():
    S, b = 3, 8
    layer = ScenarioMoE(S, shared=2, specific=1, hidden=[4])
    x, sc = rand(b, 5), np.array([0, 1, 2, 0, 1, 2, 2, 0])
    got = layer(tf.constant(x), tf.constant(sc)).numpy()
    shared = np_bank(layer.shared_experts, x)
    spec = np.stack([np_bank(layer.specific_experts[s], x[i:i + 1])[0] for i, s in enumerate(sc)])
    want = np_gate(layer.gate, x, np.concatenate([spec, shared], 1))[:, 0]
    np.testing.assert_allclose(got, want, **TOL)


# ---------------------------------------------------------------- gates
def np_gate_nu(g, x):
    return g.gamma * sigmoid(dense(g.out, dense(g.hidden, x, relu)))


def test_gate_nu_range_and_equation():
    g = GateNU(6, hidden=5, gamma=2.0)
    x = rand(4, 3)
    got = g(tf.constant(x)).numpy()
    np.testing.assert_allclose(got, np_gate_nu(g, x), **TOL)
    assert got.min() >= 0.0 and got.max() <= 2.0


def test_epnet_scales_embeddings_and_stops_gradient():
    layer = EPNet(gate_hidden=8)
    e, dom = tf.constant(rand(4, 6)), tf.constant(rand(4, 3))
    with tf.GradientTape() as tape:
        tape.watch(e)
        out = layer(e, dom)
        total = tf.reduce_sum(out)
    delta = np_gate_nu(layer.gate, np.concatenate([dom.numpy(), e.numpy()], 1))
    np.testing.assert_allclose(out.numpy(), delta * e.numpy(), **TOL)
    # stop_grad(E) in the gate: d sum(O_ep) / dE is exactly delta
    np.testing.assert_allclose(tape.gradient(total, e).numpy(), delta, **TOL)


def test_ppnet_gates_every_layer_input():
    layer = PPNet([5, 3], gate_hidden=4)
    h0, prior = rand(4, 6), rand(4, 2)
    got = layer(tf.constant(h0), tf.constant(prior)).numpy()
    gate_in = np.concatenate([prior, h0], 1)
    h = h0
    for g, dl in zip(layer.gates, layer.dense):
        h = dense(dl, np_gate_nu(g, gate_in) * h, relu)
    np.testing.assert_allclose(got, h, **TOL)


# ---------------------------------------------------------------- partitioned
def test_partition_apply_restores_row_order():
    x, sc = rand(7, 2), np.array([2, 0, 1, 2, 2, 0, 1])
    got = partition_apply(tf.constant(x), tf.constant(sc), 3, lambda s, r: r * (s + 1)).numpy()
    np.testing.assert_allclose(got, x * (sc[:, None] + 1), **TOL)


def test_partitioned_normalization_train_and_inference():
    S = 3
    layer = PartitionedNormalization(S, momentum=0.9, epsilon=1e-3)
    z, sc = rand(9, 4), np.array([0, 0, 0, 1, 1, 1, 1, 0, 1])     # scenario 2 absent
    layer.build(z.shape)
    for w in (layer.gamma, layer.beta, layer.gamma_p, layer.beta_p):
        w.assign(rand(*w.shape))
    got = layer(tf.constant(z), tf.constant(sc), training=True).numpy()
    want = np.zeros_like(z)
    mm, mv = np.zeros((S, 4)), np.ones((S, 4))      # bias-corrected moving statistics; unseen: 0 / 1
    for s in (0, 1):
        rows = sc == s
        mu, var = z[rows].mean(0), z[rows].var(0)
        scale = layer.gamma.numpy() * layer.gamma_p.numpy()[s]
        shift = layer.beta.numpy() + layer.beta_p.numpy()[s]
        want[rows] = scale * (z[rows] - mu) / np.sqrt(var + 1e-3) + shift
        mm[s], mv[s] = mu, var                         # (0.1 * mu) / (1 - 0.9) after one update
    np.testing.assert_allclose(got, want, **TOL)
    stats = [t.numpy() for t in layer.statistics()]
    np.testing.assert_allclose(stats[0], mm, **TOL)
    np.testing.assert_allclose(stats[1], mv, **TOL)
    np.testing.assert_allclose(layer.moving_mean.numpy()[2], 0.0)      # scenario 2 absent: untouched
    got = layer(tf.constant(z), tf.constant(sc), training=False).numpy()
    scale = layer.gamma.numpy() * layer.gamma_p.numpy()[sc]
    shift = layer.beta.numpy() + layer.beta_p.numpy()[sc]
    np.testing.assert_allclose(got, scale * (z - mm[sc]) / np.sqrt(mv[sc] + 1e-3) + shift, **TOL)
    z2 = rand(9, 4)
    layer(tf.constant(z2), tf.constant(sc), training=True)
    rows = sc == 0
    ema = 0.9 * 0.1 * z[rows].mean(0) + 0.1 * z2[rows].mean(0)
    np.testing.assert_allclose(layer.statistics()[0].numpy()[0], ema / (1 - 0.9 ** 2), **TOL)


def test_star_dense_uses_elementwise_product_of_shared_and_scenario_weights():
    S = 3
    layer = StarDense(4, S, activation="relu")
    x, sc = rand(8, 5), RNG.integers(0, S, 8)
    layer.build(x.shape)
    layer.kernel_p.assign(rand(S, 5, 4))
    layer.bias_p.assign(rand(S, 4))
    got = layer(tf.constant(x), tf.constant(sc)).numpy()
    W, b, Wp, bp = layer.kernel.numpy(), layer.bias.numpy(), layer.kernel_p.numpy(), layer.bias_p.numpy()
    want = np.stack([relu(x[i] @ (W * Wp[s]) + b + bp[s]) for i, s in enumerate(sc)])
    np.testing.assert_allclose(got, want, **TOL)


def test_scenario_affine():
    layer = ScenarioAffine(3)
    x, sc = rand(5, 4), np.array([0, 2, 1, 2, 0])
    layer.build(x.shape)
    layer.scale.assign(rand(3, 4))
    layer.shift.assign(rand(3, 4))
    got = layer(tf.constant(x), tf.constant(sc)).numpy()
    np.testing.assert_allclose(got, x * layer.scale.numpy()[sc] + layer.shift.numpy()[sc], **TOL)


# ---------------------------------------------------------------- behaviour from the schema
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
