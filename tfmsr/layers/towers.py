"""One tower per scenario, stacked (:class:`~tfmsr.layers.scenario.ScenarioMLP`): each example through its own
scenario's tower, or every scenario's tower in one einsum per layer."""
from __future__ import annotations

from typing import Sequence

import tf_keras as keras

from tfmsr.layers.scenario import ScenarioMLP, own_rows


class ScenarioTowers(keras.layers.Layer):
    """S towers ``MLP(hidden) -> Dense(1)`` over a shared input ``[B, D]`` (or one input per scenario,
    ``[B, S, D]``), stored as one ``[S, ...]`` variable per layer (``mlp/dense_<i>/kernel``).

    ``call(x, scenario)`` -> the own-scenario logit ``[B]`` (the FLOPs of one tower whatever S; tower s is
    trained only by scenario s's examples); ``call(x)`` -> every tower's logit ``[B, S]`` (S towers' FLOPs,
    one einsum per layer: ``scenario_probs`` and the ``all_scenarios`` servable).
    """

    def __init__(self, num_scenarios: int, hidden: Sequence[int], dropout: float = 0.0, kernel_init="glorot_uniform",
                 **kwargs):
        super().__init__(**kwargs)
        self.num_scenarios = int(num_scenarios)
        self.mlp = ScenarioMLP(num_scenarios, hidden, out_units=1, dropout=dropout, kernel_init=kernel_init,
                               head_init="glorot_uniform", name="mlp")  # the heads' init before the stacking

    def call(self, x, scenario=None, training=False):
        if scenario is None:
            return self.mlp(x, training=training)[..., 0]
        if len(x.shape) == 3:
            x = own_rows(x, scenario)
        return self.mlp(x, scenario, training=training)[:, 0]
