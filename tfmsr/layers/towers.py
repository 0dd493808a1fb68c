"""One tower per scenario, all evaluated on the batch; the model gathers each example's own tower."""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf
import tf_keras as keras

from tfmsr.layers.mlp import MLP


class ScenarioTowers(keras.layers.Layer):
    """S towers ``MLP(hidden) -> Dense(1)`` over a shared input ``[B, D]`` (or one input per scenario,
    ``[B, S, D]``); returns logits ``[B, S]``. Loss on the gathered own-scenario logit means tower s is
    trained only by scenario s's examples."""

    def __init__(self, num_scenarios: int, hidden: Sequence[int], dropout: float = 0.0, kernel_init="glorot_uniform",
                 **kwargs):
        super().__init__(**kwargs)
        self.towers = [MLP(hidden, dropout=dropout, kernel_init=kernel_init, name=f"tower_{s}")
                       for s in range(num_scenarios)]
        self.heads = [keras.layers.Dense(1, name=f"head_{s}") for s in range(num_scenarios)]

    def call(self, x, training=False):
        per_scenario = len(x.shape) == 3
        out = [head(tower(x[:, s] if per_scenario else x, training=training))
               for s, (tower, head) in enumerate(zip(self.towers, self.heads))]
        return tf.concat(out, axis=1)
