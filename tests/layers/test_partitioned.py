"""STAR's partitioned normalization, star dense and scenario affine layers (tfmsr/layers/partitioned.py),
each against a NumPy re-computation of its equation."""
import numpy as np
import tensorflow as tf

from layer_reference import RNG, TOL, rand, relu

from tfmsr.layers import partition_apply, PartitionedNormalization, ScenarioAffine, StarDense
from tfmsr.layers.scenario import SortedRows


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


def test_sorted_rows_split_and_restore_row_order():
    x, sc = rand(7, 2), np.array([2, 0, 3, 2, 2, 0, 3])                     # scenario 1 absent
    rows = SortedRows(tf.constant(sc), 4)
    parts = rows.split(rows.sort(tf.constant(x)))
    assert [p.shape[0] for p in parts] == [2, 0, 3, 2]
    for s, p in enumerate(parts):
        np.testing.assert_allclose(p.numpy(), x[sc == s], **TOL)             # stable: batch order kept
    np.testing.assert_allclose(rows.unsort(tf.concat(parts, 0)).numpy(), x, **TOL)


def test_star_dense_sorted_rows_output_and_gradients():
    """Rows sorted once (``SortedRows``, the written-out gradient of :func:`star_matmul`): the output is the
    NumPy ``x_b (W (x) W_p[s_b]) + b + b_p[s_b]`` and every gradient equals the partitioned path's."""
    x, sc = rand(9, 5), np.array([0, 3, 0, 2, 3, 3, 0, 2, 0])              # scenario 1 absent
    for S, units in ((4, 4), (70, 1)):                                      # 70 x [5, 1]: the gathered method
        layer = StarDense(units, S, activation="relu")
        layer.build(x.shape)
        layer.kernel_p.assign(rand(S, 5, units))
        layer.bias_p.assign(rand(S, units))
        W, b, Wp, bp = (w.numpy() for w in (layer.kernel, layer.bias, layer.kernel_p, layer.bias_p))
        xt, sct = tf.constant(x), tf.constant(sc)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(xt)
            rows = SortedRows(sct, S)
            got = rows.unsort(layer(rows.sort(xt), rows))
            ref = layer(xt, sct)
            loss_got, loss_ref = (tf.reduce_sum(tf.square(y) * np.arange(1, 10)[:, None]) for y in (got, ref))
        want = np.stack([relu(x[i] @ (W * Wp[s]) + b + bp[s]) for i, s in enumerate(sc)])
        np.testing.assert_allclose(got.numpy(), want, **TOL)
        for g_got, g_ref in zip(tape.gradient(loss_got, [xt, *layer.trainable_variables]),
                                tape.gradient(loss_ref, [xt, *layer.trainable_variables])):
            np.testing.assert_allclose(tf.convert_to_tensor(g_got).numpy(), tf.convert_to_tensor(g_ref).numpy(), **TOL)


def test_scenario_affine():
    layer = ScenarioAffine(3)
    x, sc = rand(5, 4), np.array([0, 2, 1, 2, 0])
    layer.build(x.shape)
    layer.scale.assign(rand(3, 4))
    layer.shift.assign(rand(3, 4))
    got = layer(tf.constant(x), tf.constant(sc)).numpy()
    np.testing.assert_allclose(got, x * layer.scale.numpy()[sc] + layer.shift.numpy()[sc], **TOL)


def test_star_dense_and_partitioned_normalization_all_scenarios():
    """Without a scenario both layers answer for every scenario ``[B, S, ...]``: column s equals the own
    output of the rows set to scenario s (the all_scenarios servable in one pass)."""
    S, b = 3, 6
    pn, dense = PartitionedNormalization(S), StarDense(4, S, activation="relu")
    z, sc = rand(b, 5), np.array([0, 1, 2, 0, 1, 1])
    pn(tf.constant(z), tf.constant(sc), training=True)                  # moving statistics of every scenario
    for w in (pn.gamma_p, pn.beta_p):
        w.assign(rand(*w.shape))
    every = pn(tf.constant(z)).numpy()
    dense.build(every.shape)
    dense.kernel_p.assign(rand(S, 5, 4))
    h = dense(tf.constant(every)).numpy()
    assert every.shape == (b, S, 5) and h.shape == (b, S, 4)
    for s in range(S):
        col = np.full(b, s)
        own = pn(tf.constant(z), tf.constant(col)).numpy()
        np.testing.assert_allclose(every[:, s], own, **TOL)
        np.testing.assert_allclose(h[:, s], dense(tf.constant(own), tf.constant(col)).numpy(), **TOL)
