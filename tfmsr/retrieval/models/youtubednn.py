"""YoutubeDNN candidate generation (Covington et al., RecSys 2016) as a retrieval baseline (SASS Sec.
5.1.2: "adopts average pooling to extract user's interest with a sampled softmax loss").

User tower: ``MLP(hidden)`` (ReLU, linear last layer) over the classic user input with the behaviour
sequence average-pooled (``RetrievalModel.flat_request``); items are the softmax's output embeddings of
their ids (one table, one vector per item); score = dot product. The sampled softmax is
``tfrs.tasks.Retrieval``: the other positives of the batch are the sampled classes, corrected by the log
of each item's sampling probability (its share of the training positives, "logQ") with accidental hits
removed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import tf_keras as keras

import tfmsr  # noqa: F401  (pins Keras 2 before tensorflow_recommenders loads)
import tensorflow_recommenders as tfrs  # noqa: E402

from tfmsr.core.params import default  # noqa: E402
from tfmsr.layers import MLP  # noqa: E402
from tfmsr.retrieval.data import item_key  # noqa: E402
from tfmsr.retrieval.models.base import RetrievalModel, register  # noqa: E402


@register("youtubednn")
class YoutubeDNN(RetrievalModel):
    """YoutubeDNN (RecSys 2016): mean-pooled history + profile MLP, item output embeddings, sampled softmax."""

    @dataclass
    class Params(RetrievalModel.Params):
        hidden: List[int] = default([64, 32])

    cosine = False
    negatives_param = None

    def __init__(self, schema, params=None, scenario=None, **kwargs):
        super().__init__(schema, params, scenario=scenario, **kwargs)
        hidden = list(self.params.hidden)
        self.item_id = item_key(schema)
        self.user_mlp = MLP(hidden[:-1], activation="relu", name="user_tower")
        self.user_out = keras.layers.Dense(hidden[-1], name="user_out")
        self.item_out = keras.layers.Embedding(schema.feature(self.item_id).vocab_size, hidden[-1], name="item_softmax")
        self.task = tfrs.tasks.Retrieval(loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                                         remove_accidental_hits=True, name="sampled_softmax")

    @property
    def needs_probability(self) -> bool:
        return True

    def user_vectors(self, request, training=False):
        return self.user_out(self.user_mlp(self.flat_request(request), training=training))

    def item_vectors(self, items, scenario=None, training=False):
        return self.item_out(self.embedding.ids(items, self.item_id))

    loss_names = ("sampled_softmax",)

    def compute_losses(self, features, labels=None, training=False, outputs=None):
        """``sampled_softmax``: the batch's other positives as sampled classes, logQ-corrected."""
        u = self.user_vectors(features["request"], training=training)
        ids = self.embedding.ids(features["pos"], self.item_id)
        loss = self.task(u, self.item_out(ids), candidate_sampling_probability=features["pos_prob"],
                         candidate_ids=ids, compute_metrics=False, compute_batch_metrics=False)
        return {"sampled_softmax": loss}
