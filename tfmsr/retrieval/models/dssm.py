"""DSSM (Huang et al., CIKM 2013) as a two-tower retrieval baseline (SASS Sec. 5.1.2, Table 2).

User tower: ``MLP(hidden)`` (tanh, as DSSM) over the classic user input (``RetrievalModel.flat_request``);
item tower: ``MLP(hidden)`` over the item profile and its statistics (in the model's scenario for
single-scenario training, over all scenarios for mix-scenario training: one vector per item). Relevance
is the cosine; the loss is DSSM's softmax over the clicked item and ``negatives`` sampled items of the
smoothed cosine, ``P(p | u) = exp(gamma cos(u, p)) / sum_{d in {p} + negatives} exp(gamma cos(u, d))``
(DSSM eq. 5-6; the negatives from the request scenario's corpus by the sampler SASS shares,
``SampledNegativesParams``: uniform by default, ``negative_sampler: unigram`` for exposures^0.75).
``negatives_from: batch`` (not in DSSM) takes the batch's other positives as the negatives instead, with the
logQ correction of sampled softmax (``cosine_softmax_loss``), the negatives YoutubeDNN trains with.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import tensorflow as tf

from tfmsr.core.params import default
from tfmsr.layers import MLP
from tfmsr.layers.sass import cosine_softmax_loss
from tfmsr.retrieval.models.base import RetrievalModel, SampledNegativesParams, register


@register("dssm")
class DSSM(RetrievalModel):
    """DSSM (CIKM 2013): user/item MLP towers, cosine, softmax over the positive and sampled negatives."""

    @dataclass
    class Params(SampledNegativesParams):
        hidden: List[int] = default([64, 32])
        activation: str = "tanh"
        negatives: int = 4
        gamma: float = 10.0

    cosine = True

    def __init__(self, schema, params=None, scenario=None, **kwargs):
        super().__init__(schema, params, scenario=scenario, **kwargs)
        p = self.params
        self.user_tower = MLP(p.hidden, activation=p.activation, name="user_tower")
        self.item_tower = MLP(p.hidden, activation=p.activation, name="item_tower")

    def user_vectors(self, request, training=False):
        return self.user_tower(self.flat_request(request), training=training)

    def item_vectors(self, items, scenario=None, training=False):
        x = tf.concat([self.item_profile(items), self.item_stats_at(items, self.scenario)], axis=-1)
        return self.item_tower(x, training=training)

    loss_names = ("softmax",)

    def compute_losses(self, features, labels=None, training=False, outputs=None):
        """``softmax``: DSSM's softmax of the smoothed cosines over the positive and its negatives (eq. 5-6)."""
        data, m = features, self.negatives
        u = self.user_vectors(data["request"], training=training)
        p = self.item_vectors(data["pos"], training=training)
        n = None if self.in_batch else tf.reshape(self.item_vectors(data["neg"], training=training),
                                                  [-1, m, p.shape[-1]])
        return {"softmax": cosine_softmax_loss(self.params.gamma, *self.ranked_cosines(u, p, data, n))}
