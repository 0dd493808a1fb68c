"""SAML (Chen et al., "Scenario-aware and Mutual-based approach for Multi-scenario Recommendation in
E-Commerce", ICDMW 2020): scenario-aware feature representation + scenario-mutual network."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Literal

import tensorflow as tf

from tfmsr.core.errors import ConfigError
from tfmsr.core.params import default, refuse
from tfmsr.layers.saml import (AuxiliaryNetwork, MultiBranchNetwork, MutualUnit, ScenarioAwareAttention,
                               ScenarioAwareEmbedding)
from tfmsr.layers.scenario import ScenarioDense
from tfmsr.ranking.models.base import RankingModel, register


@register("saml")
class SAML(RankingModel):
    """SAML: scenario-aware embedding & attention, auxiliary net, multi-branch net with mutual unit (Sec. III).

    Forward pass (Fig. 1): :class:`~tfmsr.layers.saml.ScenarioAwareEmbedding` (III-C-1) and
    :class:`~tfmsr.layers.saml.ScenarioAwareAttention` (III-C-2, eq. 1-2) give the scenario-independent
    features ``[global embeddings, MultiHead(Q_g, K_g, V_g)]`` and the scenario-dependent features
    ``[scenario-specific embeddings, MultiHead(Q_l, K_l, V_g)]``. The auxiliary network (III-D-1) reads the
    former, the multi-branch network (III-D-2, eq. 4; one branch per scenario, each layer also reads the
    auxiliary layer's output) the latter; the mutual unit (III-D-3, eq. 6-8) mixes the branches' last hidden
    layer, and branch ``i``'s output unit on ``M_i`` is scenario ``i``'s logit (the mutual unit sits before the
    output layer: the paper has one ``alpha``/``g`` per scenario, Fig. 3). Loss (eq. 5):
    ``sum_i L_i * I_i + aux_weight * L_aux``: ``compute_losses`` returns the BCE of each example's own branch
    (``bce``) and ``L_aux`` (``aux``, the BCE of the auxiliary logit), weighted by ``aux_weight``. The auxiliary
    outputs feed the branches forward only ("unidirectionally"); ``aux_gradient`` decides whether the branch
    losses also train the auxiliary layers they read (``true``) or the auxiliary network learns from ``L_aux``
    alone (``false``: a ``stop_gradient`` where the branches read ``V_a^l``, the strict reading of
    "unidirectional").

    Defaults are the paper's public-dataset settings (Table II / Sec. IV-C): global / scenario-specific
    embedding 12 / 4 per feature, 4 attention heads, hidden 128x64, ReLU (the paper trains with Adam, lr 5e-4,
    batch 128; ``configs/saml.yaml`` trains at batch 1024, lr 1e-3 with ``embedding_batch_l2`` 0.03, better on real
    data, its header has the paper's line; industrial 8 / 2, 256x128, lr 1e-4, batch 1024:
    ``configs/saml_industrial.yaml``).

    Ablations (Table IV), as switches:

    * ``mutual_gate: false`` - SAML w/o gate: no mutual unit (``g = 0``), independent branches.
    * ``aux: false`` - SAML w/o aux: no auxiliary network; both feature sets concatenated feed the branches.
    * ``mutual: false`` - SAML w/o gate&mut: no branches; both feature sets feed one unified MLP (the
      auxiliary network's structure) whose output is the prediction.

    ``positions``/``pooling``: BST's position embedding and sequence pooling of the attention outputs,
    default ``target`` (the candidate's token; ``flatten``, all L+1 slots as BST's figure, is a switch):
    flatten buries the candidate among the behaviour slots (MovieLens-100K age, 3 seeds, own budget: test AUC
    0.7871 ± 0.0016 vs 0.7820 ± 0.0032). ``attention_block``: ``bare`` (default, eq. 1-2 as printed) or
    ``transformer`` (BST's Transformer layer around each attention, residual + LayerNorm + feed-forward, as
    III-A-2 "follows BST"; see :class:`~tfmsr.layers.saml.ScenarioAwareAttention`); ``aux_gradient``:
    ``true`` (default). Both switches tie on MovieLens-100K (3 seeds, pooling target: transformer 0.7868 ±
    0.0011, aux_gradient false 0.7871 ± 0.0012, vs 0.7871 ± 0.0016), so the defaults keep the cheaper printed
    forms. ``gradient_mask: false`` removes III-D-2's mask (only to show its effect).
    Training and the scenario servables compute each example's own scenario only (``own_head``): its branch,
    row ``s`` of the mutual unit and its output unit; eq. 6-8 still read every branch's ``V_j``, so every
    branch runs forward (``O(S)`` per example by the math: ``S sum_l D_in^l D_l`` multiply-adds, see
    :class:`~tfmsr.layers.saml.MultiBranchNetwork`; under the gradient mask without a backward pass). ``scenario_probs`` / ``all_scenarios`` compute every row. ``mutual_coefficients(x)``
    returns ``alpha`` and ``g`` for Fig. 3 (``pipelines/saml_figure.py``).
    """

    multi_head = own_head = True

    @dataclass
    class Params(RankingModel.Params):
        embedding_dim: int = 12
        specific_dim: int = 4
        num_heads: int = 4
        hidden: List[int] = default([128, 64])
        activation: str = "relu"
        positions: bool = True
        pooling: Literal[ScenarioAwareAttention.POOLINGS] = "target"
        attention_block: Literal[ScenarioAwareAttention.BLOCKS] = "bare"
        aux: bool = True
        aux_weight: float = 1.0
        aux_gradient: bool = True
        mutual: bool = True
        mutual_gate: bool = True
        gradient_mask: bool = True

        def check(self):
            if not self.mutual and not self.aux:
                raise refuse("mutual", "mutual=false (w/o gate&mut) feeds the unified auxiliary MLP; it cannot be "
                                       "combined with aux=false")
            if not self.hidden:
                raise refuse("hidden", "hidden must list at least one layer width")

    def __init__(self, schema, params=None, **kwargs):
        super().__init__(schema, params, **kwargs)
        p = self.params
        self.multi_head = bool(p.mutual)
        self.features = ScenarioAwareEmbedding(schema, p.embedding_dim, p.specific_dim,
                                               global_embedding=self.embedding, name="scenario_embedding")
        length = self.features.pairs[0][0].length + 1
        self.attention = ScenarioAwareAttention(p.num_heads, length if p.positions else None, p.pooling,
                                                p.attention_block, name="scenario_attention")
        self.aux_net = AuxiliaryNetwork(p.hidden, p.activation, name="auxiliary") if p.aux else None
        if p.mutual:
            self.branches = MultiBranchNetwork(self.num_scenarios, p.hidden, p.activation,
                                               aux_widths=p.hidden if p.aux else None, name="branches")
            self.mutual_unit = MutualUnit(p.gradient_mask, name="mutual_unit") if p.mutual_gate else None
            self.heads = ScenarioDense(self.num_scenarios, 1, name="heads")    # branch i's output unit on M_i

    # ------------------------------------------------------------------ forward
    def forward(self, x, training=False, own=False) -> Dict[str, tf.Tensor]:
        """``logits`` ([B, S], or [B] for w/o gate&mut), ``aux_logit`` [B] (with the auxiliary loss), and
        ``alpha`` [B, S, S], ``gate`` [B, S] when the mutual unit is on. ``own``: only each example's own
        scenario (``logits`` [B], ``alpha`` [B, S], ``gate`` [B]; see :meth:`own_outputs`)."""
        f = self.features(x)
        a_g, a_l = self.attention(f.tokens_global, f.tokens_specific, mask=f.mask)
        independent = tf.concat([f.independent, a_g], axis=-1)
        dependent = tf.concat([f.dependent, a_l], axis=-1)
        if not self.params.mutual:
            return {"logits": self.aux_net(tf.concat([independent, dependent], -1), training=training)[1]}
        out, aux_hidden = {}, None
        if self.aux_net is not None:
            aux_hidden, out["aux_logit"] = self.aux_net(independent, training=training)
            if not self.params.aux_gradient:  # the branch losses do not reach the auxiliary network
                aux_hidden = [tf.stop_gradient(h) for h in aux_hidden]
        else:
            dependent = tf.concat([independent, dependent], axis=-1)
        if own:
            out.update(self.own_outputs(dependent, aux_hidden, x[self.schema.scenario.name]))
            return out
        v = self.branches(dependent, aux_hidden)
        if self.mutual_unit is not None:
            v, out["alpha"], out["gate"] = self.mutual_unit(v)
        out["logits"] = self.heads(v)[..., 0]
        return out

    def own_outputs(self, v0, aux_hidden, scenario) -> Dict[str, tf.Tensor]:
        """The own scenario ``s`` only: row ``s`` of the mutual unit over every branch's ``V_j`` (with the
        gradient mask every branch runs forward once, batched: the ``O(S)`` part of eq. 6-8; ``V_s`` is read
        from that pass and only the own branch runs backward, one branch's FLOPs), its output unit."""
        if self.mutual_unit is None:
            return {"logits": self.heads(self.branches(v0, aux_hidden, scenario=scenario), scenario)[:, 0]}
        if self.params.gradient_mask:
            v_all, v_own = self.branches(v0, aux_hidden, scenario=scenario, with_all=True)
        else:
            v_all = self.branches(v0, aux_hidden)
            v_own = tf.gather(v_all, tf.cast(scenario, tf.int32), batch_dims=1)
        m, alpha, gate = self.mutual_unit(v_all, v_own, scenario)
        return {"logits": self.heads(m, scenario)[:, 0], "alpha": alpha, "gate": gate}

    def logits(self, x, training=False, own=False):
        return self.forward(x, training=training, own=own)["logits"]

    def step_outputs(self, x, training=False):
        """``prediction`` (the own-scenario probability) beside the own-scenario outputs of :meth:`forward`."""
        out = self.forward(x, training=training, own=True)
        return {**out, "prediction": tf.sigmoid(out["logits"])}

    def call(self, x, training=False):
        return self.step_outputs(x, training=training)["prediction"]

    @property
    def loss_names(self):
        return ("bce", "aux") if self.aux_net is not None and self.params.mutual else ("bce",)

    @property
    def loss_weights(self):
        return {"aux": float(self.params.aux_weight)}

    def compute_losses(self, features, labels, training=False, outputs=None):
        """Eq. 5: the own branch's BCE (``bce``) and, with the auxiliary network, ``aux``: the BCE of the
        auxiliary logit (weighted by ``aux_weight`` in the total)."""
        outputs = self.step_outputs(features, training=training) if outputs is None else outputs
        losses = RankingModel.compute_losses(self, features, labels, training, outputs)
        if "aux_logit" in outputs:
            y = tf.cast(tf.reshape(labels, [-1]), outputs["aux_logit"].dtype)
            losses["aux"] = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y,
                                                                                  logits=outputs["aux_logit"]))
        return losses

    def mutual_coefficients(self, x) -> Dict[str, tf.Tensor]:
        """``alpha`` [B, S, S] (eq. 8, ``alpha[b, i, j]``: weight of branch j in branch i, 0 on the diagonal)
        and ``gate`` [B, S] (eq. 7, ``g_i``) for every example; scenario ``i``'s own prediction reads row i."""
        if not (self.params.mutual and self.params.mutual_gate):
            raise ConfigError("model 'saml': alpha and g exist only with mutual=true and mutual_gate=true")
        out = self.forward(x, training=False)
        return {"alpha": out["alpha"], "gate": out["gate"]}
