"""DCN-v2 (Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons for Web-scale
Learning to Rank Systems", WWW 2021)."""
from dataclasses import dataclass
from typing import List, Literal, Optional

import tensorflow as tf
import tf_keras as keras

from tfmsr.core.params import default
from tfmsr.layers import MLP, CrossNetV2
from tfmsr.ranking.models.base import RankingModel, register


@register("dcnv2")
class DCNv2(RankingModel):
    """DCN-v2 (Wang et al. 2021): full-rank cross layers ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l`` and a DNN.

    Wang et al. 2021, Sec. 3 (Eq. 1, Fig. 2): ``structure: stacked`` feeds the cross network's output to the
    DNN; ``parallel`` runs both on ``x_0`` and concatenates their outputs before the logit. ``x_0`` is the
    classic embedding concatenation (``flat_inputs``). ``low_rank: r`` switches to the low-rank cross
    layer ``W = U V^T``; ``cross_layers: 0`` leaves the DNN alone.
    """

    @dataclass
    class Params(RankingModel.Params):
        cross_layers: int = 3
        low_rank: Optional[int] = None
        structure: Literal["stacked", "parallel"] = "stacked"
        hidden: List[int] = default([256, 128, 64])
        dropout: float = 0.0
        batch_norm: bool = False

    def __init__(self, schema, params=None, **kwargs):
        super().__init__(schema, params, **kwargs)
        p = self.params
        self.cross = CrossNetV2(p.cross_layers, p.low_rank, name="cross") if p.cross_layers else None
        self.dnn = MLP(p.hidden, dropout=p.dropout, batch_norm=p.batch_norm, name="dnn")
        self.out = keras.layers.Dense(1, name="logit")

    def logits(self, x, training=False):
        x0 = self.flat_inputs(x)
        if self.cross is None:
            h = self.dnn(x0, training=training)
        elif self.params.structure == "stacked":
            h = self.dnn(self.cross(x0), training=training)
        else:
            h = tf.concat([self.cross(x0), self.dnn(x0, training=training)], axis=-1)
        return self.out(h)[:, 0]
