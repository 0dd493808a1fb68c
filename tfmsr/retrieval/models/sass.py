"""SASS: Scenario-Adaptive and Self-Supervised model (Zhang et al., CIKM 2022), the retrieval model.

Both sides are built the same way (Sec. 4.1, Figure 3/4), with one shared embedding layer:

* **inputs** -- user side: profile (groups user/context/query), behaviour sequence pooled by
  self-attention (Sec. 4.1.1; ``seq_pooling: mean`` for a masked mean) over all behaviours (the global
  network's input) and over the behaviours *in each scenario* (the scenario networks' input, the paper's
  user-scenario cross behaviour features), user statistics overall / in each scenario. Item side: item
  profile, item statistics overall / in each scenario.
* **scenario auxiliary network** (eq. 2) on the scenario embedding -> ``a``;
* **ML-SAT** (eq. 3-6): global shared network ``g_1..g_T`` + per-scenario gate stacks -> ``s_T``;
* **scenario bias fusion** (eq. 7-8) -> ``e_s``, one vector per scenario: users ``[B, S, d]``, items
  ``[N, S, d]``, so every item has a representation per scenario (Sec. 4.3 serving).

Training (``tfmsr.retrieval.train``): **pre-training** (Sec. 4.1.4) on cross-scenario pairs
(``tfmsr.retrieval.pairs``), NT-Xent with temperature ``tau`` on the user pairs plus the same on the
item pairs (eq. 9-10); **fine-tuning** (Sec. 4.2) from the restored pre-trained weights with
``L_scenario + beta * L_auxiliary`` (eq. 11-13), the pairwise cosine loss on the own-scenario vectors and
on the global vectors ``g_T``, against negatives "randomly sampled from whole candidate set with negative
sampling strategy [23]" (``negatives_from``, below): ``negatives`` items per positive (``sampled``) or per batch
and scenario (``shared``), uniformly from the request scenario's corpus or word2vec's exposures^0.75
(``negative_sampler``, ``SampledNegativesParams``), or the batch's other positives (``batch``).

Ablation switches (Tables 3-6): ``gate`` none (SASS*) | product | simnet | sigmoid | sass;
``item_per_scenario: false`` (Single Item Embedding: the item vector is the item global network's
``g_T`` in every scenario, and there is no item-side contrastive task since both views would be
identical); ``bias_fusion: false`` (no scenario bias fusion: ``e_s = s_T``); ``beta: 0`` (no global
auxiliary task); ``layers`` (number of ML-SAT layers, Figure 6); pre-training on/off is the config's
``pretrain.enabled`` (SASS vs SASS-Base).

Readings of the paper (switches; the shipped configs ``configs/sass*.yaml`` set the first reading):

* ``negatives_from`` / ``pairwise_logq`` (eq. 11's negatives; the paper fixes neither count nor distribution).
  The configs read "sampled with negative sampling strategy [23]" as the batch's other positives (drawn by
  popularity, as word2vec's sampler) with eq. 11 on the scores ``scale * cos - log q`` (``pairwise_logq``, q =
  the item's share of the train positives), default because it ranks best on Douban: a pairwise loss against
  few uniform negatives leaves the popular, plausible items unranked, and without the correction popular
  negatives teach ``p(i|u) / q(i)`` and rank the popular items HR@K rewards down.
* ``pairwise_form`` / ``pairwise_scale`` (eq. 11-12). As printed (``printed``, scale 1),
  ``log(1 + sigmoid(cos_n - cos_p))`` is nearly linear on the cosine range (see ``PairwiseCosineLoss``):
  the loss is about ``mean(cos_n) - mean(cos_p)``, so the best move is to put every user of a scenario on
  the direction of the positives' mean (popular items); on the planted benchmark the fine-tuned user
  vectors of a scenario collapse (mean of the unit vectors 0.998) and SASS-Base ranks below popularity.
  The configs read it as the pairwise logistic loss ``log(1 + exp(x))`` (``softplus``) with the cosines
  at eq. 9's temperature (``pairwise_scale`` 10 = 1 / tau). Neither the exp nor the scale is printed.
* ``gate_init`` (the paper gives no initialisation): ``glorot`` draws every scenario-specific matrix at
  random; a scenario's user and item units are then two unrelated random maps of the global vectors that
  only that scenario's examples can align -- few in a sparse scenario. ``transfer`` starts every unit as a
  pass-through of the global network (``W_h = [I; 0]``, gate and fusion matrices zero, so r = z = alpha =
  1/2), the equations unchanged (``ScenarioAdaptiveGate``).
* ``global_hidden``: widths of the global layers ``g_1 .. g_{T-1}`` (default all ``dim``).
* ``global_scenario_input`` (default false): what the user-side global shared network reads. Sec. 4.1.2
  says only that it is trained on the samples of all scenarios (a "whole-scenario model"); Sec. 4.2.1 lists
  the scenario context feature (scenario ID) and the statistics "in target scenario" among every fine-tuning
  sample's user features. false: the global network reads the scenario-free features (profile, all
  behaviours, statistics over all scenarios), so ``g_T`` cannot tell scenarios apart; true: it also reads the
  request's scenario embedding and the user's statistics in that scenario -- the mix-scenario model of
  Figure 2(b) (what DSSM mix reads), while the item side's global network stays scenario-free (one ``g_T``
  per item, as the items of a mix-scenario model). The scenario networks still read every scenario's input
  (a request's vectors in the other scenarios, never used, then see the request scenario's ``g_l``).

Not in the paper (engineering switches, default off):

* ``scenario_l2`` (L2-SP): fine-tuning adds ``scenario_l2 * sum ||w - w_0||^2`` over every
  scenario-specific weight (``W_0, b_0``, the gate units, ``W_o``; user and item towers), ``w_0`` = its value
  when fine-tuning starts (restored pre-trained weights; the initialisation for SASS-Base). A scenario's
  weights get gradient only from its own examples, whose share of the batch-mean loss is the scenario's
  traffic share, so at the optimum a sparse scenario stays closer to ``w_0`` (with ``gate_init: transfer``:
  to the pass-through of the global network) than a dense one. Adam alone normalises each weight's step,
  so without it a 5 % scenario's weights move as far as a 50 % scenario's, driven by a few examples.
  Measured on the planted benchmark (SASS-Base, seed 0, trained to the best validation epoch): in the
  sparsest scenario (3.5 % of the positives) the served scenario vectors score test HR@20 0.295 while the
  scenario-free global vectors ``g_T`` of the same model score 0.394; with ``scenario_l2: 1`` (and both
  inits below at zero) the scenario vectors score 0.378 there, and the dense scenarios lose 0.01-0.03.
* ``s0_init`` / ``aux_init: zeros`` start ``W_0`` (so ``s_0 = 0``) / the auxiliary net's output layer (so
  ``a = 0``) at zero: with ``gate_init: transfer`` the scenario vector then starts as a mix of the global
  layers only, with no random per-scenario projection of ``x_s`` and no random scenario offset ``a`` that
  the user and item towers would draw independently (the paper gives no initialisation).

* ``finetune_loss: softmax`` replaces eq. 11/12 by DSSM's softmax over the positive and the same
  sampled negatives (logits ``softmax_scale * cos``), to tell the architecture's effect from the loss's.
* ``negatives_from: batch``: the negatives of eq. 11/12 are the other positives of the batch (each in the
  user's scenario; the same item is not a negative), not ``negatives`` items per positive from the sampler:
  B - 1 negatives per user for the cost of none, drawn from the candidate set by their share of the
  positives -- the negatives YoutubeDNN (Table 2) trains with. The pairwise loss averages over every
  (user, in-batch negative) triplet (logQ-corrected with ``pairwise_logq``, the configs' reading above); the
  softmax loss always applies YoutubeDNN's logQ correction.
  Measured (3 seeds, best validation epoch, with ``scenario_l2: 1``, 2 layers, a 64-wide global layer and
  zero s0/aux init): test HR@20 on the planted benchmark 0.527 with in-batch softmax vs 0.450 with eq. 11
  on 4 sampled negatives (YoutubeDNN mix 0.508, DSSM mix 0.481, DSSM mix with the same in-batch softmax
  0.538); on MovieLens-100K 0.165 vs 0.109 (YoutubeDNN 0.159, DSSM 0.119 / 0.162). The pairwise loss
  without the logQ correction gains nothing from in-batch negatives (0.439 planted).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Literal

import tensorflow as tf
import tf_keras as keras

from tfmsr.core.params import default, refuse
from tfmsr.layers import MLP
from tfmsr.layers.attention import MultiHeadSelfAttention
from tfmsr.layers.embedding import masked_mean
from tfmsr.layers.sass import (GATE_INITS, GATES, MLSAT, NTXentLoss, PairwiseCosineLoss, ScenarioAuxiliaryNet,
                               ScenarioBiasFusion, cosine_softmax_loss, own_auxiliary, per_scenario,
                               scenario_deviation)
from tfmsr.retrieval.models.base import RetrievalModel, SampledNegativesParams, gather_scenario, register


class SASSTower(keras.layers.Layer):
    """One side of SASS: ``a = aux(scenario embeddings)`` (eq. 2), ``s_T, g_T = ML-SAT(x_g, x_s, a)``
    (eq. 3-6), ``e = fusion(s_T, a)`` (eq. 7-8). ``call(x_g [B, D_g], x_s [B, S, D_s], scen [S, d_s])
    -> (e [B, S, dim], g_T [B, dim])``: every scenario (``O(S)`` per example); ``call(x_g, x_s [B, D_s],
    scen, scenario [B]) -> (e [B, dim], g_T)``: each example's own scenario only (cost flat in S)."""

    def __init__(self, num_scenarios, dim, layers, gate, bias_fusion, aux_hidden, activation, gate_init="glorot",
                 global_hidden=None, s0_init="glorot", aux_init="glorot", **kwargs):
        super().__init__(**kwargs)
        self.aux = ScenarioAuxiliaryNet(dim, aux_hidden, out_init=aux_init, name="aux")
        self.mlsat = MLSAT(num_scenarios, dim, layers, gate, activation, init=gate_init, global_hidden=global_hidden,
                           s0_init=s0_init, name="ml_sat")
        self.fusion = ScenarioBiasFusion(num_scenarios, init=gate_init, name="bias_fusion") if bias_fusion else None

    def call(self, x_g, x_s, scen, scenario=None):
        a = self.aux(scen)
        if scenario is not None:
            a = own_auxiliary(a, scenario)
        s_t, g_t = self.mlsat(x_g, x_s, a, scenario=scenario)
        return (self.fusion(s_t, a, scenario=scenario) if self.fusion is not None else s_t), g_t

    def scenario_weights(self):
        """The scenario-specific (stacked ``[S, ...]``) weights: ``W_0, b_0``, every gate unit, ``W_o``."""
        weights = [self.mlsat.w0, self.mlsat.b0]
        for gate in self.mlsat.gates:
            weights.extend(gate.trainable_weights)
        if self.fusion is not None:
            weights.extend(self.fusion.trainable_weights)
        return weights


