"""PLE (Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for
Personalized Recommendations", RecSys 2020), one task per scenario."""
from dataclasses import dataclass
from typing import List, Literal

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

    Cost with ``shared_gate: all``: the last level runs only the row's own experts, gate and tower; every lower
    level's shared gate mixes all ``S x specific_experts`` specific experts, so each example runs them all there
    (``O(S)`` FLOPs per example by the math, one GEMM per layer: :meth:`~tfmsr.layers.ExpertBank._batched`).
    ``shared_gate: own`` reads a lower level's shared gate over the row's own scenario's specific
    experts and the shared ones only (:class:`~tfmsr.layers.CGC` ``shared_gate_reads``; a row belongs to one
    scenario): every level runs one scenario's experts per row (flat in ``S`` but the ``O(S)`` small GEMMs of
    the row partitioning and the optimizer's ``O(S)`` parameters), and every scenario's head of a row is the model
    re-run on the row in that scenario (``scenario_probs``: ``S`` passes in one batch); ``all`` is the paper's
    (Sec. 4.3). Params default ``all``: what every run written before the switch used (its ``run.yaml`` has no
    ``shared_gate``); the shipped ``configs/ple.yaml`` runs ``own``: within one std of ``all`` on three real
    datasets (yaml) and flat in ``S``.
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
        shared_gate: Literal["all", "own"] = "all"   # lower levels' shared gate: every scenario's experts, or own

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
                           dropout=p.dropout, shared_gate_reads=p.shared_gate, name=f"cgc_{i}")
                       for i, h in enumerate(levels)]
        # own: one head per row (each scenario's is the model re-run in it: RankingModel.scenario_probs)
        self.multi_head = p.shared_gate == "all"
        self.towers = ScenarioTowers(S, p.tower, dropout=p.dropout, name="towers")

    def logits(self, x, training=False, own=False):
        """``[B, S]``, or the own scenario's ``[B]`` (``own``, always with ``shared_gate: own``: every level's
        own-task path); with ``shared_gate: all`` the last two levels run their own-task path
        (:meth:`CGC.own_task`: the last level's own gate, own experts and one tower; the level below it only the
        row's task gate next to its shared gate, which mixes every scenario's experts: ``O(S)`` by the math, one
        batched op per layer); the levels below those run in full."""
        h = self.flat_inputs(x)
        own = own or not self.multi_head
        if not own:
            for level in self.levels:
                h = level(h, training=training)           # [B, S+1, H], the last [B, S, H]
            return self.towers(h, training=training)
        sc = x[self.schema.scenario.name]
        run_own = 2 if self.multi_head else len(self.levels)      # own reading: every level on its own path
        for level in self.levels[:-run_own]:
            h = level(h, training=training)
        for level in self.levels[-run_own:]:
            h = level(h, training=training, own=sc)         # [B, 2, H] (own task, shared), the last [B, H]
        return self.towers(h, sc, training=training)
