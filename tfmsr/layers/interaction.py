"""Explicit feature interactions: the wide (first-order) part, FM second order, DCN-v2 cross layers.

Used by Wide&Deep, DeepFM and DCN-v2, and by the paper models that cross fields (FIMN's MIE crosses the
scenario representation with each item field through an FM).
"""
from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf
import tf_keras as keras

from tfmsr.layers._init import fresh


class WideLinear(keras.layers.Layer):
    """First-order (wide / linear) logit over sparse ids and dense values.

    ``logit = b + sum_f w_f[id_f] + <v, x_num>`` with one scalar weight per row of each id column
    (Wide & Deep, Cheng et al. 2016, Sec. 3.1: ``y = w^T [x, phi(x)] + b`` where the cross-product
    transformations ``phi(x)`` arrive here as ids of crossed columns; the FM first-order term
    ``<w, x>`` of DeepFM, Guo et al. 2017, Eq. 2). Id 0 (padding / OOV) has a weight too.

    Call with ``ids``: a list of int ``[B]`` tensors (column ``f`` in ``[0, rows[f])``) and optionally
    ``dense`` ``[B, n]``. Returns the logit ``[B]``.
    """

    def __init__(self, rows: Sequence[int], num_dense: int = 0, l2: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.rows = [int(r) for r in rows]
        self.num_dense = int(num_dense)
        reg = keras.regularizers.l2(l2) if l2 else None
        self.tables = [self.add_weight(name=f"w_{i}", shape=(r,), initializer="zeros", regularizer=reg)
                         for i, r in enumerate(self.rows)]
        self.dense_w = (self.add_weight(name="w_dense", shape=(self.num_dense,), initializer="zeros",
                                        regularizer=reg) if self.num_dense else None)
        self.bias = self.add_weight(name="bias", shape=(), initializer="zeros")

    def call(self, ids, dense: Optional[tf.Tensor] = None):
        if len(ids) != len(self.rows):
            raise ValueError(f"WideLinear: expected {len(self.rows)} id columns, got {len(ids)}")
        logit = self.bias
        for w, col in zip(self.tables, ids):
            logit = logit + tf.gather(w, col)
        if self.dense_w is not None:
            logit = logit + tf.linalg.matvec(dense, self.dense_w)
        return logit


def fm_bi_interaction(fields: tf.Tensor) -> tf.Tensor:
    """FM pairwise interaction kept per embedding dimension: ``0.5 * ((sum_i v_i)^2 - sum_i v_i^2)``
    over axis 1 of ``[B, F, ...]`` -> ``[B, ...]`` (``sum_{i<j} v_i * v_j`` element-wise). FIMN's MIE
    (eq. 4) crosses the scenario vector with one item field this way: ``F = 2`` gives ``e_s * e_t^j``."""
    return 0.5 * (tf.square(tf.reduce_sum(fields, axis=1)) - tf.reduce_sum(tf.square(fields), axis=1))


def fm_second_order(fields: tf.Tensor) -> tf.Tensor:
    """FM pairwise term ``sum_{i<j} <v_i, v_j>`` over field embeddings ``[B, F, d]`` -> ``[B]``.

    Rendle's O(Fd) identity ``0.5 * sum_k ((sum_i v_ik)^2 - sum_i v_ik^2)`` (DeepFM, Guo et al. 2017,
    Eq. 2, second term, with the field values folded into the embeddings ``v_i x_i``).
    """
    return tf.reduce_sum(fm_bi_interaction(fields), axis=1)


class FMInteraction(keras.layers.Layer):
    """Layer form of :func:`fm_second_order`: ``[B, F, d] -> [B]`` (no weights)."""

    def call(self, fields):
        return fm_second_order(fields)


class CrossNetV2(keras.layers.Layer):
    """DCN-v2 cross network (Wang et al., WWW 2021, Eq. 1): ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l``.

    ``num_layers`` full-rank cross layers (``W_l`` is ``D x D``); ``low_rank=r`` uses ``W_l = U_l V_l^T``
    with ``U_l, V_l`` of shape ``D x r`` (the paper's cost-efficient variant, Eq. 2 without the mixture).
    Input and output ``[B, D]``.
    """

    def __init__(self, num_layers: int = 3, low_rank: Optional[int] = None, kernel_init="glorot_uniform",
                 l2: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if num_layers < 1:
            raise ValueError(f"CrossNetV2: num_layers must be >= 1, got {num_layers}")
        self.num_layers, self.low_rank = int(num_layers), low_rank
        self.kernel_init = kernel_init
        self.reg = keras.regularizers.l2(l2) if l2 else None

    def build(self, input_shape):
        d = int(input_shape[-1])
        self.kernels, self.biases = [], []
        for i in range(self.num_layers):
            if self.low_rank:
                u = self.add_weight(name=f"U_{i}", shape=(d, self.low_rank), initializer=fresh(self.kernel_init),
                                    regularizer=self.reg)
                v = self.add_weight(name=f"V_{i}", shape=(d, self.low_rank), initializer=fresh(self.kernel_init),
                                    regularizer=self.reg)
                self.kernels.append((u, v))
            else:
                self.kernels.append(self.add_weight(name=f"W_{i}", shape=(d, d), initializer=fresh(self.kernel_init),
                                                    regularizer=self.reg))
            self.biases.append(self.add_weight(name=f"b_{i}", shape=(d,), initializer="zeros"))
        super().build(input_shape)

    def call(self, x0):
        x = x0
        for kernel, bias in zip(self.kernels, self.biases):
            if self.low_rank:
                u, v = kernel
                wx = tf.matmul(tf.matmul(x, v), u, transpose_b=True)   # (U V^T) x, row-vector form
            else:
                wx = tf.matmul(x, kernel, transpose_b=True)            # W x, row-vector form
            x = x0 * (wx + bias) + x
        return x
