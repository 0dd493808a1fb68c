"""PEPNet's Gate NU, EPNet and PPNet (tfmsr/layers/gates.py),
each against a NumPy re-computation of its equation."""
import numpy as np
import tensorflow as tf

from layer_reference import TOL, rand, relu, sigmoid, dense

from tfmsr.layers import EPNet, GateNU, PPNet


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


def test_stacked_ppnet_runs_each_scenarios_own_tower():
    """PPNet with num_scenarios: one tower per scenario in [S, ...] variables; the own path equals the own
    column of the all path and the NumPy tower of that scenario's weights."""
    S = 3
    layer = PPNet([5, 3], gate_hidden=4, num_scenarios=S)
    h0, prior, sc = rand(6, 6), rand(6, 2), np.array([0, 2, 2, 1, 0, 2])
    every = layer(tf.constant(h0), tf.constant(prior)).numpy()                      # [B, S, 3]
    own = layer(tf.constant(h0), tf.constant(prior), tf.constant(sc)).numpy()
    assert every.shape == (6, S, 3) and layer.dense[0].kernel.shape == (S, 6, 5)
    np.testing.assert_allclose(own, every[np.arange(6), sc], **TOL)
    gate_in = np.concatenate([prior, h0], 1)

    def lin(d, x, s, act=None):
        y = x @ d.kernel.numpy()[s] + d.bias.numpy()[s]
        return act(y) if act else y

    for s in range(S):
        h = h0
        for g, dl in zip(layer.gates, layer.dense):
            delta = g.gamma * sigmoid(lin(g.out, lin(g.hidden, gate_in, s, relu), s))
            h = lin(dl, delta * h, s, relu)
        np.testing.assert_allclose(every[:, s], h, **TOL)
