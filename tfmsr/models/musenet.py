"""MuSeNet (Xu et al., "MuSeNet: Multi-Scenario Learning for Repeat-Aware Personalized Recommendation",
WSDM 2023): implicit scenarios learned by prototypical clustering, a repeat intention module per scenario."""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from tfmsr.data.stats import repeat_pair
from tfmsr.features import SchemaError
from tfmsr.layers import TargetAttention, embed_behavior, masked_mean, pooled_sequences, require_behavior
from tfmsr.layers.musenet import (RepeatIntention, ScenarioLearner, combine_scenarios, kl_to_uniform,
                                  repeat_aux_loss, repeat_indicator)
from tfmsr.models.base import ConfigError, RankingModel, register

ASSIGNMENTS = ("soft", "hard", "predefined", "none")
PARTS = ("user", "behavior", "item", "context", "scenario")


@register("musenet")
class MuSeNet(RankingModel):
    """MuSeNet: K implicit scenarios learned from the data (soft or hard assignment), each with a repeat
    intention module; BCE + KL to the uniform prior + beta * repeat auxiliary loss (Sec. 3, eq. 3-14).

    **Data sample** ``x = [p_u, B_u, b_t, o_u]`` (Sec. 2.2): user profile (``user`` group embeddings and
    numeric features), behaviours ``B_u`` (the sequences sharing an item table pooled by DIN's activation
    unit w.r.t. the target, :class:`~tfmsr.layers.TargetAttention`; other sequences mean-pooled), target
    item ``b_t`` (``item`` group) and context ``o_u`` (``context``, ``query``, ``scenario`` groups and, with
    ``explicit_scenario``, the scenario field's embedding, as every baseline sees it). The intention
    inference ``p_r`` has no target, so it reads the mean-pooled behaviours.

    **Scenario learner** (:class:`~tfmsr.layers.musenet.ScenarioLearner`, eq. 3/4/7, prototypes by
    eq. 14 inside ``train_step``) over the parts named in ``learner_inputs`` (default all of ``x``).
    **Repeat intention** (:class:`~tfmsr.layers.musenet.RepeatIntention`, eq. 9) with the indicator
    "target item is in the behaviour sequence" for the item feature whose table a behaviour sequence
    shares (:func:`tfmsr.data.stats.repeat_pair`). **Prediction** ``sigma(sum_k a_k z_k)`` (3.2.3).
    **Objective** (eq. 13) ``BCE + kl_weight * KL(a || 1/K)`` (eq. 12, paper weight 1) ``+ beta * L_A``
    (eq. 10 as a squared error against the extra column ``repeat_label``, the user's share of repeat
    consumption; ``repeat_label: null`` trains the repeat module without it).

    Variants (Table 3) as switches: ``assignment`` = ``soft`` | ``hard`` (MuSeNet soft / hard) |
    ``predefined`` ("on predefined scenarios": ``a`` = one-hot of the schema's scenario field, one module
    per scenario) | ``none`` (one module: no scenario learning); ``repeat_module: false`` is "w/o M2";
    ``assignment: none`` with ``repeat_module: false`` is "w/o M1&M2" (a DIN-style network).
    """

    defaults = {"assignment": "soft", "repeat_module": True, "K": 4, "metric_dim": 16, "tau": 0.1, "alpha": 0.2,
                "beta": 0.5, "kl_weight": 1.0, "repeat_label": "user_repeat_rate",
                "learner_inputs": list(PARTS), "learner_standardize": "layer", "embedding_init": None, "metric_scale": 0.4, "explicit_scenario": True, "hidden": [200, 80],
                "activation": "relu", "dropout": 0.0, "attention_hidden": [80, 40],
                "attention_activation": "sigmoid"}

    def __init__(self, schema, params=None, **kwargs):
        if isinstance(tf.distribute.get_strategy(), tf.distribute.experimental.ParameterServerStrategy):
            # The learner's prototype state (ON_WRITE variables updated in train_step, eq. 14) fails to trace
            # under the cluster coordinator (TypeError in ScenarioLearner.call); until that is fixed, say so.
            raise ConfigError("model 'musenet' does not train under ParameterServerStrategy yet (the eq. 14 "
                              "prototype update fails under the cluster coordinator); use local training or "
                              "cluster.strategy: multi_worker")
        super().__init__(schema, params, **kwargs)
        p = self.params
        if p["assignment"] not in ASSIGNMENTS:
            raise ConfigError(f"model 'musenet': assignment must be one of {', '.join(ASSIGNMENTS)}, "
                              f"got {p['assignment']!r}")
        bad = [v for v in p["learner_inputs"] if v not in PARTS] if isinstance(p["learner_inputs"], list) else [1]
        if bad or not p["learner_inputs"]:
            raise ConfigError(f"model 'musenet': learner_inputs must be a non-empty list of {', '.join(PARTS)}, "
                              f"got {p['learner_inputs']!r}")
        require_behavior(schema, self.model_name)
        if p["embedding_init"] is not None:
            from tfmsr.layers import initializer
            init = initializer(p["embedding_init"])
            for t in [*self.embedding.tables.values(), self.embedding.scenario_table]:
                t.embeddings_initializer = init
        self.assignment = p["assignment"]
        self.repeat = bool(p["repeat_module"])
        self.pair = repeat_pair(schema)
        if self.repeat:
            if self.pair is None:
                raise SchemaError(f"{schema.source}: musenet's repeat module needs a behaviour sequence sharing the "
                                  "table of an item feature (target item in history); set repeat_module: false")
            label = p["repeat_label"]
            if label is not None and label not in schema.extras:
                raise ConfigError(
                    f"model 'musenet': the repeat module (repeat_module: true) is supervised by the extra column "
                    f"repeat_label='{label}' (the user's share of repeat consumption), which {schema.source} does not "
                    f"have (extras: {', '.join(sorted(schema.extras)) or 'none'}); set repeat_label to the dataset's "
                    "column, repeat_label: null (no auxiliary loss) or repeat_module: false (w/o M2)")
        if self.assignment in ("soft", "hard"):
            self.K = int(p["K"])
            self.learner = ScenarioLearner(self.K, p["metric_dim"], hard=self.assignment == "hard", tau=p["tau"],
                                           alpha=p["alpha"], standardize=p["learner_standardize"], kernel_init=keras.initializers.VarianceScaling(p["metric_scale"], "fan_in", "untruncated_normal"),
                                           name="scenario_learner")
        else:
            self.K = self.num_scenarios if self.assignment == "predefined" else 1
            self.learner = None
        self.attention = TargetAttention(p["attention_hidden"], p["attention_activation"], name="activation_unit")
        self.scorer = RepeatIntention(self.K, p["hidden"], repeat=self.repeat, activation=p["activation"],
                                        dropout=p["dropout"], name="repeat_intention")

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
        """The data sample's parts (Sec. 2.2): user, behavior (target-attended), behavior_mean, item, context."""
        beh = embed_behavior(self.embedding, x, self.schema)
        side = pooled_sequences(self.embedding, x, self.schema, exclude=beh.features)
        cat = lambda ts: tf.concat(ts, axis=-1)
        out = {"user": cat(self._group(x, "user")),
               "behavior": cat([self.attention(beh.target, beh.keys, beh.mask)] + side),
               "behavior_mean": cat([masked_mean(beh.keys, beh.mask)] + side),
               "item": cat(self._group(x, "item")),
               "context": cat(self._group(x, "context", "query", "scenario"))}
        if self.params["explicit_scenario"]:
            out["scenario"] = self.embedding.scenario(x)
        return out

    @staticmethod
    def _full(parts):
        """``[p_u, B_u, b_t, o_u]`` (and the explicit scenario): the input of s_r, s_e (eq. 9)."""
        return tf.concat([parts[k] for k in PARTS if k in parts], axis=-1)

    @staticmethod
    def _context(parts):
        """``[p_u, B_u, o_u]`` without the target (mean-pooled behaviours): the input of p_r (eq. 9)."""
        return tf.concat([parts[k] for k in ("user", "behavior_mean", "context", "scenario") if k in parts], -1)

    def indicator(self, x):
        """``I[t in B_u]`` ``[B]``."""
        item, seq = self.pair
        return repeat_indicator(self.embedding.ids(x, item), self.embedding.ids(x, seq))

    # ------------------------------------------------------------------ forward
    def assign(self, parts, x, training=False):
        """``(a [B, K], pi [B, K])``: the assignment used for the prediction and the soft probabilities."""
        if self.learner is not None:
            return self.learner(tf.concat([parts[k] for k in self.params["learner_inputs"]], -1), training=training)
        if self.assignment == "predefined":
            a = tf.one_hot(tf.cast(x[self.schema.scenario.name], tf.int32), self.K)
        else:
            a = tf.ones_like(parts["user"][:, :1])
        return a, a

    def explain(self, x):
        """Inference-time view of a batch: ``pi [B, K]`` (eq. 3 probabilities; one-hot for predefined
        scenarios), ``a [B, K]`` (the assignment the prediction uses), ``repeat [B]`` (``I[t in B_u]``) and,
        with the repeat module, ``p_r [B]`` (the repeat propensity ``sum_k p_r^k a_k`` of eq. 10)."""
        parts = self.sample_parts(x)
        a, pi = self.assign(parts, x, training=False)
        out = {"pi": pi, "a": a}
        if self.pair is not None:
            out["repeat"] = self.indicator(x)
        if self.repeat:
            _, p_r = self.scorer(self._full(parts), self._context(parts), out.get("repeat"), training=False)
            out["p_r"] = tf.reduce_sum(p_r * a, axis=-1)
        return out

    def logits(self, x, training=False):
        parts = self.sample_parts(x)
        full = self._full(parts)
        a, _ = self.assign(parts, x, training=training)
        if self.repeat:
            z, p_r = self.scorer(full, self._context(parts), self.indicator(x), training=training)
        else:
            z, p_r = self.scorer(full, training=training)
        if training:
            p = self.params
            if self.learner is not None and p["kl_weight"]:
                self.add_loss(p["kl_weight"] * kl_to_uniform(a))
            if p_r is not None and p["repeat_label"] is not None and p["beta"]:
                label = p["repeat_label"]
                if label not in x:
                    raise ConfigError(f"model 'musenet': training batch has no column '{label}' (repeat_label)")
                self.add_loss(p["beta"] * repeat_aux_loss(x[label], p_r, a))
        return combine_scenarios(a, z)

    def train_step(self, data):
        """Alternating optimisation of eq. 13: the gradient step on everything trainable (prototypes
        fixed), then eq. 14 on the prototypes with the assignment of that same forward pass."""
        logs = super().train_step(data)
        if self.learner is not None:
            self.learner.update_prototypes()
        return logs
