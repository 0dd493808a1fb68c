"""Shared base class and registry of ranking models (DESIGN section 4).

A model is built from the schema and a parameter dict. ``logits(x)`` returns either the own-scenario
logit ``[B]`` (single-tower models, ``multi_head = False``) or one logit per scenario ``[B, S]``
(``multi_head = True``); ``call`` returns the click probability for the example's own scenario, so the
loss on it trains a scenario head only with that scenario's examples. The training contract is
:class:`tfmsr.core.model.TrainableModel`: ``compute_losses`` is the own-scenario BCE plus the auxiliaries a
model declares (``loss_names``, ``loss_weights``), so ``fit`` and a cluster run train the same thing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Type

import tensorflow as tf
import tf_keras as keras

from tfmsr.core import params as params_
from tfmsr.core.model import TrainableModel
from tfmsr.core.registry import Parametrized, Registry
from tfmsr.data.guards import pop_count
from tfmsr.distribute.accounting import count_inputs
from tfmsr.features import Schema
from tfmsr.layers import FeatureEmbedding, own_rows


def _import_all():
    import tfmsr.ranking.models  # noqa: F401  (registers every model module)


_REGISTRY = Registry("model", _import_all)
register = _REGISTRY.register


def available() -> Dict[str, str]:
    """Registered model names -> the first line of each model's docstring."""
    return _REGISTRY.available()


def get_class(name: str) -> Type["RankingModel"]:
    return _REGISTRY.get(name)


def build(name: str, schema: Schema, params: Optional[dict] = None, stats: Optional[dict] = None) -> "RankingModel":
    """Model ``name`` on ``schema``; ``stats``: the dataset's statistics (``stats.json``) for the models that
    take them as a constructor input (FIMN's SEM). Models never open files themselves."""
    return get_class(name)(schema, params or {}, stats=stats)


def binary_cross_entropy(labels: tf.Tensor, probs: tf.Tensor) -> tf.Tensor:
    """The batch mean of ``keras.losses.binary_crossentropy`` of probabilities ``[B]`` (the compiled loss
    ranking trained with: from the logits when ``probs`` is a sigmoid in a graph; no reduction object, so it
    runs in any strategy's replica context)."""
    y = tf.reshape(tf.cast(labels, probs.dtype), tf.shape(probs))
    return tf.reduce_mean(keras.losses.binary_crossentropy(y, probs))


def train_rows(stats: Optional[dict]) -> Optional[int]:
    """The training split's row count in ``stats.json`` (``splits.train.rows``), or None."""
    return ((stats or {}).get("splits") or {}).get("train", {}).get("rows")


gather_scenario = own_rows  # ``logits[b, scenario[b]]`` of ``[B, S]`` logits (the layers' own-scenario gather)


