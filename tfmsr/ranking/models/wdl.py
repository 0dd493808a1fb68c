"""Wide & Deep (Cheng et al., "Wide & Deep Learning for Recommender Systems", DLRS 2016)."""
from dataclasses import dataclass
from typing import List

import tensorflow as tf
import tf_keras as keras

from tfmsr.core.params import default
from tfmsr.layers import MLP, WideLinear
from tfmsr.ranking.models.base import RankingModel, register


@register("wdl")
class WideDeep(RankingModel):
    """Wide&Deep (Cheng et al. 2016): a linear part over sparse ids and scenario crosses plus a deep MLP.

    Cheng et al. 2016, Sec. 3: ``P(y=1|x) = sigmoid(w_wide^T [x, phi(x)] + w_deep^T a^(lf) + b)``.
    The wide part (:class:`~tfmsr.layers.WideLinear`) has one weight per id of every categorical feature
    of ``wide_groups``, per scenario, per numeric value, and per cross-product ``phi(x)`` of the scenario
    with each categorical feature of ``cross_groups`` (scenario x item category memorises scenario-specific
    preferences; ``cross_groups: []`` switches the crosses off). The deep part is the classic embedding
    concatenation (``flat_inputs``) through an MLP. One optimizer trains both (the paper used FTRL+L1
    for the wide part and AdaGrad for the deep part); ``wide_l2`` regularises the wide weights.
    """

    @dataclass
    class Params(RankingModel.Params):
        hidden: List[int] = default([256, 128, 64])
        dropout: float = 0.0
        batch_norm: bool = False
        wide_groups: List[str] = default(["user", "item", "context", "query"])
        cross_groups: List[str] = default(["item"])
        wide_l2: float = 0.0

    def __init__(self, schema, params=None, **kwargs):
        super().__init__(schema, params, **kwargs)
        p = self.params
        S = self.num_scenarios
        self.wide_features = [f.name for g in p.wide_groups for f in schema.group(g, "categorical")]
        self.cross_features = [f.name for g in p.cross_groups for f in schema.group(g, "categorical")]
        rows = [self._rows(n) for n in self.wide_features] + [S] + [S * self._rows(n) for n in self.cross_features]
        self.num_numeric = len(schema.of_kind("numeric"))
        self.wide = WideLinear(rows, self.num_numeric, l2=p.wide_l2, name="wide")
        self.deep = MLP(p.hidden, dropout=p.dropout, batch_norm=p.batch_norm, name="deep")
        self.deep_out = keras.layers.Dense(1, name="deep_logit")

    def _rows(self, name):
        return self.embedding.tables[self.schema.feature(name).table].input_dim

    def wide_ids(self, x):
        sc = tf.cast(x[self.schema.scenario.name], tf.int64)
        ids = [self.embedding.ids(x, n) for n in self.wide_features] + [sc]
        ids += [sc * self._rows(n) + self.embedding.ids(x, n) for n in self.cross_features]
        return ids

    def logits(self, x, training=False):
        wide = self.wide(self.wide_ids(x), self.embedding.numeric(x) if self.num_numeric else None)
        deep = self.deep_out(self.deep(self.flat_inputs(x), training=training))[:, 0]
        return wide + deep
