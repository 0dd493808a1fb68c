"""SAINet (Scenario-adaptive Interest Network, ../shared/papers/SAINet.md)."""
from dataclasses import dataclass
from typing import List, Optional

import tensorflow as tf
import tf_keras as keras

from tfmsr.core.params import Initializer, default
from tfmsr.features import SchemaError
from tfmsr.layers import MLP, behavior_scenario, behavior_scenario_embedding, context_inputs, require_behavior
from tfmsr.layers.attention import pack
from tfmsr.layers.sainet import ScenarioAdaptiveBlock, ScenarioAwareDNNTower, TargetAwareInterestFusion
from tfmsr.ranking.models.base import RankingModel, register


@register("sainet")
class SAINet(RankingModel):
    """SAINet: stacked scenario-adaptive blocks over the behaviour sequence, target-aware fusion, scenario-aware tower.

    Section 4: ``X^0`` = behaviour embeddings (eq. 6; a behaviour is the concatenation of its item-side
    fields, e.g. item id + category, and the target ``e_it`` the same fields of the candidate), ``L``
    Scenario-adaptive Blocks (SIE eq. 2-3 with the per-behaviour scenario embeddings ``M_S`` from the
    behaviour-scenario sequence, STM eq. 4-5 with the target scenario ``e_st``), TIF (eq. 7-8, query
    ``z_t = [e_it, e_st]``), ``H^0 = [V_t, e_it, e_o]`` (eq. 9; ``e_o`` = every other feature) and the
    SDT tower (eq. 10-11). Scenario embeddings of behaviours and of the target share one table.

    Defaults follow section 5.1 / 5.4: L = 2 blocks, h = 4 heads, gamma = 2, tower 512-256-128-64,
    Gaussian(0, 0.05) initialisation of the DNN parameters (``init``: STM's and SDT's gates, the tower).
    ``attention_init`` initialises the attention projections of SIE (``W^Q, W^K, W^V, W^O``) and TIF
    (``W_Q, W_K, W_V``); default Glorot, as FIMN's ``attention_init``: 5.1 gives the Gaussian for "the
    parameters in DNN", and with Gaussian(0, 0.05) projections TIF's unscaled scores start near 0 (uniform
    weights, mean pooling). ``attention_init: {normal: 0.05}`` is the Gaussian everywhere.
    Table 3's ablations are switches: ``sie: false`` (w/o SIE),
    ``stm: false`` (w/o STM), ``tif: false`` (w/o TIF, mean pooling), ``sdt: false`` (w/o SDT, plain DNN).
    SDT stays the default, measured (3 seeds, test AUC): w/o SDT is higher on ML-100K (0.7866 ± 0.0030 vs
    0.7824 ± 0.0014) but level on ml-latest-small (0.7576 ± 0.0017 vs 0.7564 ± 0.0018), not a loss on all.
    ``residual`` (default true) makes SIE return ``X + MultiHead(X)``, the Add of the multi-head attention
    sublayer of [21] that eq. 2 cites; ``residual: false`` is eq. 2 as printed (``MultiHead(X)`` alone,
    whose rows after L blocks are mixtures of all behaviours, so TIF cannot pick single ones), see
    :class:`~tfmsr.layers.sainet.ScenarioAwareInterestExtracting`. On the planted data with SAINet's premise
    (3 seeds) the Add lifts test AUC from 0.8892 to 0.8935. ``sdt_gamma`` scales SDT's gate: 1 (default) is
    eq. 11 as printed, 2 is LHUC's ``2 sigmoid``, see :class:`~tfmsr.layers.sainet.ScenarioAwareDNNTower`.
    """

    @dataclass
    class Params(RankingModel.Params):
        blocks: int = 2
        heads: int = 4
        gamma: float = 2.0
        tower: List[int] = default([512, 256, 128, 64])
        init: Initializer = default({"normal": 0.05})
        sie: bool = True
        stm: bool = True
        tif: bool = True
        sdt: bool = True
        sie_scenario: bool = True
        attention_dim: Optional[int] = None
        residual: bool = True
        sdt_gamma: float = 1.0
        attention_init: Initializer = "glorot_uniform"

    def __init__(self, schema, params=None, **kwargs):
        super().__init__(schema, params, **kwargs)
        p = self.params
        require_behavior(schema, self.model_name)
        self.behavior_scenario = behavior_scenario(schema)
        if p.sie and p.sie_scenario and self.behavior_scenario is None:
            raise SchemaError(
                f"{schema.source}: sainet's SIE needs the scenario of each behaviour: a 'behavior' sequence with its "
                f"own table of {schema.num_scenarios + 1} rows storing scenario index + 1 (or set sie_scenario: false)")
        self.blocks = [ScenarioAdaptiveBlock(p.heads, p.gamma, p.sie, p.stm, p.sie_scenario, p.init,
                                             p.residual, p.attention_init, name=f"block_{l}")
                       for l in range(p.blocks)]
        self.tif = (TargetAwareInterestFusion(p.attention_dim, p.attention_init, name="tif") if p.tif
                    else None)
        self.tower = (ScenarioAwareDNNTower(p.tower, p.init, p.sdt_gamma, name="sdt") if p.sdt
                      else MLP(p.tower, kernel_init=p.init, name="dnn"))
        self.out = keras.layers.Dense(1, name="logit")

    def interests(self, x):
        """``(X^L [n, d], packed, e_it [B, d], e_st [B, d_s], behaviour sequences used)``: the blocks run over the
        ``n`` real behaviours of the batch (``packed``, :func:`~tfmsr.layers.attention.pack`), not ``B x N``; each
        behaviour field and the behaviour scenario are looked up at those positions only (``[n]`` ids: the tables'
        gradients are ``n`` rows, not a ``[B, N, d]`` scatter of the gathered tokens' gradient)."""
        pairs = require_behavior(self.schema, self.model_name)
        packed = pack(self.embedding.mask(x, pairs[0][0].name))
        seqs = tuple(s.name for s, _ in pairs) + ((self.behavior_scenario.name,) if self.behavior_scenario else ())
        real = {name: packed.gather(x[name]) for name in seqs}                          # [n] ids per sequence
        h = tf.concat([self.embedding.embed(real, s.name) for s, _ in pairs], axis=-1)
        e_it = tf.concat([self.embedding.embed(x, t.name) for _, t in pairs], axis=-1)
        e_st = self.embedding.scenario(x)
        m_s = behavior_scenario_embedding(self.embedding, real, self.schema)
        if m_s is None:  # only reachable with sie_scenario: false
            m_s = tf.zeros_like(h[:, :1])
        for block in self.blocks:
            h = block(h, m_s, e_st, packed=packed)
        return h, packed, e_it, e_st, seqs

    def logits(self, x, training=False):
        h, packed, e_it, e_st, seqs = self.interests(x)
        v_t = self.tif(tf.concat([e_it, e_st], -1), h, packed=packed) if self.tif is not None else packed.mean(h)
        h0 = tf.concat([v_t, context_inputs(self, x, seqs)], axis=-1)  # e_it is among the item features
        hidden = self.tower(h0, e_st) if self.params.sdt else self.tower(h0, training=training)
        return self.out(hidden)[:, 0]
