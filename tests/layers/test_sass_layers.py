"""SASS layers against NumPy re-computations of the paper's equations on random inputs."""
import numpy as np
import pytest
import tensorflow as tf

from tfmsr.layers.sass import (MLSAT, NTXentLoss, PairwiseCosineLoss, ScenarioAdaptiveGate, ScenarioAuxiliaryNet,
                               ScenarioBiasFusion, cosine_softmax_loss, in_batch_cosines, in_batch_mask,
                               scenario_deviation, scenario_initializer)

B, S, D, DA = 6, 3, 4, 5
rng = np.random.default_rng(0)


def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def mm(x, w):
    """Per-scenario product with explicit loops: x [B, S, i] (or [S, i]), w [S, i, o]."""
    if x.ndim == 2:
        return np.stack([x[s] @ w[s] for s in range(w.shape[0])])
    return np.stack([np.stack([x[b, s] @ w[s] for s in range(w.shape[0])]) for b in range(x.shape[0])])


def rand(*shape):
    return rng.normal(size=shape).astype(np.float32)


def np_gate(variant, layer, g, s_prev, a):
    gt = np.repeat(g[:, None, :], S, axis=1)
    a_b = np.broadcast_to(a, (B, S, a.shape[-1])) if a.ndim == 2 else a
    w = {v.name.split("/")[-1].split(":")[0]: v.numpy() for v in layer.weights}
    if variant == "sass":
        gs = np.concatenate([gt, s_prev], -1)
        r = sig(mm(gs, w["W_r"]) + mm(a_b, w["W_br"]))                       # (3)
        h = np.tanh(mm(np.concatenate([r * gt, s_prev], -1), w["W_h"]))       # (4)
        z = sig(mm(gs, w["W_z"]) + mm(a_b, w["W_bz"]))                       # (5)
        return (1 - z) * s_prev + z * h                                       # (6)
    if variant == "none":
        return np.tanh(mm(np.concatenate([gt, s_prev], -1), w["W_h"]))
    own = np.tanh(mm(s_prev, w["W_s"]))
    if variant == "product":
        return own * gt
    feats = [own, gt] if variant == "sigmoid" else [own * gt, own - gt, own + gt]
    m = sig(mm(np.concatenate(feats, -1), w["W_w"]))
    return m * gt + (1 - m) * own


@pytest.mark.parametrize("variant", ["sass", "none", "product", "sigmoid", "simnet"])
@pytest.mark.parametrize("per_example_a", [False, True])
def test_scenario_adaptive_gate_matches_numpy(variant, per_example_a):
    g, s_prev = rand(B, D), np.tanh(rand(B, S, D))
    a = rand(B, S, DA) if per_example_a else rand(S, DA)
    layer = ScenarioAdaptiveGate(S, variant)
    out = layer(tf.constant(g), tf.constant(s_prev), tf.constant(a)).numpy()
    assert out.shape == (B, S, D)
    want = np_gate(variant, layer, g, s_prev, a)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    sc, rows = rng.integers(0, S, B), np.arange(B)                      # own path: row s of the above only
    a_own = a[rows, sc] if per_example_a else a[sc]
    own = layer(tf.constant(g), tf.constant(s_prev[rows, sc]), tf.constant(a_own), scenario=tf.constant(sc))
    np.testing.assert_allclose(own.numpy(), want[rows, sc], rtol=1e-4, atol=1e-5)


def test_gate_weights_are_distinct_and_per_scenario():
    layer = ScenarioAdaptiveGate(S, "sass")
    layer(tf.constant(rand(B, D)), tf.constant(rand(B, S, D)), tf.constant(rand(S, D)))
    w = {v.name.split("/")[-1].split(":")[0]: v.numpy() for v in layer.weights}
    assert not np.allclose(w["W_r"], w["W_z"])          # not one initial draw reused
    assert not np.allclose(w["W_h"][0], w["W_h"][1])    # scenarios have their own matrices


