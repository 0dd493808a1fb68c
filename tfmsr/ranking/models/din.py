"""DIN (Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018)."""
from dataclasses import dataclass
from typing import List

import tensorflow as tf
import tf_keras as keras

from tfmsr.core.params import default
from tfmsr.layers import MLP, TargetAttention, context_inputs, embed_behavior, require_behavior
from tfmsr.ranking.models.base import RankingModel, register


@register("din")
class DIN(RankingModel):
    """DIN (Zhou et al. 2018): behaviours pooled by an activation unit w.r.t. the candidate, then an MLP.

    Zhou et al. 2018, Sec. 4.3, Eq. 3: ``v_U(A) = sum_j a(e_j, v_A) e_j`` with the activation unit
    :class:`~tfmsr.layers.TargetAttention` over ``[e_j, v_A, e_j - v_A, e_j * v_A]`` and unnormalised
    weights (``normalize_attention: true`` is the softmax variant). A behaviour is the concatenation of its
    item-side embeddings (every ``behavior`` sequence sharing an ``item`` table, e.g. item id + category),
    the candidate the same fields of the target item; padding is masked. The pooled interest joins the user
    profile, candidate, context, scenario and numeric features (other sequences mean-pooled) in an MLP
    (paper 200-80; Dice is replaced by ``activation``, default ReLU).
    """

    @dataclass
    class Params(RankingModel.Params):
        attention_hidden: List[int] = default([80, 40])
        attention_activation: str = "sigmoid"
        normalize_attention: bool = False
        hidden: List[int] = default([200, 80])
        activation: str = "relu"
        dropout: float = 0.0
        batch_norm: bool = False

    def __init__(self, schema, params=None, **kwargs):
        super().__init__(schema, params, **kwargs)
        p = self.params
        require_behavior(schema, self.model_name)
        self.attention = TargetAttention(p.attention_hidden, p.attention_activation, p.normalize_attention,
                                         name="activation_unit")
        self.mlp = MLP(p.hidden, activation=p.activation, dropout=p.dropout, batch_norm=p.batch_norm,
                       name="mlp")
        self.out = keras.layers.Dense(1, name="logit")

    def logits(self, x, training=False):
        beh = embed_behavior(self.embedding, x, self.schema)
        interest = self.attention(beh.target, beh.keys, mask=beh.mask)
        h = tf.concat([context_inputs(self, x, beh.features), interest], axis=-1)
        return self.out(self.mlp(h, training=training))[:, 0]
