"""Baselines of the foundation: one pooled DNN and the shared-bottom multi-tower model."""
from dataclasses import dataclass
from typing import List

import tf_keras as keras

from tfmsr.core.params import default
from tfmsr.layers import MLP, ScenarioTowers
from tfmsr.ranking.models.base import RankingModel, register


@register("dnn")
class DNN(RankingModel):
    """DNN: one pooled tower over all features, the scenario id as one more feature (Covington et al. 2016)."""

    @dataclass
    class Params(RankingModel.Params):
        hidden: List[int] = default([256, 128, 64])
        dropout: float = 0.0
        batch_norm: bool = False

    def __init__(self, schema, params=None, **kwargs):
        super().__init__(schema, params, **kwargs)
        p = self.params
        self.mlp = MLP(p.hidden, dropout=p.dropout, batch_norm=p.batch_norm, name="mlp")
        self.out = keras.layers.Dense(1, name="logit")

    def logits(self, x, training=False):
        return self.out(self.mlp(self.flat_inputs(x), training=training))[:, 0]


@register("shared_bottom")
class SharedBottom(RankingModel):
    """Shared-Bottom: a shared MLP bottom and one tower per scenario (Caruana 1997), each tower trained
    only by its own scenario's examples."""

    multi_head = True
    own_head = True

    @dataclass
    class Params(RankingModel.Params):
        bottom: List[int] = default([256, 128])
        tower: List[int] = default([64])
        dropout: float = 0.0
        batch_norm: bool = False

    def __init__(self, schema, params=None, **kwargs):
        super().__init__(schema, params, **kwargs)
        p = self.params
        self.bottom = MLP(p.bottom, dropout=p.dropout, batch_norm=p.batch_norm, name="bottom")
        self.towers = ScenarioTowers(self.num_scenarios, p.tower, dropout=p.dropout, name="towers")

    def logits(self, x, training=False, own=False):
        """``[B, S]`` (every tower), or the own tower's ``[B]`` (``own``)."""
        h = self.bottom(self.flat_inputs(x), training=training)
        return self.towers(h, x[self.schema.scenario.name] if own else None, training=training)