def test_gate_trains_only_the_examples_scenario():
    """A loss on scenario-1 outputs gives gradients to scenario 1's matrices only."""
    layer = ScenarioAdaptiveGate(S, "sass")
    g, s_prev, a = tf.constant(rand(B, D)), tf.constant(rand(B, S, D)), tf.constant(rand(S, DA))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(g, s_prev, a)[:, 1] ** 2)
    for v, grad in zip(layer.weights, tape.gradient(loss, layer.weights)):
        norms = np.abs(grad.numpy()).reshape(S, -1).sum(axis=1)
        assert norms[1] > 0 and norms[0] == 0 and norms[2] == 0, v.name


def test_gate_errors():
    with pytest.raises(ValueError, match="unknown gate"):
        ScenarioAdaptiveGate(S, "cross")
    with pytest.raises(ValueError, match="global width"):
        ScenarioAdaptiveGate(S, "product")(tf.constant(rand(B, D + 1)), tf.constant(rand(B, S, D)),
                                            tf.constant(rand(S, DA)))


def dense(layer, x, act=None):
    k, b = (v.numpy() for v in layer.weights)
    y = x @ k + b
    return {None: y, "tanh": np.tanh(y), "relu": np.maximum(y, 0)}[act]


def test_auxiliary_net_matches_eq2():
    x = rand(S, 7)
    net = ScenarioAuxiliaryNet(D, hidden=[8, 6])
    out = net(tf.constant(x)).numpy()
    h = dense(net.affine, x)                       # W_a x_a + b_a
    h = dense(net.f[0], h, "relu")                 # f: hidden layers ...
    want = dense(net.f[1], h, "tanh")              # ... and the output layer
    assert out.shape == (S, D)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shared_input", [False, True])
