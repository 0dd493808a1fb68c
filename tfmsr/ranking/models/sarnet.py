"""SAR-Net (Shen et al., "SAR-Net: A Scenario-Aware Ranking Network for Personalized Fair Recommendation in
Hundreds of Travel Scenarios", CIKM 2021)."""
from dataclasses import dataclass
from typing import List

import tensorflow as tf
import tf_keras as keras

from tfmsr.core.params import default
from tfmsr.layers import (MLP, MultiHeadTargetAttention, ScenarioAffine, ScenarioMoE, behavior_scenario,
                          behavior_scenario_embedding, context_inputs, embed_behavior, require_behavior)
from tfmsr.ranking.models.base import RankingModel, register


@register("sarnet")
class SARNet(RankingModel):
    """SAR-Net (Shen et al. 2021): cross-scenario behaviour attention, scenario transform, shared + specific experts.

    Shen et al. 2021, Sec. 3:

    1. Cross-scenario behaviour extraction, two multi-head attentions over the user's behaviours from
       all scenarios (:class:`~tfmsr.layers.MultiHeadTargetAttention`): *scenario-aware* (query: the
       request's scenario embedding; keys: the scenario of each behaviour, from the behaviour-scenario
       sequence looked up in the same scenario table; values: the behaviours) transfers interests from
       related scenarios, *item-aware* (query: the candidate; keys = values: the behaviours).
    2. Scenario-specific linear transformation ``x * w_s + b_s`` (:class:`~tfmsr.layers.ScenarioAffine`).
    3. Scenario-shared experts and scenario-specific experts fused by a multi-scenario gate read from the
       transformed representation (:class:`~tfmsr.layers.ScenarioMoE`), then a small tower.

    Simplifications (documented, the data have no such signals): the paper's debias expert networks take
    promotion/intervention bias features and the Fairness Coefficient re-weighs samples by manual
    exposure boosts; neither exists in these datasets, so the experts are plain MLPs (FC = 1). Without a
    behaviour-scenario sequence the scenario-aware attention uses the behaviours themselves as keys.
    Ablations: ``scenario_attention``, ``item_attention``, ``scenario_transform`` (booleans).
    """

    @dataclass
    class Params(RankingModel.Params):
        num_heads: int = 4
        scenario_attention: bool = True
        item_attention: bool = True
        scenario_transform: bool = True
        shared_experts: int = 8
        specific_experts: int = 2
        expert_hidden: List[int] = default([128, 64])
        tower: List[int] = default([64])
        dropout: float = 0.0

    def __init__(self, schema, params=None, **kwargs):
        super().__init__(schema, params, **kwargs)
        p = self.params
        require_behavior(schema, self.model_name)
        S = self.num_scenarios
        self.beh_scenario = behavior_scenario(schema)
        self.scenario_att = (MultiHeadTargetAttention(p.num_heads, name="scenario_attention")
                             if p.scenario_attention else None)
        self.item_att = MultiHeadTargetAttention(p.num_heads, name="item_attention") if p.item_attention else None
        self.transform = ScenarioAffine(S, name="scenario_transform") if p.scenario_transform else None
        self.moe = ScenarioMoE(S, p.shared_experts, p.specific_experts, p.expert_hidden, p.dropout,
                               name="experts")
        self.tower = MLP(p.tower, dropout=p.dropout, name="tower")
        self.out = keras.layers.Dense(1, name="logit")

    def logits(self, x, training=False):
        sc = x[self.schema.scenario.name]
        beh = embed_behavior(self.embedding, x, self.schema)
        attends_scenarios = self.scenario_att is not None and self.beh_scenario is not None
        used = beh.features + ((self.beh_scenario.name,) if attends_scenarios else ())
        parts = [context_inputs(self, x, used)]
        if self.scenario_att is not None:
            keys = behavior_scenario_embedding(self.embedding, x, self.schema)
            parts.append(self.scenario_att(self.embedding.scenario(x), beh.keys if keys is None else keys, beh.keys,
                                           mask=beh.mask))
        if self.item_att is not None:
            parts.append(self.item_att(beh.target, beh.keys, beh.keys, mask=beh.mask))
        h = tf.concat(parts, axis=-1)
        if self.transform is not None:
            h = self.transform(h, sc)
        h = self.moe(h, scenario=sc, training=training)
        return self.out(self.tower(h, training=training))[:, 0]
