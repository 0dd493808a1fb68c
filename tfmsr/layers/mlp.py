"""Fully connected stacks shared by every model."""
from __future__ import annotations

from typing import Sequence

import tf_keras as keras


def initializer(spec):
    """``"glorot_uniform"`` etc., or ``{"normal": 0.05}`` for Gaussian(0, 0.05) as several papers use."""
    if isinstance(spec, dict) and "normal" in spec:
        return keras.initializers.RandomNormal(0.0, float(spec["normal"]))
    return keras.initializers.get(spec)


class MLP(keras.layers.Layer):
    """Dense layers ``hidden`` with ``activation``, optional batch norm and dropout after each."""

    def __init__(self, hidden: Sequence[int], activation="relu", dropout: float = 0.0, batch_norm: bool = False,
                 kernel_init="glorot_uniform", l2: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        reg = keras.regularizers.l2(l2) if l2 else None
        self.dense = [keras.layers.Dense(h, kernel_initializer=initializer(kernel_init), kernel_regularizer=reg,
                                         name=f"dense_{i}") for i, h in enumerate(hidden)]
        self.norms = [keras.layers.BatchNormalization(name=f"bn_{i}") for i in range(len(hidden))] if batch_norm else []
        self.act = keras.activations.get(activation)
        self.drop = keras.layers.Dropout(dropout) if dropout else None

    def call(self, x, training=False):
        return self.hidden_outputs(x, training=training)[-1] if self.dense else x

    def hidden_outputs(self, x, training=False, first_preactivation=None):
        """The output of every hidden layer, in order (SAML's ``V_a^l`` feed the branches, eq. 4).
        ``first_preactivation``: ``x W_0 + b_0`` computed by the caller (a cheaper factorisation of the
        first layer, see ``TargetAttention``); ``x`` is then unused."""
        outs = []
        for i, dense in enumerate(self.dense):
            x = first_preactivation if i == 0 and first_preactivation is not None else dense(x)
            if self.norms:
                x = self.norms[i](x, training=training)
            x = self.act(x)
            if self.drop is not None:
                x = self.drop(x, training=training)
            outs.append(x)
        return outs
