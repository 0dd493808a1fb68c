"""STAR (Sheng et al., "One Model to Serve All: Star Topology Adaptive Recommender for Multi-Domain CTR
Prediction", CIKM 2021)."""
from dataclasses import dataclass
from typing import List, Literal

import tensorflow as tf
import tf_keras as keras

from tfmsr.core.params import default
from tfmsr.layers import MLP, PartitionedNormalization, StarDense
from tfmsr.layers.scenario import SortedRows, fixed_id
from tfmsr.ranking.models.base import RankingModel, register


@register("star")
class STAR(RankingModel):
    """STAR (Sheng et al. 2021): partitioned normalization, star-topology FCN, auxiliary scenario network.

    Sheng et al. 2021, Sec. 3: the pooled, concatenated embeddings are normalised by partitioned
    normalization (:class:`~tfmsr.layers.PartitionedNormalization`: shared and scenario-specific
    ``gamma/beta``, per-scenario moving statistics), then go through star-topology fully connected layers
    (:class:`~tfmsr.layers.StarDense`: ``W*_p = W_p (x) W``, ``b*_p = b_p + b``) ending in a logit ``s_m``.
    The auxiliary network (Sec. 3.4) reads the scenario embedding and adds its logit: ``p = sigmoid(s_m + s_a)``.
    The scenario id enters only through these three (``scenario_in_main: true`` also feeds it to the main
    network). Ablations: ``normalization: batch | none``, ``star_fcn: false`` (shared FCN only),
    ``auxiliary: false``. ``embedding_std`` (the base's): tables start ``N(0, embedding_std)`` (None: Glorot).

    Defaults: the Params are the paper's reading (PN on, Glorot tables); the shipped ``configs/star.yaml`` runs
    ``normalization: none, embedding_std: 0.01``: PN lifts the Glorot embedding columns 15-31x to unit variance
    (numeric 1x) and star overfits the ids; off, with N(0, 0.01) tables, it won on three real datasets (yaml).

    Cost: each example runs one scenario's FCN (``B D H`` per layer, flat in ``S``), but every step also forms,
    differentiates and updates (Adam) ``W_p (x) W`` of every scenario in the batch: ``O(S D H)`` per step by the
    math, not per example (profile at S = 100, batch 1024, share of op time: element-wise products 25 %, Adam
    19 %, GEMMs 21 %), so examples per CPU-second fall with ``S`` at a fixed batch and a larger batch amortises it.
    """

    @dataclass
    class Params(RankingModel.Params):
        hidden: List[int] = default([256, 128, 64])
        normalization: Literal["partitioned", "batch", "none"] = "partitioned"
        star_fcn: bool = True
        auxiliary: bool = True
        aux_hidden: List[int] = default([32])
        scenario_in_main: bool = False

    def __init__(self, schema, params=None, **kwargs):
        super().__init__(schema, params, **kwargs)
        p = self.params
        S = self.num_scenarios
        self.multi_head = self.own_head = not p.scenario_in_main    # all heads: scenario_probs in one pass
        self.norm = {"partitioned": lambda: PartitionedNormalization(S, name="pn"),
                     "batch": lambda: keras.layers.BatchNormalization(name="bn"),
                     "none": lambda: None}[p.normalization]()
        sizes = list(p.hidden) + [1]
        acts = ["relu"] * len(p.hidden) + [None]
        layer = (lambda i, h, a: StarDense(h, S, a, name=f"star_{i}")) if p.star_fcn else \
            (lambda i, h, a: keras.layers.Dense(h, activation=a, name=f"dense_{i}"))
        self.fcn = [layer(i, h, a) for i, (h, a) in enumerate(zip(sizes, acts))]
        self.aux = MLP(p.aux_hidden, name="aux") if p.auxiliary else None
        self.aux_out = keras.layers.Dense(1, name="aux_logit") if p.auxiliary else None

    # From this many scenarios the own rows cross the star FCN sorted by scenario once (SortedRows: one sort and
    # one un-permutation a step, split + concat per layer, the layers' gradient written out) instead of a
    # partition and a stitch per layer. Measured on the train step (CPU us per example, B = 1024, alternating
    # runs): S = 100 ~8 % less (3 of 3 pairs); S = 5 level to slightly worse, so few scenarios keep the partition.
    SORT_MIN_SCENARIOS = 16

    def _sorted_rows(self, sc):
        """:class:`SortedRows` of ``sc`` for the star FCN, or None (few scenarios, no star FCN, a fixed id)."""
        if self.params.star_fcn and self.num_scenarios >= self.SORT_MIN_SCENARIOS and fixed_id(sc) is None:
            return SortedRows(sc, self.num_scenarios)
        return None

    def logits(self, x, training=False, own=None):
        """The own-scenario logit ``[B]``; ``own=False`` (the default when ``multi_head``, i.e. unless
        ``scenario_in_main``): every scenario's logit ``[B, S]`` in one pass, the partitioned layers'
        all-scenario paths (one einsum per layer, ``S`` times the FLOPs)."""
        own = not self.multi_head if own is None else own
        sc = x[self.schema.scenario.name]
        h = self.flat_inputs(x, with_scenario=self.params.scenario_in_main)
        if isinstance(self.norm, PartitionedNormalization):
            h = self.norm(h, sc if own else None, training=training)        # [B, D] or [B, S, D]
        elif self.norm is not None:
            h = self.norm(h, training=training)
        rows = self._sorted_rows(sc) if own else None
        h = rows.sort(h) if rows is not None else h
        for layer in self.fcn:
            h = layer(h, (rows or sc) if own else None) if isinstance(layer, StarDense) else layer(h)
        h = rows.unsort(h) if rows is not None else h
        logit = h[..., 0] if own or len(h.shape) == 3 else h                # [B], [B, S] or [B, 1]
        if self.aux is not None:
            ids = sc if own else tf.range(self.num_scenarios, dtype=sc.dtype)
            logit += self.aux_out(self.aux(self.embedding.scenario({self.schema.scenario.name: ids}),
                                           training=training))[:, 0]         # [B] or [S]
        return logit if own else tf.broadcast_to(logit, [tf.shape(logit)[0], self.num_scenarios])