class RankingModel(Parametrized, TrainableModel):
    """Base of every ranking model: schema, typed params (``Params``), embeddings, own-scenario output."""

    model_name = "base"
    multi_head = False
    own_head = False    # multi-head models whose logits(x, own=True) compute only the own scenario's head [B]
    loss_names = ("bce",)

    @dataclass
    class Params(params_.Params):
        embedding_dim: Optional[int] = None   # None: each table's own width from the schema
        embedding_l2: float = 0.0   # L2 on every embedding table, whole table each step (keras regularizer)
        # DIN's mini-batch aware L2 (eq. 4-5; FeatureEmbedding.batch_penalty), batch-size free (the value is DIN's
        # lambda at batch 1024). Off here: 0.1 costs ML-100K GAUC beyond one std (dnn, saml; 3 seeds); on per config
        # where measured (configs/dnn.yaml 0.03: wins or level on three real datasets, figures in its header).
        embedding_batch_l2: float = 0.0
        embedding_std: Optional[float] = None  # every table starts N(0, embedding_std); None: Glorot uniform

    def __init__(self, schema: Schema, params: Optional[dict] = None, stats: Optional[dict] = None, **kwargs):
        """``stats``: the dataset statistics, read by a model that needs them in its own ``__init__``."""
        super().__init__(name=self.model_name, **kwargs)
        self.schema = schema
        self.params = self.typed_params(params or {})
        self.num_scenarios = schema.num_scenarios
        self.embedding = FeatureEmbedding(schema, dim=self.params.embedding_dim, l2=self.params.embedding_l2,
                                          initializer=self.embedding_initializer(),
                                          batch_l2=self.params.embedding_batch_l2,
                                          epoch_rows=train_rows(stats), name="embedding")
        self.oov_ids = keras.metrics.Sum(name="oov_ids")
        self.non_finite = keras.metrics.Sum(name="non_finite")  # numeric values replaced / examples left out
        self.examples = keras.metrics.Sum(name="examples")      # examples consumed, counted in the graph

    def embedding_initializer(self):
        """The initializer of every embedding table (a Keras name or config): ``N(0, embedding_std)``, or
        Glorot uniform when ``embedding_std`` is None (it sizes a table by its rows and width)."""
        if self.params.embedding_std is None:
            return "glorot_uniform"
        return {"class_name": "RandomNormal", "config": {"mean": 0.0, "stddev": self.params.embedding_std}}

    # ------------------------------------------------------------------ forward
    def logits(self, x: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        raise TypeError(f"{type(self).__name__} must define logits()")

    def call(self, x, training=False):
        if self.own_head:
            return tf.sigmoid(self.logits(x, training=training, own=True))
        z = self.logits(x, training=training)
        if self.multi_head:
            z = gather_scenario(z, x[self.schema.scenario.name])
        return tf.sigmoid(z)

    def scenario_probs(self, x, training=False) -> tf.Tensor:
        """``[B, S]``: the click probability of the request in every scenario (what each scenario
        servable answers). Multi-head models evaluate all heads once; others run once on the request tiled S
        times (row ``s * B + b`` = request b in scenario s): one forward pass of S * B rows, not S passes."""
        if self.multi_head:
            return tf.sigmoid(self.logits(x, training=training))
        key, S = self.schema.scenario.name, self.num_scenarios
        batch = tf.shape(x[key])[0]
        tiled = {k: tf.tile(v, tf.concat([[S], tf.ones([tf.rank(v) - 1], tf.int32)], 0)) for k, v in x.items()}
        tiled[key] = tf.repeat(tf.range(S, dtype=x[key].dtype), batch)
        z = tf.reshape(self.logits(tiled, training=training), [S, batch])
        return tf.sigmoid(tf.transpose(z))

    def routed_and_scenario_probs(self, x, training=False):
        """``(prob [B], probs [B, S])`` from one forward pass (the ``all_scenarios`` servable): ``probs`` of
        :meth:`scenario_probs` and ``prob`` its column of each row's own scenario, which is what ``call`` answers
        (the same heads, or the same tower on the request in its own scenario)."""
        probs = self.scenario_probs(x, training=training)
        return gather_scenario(probs, x[self.schema.scenario.name]), probs

    # ------------------------------------------------------------------ shared input assembly
    def flat_inputs(self, x, groups=("user", "item", "context", "query"), with_scenario=True,
                    with_sequences=True) -> tf.Tensor:
        """``[B, D]``: categorical embeddings of ``groups``, the scenario embedding, masked-mean pooled
        sequences and standardised numeric features, concatenated (the classic embedding & MLP input)."""
        parts = []
        for g in groups:
            parts.extend(self.embedding.group(x, g))
        if with_scenario:
            parts.append(self.embedding.scenario(x))
        if with_sequences:
            for f in self.schema.of_kind("sequence"):
                parts.append(self.embedding.pooled(x, f.name))
        num = self.embedding.numeric(x)
        if num is not None:
            parts.append(num)
        return tf.concat(parts, axis=1)

    # ------------------------------------------------------------------ steps
    def count_batch(self, x) -> None:
        """The per-batch counts of the epoch logs: OOV ids, non-finite values (``tfmsr.data.guards``; the
        parser's count is popped here, the layers never see it), examples, and the rows per shard (and steps
        per worker) when the trainer attached ``tfmsr.distribute.accounting.Counters``."""
        rows = tf.shape(x[self.schema.scenario.name])[0]
        count_inputs(self, x, rows)
        self.non_finite.update_state(pop_count(x))
        self.oov_ids.update_state(self.embedding.oov_count(x))
        self.examples.update_state(rows)

    def unpack(self, data):
        """``(x, y)`` with the batch counted (``count_batch``) before any layer sees ``x``."""
        x, y = TrainableModel.unpack(self, data)
        self.count_batch(x)
        return x, y

    def compute_losses(self, features, labels, training=False, outputs=None):
        """``{"bce": ...}``: the binary cross-entropy of the own-scenario prediction (as Keras'
        ``BinaryCrossentropy``: the mean over the batch); a model adds its auxiliaries to this dict. A training
        step also takes the mini-batch aware embedding penalty of its lookups, added by :meth:`total_loss`."""
        outputs = self.step_outputs(features, training=training) if outputs is None else outputs
        penalty = self.embedding.batch_penalty() if training else None
        object.__setattr__(self, "_batch_penalty", penalty)  # untracked; read by total_loss in this graph
        return {"bce": binary_cross_entropy(labels, outputs["prediction"])}

    def total_loss(self, losses):
        """The weighted components and regularization losses, plus this training step's mini-batch aware
        embedding L2 (``embedding_batch_l2``, :meth:`FeatureEmbedding.batch_penalty`)."""
        total = super().total_loss(losses)
        penalty = getattr(self, "_batch_penalty", None)
        object.__setattr__(self, "_batch_penalty", None)
        return total if penalty is None else total + penalty

    def get_config(self):
        return {"model": self.model_name, "params": self.params.to_dict()}
