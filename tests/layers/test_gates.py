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
