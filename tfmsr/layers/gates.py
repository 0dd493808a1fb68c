"""Multiplicative gates from prior information: PEPNet's Gate NU, EPNet (embedding personalisation) and
PPNet (a DNN tower whose every layer is rescaled by a gate) (Chang et al., KDD 2023, Sec. 3).

The same gate (``gamma * sigmoid``, in ``[0, gamma]``, ``gamma = 2`` so an untrained gate is ~1) is the
scaling mechanism SAINet's scenario-aware tower and FIMN's gates build on.
"""
from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf
import tf_keras as keras

from tfmsr.layers._init import fresh
from tfmsr.layers.scenario import ScenarioDense


def _dense(units, activation, kernel_init, name, num_scenarios=None):
    """A Keras Dense, or one per scenario stacked (:class:`~tfmsr.layers.scenario.ScenarioDense`)."""
    if num_scenarios:
        return ScenarioDense(num_scenarios, units, activation, kernel_init=kernel_init, name=name)
    return keras.layers.Dense(units, activation=activation, kernel_initializer=fresh(kernel_init), name=name)


def _apply(layer, x, scenario):
    """``layer(x)``; a stacked layer: the own scenario's (``scenario`` given) or every scenario's."""
    return layer(x, scenario) if isinstance(layer, ScenarioDense) else layer(x)


class GateNU(keras.layers.Layer):
    """Gate Neural Unit (PEPNet Sec. 3.2): ``x' = ReLU(x W + b)``, ``delta = gamma * sigmoid(x' W' + b')``.

    ``units`` is the width of ``delta`` (the tensor it rescales); ``hidden`` the width of ``x'`` (default:
    ``units``). ``call(x [B, D]) -> [B, units]`` in ``[0, gamma]``. With ``num_scenarios`` one gate per scenario,
    stacked: ``call(x, scenario)`` the own scenario's ``[B, units]``, ``call(x)`` every scenario's
    ``[B, S, units]`` (``x [B, D]`` or ``[B, S, D]``).
    """

    def __init__(self, units: int, hidden: Optional[int] = None, gamma: float = 2.0, kernel_init="glorot_uniform",
                 num_scenarios: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.units, self.gamma = int(units), float(gamma)
        self.hidden = _dense(int(hidden or units), "relu", kernel_init, "hidden", num_scenarios)
        self.out = _dense(self.units, None, kernel_init, "out", num_scenarios)

    def call(self, x, scenario=None):
        return self.gamma * tf.sigmoid(_apply(self.out, _apply(self.hidden, x, scenario), scenario))


class EPNet(keras.layers.Layer):
    """Embedding Personalized Network (PEPNet Sec. 3.3):

    ``delta_domain = GateNU(E(F_d) (+) stop_grad(E))``, ``O_ep = delta_domain (x) E``

    ``E`` is the general embedding ``[B, D]`` (all fields concatenated) and ``E(F_d)`` the domain-side
    (scenario) embedding ``[B, d_s]``; the gate is element-wise over ``E`` (``delta`` has ``E``'s width).
    The stop-gradient keeps the gate from moving the shared embeddings. ``call(E, domain) -> [B, D]``.
    """

    def __init__(self, gate_hidden: Optional[int] = None, gamma: float = 2.0, kernel_init="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.gate_hidden, self.gamma, self.kernel_init = gate_hidden, gamma, kernel_init

    def build(self, input_shape):
        self.gate = GateNU(int(input_shape[-1]), self.gate_hidden, self.gamma, self.kernel_init, name="gate_nu")
        super().build(input_shape)

    def call(self, general, domain):
        return self.gate(tf.concat([domain, tf.stop_gradient(general)], axis=-1)) * general


class PPNet(keras.layers.Layer):
    """Parameter Personalized Network tower (PEPNet Sec. 3.4):

    ``delta^(l) = GateNU_l(O_prior (+) stop_grad(O_ep))``, ``O^(l) = delta^(l) (x) H^(l)``,
    ``H^(l+1) = f(O^(l) W^(l) + b^(l))``, ``H^(0) = O_ep``

    for the ``hidden`` layers (each layer's input is rescaled by its own gate, whose width is that input's
    width). ``O_prior`` are the prior embeddings (user / item ids, and the scenario for scenario-conditioned
    gates). ``call(h0 [B, D], prior [B, P]) -> [B, hidden[-1]]``. With ``num_scenarios``: one tower per
    scenario, every weight stacked ``[S, ...]``; ``call(h0, prior, scenario)`` runs the own scenario's tower
    (one tower's FLOPs), ``call(h0, prior)`` every scenario's, ``[B, S, hidden[-1]]`` (one einsum per layer).
    """

    def __init__(self, hidden: Sequence[int], gate_hidden: Optional[int] = None, gamma: float = 2.0,
                 activation="relu", dropout: float = 0.0, kernel_init="glorot_uniform",
                 num_scenarios: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.hidden_sizes = [int(h) for h in hidden]
        self.gate_hidden, self.gamma, self.kernel_init = gate_hidden, gamma, kernel_init
        self.num_scenarios = num_scenarios
        self.dense = [_dense(h, activation, kernel_init, f"dense_{i}", num_scenarios)
                      for i, h in enumerate(self.hidden_sizes)]
        self.drop = keras.layers.Dropout(dropout) if dropout else None

    def build(self, input_shape):
        widths = [int(input_shape[-1])] + self.hidden_sizes[:-1]
        self.gates = [GateNU(w, self.gate_hidden, self.gamma, self.kernel_init, self.num_scenarios,
                             name=f"gate_nu_{i}") for i, w in enumerate(widths)]
        super().build(input_shape)

    def call(self, h0, prior, scenario=None, training=False):
        gate_in = tf.concat([prior, tf.stop_gradient(h0)], axis=-1)
        every = self.num_scenarios and scenario is None
        h = h0[:, None] if every else h0                                    # [B, 1, D]: broadcast over S
        for gate, dense in zip(self.gates, self.dense):
            h = _apply(dense, self._gated(gate, gate_in, h, scenario), scenario)
            if self.drop is not None:
                h = self.drop(h, training=training)
        return h

    def _gated(self, gate, gate_in, h, scenario):
        """``delta (x) h`` of one layer (the own scenario's gate, or every scenario's ``[B, S, W]``)."""
        return (gate(gate_in, scenario) if self.num_scenarios else gate(gate_in)) * h
