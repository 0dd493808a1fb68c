"""HiNet (Zhou et al., "HiNet: Novel Multi-Scenario & Multi-Task Learning with Hierarchical Information
Extraction", ICDE 2023)."""
from dataclasses import dataclass
from typing import List

import tensorflow as tf

from tfmsr.core.params import default
from tfmsr.layers import CGC, ScenarioExtraction, ScenarioTowers
from tfmsr.ranking.models.base import RankingModel, register


@register("hinet")
class HiNet(RankingModel):
    """HiNet (Zhou et al. 2023): scenario extraction (shared/specific experts + SAN), CGC, scenario towers.

    Zhou et al. 2023, Sec. III: the scenario extraction layer (:class:`~tfmsr.layers.ScenarioExtraction`)
    outputs ``[A_i, S_i, G]`` for the example's scenario ``i``: the scenario-shared expert module ``G``,
    scenario ``i``'s specific expert module ``S_i`` and the scenario-aware attentive network
    ``A_i = sum_{j != i} w_j S_j`` (weights from the scenario embedding). The task extraction layer is a
    CGC (:class:`~tfmsr.layers.CGC`) whose tasks are the scenario heads (one CTR objective per scenario;
    the paper has several objectives per scenario), then one tower per scenario. The example's own tower
    gives the logit; ``scenario_probs`` evaluates every head on its own scenario's extraction ``[A_s, S_s, G]``
    in one pass (the answer of re-running the model with the scenario set). Released-code defaults: 5 shared
    and 5 specific sub-experts 128-64, SAN MLP 128-64, CGC 2 specific + 2 shared experts 128-64, towers 128-64.
    ``san: false`` is the "w/o SAN" ablation.

    Cost: SAN mixes every scenario's specific module ``S_j``, so each example runs all ``S x specific_experts``
    sub-experts (``O(S)`` FLOPs per example by the math, one batched op per layer); the task extraction and the
    tower run only the row's own scenario. ``san: false`` runs only the own scenario's sub-experts;
    ``san_top_k: k`` (SAN over each scenario's ``k`` largest weights) runs ``k + 1`` scenarios' sub-experts.
    Params default 0 (the paper's SAN, what runs written before the switch used); the shipped ``configs/hinet.yaml``
    runs ``k = 1``: within one std of the paper's on two real datasets with 3 scenarios (yaml), flat in ``S``.
    """

    multi_head = own_head = True

    @dataclass
    class Params(RankingModel.Params):
        shared_experts: int = 5
        specific_experts: int = 5
        expert_hidden: List[int] = default([128, 64])
        san: bool = True
        san_top_k: int = 0            # SAN over the k scenarios of largest weight only (0: all, the paper's)
        san_hidden: List[int] = default([128, 64])
        task_specific_experts: int = 2
        task_shared_experts: int = 2
        task_expert_hidden: List[int] = default([128, 64])
        tower: List[int] = default([128, 64])
        dropout: float = 0.0

    def __init__(self, schema, params=None, **kwargs):
        super().__init__(schema, params, **kwargs)
        p = self.params
        S = self.num_scenarios
        self.extraction = ScenarioExtraction(S, p.shared_experts, p.specific_experts, p.expert_hidden,
                                             p.san_hidden, p.san, p.dropout, san_top_k=p.san_top_k,
                                             name="scenario_extraction")
        self.task_extraction = CGC(S, p.task_specific_experts, p.task_shared_experts, p.task_expert_hidden,
                                   dropout=p.dropout, name="task_extraction")
        self.towers = ScenarioTowers(S, p.tower, dropout=p.dropout, name="towers")

    def logits(self, x, training=False, own=False):
        """``[B, S]``: every scenario's head, each on that scenario's extraction ``[A_s, S_s, G]`` (one pass);
        ``own``: the row's own scenario only, ``[B]`` (its task gate, experts and tower; the extraction's
        ``S_j`` are ``O(S)`` by the SAN's math)."""
        sc = x[self.schema.scenario.name]
        inp = self.flat_inputs(x)
        if own:
            c = self.extraction(inp, self.embedding.scenario(x), sc, training=training)
            return self.towers(self.task_extraction(c, training=training, own=sc), sc, training=training)
        every_emb = self.embedding.scenario({self.schema.scenario.name: tf.range(self.num_scenarios, dtype=sc.dtype)})
        c = self.extraction(inp, every_emb, training=training)                       # [B, S, 3H]
        return self.towers(self.task_extraction(c, training=training, task_inputs=True), training=training)
