"""WideLinear, the FM second-order term and the DCN-v2 cross network (tfmsr/layers/interaction.py),
each against a NumPy re-computation of its equation."""
import numpy as np
import pytest
import tensorflow as tf

from layer_reference import RNG, TOL, rand

from tfmsr.layers import CrossNetV2, fm_second_order, WideLinear


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
