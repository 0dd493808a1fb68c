"""MuSeNet (Xu et al., "MuSeNet: Multi-Scenario Learning for Repeat-Aware Personalized Recommendation",
WSDM 2023): implicit scenarios learned by prototypical clustering, a repeat intention module per scenario."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Literal, Optional

import tensorflow as tf
import tf_keras as keras

from tfmsr.core.errors import ConfigError
from tfmsr.core.params import Initializer, default, refuse
from tfmsr.data.stats import repeat_pair
from tfmsr.features import SchemaError
from tfmsr.layers import (TargetAttention, embed_behavior, initializer, masked_mean, pooled_sequences,
                          require_behavior)
from tfmsr.layers.musenet import (RepeatIntention, ScenarioLearner, combine_scenarios, kl_to_uniform,
                                  repeat_aux_loss, repeat_indicator)
from tfmsr.ranking.models.base import RankingModel, register

ASSIGNMENTS = ("soft", "hard", "predefined", "none")
PARTS = ("user", "behavior", "item", "context", "query", "scenario")
INIT_SCOPES = ("context", "learner")  # embedding_init: the learner's context / scenario tables, or all it reads


@register("musenet")
class MuSeNet(RankingModel):
    """MuSeNet: K implicit scenarios learned from the data (soft or hard assignment), each with a repeat
    intention module; BCE + KL to the uniform prior + beta * repeat auxiliary loss (Sec. 3, eq. 3-14).

    **Data sample** ``x = [p_u, B_u, b_t, o_u]`` (Sec. 2.2), as parts named after the schema groups:
    ``user`` (embeddings and numeric features), ``behavior`` (the sequences sharing an item table, pooled by
    DIN's activation unit :class:`~tfmsr.layers.TargetAttention` w.r.t. the target; other sequences
    mean-pooled), ``item``, ``context`` (``o_u``: time, place, device...), ``query`` (a search request) and
    ``scenario`` (scenario-group features and, with ``explicit_scenario``, the schema's scenario field
    embedded, as every baseline sees it). The intention inference ``p_r`` has no target, so it reads the
    mean-pooled behaviours.

    * **Scenario learner** (:class:`~tfmsr.layers.musenet.ScenarioLearner`, eq. 3/4/7; prototypes by eq. 14
      in ``post_step``, after each optimizer step) over the parts in ``learner_inputs``.
    * **Repeat intention** (:class:`~tfmsr.layers.musenet.RepeatIntention`, eq. 9), one module per scenario,
      with the indicator "target item is in the behaviour sequence" for the item feature whose table a
      behaviour sequence shares (:func:`tfmsr.data.stats.repeat_pair`).
    * **Prediction** ``sigma(sum_k a_k z_k)`` (Sec. 3.2.3).
    * **Objective** (eq. 13) ``BCE + kl_weight * D_KL(a || 1/K)`` (eq. 12) ``+ beta * L_A`` (eq. 10 as a
      squared error against the extra column ``repeat_label``, the user's share of repeat consumption;
      ``repeat_label: null`` trains the repeat module without it).

    **Where the defaults leave the paper** (each is a switch; measured on the planted data, whose latent
    scenario is known, see ``pipelines/musenet_figure.py``):

    * ``kl_weight: 0.0`` (paper: 1). Eq. 12 is a per-example KL to the uniform prior; with the prediction
      ``sigma(sum_k a_k z_k)`` it pulls every soft assignment to uniform and, once the prototypes of eq. 14
      meet, keeps it there (``pi = 1/K`` for every example; also at 0.1); 0.01 still halves the sharpness.
    * ``learner_inputs: [context]`` (paper: the whole sample). With user / item / behaviour embeddings in
      the metric space, k-means-like prototypes split the data by those identities and never find the
      latent scenario; the context ``o_u`` (time, place, device) is what a scenario is made of. A schema
      without context features needs ``learner_inputs`` set (e.g. ``[user, behavior]``) or ``assignment:
      none``, the measured default there (``configs/musenet_movielens.yaml``): on the three real datasets,
      none of which has context, the learner over ``[user, behavior]`` loses to ``none`` by 1 to 3 std (3
      seeds, test AUC: ML-100K 0.7768 vs 0.7849, Douban 0.7428 vs 0.7460, ml-latest-small 0.7367 vs 0.7464).
    * ``learner_standardize: layer`` and ``metric_scale: 4``: the learner standardises its input (layer
      norm, no parameters) and ``w`` starts ``N(0, metric_scale / D)``. The softmax of eq. 3 has no
      temperature, so the spread of ``f_w(x)`` decides everything: too small and eq. 14 merges the
      prototypes for good (soft k-means below its critical temperature), too large and eq. 3 saturates at
      the random initial partition and ``w`` gets no gradient.
    * ``embedding_init: {normal: 0.01}`` for the context tables the learner reads (``embedding_init_scope:
      context``: features of the ``context`` and ``scenario`` parts; the baselines and every other table:
      Glorot uniform): with large random embeddings of small vocabularies (hour, device) the clusters follow
      that noise; small ones let the learned geometry decide. Only those tables: small embeddings everywhere
      slow the prediction network down (planted data, 2 epochs, "w/o M1&M2": AUC 0.765 with all tables at
      N(0, 0.01), 0.817 with Glorot). ``embedding_init_scope: learner`` (the old default) reaches every table
      the learner reads, with ``learner_inputs: [user, behavior]`` also the item and user tables the
      prediction reads (MovieLens-100K age, ``configs/musenet_movielens.yaml``, 3 seeds: test AUC 0.7767 ±
      0.0044 with ``context``, 0.7626 ± 0.0028 with ``learner``). ``null`` keeps the shared default everywhere.

    Variants (Table 3) as switches: ``assignment`` = ``soft`` | ``hard`` | ``predefined`` ("on predefined
    scenarios": ``a`` = one-hot of the schema's scenario field, one module per scenario) | ``none`` (one
    module, no scenario learning); ``repeat_module: false`` is "w/o M2"; ``assignment: none`` with
    ``repeat_module: false`` is "w/o M1&M2" (a DIN-style network).

    Trains under every strategy (``cluster.strategy``): eq. 14 runs in ``post_step``, on the global
    batch of all replicas under MultiWorkerMirroredStrategy and as an asynchronous assign on the parameter
    server's prototypes under ParameterServerStrategy (see :class:`~tfmsr.layers.musenet.ScenarioLearner`).
    """

    @dataclass
    class Params(RankingModel.Params):
        assignment: Literal[ASSIGNMENTS] = "soft"
        repeat_module: bool = True
        K: int = 4
        metric_dim: int = 16
        tau: float = 0.1
        alpha: float = 0.2
        beta: float = 0.5
        kl_weight: float = 0.0
        repeat_label: Optional[str] = "user_repeat_rate"
        learner_inputs: List[Literal[PARTS]] = default(["context"])
        learner_standardize: Optional[Literal["layer", "batch"]] = "layer"   # null: none
        metric_scale: float = 4.0
        embedding_init: Optional[Initializer] = default({"normal": 0.01})
        embedding_init_scope: Literal[INIT_SCOPES] = "context"
        explicit_scenario: bool = True
        hidden: List[int] = default([200, 80])
        activation: str = "relu"
        dropout: float = 0.0
        attention_hidden: List[int] = default([80, 40])
        attention_activation: str = "sigmoid"

        def check(self):
            if self.assignment in ("soft", "hard") and not self.learner_inputs:
                raise refuse("learner_inputs", f"learner_inputs must be a non-empty list of {', '.join(PARTS)}, "
                                               f"got {self.learner_inputs!r}")

    def __init__(self, schema, params=None, **kwargs):
        super().__init__(schema, params, **kwargs)
        p = self.params
        require_behavior(schema, self.model_name)
        self.assignment, self.repeat, self.pair = p.assignment, bool(p.repeat_module), repeat_pair(schema)
        if self.assignment in ("soft", "hard"):
            self._check_learner_inputs(p.learner_inputs)
        if self.repeat:
            self._check_repeat(p.repeat_label)
        if p.embedding_init is not None and self.assignment in ("soft", "hard"):
            scope = p.learner_inputs if p.embedding_init_scope == "learner" else [
                v for v in p.learner_inputs if v in ("context", "scenario")]
            for t in self._learner_tables(scope):
                t.embeddings_initializer = initializer(p.embedding_init)  # before the lazy build
        if self.assignment in ("soft", "hard"):
            self.K = int(p.K)
            omega_init = keras.initializers.VarianceScaling(p.metric_scale, "fan_in", "untruncated_normal")
            self.learner = ScenarioLearner(self.K, p.metric_dim, hard=self.assignment == "hard", tau=p.tau,
                                           alpha=p.alpha, standardize=p.learner_standardize,
                                           kernel_init=omega_init, name="scenario_learner")
        else:
            self.K = self.num_scenarios if self.assignment == "predefined" else 1
            self.learner = None
        self.attention = TargetAttention(p.attention_hidden, p.attention_activation, name="activation_unit")
        self.scorer = RepeatIntention(self.K, p.hidden, repeat=self.repeat, activation=p.activation,
                                      dropout=p.dropout, name="repeat_intention")

    def _check_learner_inputs(self, parts):
        has = lambda v: v == "behavior" or (v == "scenario" and self.params.explicit_scenario) or any(
            f.kind != "sequence" for f in self.schema.group(v))
        empty = [v for v in parts if not has(v)]
        if empty:
            raise ConfigError(f"model 'musenet': learner_inputs {list(parts)}: {self.schema.source} has no "
                              f"{' / '.join(empty)} features; set learner_inputs to parts it has, e.g. "
                              "[user, behavior, item]")

    def _learner_tables(self, parts):
        """The embedding tables of the features the scenario learner reads (``learner_inputs``)."""
        tables = [self.embedding.scenario_table] if "scenario" in parts and self.params.explicit_scenario else []
        for f in self.schema.features:
            if f.group in parts and f.kind != "numeric":
                t = self.embedding.tables[f.table]
                if t not in tables:
                    tables.append(t)
        return tables

    def _check_repeat(self, label):
        if self.pair is None:
            raise SchemaError(f"{self.schema.source}: musenet's repeat module needs a behaviour sequence sharing "
                              "the table of an item feature (target item in history); set repeat_module: false")
        if label is not None and label not in self.schema.extras:
            raise ConfigError(
                f"model 'musenet': the repeat module (repeat_module: true) is supervised by the extra column "
                f"repeat_label='{label}' (the user's share of repeat consumption), which {self.schema.source} does "
                f"not have (extras: {', '.join(sorted(self.schema.extras)) or 'none'}); set repeat_label to the "
                "dataset's column, repeat_label: null (no auxiliary loss) or repeat_module: false (w/o M2)")

    # ------------------------------------------------------------------ inputs
    def _group(self, x, *groups):
        parts = []
        for g in groups:
            parts.extend(self.embedding.group(x, g))
            num = self.embedding.numeric(x, g)
            if num is not None:
                parts.append(num)
        return parts

    def sample_parts(self, x):
        """The parts of the data sample: user, behavior (target-attended), behavior_mean, item, context,
        scenario, each the list of its ``[B, d]`` pieces (one concat per network input, :meth:`_join`); a part
        without features is absent."""
        beh = embed_behavior(self.embedding, x, self.schema)
        side = pooled_sequences(self.embedding, x, self.schema, exclude=beh.features)
        parts = {"user": self._group(x, "user"),
                 "behavior": [self.attention(beh.target, beh.keys, mask=beh.mask)] + side,
                 "behavior_mean": [masked_mean(beh.keys, beh.mask)] + side,
                 "item": self._group(x, "item"), "context": self._group(x, "context"),
                 "query": self._group(x, "query"),
                 "scenario": self._group(x, "scenario") + ([self.embedding.scenario(x)]
                                                           if self.params.explicit_scenario else [])}
        return {k: v for k, v in parts.items() if v}

    @staticmethod
    def _join(parts, names):
        return tf.concat([t for k in names if k in parts for t in parts[k]], axis=-1)

    def indicator(self, x):
        """``I[t in B_u]`` ``[B]`` (eq. 9)."""
        item, seq = self.pair
        return repeat_indicator(self.embedding.ids(x, item), self.embedding.ids(x, seq))

    # ------------------------------------------------------------------ forward
    def _forward(self, x, training=False):
        parts = self.sample_parts(x)
        if self.learner is not None:
            a, pi = self.learner(self._join(parts, self.params.learner_inputs), training=training)
        elif self.assignment == "predefined":
            a = pi = tf.one_hot(tf.cast(x[self.schema.scenario.name], tf.int32), self.K)
        else:
            a = pi = tf.ones_like(parts["behavior"][0][:, :1])
        full = self._join(parts, PARTS)                                          # [p_u, B_u, b_t, o_u]
        if self.repeat:
            ctx = self._join(parts, ("user", "behavior_mean", "context", "query", "scenario"))  # [p_u, B_u, o_u]
            z, p_r = self.scorer(full, ctx, self.indicator(x), training=training)
        else:
            z, p_r = self.scorer(full, training=training)
        return a, pi, z, p_r

    def logits(self, x, training=False):
        a, _, z, _ = self._forward(x, training=training)
        return combine_scenarios(a, z)

    def step_outputs(self, x, training=False):
        """``prediction`` ``sigma(sum_k a_k z_k)``, the assignment ``a`` and the repeat propensities ``p_r``."""
        a, _, z, p_r = self._forward(x, training=training)
        return {"prediction": tf.sigmoid(combine_scenarios(a, z)), "a": a, "p_r": p_r}

    @property
    def loss_names(self):
        p = self.params
        return ("bce",) + (("kl",) if self.learner is not None and p.kl_weight else ()) + (
            ("repeat",) if self.repeat and p.repeat_label is not None and p.beta else ())

    @property
    def loss_weights(self):
        return {"kl": float(self.params.kl_weight), "repeat": float(self.params.beta)}

    def compute_losses(self, features, labels, training=False, outputs=None):
        """Eq. 13: ``bce``, ``kl`` (eq. 12, D_KL(a || 1/K), weighted by ``kl_weight``) and ``repeat`` (eq. 10,
        L_A against the ``repeat_label`` column, weighted by ``beta``), those the parameters switch on."""
        outputs = self.step_outputs(features, training=training) if outputs is None else outputs
        losses = RankingModel.compute_losses(self, features, labels, training, outputs)
        if "kl" in self.loss_names:
            losses["kl"] = kl_to_uniform(outputs["a"])
        if "repeat" in self.loss_names:
            label = self.params.repeat_label
            if label not in features:
                raise ConfigError(f"model 'musenet': the training batch has no column '{label}' (repeat_label)")
            losses["repeat"] = repeat_aux_loss(features[label], outputs["p_r"], outputs["a"])
        return losses

    def explain(self, x):
        """Inference-time view of a batch: ``pi [B, K]`` (eq. 3 probabilities; one-hot for predefined
        scenarios), ``a [B, K]`` (the assignment the prediction uses), ``repeat [B]`` (``I[t in B_u]``) and,
        with the repeat module, ``p_r [B]`` (the repeat propensity ``sum_k p_r^k a_k`` of eq. 10)."""
        a, pi, _, p_r = self._forward(x, training=False)
        out = {"pi": pi, "a": a}
        if self.pair is not None:
            out["repeat"] = self.indicator(x)
        if p_r is not None:
            out["p_r"] = tf.reduce_sum(p_r * a, axis=-1)
        return out

    def post_step(self, features, labels, outputs):
        """Alternating optimisation of eq. 13: after the gradient step on everything trainable (prototypes
        fixed), eq. 14 on the prototypes with the assignment of that same forward pass."""
        if self.learner is not None:
            self.learner.update_prototypes()