def test_mlsat_stack_matches_numpy(shared_input):
    xg, xs, a = rand(B, 9), (rand(B, 7) if shared_input else rand(B, S, 7)), rand(S, DA)
    layer = MLSAT(S, D, layers=3, gate="sass")
    s_t, g_t = (t.numpy() for t in layer(tf.constant(xg), tf.constant(xs), tf.constant(a)))
    xs_b = np.repeat(xs[:, None], S, 1) if shared_input else xs
    s = np.tanh(mm(xs_b, layer.w0.numpy()) + layer.b0.numpy())          # s_0
    g = xg
    for dense_l, gate in zip(layer.global_net, layer.gates):
        g = dense(dense_l, g, "tanh")                                   # g_l
        s = np_gate("sass", gate, g, s, a)                              # eq. 3-6
    np.testing.assert_allclose(g_t, g, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s_t, s, rtol=1e-4, atol=1e-5)
    sc, rows = rng.integers(0, S, B), np.arange(B)                      # own path: row s only
    xs_own = xs if shared_input else xs[rows, sc]
    s_own, g_own = layer(tf.constant(xg), tf.constant(xs_own), tf.constant(a[sc]), scenario=tf.constant(sc))
    np.testing.assert_allclose(s_own.numpy(), s[rows, sc], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g_own.numpy(), g, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("per_example_a", [False, True])
def test_bias_fusion_matches_eq7_8(per_example_a):
    s_t = np.tanh(rand(B, S, D))
    a = rand(B, S, D) if per_example_a else rand(S, D)
    layer = ScenarioBiasFusion(S)
    out = layer(tf.constant(s_t), tf.constant(a)).numpy()
    a_b = np.broadcast_to(a, (B, S, D))
    alpha = sig(mm(np.concatenate([s_t, a_b], -1), layer.w_o.numpy()))   # (8)
    want = alpha * s_t + (1 - alpha) * a_b                                # (7)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    sc, rows = rng.integers(0, S, B), np.arange(B)                        # own path: row s only
    own = layer(tf.constant(s_t[rows, sc]), tf.constant(a_b[rows, sc]), scenario=tf.constant(sc))
    np.testing.assert_allclose(own.numpy(), want[rows, sc], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one width"):
        ScenarioBiasFusion(S)(tf.constant(s_t), tf.constant(rand(S, D + 1)))


def np_ntxent(ei, ej, tau, symmetric):
    z = np.concatenate([ei, ej]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(ei)
    total = 0.0
    anchors = range(2 * n) if symmetric else range(n)
    for i in anchors:
        j = i + n if i < n else i - n
        sims = np.array([z[i] @ z[k] / tau for k in range(2 * n)])
        denom = sum(np.exp(sims[k]) for k in range(2 * n) if k != i)
        total += -np.log(np.exp(sims[j]) / denom)                        # (9)
    return total                                                         # (10): sum


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("symmetric", [False, True])
def test_nt_xent_matches_eq9_10(tau, symmetric):
    ei, ej = rand(5, D), rand(5, D)
    got = float(NTXentLoss(tau, symmetric=symmetric)(tf.constant(ei), tf.constant(ej)))
    np.testing.assert_allclose(got, np_ntxent(ei, ej, tau, symmetric), rtol=1e-4)
    mean = float(NTXentLoss(tau, symmetric=symmetric, reduction="mean")(tf.constant(ei), tf.constant(ej)))
    np.testing.assert_allclose(mean, np_ntxent(ei, ej, tau, symmetric) / 5, rtol=1e-4)


def test_nt_xent_prefers_aligned_pairs():
    e = rand(8, D)
    aligned = float(NTXentLoss(0.1)(tf.constant(e), tf.constant(e + 0.01 * rand(8, D))))
    shuffled = float(NTXentLoss(0.1)(tf.constant(e), tf.constant(e[::-1].copy())))
    assert aligned < shuffled
    with pytest.raises(ValueError, match="tau"):
        NTXentLoss(0.0)


def np_cos(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.mark.parametrize("negatives,scale", [(None, 1.0), (3, 1.0), (3, 10.0)])
def test_pairwise_loss_matches_eq11(negatives, scale):
    u, p = rand(B, D), rand(B, D)
    n = rand(B, D) if negatives is None else rand(B, negatives, D)
    loss = PairwiseCosineLoss(scale) if scale != 1.0 else PairwiseCosineLoss()  # default = eq. (11) as printed
    got = float(loss(tf.constant(u), tf.constant(p), tf.constant(n)))
    if negatives is None:
        want = np.mean(np.log(1 + sig(scale * (np_cos(u, n) - np_cos(u, p)))))
    else:
        want = np.mean([np.log(1 + sig(scale * (np_cos(u[k], n[k, j]) - np_cos(u[k], p[k]))))
                        for k in range(B) for j in range(negatives)])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    with pytest.raises(ValueError, match="scale"):
        PairwiseCosineLoss(0.0)


def test_pairwise_scale_concentrates_the_gradient_on_violated_triplets():
    """As printed (scale 1) a well-ranked and a violated triplet pull about equally (the loss is nearly
    linear in the cosine difference); with scale 10 the well-ranked one hardly pulls at all."""
    u = np.array([[1.0, 0.0]], np.float32)
    p = np.array([[1.0, 0.0]], np.float32)
    neg = np.array([[[-1.0, 0.2], [0.9, 0.6]]], np.float32)   # cos 0.98 below the positive / 0.17 below it
    for scale, lo, hi in ((1.0, 0.5, 1.0), (10.0, 0.0, 0.05)):
        n = tf.Variable(neg)
        with tf.GradientTape() as tape:
            loss = PairwiseCosineLoss(scale)(tf.constant(u), tf.constant(p), n)
        got = tape.gradient(loss, n).numpy()[0]
        # d/dx log(1 + sigmoid(x)) = sigmoid(x) (1 - sigmoid(x)) / (1 + sigmoid(x)), x = scale (cos_n - cos_p);
        # d cos(u, n) / dn = (u_hat - cos n_hat) / |n|; the mean runs over the 2 triplets
        cos_n = np_cos(u, neg[0])
        d = sig(scale * (cos_n - 1.0)) * (1 - sig(scale * (cos_n - 1.0))) / (1 + sig(scale * (cos_n - 1.0)))
        norm = np.linalg.norm(neg[0], axis=-1, keepdims=True)
        want = (d * scale / 2)[:, None] * (u - cos_n[:, None] * neg[0] / norm) / norm
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-9)
        assert lo <= d[0] / d[1] <= hi


def test_scenario_initializer_draws_each_scenario_like_one_matrix():
    """Keras reads the leading axis of [S, i, o] as a receptive field (fans S*i, S*o); every kernel[s]
    must have the spread of an [i, o] glorot matrix instead, and the scenarios must differ."""
    S_, i, o = 5, 300, 200
    w = scenario_initializer("glorot_uniform", S_)((S_, i, o)).numpy()
    want = np.sqrt(6.0 / (i + o)) / np.sqrt(3.0)           # std of U(-l, l), l = sqrt(6 / (fan_in + fan_out))
    np.testing.assert_allclose(w.reshape(S_, -1).std(axis=1), want, rtol=0.02)
    assert np.abs(w).max() <= np.sqrt(6.0 / (i + o)) + 1e-6
    assert not np.allclose(w[0], w[1])
    normal = scenario_initializer({"normal": 0.05}, S_)((S_, i, o)).numpy()  # shape-free: unchanged
    np.testing.assert_allclose(normal.std(), 0.05, rtol=0.02)
    gate = ScenarioAdaptiveGate(S_, "sass")
    gate(tf.zeros((2, 64)), tf.zeros((2, S_, 32)), tf.zeros((S_, 16)))
    np.testing.assert_allclose(gate.w_h.numpy().std(), np.sqrt(2.0 / (96 + 32)), rtol=0.05)


@pytest.mark.parametrize("negatives,scale", [(None, 1.0), (3, 1.0), (3, 10.0)])
def test_pairwise_softplus_form_matches_numpy(negatives, scale):
    """``form: softplus``: eq. (11) with log(1 + exp(x)) (the pairwise logistic / BPR loss) in place of the
    printed log(1 + sigmoid(x))."""
    u, p = rand(B, D), rand(B, D)
    n = rand(B, D) if negatives is None else rand(B, negatives, D)
    got = float(PairwiseCosineLoss(scale, form="softplus")(tf.constant(u), tf.constant(p), tf.constant(n)))
    if negatives is None:
        want = np.mean(np.log1p(np.exp(scale * (np_cos(u, n) - np_cos(u, p)))))
    else:
        want = np.mean([np.log1p(np.exp(scale * (np_cos(u[k], n[k, j]) - np_cos(u[k], p[k]))))
                        for k in range(B) for j in range(negatives)])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    with pytest.raises(ValueError, match="form"):
        PairwiseCosineLoss(1.0, form="hinge")


def test_in_batch_cosines_read_each_positive_in_the_users_scenario():
    u, v = rand(B, D), rand(B, S, D)
    scen = rng.integers(0, S, B)
    got = in_batch_cosines(tf.constant(u), tf.constant(v), tf.constant(scen)).numpy()
    want = np.array([[np_cos(u[b], v[j, scen[b]]) for j in range(B)] for b in range(B)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    flat = rand(B, D)                                        # one vector per item (no scenario axis)
    got = in_batch_cosines(tf.constant(u), tf.constant(flat)).numpy()
    np.testing.assert_allclose(got, np_cos(u[:, None, :], flat[None, :, :]), rtol=1e-5, atol=1e-6)


def test_in_batch_mask_drops_the_own_positive_and_accidental_hits():
    ids = np.array([7, 3, 7, 9, 3, 1])
    got = in_batch_mask(tf.constant(ids)).numpy()
    np.testing.assert_array_equal(got, ids[:, None] != ids[None, :])
    assert not got.diagonal().any() and not got[0, 2] and got[0, 1]


@pytest.mark.parametrize("form", ["printed", "softplus"])
def test_pairwise_loss_over_masked_in_batch_triplets(form):
    pos, neg = rand(B), rand(B, B)
    mask = rng.random((B, B)) < 0.6
    got = float(PairwiseCosineLoss(10.0, form).of_cosines(tf.constant(pos), tf.constant(neg), tf.constant(mask)))
    x = 10.0 * (neg - pos[:, None])
    f = np.log1p(np.exp(x)) if form == "softplus" else np.log1p(sig(x))
    np.testing.assert_allclose(got, f[mask].mean(), rtol=1e-5)


def test_cosine_softmax_loss_matches_numpy_with_mask_and_logq():
    pos, neg = rand(B), rand(B, B)
    mask = rng.random((B, B)) < 0.6
    log_q = np.log(rng.dirichlet(np.ones(B))).astype(np.float32)
    got = float(cosine_softmax_loss(10.0, tf.constant(pos), tf.constant(neg), tf.constant(mask), tf.constant(log_q)))
    want = []
    for b in range(B):
        logits = np.concatenate([[10 * pos[b] - log_q[b]], (10 * neg[b] - log_q)[mask[b]]])
        want.append(np.log(np.exp(logits).sum()) - logits[0])
    np.testing.assert_allclose(got, np.mean(want), rtol=1e-5)
    sampled = rand(B, 3)                                         # sampled negatives: no mask, no correction
    got = float(cosine_softmax_loss(10.0, tf.constant(pos), tf.constant(sampled)))
    logits = 10 * np.concatenate([pos[:, None], sampled], 1)
    np.testing.assert_allclose(got, np.mean(np.log(np.exp(logits).sum(1)) - logits[:, 0]), rtol=1e-5)


def test_in_batch_softmax_equals_the_tfrs_retrieval_task():
    """In-batch negatives + logQ + accidental-hit removal is what ``tfrs.tasks.Retrieval`` (YoutubeDNN's loss)
    computes on the scores ``scale * cos``."""
    import tensorflow_recommenders as tfrs
    import tf_keras as keras
    u, v = rand(B, D), rand(B, D)
    ids = np.array([4, 2, 4, 8, 5, 2])
    prob = rng.dirichlet(np.ones(B)).astype(np.float32)
    cos = in_batch_cosines(tf.constant(u), tf.constant(v))
    got = float(cosine_softmax_loss(10.0, tf.linalg.diag_part(cos), cos, in_batch_mask(tf.constant(ids)),
                                    tf.math.log(tf.constant(prob))))
    task = tfrs.tasks.Retrieval(loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                                remove_accidental_hits=True)
    want = float(task(10.0 * tf.math.l2_normalize(u, -1), tf.math.l2_normalize(v, -1),
                      candidate_sampling_probability=tf.constant(prob), candidate_ids=tf.constant(ids),
                      compute_metrics=False, compute_batch_metrics=False))
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("variant", ["sass", "none", "product", "sigmoid", "simnet"])
def test_transfer_init_starts_as_a_pass_through_of_the_global_layer(variant):
    """``init: transfer``: eq. (3)-(6) unchanged (NumPy re-computation with the layer's weights), and at
    the start W_h = [I; 0] and the gates are 1/2, so s_l = s_{l-1} / 2 + tanh(g_l / 2) / 2 (sass) or
    s_l = tanh(g_l) (none) in every scenario."""
    g, s_prev, a = rand(B, D), np.tanh(rand(B, S, D)), rand(S, DA)
    layer = ScenarioAdaptiveGate(S, variant, init="transfer")
    out = layer(tf.constant(g), tf.constant(s_prev), tf.constant(a)).numpy()
    np.testing.assert_allclose(out, np_gate(variant, layer, g, s_prev, a), rtol=1e-4, atol=1e-5)
    gt = np.repeat(g[:, None], S, 1)
    if variant == "sass":
        np.testing.assert_allclose(out, 0.5 * s_prev + 0.5 * np.tanh(0.5 * gt), rtol=1e-5, atol=1e-6)
    elif variant == "none":
        np.testing.assert_allclose(out, np.tanh(gt), rtol=1e-5, atol=1e-6)
    elif variant != "product":
        own = np.tanh(mm(s_prev, layer.w_s.numpy()))
        np.testing.assert_allclose(out, 0.5 * gt + 0.5 * own, rtol=1e-5, atol=1e-6)
    # gradients still reach every matrix (zero-initialised gates train)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(tf.constant(g), tf.constant(s_prev), tf.constant(a)) ** 3)
    for v, grad in zip(layer.weights, tape.gradient(loss, layer.weights)):
        assert np.abs(grad.numpy()).sum() > 0, v.name
    with pytest.raises(ValueError, match="init"):
        ScenarioAdaptiveGate(S, variant, init="ones")


def test_transfer_init_bias_fusion_starts_at_one_half():
    s_t, a = np.tanh(rand(B, S, D)), rand(S, D)
    layer = ScenarioBiasFusion(S, init="transfer")
    out = layer(tf.constant(s_t), tf.constant(a)).numpy()
    np.testing.assert_allclose(out, 0.5 * s_t + 0.5 * np.broadcast_to(a, (B, S, D)), rtol=1e-5, atol=1e-6)


def test_mlsat_transfer_init_wider_global_layers():
    """A global network wider than the scenario state (d_g != d) under the sass gate: W_h's g-block is the
    rectangular identity; the stack still matches the NumPy re-computation."""
    xg, xs, a = rand(B, 9), rand(B, S, 7), rand(S, DA)
    layer = MLSAT(S, D, layers=2, gate="sass", init="transfer", global_hidden=[2 * D, D])
    s_t, g_t = (t.numpy() for t in layer(tf.constant(xg), tf.constant(xs), tf.constant(a)))
    s = np.tanh(mm(xs, layer.w0.numpy()) + layer.b0.numpy())
    g = xg
    for dense_l, gate in zip(layer.global_net, layer.gates):
        g = dense(dense_l, g, "tanh")
        s = np_gate("sass", gate, g, s, a)
    assert g_t.shape == (B, D)
    np.testing.assert_allclose(s_t, s, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.gates[0].w_h.numpy()[1, :2 * D], np.eye(2 * D, D), atol=0)


def test_auxiliary_net_zero_output_init_starts_at_zero_and_trains():
    """``out_init: zeros``: a = tanh(0 h + 0) = 0 at the start (eq. 2 unchanged), the output kernel still
    gets a gradient."""
    x = rand(S, 7)
    net = ScenarioAuxiliaryNet(D, hidden=[8], out_init="zeros")
    with tf.GradientTape() as tape:
        out = net(tf.constant(x))
        loss = tf.reduce_sum(out * tf.constant(rand(S, D)))
    np.testing.assert_array_equal(out.numpy(), np.zeros((S, D), np.float32))
    grad = tape.gradient(loss, net.f[-1].kernel)
    assert np.abs(grad.numpy()).sum() > 0
    h = dense(net.affine, x)
    np.testing.assert_allclose(out.numpy(), dense(net.f[-1], h, "tanh"), atol=1e-7)
    with pytest.raises(ValueError, match="out_init"):
        ScenarioAuxiliaryNet(D, out_init="ones")


def test_mlsat_zero_s0_with_transfer_init_is_a_mix_of_the_global_layers():
    """``s0_init: zeros`` + ``init: transfer``: s_0 = 0 and (gates 1/2, W_h = [I; 0])
    s_l = s_(l-1) / 2 + tanh(g_l / 2) / 2 in every scenario, so s_T = sum_l 2^(l-T-1) tanh(g_l / 2);
    the stack matches the NumPy re-computation and W_0 trains."""
    xg, xs, a = rand(B, 9), rand(B, S, 7), rand(S, DA)
    layer = MLSAT(S, D, layers=3, gate="sass", init="transfer", s0_init="zeros")
    with tf.GradientTape() as tape:
        s_t, g_t = layer(tf.constant(xg), tf.constant(xs), tf.constant(a))
        loss = tf.reduce_sum(s_t * tf.constant(rand(B, S, D)))
    np.testing.assert_array_equal(layer.w0.numpy(), 0)
    g, s, want = xg, np.zeros((B, S, D), np.float32), 0.0
    for dense_l, gate in zip(layer.global_net, layer.gates):
        g = dense(dense_l, g, "tanh")
        s = np_gate("sass", gate, g, s, a)
        want = 0.5 * want + 0.5 * np.tanh(0.5 * np.repeat(g[:, None], S, 1))
    np.testing.assert_allclose(s_t.numpy(), s, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s_t.numpy(), want, rtol=1e-4, atol=1e-5)
    assert np.abs(tape.gradient(loss, layer.w0).numpy()).sum() > 0
    with pytest.raises(ValueError, match="s0_init"):
        MLSAT(S, D, s0_init="ones")


def test_scenario_deviation_is_the_squared_distance_to_the_anchors():
    ws = [rand(S, 4, 3), rand(S, 3)]
    anchors = [rand(S, 4, 3), rand(S, 3)]
    got = scenario_deviation([tf.constant(w) for w in ws], [tf.constant(a) for a in anchors]).numpy()
    want = sum(((w.astype(np.float64) - a) ** 2).sum() for w, a in zip(ws, anchors))
    np.testing.assert_allclose(got, want, rtol=1e-5)
