"""DeepFM (Guo et al., "DeepFM: A Factorization-Machine based Neural Network for CTR Prediction", IJCAI 2017)."""
from dataclasses import dataclass
from typing import List, Optional

import tensorflow as tf
import tf_keras as keras

from tfmsr.core.params import default, refuse
from tfmsr.layers import MLP, WideLinear, fm_second_order, pooled_sequences
from tfmsr.ranking.models.base import RankingModel, register


@register("deepfm")
class DeepFM(RankingModel):
    """DeepFM (Guo et al. 2017): FM (first + second order) and a DNN over the same field embeddings.

    Guo et al. 2017, Eq. 1-2: ``y = sigmoid(y_FM + y_DNN)``, ``y_FM = <w, x> + sum_{i<j} <V_i, V_j> x_i x_j``.
    Fields (all ``embedding_dim`` wide, shared by FM and DNN): every categorical feature of ``groups``,
    the scenario, each sequence (masked-mean pooled, a multi-hot field) and each numeric feature
    (``v_j * x_j`` with its own vector ``v_j``). First order: one weight per categorical id and scenario,
    one per numeric value. The DNN reads the concatenated field embeddings (paper shape 400-400-400).
    """

    @dataclass
    class Params(RankingModel.Params):
        embedding_dim: int = 16
        # FM sums ~F^2/2 inner products: the field embeddings start small, or the initial pairwise term
        # saturates the sigmoid (the base's tables, so embedding_l2 / embedding_batch_l2 apply)
        embedding_std: Optional[float] = 0.01
        hidden: List[int] = default([400, 400, 400])
        dropout: float = 0.0
        batch_norm: bool = False
        groups: List[str] = default(["user", "item", "context", "query"])
        fm: bool = True
        dnn: bool = True

        def check(self):
            if not (self.fm or self.dnn):
                raise refuse("fm", "at least one of fm / dnn must be true")

    def __init__(self, schema, params=None, **kwargs):
        super().__init__(schema, params, **kwargs)
        p = self.params
        self.cat_features = [f.name for g in p.groups for f in schema.group(g, "categorical")]
        self.numeric_features = schema.of_kind("numeric")
        rows = [self.embedding.tables[schema.feature(n).table].input_dim for n in self.cat_features]
        self.first_order = WideLinear(rows + [self.num_scenarios], len(self.numeric_features), name="first_order")
        self.numeric_vectors = (self.add_weight(name="numeric_vectors", initializer=keras.initializers.RandomNormal(
            0.0, p.embedding_std), shape=(len(self.numeric_features), p.embedding_dim))
            if self.numeric_features else None)
        self.dnn = MLP(p.hidden, dropout=p.dropout, batch_norm=p.batch_norm, name="dnn") if p.dnn else None
        self.dnn_out = keras.layers.Dense(1, name="dnn_logit") if p.dnn else None

    def fields(self, x):
        """``[B, F d]``: the field embeddings side by side in one concatenation (the DNN's input as it is; the
        FM reads it as ``[B, F, d]``, a reshape)."""
        parts = [self.embedding.embed(x, n) for n in self.cat_features] + [self.embedding.scenario(x)]
        parts += pooled_sequences(self.embedding, x, self.schema)
        num = self.embedding.numeric(x)
        if num is not None:
            n, d = self.numeric_vectors.shape
            parts.append(tf.reshape(num[..., None] * self.numeric_vectors[None], [-1, n * d]))
        return tf.concat(parts, axis=1)

    def logits(self, x, training=False):
        flat = self.fields(x)
        logit = 0.0
        if self.params.fm:
            ids = [self.embedding.ids(x, n) for n in self.cat_features] + [x[self.schema.scenario.name]]
            d = self.embedding.scenario_dim  # every field's width
            fields = tf.reshape(flat, [-1, flat.shape[1] // d, d])
            logit += self.first_order(ids, self.embedding.numeric(x)) + fm_second_order(fields)
        if self.dnn is not None:
            logit += self.dnn_out(self.dnn(flat, training=training))[:, 0]
        return logit
