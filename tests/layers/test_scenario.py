"""Stacked per-scenario parameters (tfmsr/layers/scenario.py): own-scenario and all-scenario outputs against
NumPy, both own implementations, and the gradient mask (a scenario absent from the batch gets no gradient)."""
import numpy as np
import pytest
import tensorflow as tf

from layer_reference import RNG, TOL, rand, relu

from tfmsr.layers import ScenarioDense, ScenarioMLP
from tfmsr.layers.scenario import own_method


def np_mlp(layer, x, s):
    """Scenario s's MLP in NumPy on rows x [n, D]."""
    for i, d in enumerate(layer.dense):
        x = x @ d.kernel.numpy()[s] + d.bias.numpy()[s]
        x = relu(x) if i < layer.num_hidden else x
    return x


@pytest.mark.parametrize("method", ["partition", "gather"])
def test_scenario_dense_own_and_all(method):
    S = 4
    layer = ScenarioDense(S, 3, activation="relu", method=method)
    x, sc = rand(9, 5), np.array([0, 1, 3, 3, 0, 1, 1, 0, 3])           # scenario 2 absent
    own = layer(tf.constant(x), tf.constant(sc)).numpy()
    k, b = layer.kernel.numpy(), layer.bias.numpy()
    assert k.shape == (S, 5, 3) and not np.allclose(k[0], k[1])        # one variable, scenarios start different
    np.testing.assert_allclose(own, np.stack([relu(x[i] @ k[s] + b[s]) for i, s in enumerate(sc)]), **TOL)
    every = layer(tf.constant(x)).numpy()
    np.testing.assert_allclose(every, relu(np.einsum("bd,sdh->bsh", x, k) + b), **TOL)
    xs = rand(9, S, 5)
    np.testing.assert_allclose(layer(tf.constant(xs)).numpy(), relu(np.einsum("bsd,sdh->bsh", xs, k) + b), **TOL)


@pytest.mark.parametrize("method", ["partition", "gather"])
def test_scenario_mlp_own_equals_own_head_of_all_and_masks_gradients(method):
    S = 3
    layer = ScenarioMLP(S, [6, 4], out_units=1, method=method)
    x, sc = rand(8, 5), np.array([0, 2, 2, 0, 0, 2, 0, 2])             # scenario 1 absent
    with tf.GradientTape() as tape:
        own = layer(tf.constant(x), tf.constant(sc))
        loss = tf.reduce_sum(tf.square(own))
    grads = tape.gradient(loss, [d.kernel for d in layer.dense] + [d.bias for d in layer.dense])
    want = np.stack([np_mlp(layer, x[i:i + 1], s)[0] for i, s in enumerate(sc)])
    np.testing.assert_allclose(own.numpy(), want, **TOL)
    every = layer(tf.constant(x)).numpy()                               # [B, S, 1]
    np.testing.assert_allclose(every[np.arange(8), sc], want, **TOL)
    np.testing.assert_allclose(every[:, 1], np_mlp(layer, x, 1), **TOL)
    for g in grads:
        g = tf.convert_to_tensor(g).numpy()
        assert np.all(g[1] == 0) and np.any(g[0] != 0) and np.any(g[2] != 0)


def test_own_method_rule():
    assert own_method(5, 128 * 64) == "partition"
    assert own_method(100, 128 * 64) == "partition"
    assert own_method(400, 128 * 64) == "gather"
    assert own_method(100, 64) == "gather"                              # a 64 -> 1 head: gather is cheap


def test_scenario_layers_refuse_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        ScenarioDense(3, 2, method="loop")
    with pytest.raises(ValueError, match="no layer"):
        ScenarioMLP(3, [])


@pytest.mark.parametrize("method", ["partition", "gather"])
def test_own_and_all_on_a_variable_split_over_parameter_servers(method):
    """A [S, D, H] kernel partitioned along the scenario axis (a ShardedVariable, as the parameter-server
    partitioner makes it): the own rows come from the right shard (tf.gather on a ShardedVariable does not)."""
    from tensorflow.python.distribute.sharded_variable import ShardedVariable

    from tfmsr.layers.scenario import all_matmul, own_matmul

    k, b = rand(5, 3, 2), rand(5, 2)
    kernel = ShardedVariable([tf.Variable(k[:3]), tf.Variable(k[3:])])
    bias = ShardedVariable([tf.Variable(b[:3]), tf.Variable(b[3:])])
    x, sc = rand(7, 3), np.array([0, 4, 3, 1, 2, 4, 0])
    got = own_matmul(tf.constant(x), tf.constant(sc), kernel, bias, method).numpy()
    np.testing.assert_allclose(got, np.stack([x[i] @ k[s] + b[s] for i, s in enumerate(sc)]), **TOL)
    np.testing.assert_allclose(all_matmul(tf.constant(x), kernel, bias).numpy(),
                               np.einsum("bd,sdh->bsh", x, k) + b, **TOL)


def test_towers_keep_glorot_heads_whatever_the_hidden_init():
    """ScenarioTowers' heads start as the unstacked Dense(1) heads did (Glorot), while the hidden layers take the
    model's kernel_init (FIMN's N(0, 0.05)): a N(0, 0.05) head cost FIMN 0.04 AUC on MovieLens-100K."""
    from tfmsr.layers import ScenarioTowers

    towers = ScenarioTowers(5, [32], kernel_init={"normal": 0.05})
    towers(tf.zeros([2, 16]), tf.constant([0, 1], tf.int64))
    hidden, head = towers.mlp.dense[0].kernel.numpy(), towers.mlp.dense[1].kernel.numpy()
    assert head.shape == (5, 32, 1) and abs(hidden.std() - 0.05) < 0.01
    limit = np.sqrt(6.0 / (32 + 1))                                   # glorot_uniform of one [32, 1] head
    assert np.abs(head).max() <= limit and np.abs(head).max() > 0.25 and abs(head.std() - limit / np.sqrt(3)) < 0.05