@register("sass")
class SASS(RetrievalModel):
    """SASS (CIKM 2022): ML-SAT user/item towers per scenario, contrastive pre-training, pairwise fine-tuning."""

    @dataclass
    class Params(SampledNegativesParams):
        dim: int = 32                       # width of the global and scenario networks = vector width
        layers: int = 3                     # ML-SAT layers (Figure 6)
        gate: Literal[GATES] = "sass"       # Table 3: sass | none (SASS*) | product | simnet | sigmoid
        bias_fusion: bool = True            # Table 6: eq. 7-8 on/off
        item_per_scenario: bool = True      # Table 5: false = Single Item Embedding
        beta: float = 1.0                   # eq. 13 weight of the global auxiliary loss (0 = Table 6 "no global aux")
        tau: float = 0.1                    # eq. 9 temperature
        contrastive_symmetric: bool = False   # eq. 10 as written (one L_ij per pair); true adds L_ji (SimCLR)
        negatives: int = 1                  # sampled negatives per positive (eq. 11 triplets)
        finetune_loss: Literal["pairwise", "softmax"] = "pairwise"   # softmax: NOT in the paper, see below
        # eq. 11-12: printed log(1 + sigmoid(x)) | softplus log(1 + exp(x)) (see below)
        pairwise_form: Literal[PairwiseCosineLoss.FORMS] = "printed"
        pairwise_scale: float = 1.0         # scale of the cosine difference in eq. 11-12 (1 = as printed; see below)
        pairwise_logq: bool = False         # in-batch negatives: eq. 11-12 on logQ-corrected scores (see below)
        softmax_scale: float = 10.0         # gamma of finetune_loss: softmax
        aux_hidden: List[int] = default([32])   # eq. 2: widths of W_a and of f's hidden layers
        activation: str = "tanh"            # global shared network
        gate_init: Literal[GATE_INITS] = "glorot"   # glorot | transfer: start of the scenario units (not in the paper)
        global_hidden: List[int] = default([])   # widths of g_1..g_{T-1} (layers - 1 entries); [] = all dim
        s0_init: Literal["glorot", "zeros"] = "glorot"   # W_0 of s_0 = tanh(W_0 x_s + b_0) (not in the paper)
        aux_init: Literal["glorot", "zeros"] = "glorot"  # output layer of the auxiliary net, a = 0 at the start
        scenario_l2: float = 0.0            # L2-SP of the scenario weights in fine-tuning (not in the paper)
        global_scenario_input: bool = False   # the user global network also reads the scenario context (below)
        seq_pooling: Literal["self_attention", "mean"] = "self_attention"   # Sec. 4.1.1
        attention_heads: int = 2

        def check(self):
            super().check()
            for key, ok, want in (("layers", self.layers >= 1, ">= 1"), ("negatives", self.negatives >= 1, ">= 1"),
                                  ("beta", self.beta >= 0, ">= 0"), ("scenario_l2", self.scenario_l2 >= 0, ">= 0"),
                                  ("tau", self.tau > 0, "> 0"), ("dim", self.dim >= 1, ">= 1"),
                                  ("pairwise_scale", self.pairwise_scale > 0, "> 0")):
                if not ok:
                    raise refuse(key, f"{key} must be {want}, got {getattr(self, key)!r}")
            if self.global_hidden and len(self.global_hidden) != self.layers - 1:
                raise refuse("global_hidden", f"global_hidden {self.global_hidden} gives the widths of g_1..g_(T-1), "
                                              f"so it needs layers - 1 = {self.layers - 1} entries")
            if self.pairwise_logq and self.negatives_from != "batch":
                raise refuse("pairwise_logq", "pairwise_logq corrects the scores of in-batch negatives by their "
                                              "sampling probability: it needs negatives_from batch")
            if self.gate == "product" and self.s0_init == "zeros":
                raise refuse("s0_init", "gate 'product' with s0_init 'zeros': the product gate scales g_l by "
                                        "tanh(W_s s_(l-1)), which is 0 at s_0 = 0 and gets no gradient there, so every "
                                        "scenario vector would stay 0 (use s0_init glorot)")
    supports_pretrain = True
    cosine = True
    loss_names = ("scenario_loss", "global_loss", "scenario_l2", "user_nt_xent", "item_nt_xent")

    def __init__(self, schema, params=None, scenario=None, **kwargs):
        super().__init__(schema, params, scenario=scenario, **kwargs)
        p = self.params
        S = self.num_scenarios
        tower = dict(num_scenarios=S, dim=p.dim, layers=p.layers, gate=p.gate,
                     bias_fusion=p.bias_fusion, aux_hidden=p.aux_hidden, activation=p.activation,
                     gate_init=p.gate_init, global_hidden=self._global_widths(), s0_init=p.s0_init,
                     aux_init=p.aux_init)
        self.user_tower = SASSTower(**tower, name="user_tower")
        if p.item_per_scenario:
            self.item_tower = SASSTower(**tower, name="item_tower")
        else:
            self.item_global = MLP(self._global_widths(), activation=p.activation, name="item_global")
        self.attention = (MultiHeadSelfAttention(p.attention_heads, name="seq_self_attention")
                          if p.seq_pooling == "self_attention" and self.behaviour else None)
        self.nt_xent = NTXentLoss(p.tau, symmetric=p.contrastive_symmetric, name="nt_xent")
        self.pairwise = PairwiseCosineLoss(p.pairwise_scale, p.pairwise_form, name="pairwise")
        self._anchors = None

    def _global_widths(self):
        """Widths of the global shared network: ``global_hidden + [dim]``, or ``[dim] * layers``."""
        p = self.params
        return list(p.global_hidden) + [p.dim] if p.global_hidden else [p.dim] * p.layers

    # ------------------------------------------------------------------ towers
    def scenario_embeddings(self) -> tf.Tensor:
        return self.embedding.scenario_table(tf.range(self.num_scenarios, dtype=tf.int64))

    def _pool(self, keys, mask):
        if self.attention is not None:
            keys = self.attention(keys, mask=mask)
        return masked_mean(keys, mask)

    def user_towers(self, x, training=False, own=False):
        """``(e [B, S, d], g_T [B, d])`` of a request batch; ``own``: ``e [B, d]`` of the request's scenario
        only (its scenario network, over its behaviours in that scenario: cost flat in S)."""
        S, s = self.num_scenarios, self.request_scenario(x)
        prof, st = self.user_profile(x), x["user_stats"]
        x_g = [prof, st[:, S]]
        x_s = [prof, gather_scenario(st, s)] if own else [per_scenario(prof, S), st[:, :S]]
        if self.params.global_scenario_input:
            x_g += [self.embedding.scenario(x), gather_scenario(st, s)]
        beh = self.behaviour_keys(x)
        if beh is not None:
            keys, mask = beh
            x_g.append(self._pool(keys, mask))
            in_s = self.behaviour_scenario_mask(x, mask)                                  # [B, S, L]
            if own:
                x_s.append(self._pool(keys, gather_scenario(in_s, s)))
            else:
                L, D = tf.shape(keys)[1], keys.shape[-1]
                tiled = tf.reshape(tf.tile(keys[:, None], [1, S, 1, 1]), [-1, L, D])
                x_s.append(tf.reshape(self._pool(tiled, tf.reshape(in_s, [-1, L])), [-1, S, D]))
        return self.user_tower(tf.concat(x_g, -1), tf.concat(x_s, -1), self.scenario_embeddings(),
                               scenario=s if own else None)

    def item_towers(self, items, training=False):
        """``(e [N, S, d] or None with a single item embedding, g_T [N, d])``."""
        S = self.num_scenarios
        prof, st = self.item_profile(items), items["item_stats"]
        x_g = tf.concat([prof, st[:, S]], -1)
        if not self.params.item_per_scenario:
            return None, self.item_global(x_g, training=training)
        x_s = tf.concat([per_scenario(prof, S), st[:, :S]], -1)
        return self.item_tower(x_g, x_s, self.scenario_embeddings())

    def _item_at(self, items, scenario, training=False):
        """Item vectors ``[N, d]`` in ``scenario`` (``[N]``), and their global vectors."""
        e, g = self.item_towers(items, training=training)
        return (g if e is None else gather_scenario(e, scenario)), g

    def user_vectors(self, request, training=False):
        return self.user_towers(request, training=training, own=True)[0]

    def item_vectors(self, items, scenario, training=False):
        e, g = self.item_towers(items, training=training)
        return g if e is None else e[:, scenario]

    # ------------------------------------------------------------------ training
    def scenario_weights(self):
        """Every scenario-specific weight of the user and item towers (see ``SASSTower.scenario_weights``)."""
        towers = [self.user_tower] + ([self.item_tower] if self.params.item_per_scenario else [])
        return [w for t in towers for w in t.scenario_weights()]

    def start_finetune(self):
        """Called by the trainer before fine-tuning: the scenario-specific weights as they are now (the
        restored pre-trained values, or the initialisation for SASS-Base) become the anchors of
        ``scenario_l2``."""
        self._anchors = [tf.constant(w.numpy()) for w in self.scenario_weights()] if self.params.scenario_l2 else None

    def pretrain_losses(self, data, training=True):
        """NT-Xent (eq. 9-10) of the user pairs and of the item pairs present in the batch."""
        logs = {}
        scen = self.scenario_key
        if "user_a" in data:
            a, b = data["user_a"], data["user_b"]
            logs["user_nt_xent"] = self.nt_xent(self.user_vectors(a, training), self.user_vectors(b, training))
        if "item_a" in data and self.params.item_per_scenario:
            ea, _ = self._item_at(data["item_a"], data["item_a"][scen], training)
            eb, _ = self._item_at(data["item_b"], data["item_b"][scen], training)
            logs["item_nt_xent"] = self.nt_xent(ea, eb)
        if not logs:
            raise ValueError("sass pre-training batch has neither user pairs nor (per-scenario) item pairs")
        return logs

    def match_loss(self, pos, neg, mask=None, log_q=None):
        """Eq. 11 / 12 of the cosines ``ranked_cosines`` returns (logQ-corrected with ``pairwise_logq``), or with
        ``finetune_loss: softmax`` (an engineering alternative, not the paper's loss) the cross-entropy of the
        positive among itself and the negatives, logits ``softmax_scale * cos`` (DSSM's objective)."""
        if self.params.finetune_loss == "pairwise":
            return self.pairwise.of_cosines(pos, neg, mask, log_q if self.params.pairwise_logq else None)
        return cosine_softmax_loss(self.params.softmax_scale, pos, neg, mask, log_q)

    def finetune_losses(self, data, training=True):
        """``scenario_loss`` (eq. 11) and ``global_loss`` (eq. 12), summed as ``L_scenario + beta * L_auxiliary``
        (eq. 13, ``loss_weights``); with ``scenario_l2`` also that penalty."""
        req, m = data["request"], self.negatives
        s = self.request_scenario(req)
        u, g_u = self.user_towers(req, training=training, own=True)
        e_p, g_p = self.item_towers(data["pos"], training=training)
        n = n_g = None
        if not self.in_batch:
            n, n_g = self._item_at(data["neg"], self.negative_scenarios(s, m), training)
            d = self.params.dim
            n, n_g = tf.reshape(n, [-1, m, d]), tf.reshape(n_g, [-1, m, d])
        scenario_loss = self.match_loss(*self.ranked_cosines(u, g_p if e_p is None else e_p, data, n, s))  # (11)
        global_loss = self.match_loss(*self.ranked_cosines(g_u, g_p, data, n_g))                          # (12)
        logs = {"scenario_loss": scenario_loss, "global_loss": global_loss}
        if self.params.scenario_l2 and self._anchors is not None:             # not in the paper
            logs["scenario_l2"] = scenario_deviation(self.scenario_weights(), self._anchors)
        return logs

    @property
    def loss_weights(self):
        """Eq. 13's ``beta`` on the global loss; the ``scenario_l2`` penalty's own weight."""
        return {"global_loss": float(self.params.beta), "scenario_l2": float(self.params.scenario_l2)}

    def compute_losses(self, features, labels=None, training=False, outputs=None):
        """The phase is the batch's: cross-scenario pairs (``tfmsr.retrieval.pairs``) train the pre-training
        NT-Xent losses (eq. 9-10), requests with positives the fine-tuning losses (eq. 11-13)."""
        if "user_a" in features or "item_a" in features:
            return self.pretrain_losses(features, training)
        return self.finetune_losses(features, training)
