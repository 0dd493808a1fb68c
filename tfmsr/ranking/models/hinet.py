"""HiNet (Zhou et al., "HiNet: Novel Multi-Scenario & Multi-Task Learning with Hierarchical Information
Extraction", ICDE 2023)."""

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
    gives the logit; ``scenario_probs`` re-runs the model with the scenario set, so each scenario's head
    sees that scenario's extraction ``[A_s, S_s, G]``. Released-code defaults: 5 shared and 5 specific sub-experts
    128-64, SAN MLP 128-64, CGC 2 specific + 2 shared experts 128-64, towers 128-64. ``san: false`` is the
    "w/o SAN" ablation.
    """

    defaults = {"shared_experts": 5, "specific_experts": 5, "expert_hidden": [128, 64], "san": True,
                "san_hidden": [128, 64], "task_specific_experts": 2, "task_shared_experts": 2,
                "task_expert_hidden": [128, 64], "tower": [128, 64], "dropout": 0.0}

    def __init__(self, schema, params=None, **kwargs):
        super().__init__(schema, params, **kwargs)
        p = self.params
        S = self.num_scenarios
        self.extraction = ScenarioExtraction(S, p["shared_experts"], p["specific_experts"], p["expert_hidden"],
                                             p["san_hidden"], p["san"], p["dropout"], name="scenario_extraction")
        self.task_extraction = CGC(S, p["task_specific_experts"], p["task_shared_experts"], p["task_expert_hidden"],
                                   dropout=p["dropout"], name="task_extraction")
        self.towers = ScenarioTowers(S, p["tower"], dropout=p["dropout"], name="towers")

    def logits(self, x, training=False):
        sc = x[self.schema.scenario.name]
        c = self.extraction(self.flat_inputs(x), sc, self.embedding.scenario(x), training=training)
        return self.towers(self.task_extraction(c, training=training, own=sc), sc, training=training)
