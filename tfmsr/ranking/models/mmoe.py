"""MMoE (Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts",
KDD 2018), one task per scenario."""
from dataclasses import dataclass
from typing import List

from tfmsr.core.params import default
from tfmsr.layers import ExpertBank, ExpertGates, ScenarioTowers
from tfmsr.ranking.models.base import RankingModel, register


@register("mmoe")
class MMoE(RankingModel):
    """MMoE (Ma et al. 2018): shared experts, one softmax gate and one tower per scenario.

    Ma et al. 2018, Sec. 4.3: ``y_k = h^k(f^k(x))``, ``f^k(x) = sum_i g^k(x)_i f_i(x)``,
    ``g^k(x) = softmax(W_gk x)``; each scenario is a task. ``x`` is the embedding concatenation
    (``flat_inputs``), the experts are MLPs ``expert_hidden``, tower ``k`` (``tower``) is trained only by
    scenario ``k``'s examples (loss on the gathered own-scenario logit).
    """

    multi_head = True
    own_head = True

    @dataclass
    class Params(RankingModel.Params):
        num_experts: int = 4
        expert_hidden: List[int] = default([256, 128])
        tower: List[int] = default([64])
        dropout: float = 0.0

    def __init__(self, schema, params=None, **kwargs):
        super().__init__(schema, params, **kwargs)
        p = self.params
        self.experts = ExpertBank(p.num_experts, p.expert_hidden, dropout=p.dropout, name="experts")
        self.gates = ExpertGates(self.num_scenarios, p.num_experts, name="gates")
        self.towers = ScenarioTowers(self.num_scenarios, p.tower, dropout=p.dropout, name="towers")

    def logits(self, x, training=False, own=False):
        """``[B, S]`` (every gate and tower), or the own scenario's ``[B]`` (``own``: one gate and one tower)."""
        inp = self.flat_inputs(x)
        experts = self.experts(inp, training=training, stacked=False)        # E x [B, H] (or [B, E, H])
        if own:
            sc = x[self.schema.scenario.name]
            return self.towers(self.gates(inp, experts, own=sc), sc, training=training)
        return self.towers(self.gates(inp, experts), training=training)     # [B, S, H] -> [B, S]
