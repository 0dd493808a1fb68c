"""Shared base class and registry of ranking models (DESIGN section 4).

A model is built from the schema and a parameter dict. ``logits(x)`` returns either the own-scenario
logit ``[B]`` (single-tower models, ``multi_head = False``) or one logit per scenario ``[B, S]``
(``multi_head = True``); ``call`` returns the click probability for the example's own scenario, so the
loss on it trains a scenario head only with that scenario's examples. Auxiliary objectives go through
``add_loss`` inside ``call`` so ``fit`` and a cluster run train the same thing.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Type

import tensorflow as tf
import tf_keras as keras

from tfmsr.features import Schema
from tfmsr.layers import FeatureEmbedding, masked_mean


class ConfigError(ValueError):
    """A configuration mistake (unknown model or parameter, bad value), naming the key."""


class Registry:
    """Model classes by name: ``register(name)`` (a class decorator that also sets ``model_name``),
    ``available()`` (name -> first docstring line) and ``get(name)``; ``load_all`` imports the modules
    that register. ``kind`` names the registry in errors ("model", "retrieval model")."""

    def __init__(self, kind: str, load_all: Callable[[], None]):
        self.kind, self._load_all = kind, load_all
        self._classes: Dict[str, type] = {}

    def register(self, name: str):
        def wrap(cls):
            if name in self._classes:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            cls.model_name = name
            self._classes[name] = cls
            return cls

        return wrap

    def available(self) -> Dict[str, str]:
        self._load_all()
        return {n: (c.__doc__ or "").strip().splitlines()[0] for n, c in sorted(self._classes.items())}

    def get(self, name: str) -> type:
        self._load_all()
        if name not in self._classes:
            raise ConfigError(f"unknown {self.kind} '{name}' (available: {', '.join(sorted(self._classes))})")
        return self._classes[name]


class Parametrized:
    """Mixin of a registered model class: ``defaults`` (merged along the MRO) and ``resolve(params)``,
    which refuses unknown keys, naming ``kind`` and the model."""

    kind = "model"
    model_name = "base"
    defaults: dict = {}

    @classmethod
    def all_defaults(cls) -> dict:
        merged = {}
        for klass in reversed(cls.__mro__):
            merged.update(getattr(klass, "defaults", {}) or {})
        return merged

    @classmethod
    def resolve(cls, params: dict) -> dict:
        defaults = cls.all_defaults()
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise ConfigError(f"{cls.kind} '{cls.model_name}': unknown parameter(s) {unknown} "
                              f"(known: {', '.join(sorted(defaults))})")
        return {**defaults, **params}


def _import_all():
    import tfmsr.models  # noqa: F401  (registers every model module)


_REGISTRY = Registry("model", _import_all)
register = _REGISTRY.register


def available() -> Dict[str, str]:
    """Registered model names -> the first line of each model's docstring."""
    return _REGISTRY.available()


def get_class(name: str) -> Type["RankingModel"]:
    return _REGISTRY.get(name)


def build(name: str, schema: Schema, params: Optional[dict] = None) -> "RankingModel":
    return get_class(name)(schema, params or {})


def gather_scenario(logits: tf.Tensor, scenario: tf.Tensor) -> tf.Tensor:
    """``logits[b, scenario[b]]`` for ``[B, S]`` logits."""
    idx = tf.cast(tf.reshape(scenario, [-1, 1]), tf.int32)
    return tf.gather(logits, idx, batch_dims=1)[:, 0]


class RankingModel(Parametrized, keras.Model):
    """Base of every ranking model: schema, params with defaults, embeddings, own-scenario output."""

    model_name = "base"
    multi_head = False
    defaults: dict = {"embedding_dim": None}

    def __init__(self, schema: Schema, params: Optional[dict] = None, **kwargs):
        super().__init__(name=self.model_name, **kwargs)
        self.schema = schema
        self.params = self.resolve(params or {})
        self.num_scenarios = schema.num_scenarios
        self.embedding = FeatureEmbedding(schema, dim=self.params.get("embedding_dim"), name="embedding")
        self.oov_ids = keras.metrics.Sum(name="oov_ids")

    # ------------------------------------------------------------------ forward
    def logits(self, x: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        raise TypeError(f"{type(self).__name__} must define logits()")

    def call(self, x, training=False):
        z = self.logits(x, training=training)
        if self.multi_head:
            z = gather_scenario(z, x[self.schema.scenario.name])
        return tf.sigmoid(z)

    def scenario_probs(self, x, training=False) -> tf.Tensor:
        """``[B, S]``: the click probability of the request in every scenario (what each scenario
        servable answers). Multi-head models evaluate all heads once; others re-run with the scenario set."""
        if self.multi_head:
            return tf.sigmoid(self.logits(x, training=training))
        key = self.schema.scenario.name
        cols = []
        for s in range(self.num_scenarios):
            xs = dict(x)
            xs[key] = tf.fill(tf.shape(x[key]), tf.constant(s, x[key].dtype))
            cols.append(tf.sigmoid(self.logits(xs, training=training)))
        return tf.stack(cols, axis=1)

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
                parts.append(masked_mean(self.embedding.embed(x, f.name), self.embedding.mask(x, f.name)))
        num = self.embedding.numeric(x)
        if num is not None:
            parts.append(num)
        return tf.concat(parts, axis=1)

    # ------------------------------------------------------------------ steps
    def train_step(self, data):
        self.oov_ids.update_state(self.embedding.oov_count(data[0]))
        return super().train_step(data)

    def test_step(self, data):
        self.oov_ids.update_state(self.embedding.oov_count(data[0]))
        return super().test_step(data)

    def get_config(self):
        return {"model": self.model_name, "params": dict(self.params)}
