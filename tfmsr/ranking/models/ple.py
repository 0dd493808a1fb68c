"""PLE (Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for
Personalized Recommendations", RecSys 2020), one task per scenario."""
from dataclasses import dataclass
from typing import List

from tfmsr.core.params import default, refuse
from tfmsr.layers import CGC, ScenarioTowers
from tfmsr.ranking.models.base import RankingModel, register


@register("ple")
class PLE(RankingModel):
    """PLE (Tang et al. 2020): stacked CGC levels of scenario-specific and shared experts, scenario towers.

    Tang et al. 2020, Sec. 4.2-4.3: each level (:class:`~tfmsr.layers.CGC`) has ``specific_experts`` per
    scenario and ``shared_experts``; scenario ``k``'s gate mixes its own and the shared experts, and every
    level but the last also has a shared gate over all experts feeding the next level's shared experts.
    ``expert_hidden`` lists one hidden-size list per level (default two levels, ``[[256], [128]]``; a single
    level is CGC). Towers ``tower`` per scenario, each trained only by its scenario.

    Cost: the last level runs only the row's own experts, gate and tower; every lower level's shared gate mixes
    all ``S x specific_experts`` specific experts, so each example runs them all there (``O(S)`` FLOPs per
    example by the math, one GEMM per layer: :meth:`~tfmsr.layers.ExpertBank._batched`).
    """

    multi_head = True
    own_head = True

    @dataclass
    class Params(RankingModel.Params):
        expert_hidden: List[List[int]] = default([[256], [128]])   # one list of hidden sizes per level
        specific_experts: int = 1
        shared_experts: int = 2
        tower: List[int] = default([64])
        dropout: float = 0.0

        def check(self):
            if not self.expert_hidden or not all(self.expert_hidden):
                raise refuse("expert_hidden", f"expert_hidden must be a list of per-level hidden-size lists, "
                                              f"e.g. [[256], [128]], got {self.expert_hidden!r}")

    def __init__(self, schema, params=None, **kwargs):
        super().__init__(schema, params, **kwargs)
        p = self.params
        levels = p.expert_hidden
        S = self.num_scenarios
        self.levels = [CGC(S, p.specific_experts, p.shared_experts, h, shared_output=i < len(levels) - 1,
                           dropout=p.dropout, name=f"cgc_{i}") for i, h in enumerate(levels)]
        self.towers = ScenarioTowers(S, p.tower, dropout=p.dropout, name="towers")

    def logits(self, x, training=False, own=False):
        """``[B, S]``, or the own scenario's ``[B]`` (``own``): the last two levels run their own-task path
        (:meth:`CGC.own_task`: the last level's own gate, own experts and one tower; the level below it only the
        row's task gate next to its shared gate, which mixes every scenario's experts: ``O(S)`` by the math, one
        batched op per layer); the levels below those run in full."""
        h = self.flat_inputs(x)
        if not own:
            for level in self.levels:
                h = level(h, training=training)           # [B, S+1, H], the last [B, S, H]
            return self.towers(h, training=training)
        sc = x[self.schema.scenario.name]
        for level in self.levels[:-2]:
            h = level(h, training=training)
        for level in self.levels[-2:]:
            h = level(h, training=training, own=sc)         # [B, 2, H] (own task, shared), the last [B, H]
        return self.towers(h, sc, training=training)
