"""FIMN (Fusing Multi-Interest and Scenario-Mutual Network, ../shared/papers/FIMN.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import tensorflow as tf

from tfmsr.core.errors import ConfigError
from tfmsr.core.params import Initializer, default, refuse
from tfmsr.features import SchemaError
from tfmsr.layers import ScenarioTowers, masked_mean, pooled_sequences, require_behavior
from tfmsr.layers.attention import pack
from tfmsr.layers.fimn import (MultiAspectInterestExtractor, ScenarioAwareInterestFusion, ScenarioEnhancing,
                               ScenarioMutual, frequency_features)
from tfmsr.ranking.models.base import RankingModel, register


@register("fimn")
class FIMN(RankingModel):
    """FIMN: scenario enhancing (SEM), field-wise interests (MIE) fused by scenario gates (SIF), scenario mutual module.

    Section 4 (Fig. 3), with :mod:`tfmsr.layers.fimn`:

    * ``e_s``: the scenario embedding (+ any categorical feature of group ``scenario``), ``d_s = |A_s| d``.
    * SEM (eq. 1-2): ``e~_s = e_s * gamma sigmoid(Monotonic_MLP(-v_s))``. ``v_s`` = the scenario's
      impression share and log impression count (:func:`~tfmsr.layers.fimn.frequency_features`) of the
      ``train`` split, from the dataset statistics the model is built with (``stats``, the dataset's
      ``stats.json``: the trainer reads it and keeps a copy in the run dir, so a restored model gets the
      same input), or given as the param ``scenario_stats: {scenario: {rows: N}}``. The values live
      in a non-trainable weight, so checkpoints and exports keep the training statistics.
    * MIE (eq. 3-7): the item fields ``A_i`` are the item features a behaviour sequence shares a table with
      (e.g. ``item_id`` and ``cate_id`` with ``hist_item_id`` / ``hist_cate_id``), one interest each: FTA
      needs the same field in the target and in the behaviours. Other item features join ``e_t`` below.
    * SIF (eq. 8-14) fuses the ``|A_i|`` interests into ``e_If``.
    * SMM (eq. 15-18) over ``[e~_s, e_If, e_t, e_p, e_q]``: ``e_t`` every item feature, ``e_p`` user
      features, ``e_q`` query features, plus the context features, standardised numeric features and the
      mean-pooled sequences that are not behaviour fields (e.g. the behaviours' scenarios).
    * Prediction (eq. 19): tower ``i`` reads ``M~_i``. Training and the scenario servables compute only
      each example's own row of SMM and its own tower (``own_head``; tower ``i`` learns only from scenario
      ``i``'s examples); SMM's projection and keys stay ``O(S)`` per example (eq. 15-17 read every ``M_j``).

    Defaults follow section 5.1.5 / appendix A: field width ``d = 32`` (``embedding_dim``), ``gamma = 2``
    for SEM and the intra-gate, Gaussian(0, 0.05) initialisation of the dense layers; ``|B| = 30`` is the
    behaviour sequence length of the schema. Not given by the paper: ``sem_hidden``, ``gate_dim`` (``d_g``),
    ``attention_dim`` (``d_h``), ``tower``, ``smm_hidden`` (shared layers of eq. 15's projection, see
    :class:`~tfmsr.layers.fimn.ScenarioMutual`). ``attention_init`` initialises MIE's projections (``W_e``,
    FTA's ``W^Q, W^K, W^V, W^O``): 5.1.5 gives the Gaussian for "the parameters in DNN", so the attention keeps
    the Glorot initialisation of the Transformer attention FTA modifies (default ``glorot_uniform``). With
    Gaussian(0, 0.05) projections the FTA scores ``(e^_t W^Q) . (E_B W^K) / sqrt(d_k)`` (the query is already
    a product of two embeddings, eq. 4) stay tiny: after training on the planted premise data they vary by
    ~5e-4 over an item-id history, i.e. the attention is mean pooling, and test AUC is 0.0092 lower (3 seeds).

    Ablations of Table 3 ("FIMN-X" = FIMN without module X) as switches:

    * ``sem: false`` (FIMN-SEM): ``e~_s = e_s``.
    * ``mie: false`` (FIMN-MIE): no FTA; interest ``j`` is the masked mean of behaviour field ``j``.
    * ``sif: false`` (FIMN-SIF): no gates; ``e_If`` is the plain mean of the interests.
    * ``smm: false`` (FIMN-SMM): no reshape / mutual attention; every tower reads the concatenation.

    ``explain(x)`` returns the intra-gate intensities, inter-gate contributions and mutual weights
    (Fig. 4/5, ``pipelines/fimn_figure.py``).
    """

    multi_head = own_head = True

    @dataclass
    class Params(RankingModel.Params):
        embedding_dim: int = 32                                     # the field width d of eq. 3-5
        init: Initializer = default({"normal": 0.05})
        gamma: float = 2.0
        sem_hidden: List[int] = default([16])
        gate_dim: int = 64
        attention_dim: int = 32
        tower: List[int] = default([64, 32])
        smm_hidden: List[int] = default([512])
        scenario_stats: Optional[Dict[Any, Dict[str, float]]] = None   # scenario -> {rows: N}
        sem: bool = True
        mie: bool = True
        sif: bool = True
        smm: bool = True
        attention_init: Initializer = "glorot_uniform"

        def check(self):
            if self.embedding_dim < 1:
                raise refuse("embedding_dim", f"embedding_dim must be a positive integer (the field width d of "
                                              f"eq. 3-5), got {self.embedding_dim!r}")
            if self.gamma <= 0:
                raise refuse("gamma", f"gamma must be > 0, got {self.gamma!r}")

    def __init__(self, schema, params=None, stats: Optional[dict] = None, **kwargs):
        super().__init__(schema, params, **kwargs)
        p = self.params
        self.pairs = pairs = require_behavior(schema, self.model_name)
        self.interest_names = [item.name for _, item in pairs]
        init = p.init
        self.sem = (ScenarioEnhancing(self.frequency(stats), p.sem_hidden, p.gamma,
                                      noise=init["normal"] if isinstance(init, dict) else 0.05, name="sem")
                    if p.sem else None)
        self.mie = (MultiAspectInterestExtractor(len(pairs), p.attention_init, name="mie") if p.mie
                    else None)
        self.sif = ScenarioAwareInterestFusion(p.gate_dim, p.gamma, init, name="sif") if p.sif else None
        self.smm = (ScenarioMutual(self.num_scenarios, p.embedding_dim, p.attention_dim, init,
                                   p.smm_hidden, name="smm") if p.smm else None)
        self.towers = ScenarioTowers(self.num_scenarios, p.tower, kernel_init=init, name="towers")

    def frequency(self, stats: Optional[dict]):
        """``v_s [S, 2]`` from ``scenario_stats`` or the dataset statistics ``stats`` (see the class doc)."""
        names = list(self.schema.scenario.values)
        if self.params.scenario_stats is not None:
            per, source = self.params.scenario_stats, "model param scenario_stats"
        else:
            if not stats:
                raise SchemaError(
                    f"{self.schema.source}: fimn's SEM (eq. 1) needs each scenario's impressions: build it with the "
                    "dataset's statistics (build(..., stats=...) from the stats.json written with every dataset; "
                    "the trainer passes them), or set model param scenario_stats: {scenario: {rows: N}}, or sem: false")
            source = "stats.json"
            train = stats.get("splits", {}).get("train", {}).get("scenarios")
            per = train if train is not None else {n: {"rows": r} for n, r in stats.get("scenario_rows", {}).items()}
        try:
            return frequency_features(per, names, source)
        except ValueError as e:
            raise (ConfigError if source.startswith("model param") else SchemaError)(str(e)) from None

    # ------------------------------------------------------------------ forward
    def forward(self, x, training=False, explain=False, own=False) -> Dict[str, tf.Tensor]:
        """``logits [B, S]`` and the explained quantities of the modules that are on (see ``explain``; the
        FTA weights only with ``explain``). ``own``: each example's own scenario only (``logits [B]``; SMM's
        row of that scenario, ``mutual [B, S]``, ``theta [B]``; the own tower)."""
        out = {}
        target = tf.concat([self.embedding.embed(x, t.name) for _, t in self.pairs], axis=-1)   # e_t of eq. 3
        e_s = tf.concat([self.embedding.scenario(x)] + self.embedding.group(x, "scenario"), axis=-1)
        if self.sem is not None:
            e_s, out["sem_weight"] = self.sem(e_s, x[self.schema.scenario.name])
        interests = self.interests(x, e_s, target, out if explain else None)
        if self.sif is not None:
            fused, out["intra_gate"], out["contribution"] = self.sif(e_s, interests)
            out["intensity"] = tf.reduce_mean(out["intra_gate"], axis=-1)
        else:
            fused = tf.reduce_mean(interests, axis=1)
        rest = [self.flat_inputs(x, with_scenario=False, with_sequences=False)]
        rest += pooled_sequences(self.embedding, x, self.schema, exclude=[s.name for s, _ in self.pairs])
        h = tf.concat([e_s, fused] + rest, axis=-1)
        scenario = x[self.schema.scenario.name] if own else None
        if self.smm is not None:
            h, out["mutual"], out["theta"] = self.smm(h, scenario)
        out["logits"] = self.towers(h, scenario, training=training)
        return out

    def interests(self, x, e_s, target, explained=None) -> tf.Tensor:
        """``E_I [B, A, d]``: MIE over the real behaviours, each field looked up at the ``n`` real positions
        only (``[n, d]``: its gradient is ``n`` embedding rows, not a dense ``[B, L, A d]`` scatter); without
        MIE the masked means of the fields. ``explained``: a dict that gets the FTA weights ``attention``."""
        mask = self.embedding.mask(x, self.pairs[0][0].name)
        fields = lambda ids: tf.concat([self.embedding.embed(ids, s.name) for s, _ in self.pairs], axis=-1)
        if self.mie is None:
            return tf.reshape(masked_mean(fields(x), mask), [-1, len(self.pairs), self.params.embedding_dim])
        packed = pack(mask)
        real = {s.name: packed.gather(x[s.name]) for s, _ in self.pairs}                # [n] ids per field
        interests = self.mie(e_s, target, fields(real), packed=packed)
        if explained is not None:
            explained["attention"] = self.mie.attention(e_s, target, fields(x), mask=mask)
        return interests

    def logits(self, x, training=False, own=False):
        return self.forward(x, training=training, own=own)["logits"]

    def explain(self, x) -> Dict[str, tf.Tensor]:
        """Per example (keys of the modules that are on):

        * ``sem_weight [B, d_s]``: ``v_se`` of the example's scenario (eq. 1);
        * ``intra_gate [B, A, d]``: ``E_Ia`` (eq. 10/12); ``intensity [B, A]`` its row means, the interest
          intensities of Fig. 4(a)(b); ``contribution [B, A]``: the inter-gate ``v_Ie`` (eq. 11, Fig. 4(c)(d));
        * ``mutual [B, S, S]``: ``alpha[b, i, j]``, the weight scenario ``i``'s head gives scenario ``j``
          (eq. 16, Fig. 5; 0 on the diagonal) and ``theta [B, S]`` (eq. 18);
        * ``attention [B, A, L]``: the FTA weights of interest ``j`` over the behaviours (eq. 7; 0 at padding).
          Uniform weights mean FTA has learned nothing beyond mean pooling (``pipelines/fimn_figure.py``
          reports their normalised entropy).

        Interest ``j`` is the item field ``self.interest_names[j]``.
        """
        out = self.forward(x, training=False, explain=True)
        out.pop("logits")
        return out
