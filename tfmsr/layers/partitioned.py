"""Layers whose parameters are partitioned by scenario: STAR's partitioned normalization and star-topology
fully connected layer, SAR-Net's scenario-specific linear transformation, and the row-partitioning helper
they share (each example only touches its own scenario's parameters, so a scenario-s batch leaves the
other scenarios' parameters untouched).
"""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from tfmsr.layers._init import fresh
from tfmsr.layers.scenario import (SortedRows, all_matmul, fixed_id, own_matmul, own_method, partition_apply, row,
                                   rows_of)


class PartitionedNormalization(keras.layers.Layer):
    """STAR partitioned normalization (Sheng et al., CIKM 2021, Sec. 3.2):

    ``z' = (gamma * gamma_p) * (z - mu) / sqrt(var + eps) + (beta + beta_p)``

    with shared ``gamma, beta`` and scenario-specific ``gamma_p, beta_p`` (initialised to 1 and 0). In
    training ``mu, var`` are the moments of the batch rows of the example's own scenario (the paper
    normalises a batch drawn from one domain; our batches mix scenarios, so the moments are taken per
    scenario inside the batch with segment sums) and each scenario's moving averages ``E_p, Var_p`` are
    updated from its rows (scenarios absent from the batch keep theirs). In inference ``mu, var`` are the
    moving statistics of the example's scenario. The moving averages are bias-corrected like Adam's moment
    estimates (``moving / moving_weight``, ``moving_weight = 1 - momentum^n`` after ``n`` updates), so a
    short run or a rare scenario is not normalised with the zero/one initial statistics; a scenario never
    seen in training uses mean 0, variance 1. Input ``[B, D]`` and int scenario ``[B]``: ``[B, D]`` (cost
    ``O(B D + S D)``). ``call(z)`` without a scenario: every scenario's normalisation of every row from the
    moving statistics, ``[B, S, D]`` (the all-scenario answer of a servable; ``S`` times the cost).
    """

    def __init__(self, num_scenarios: int, momentum: float = 0.99, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.num_scenarios, self.momentum, self.epsilon = int(num_scenarios), float(momentum), float(epsilon)

    def build(self, input_shape):
        d, s = int(input_shape[-1]), self.num_scenarios
        self.gamma = self.add_weight(name="gamma", shape=(d,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(d,), initializer="zeros")
        self.gamma_p = self.add_weight(name="gamma_p", shape=(s, d), initializer="ones")
        self.beta_p = self.add_weight(name="beta_p", shape=(s, d), initializer="zeros")
        self.moving_mean = self.add_weight(name="moving_mean", shape=(s, d), initializer="zeros", trainable=False)
        self.moving_var = self.add_weight(name="moving_var", shape=(s, d), initializer="zeros", trainable=False)
        self.moving_weight = self.add_weight(name="moving_weight", shape=(s, 1), initializer="zeros", trainable=False)
        super().build(input_shape)

    def statistics(self, sc=None):
        """Bias-corrected moving mean and variance ``[S, D]`` (0 and 1 for a scenario never seen); with
        scenario ids ``sc [B]``: the rows of those scenarios ``[B, D]`` (:func:`rows_of`)."""
        pick = (lambda v: v) if sc is None else (lambda v: rows_of(v, sc))
        weight = pick(self.moving_weight)
        seen, w = weight > 0, tf.maximum(weight, 1e-12)
        return (tf.where(seen, pick(self.moving_mean) / w, 0.0),
                tf.where(seen, pick(self.moving_var) / w, 1.0))

    def batch_moments(self, z, sc):
        """Per-scenario mean and (biased) variance ``[S, D]`` of the batch rows, and row counts ``[S]``."""
        n = tf.math.unsorted_segment_sum(tf.ones_like(z[:, 0]), sc, self.num_scenarios)
        safe = tf.maximum(n, 1.0)[:, None]
        mean = tf.math.unsorted_segment_sum(z, sc, self.num_scenarios) / safe
        sq = tf.math.unsorted_segment_sum(tf.square(z), sc, self.num_scenarios) / safe
        return mean, tf.maximum(sq - tf.square(mean), 0.0), n

    def call(self, z, scenario=None, training=False):
        if scenario is None:
            mean, var = self.statistics()
            scale, shift = self.gamma * self.gamma_p, self.beta + self.beta_p               # [S, D]
            return scale * (z[:, None] - mean) * tf.math.rsqrt(var + self.epsilon) + shift
        sc = tf.cast(tf.reshape(scenario, [-1]), tf.int32)
        if training:
            mean, var, n = self.batch_moments(z, sc)
            present = (n > 0)[:, None]
            m = self.momentum
            for moving, batch in ((self.moving_mean, mean), (self.moving_var, var),
                                  (self.moving_weight, tf.ones_like(self.moving_weight))):
                moving.assign(tf.where(present, m * moving + (1 - m) * batch, moving))
            mu, v = tf.gather(mean, sc), tf.gather(var, sc)
        else:
            mu, v = self.statistics(sc)
        scale = self.gamma * rows_of(self.gamma_p, sc)          # rows_of: right rows of a sharded variable too
        shift = self.beta + rows_of(self.beta_p, sc)
        return scale * (z - mu) * tf.math.rsqrt(v + self.epsilon) + shift


class StarDense(keras.layers.Layer):
    """One star-topology fully connected layer (STAR, Sheng et al. 2021, Sec. 3.3):

    ``W*_p = W_p (x) W`` (element-wise), ``b*_p = b_p + b``, ``out_p = phi(in_p W*_p + b*_p)``

    with the shared (centre) ``W, b`` and the scenario-specific ``W_p`` (initialised to ones, so training
    starts from the shared layer) and ``b_p`` (zeros). ``call(x [B, D], scenario [B]) -> [B, H]``: each example
    through its own scenario's weights (one dense pass per example, plus ``S D H`` for ``W_p (x) W`` forward and
    twice that backward: every scenario's product, ``O(S)`` by the math, and the optimizer's ``S D H`` slots).
    ``call(x)`` (``x [B, D]`` or ``[B, S, D]``): every scenario's output
    ``[B, S, H]`` in one einsum (``S`` times the FLOPs). ``call(x, rows)`` with a :class:`SortedRows`: ``x`` holds
    the rows sorted by scenario and so does the output (a stack of layers sorts once: :func:`star_matmul`).
    """

    def __init__(self, units: int, num_scenarios: int, activation=None, kernel_init="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.units, self.num_scenarios = int(units), int(num_scenarios)
        self.act = keras.activations.get(activation)
        self.kernel_init = kernel_init

    def build(self, input_shape):
        d, s, h = int(input_shape[-1]), self.num_scenarios, self.units
        self.kernel = self.add_weight(name="W", shape=(d, h), initializer=fresh(self.kernel_init))
        self.bias = self.add_weight(name="b", shape=(h,), initializer="zeros")
        self.kernel_p = self.add_weight(name="W_p", shape=(s, d, h), initializer="ones")
        self.bias_p = self.add_weight(name="b_p", shape=(s, h), initializer="zeros")
        super().build(input_shape)

    def call(self, x, scenario=None):
        if scenario is None:
            return all_matmul(x, self.kernel * self.kernel_p, self.bias + self.bias_p, self.act)   # W*_p, b*_p
        if isinstance(scenario, SortedRows):
            return self.act(self.sorted_rows(x, scenario))
        fixed = fixed_id(scenario)
        if fixed is not None:   # one scenario while tracing (its servable): its slices only
            return self.act(tf.matmul(x, self.kernel * row(self.kernel_p, fixed)) + self.bias + row(self.bias_p, fixed))
        s, d, h = (int(n) for n in self.kernel_p.shape)
        if own_method(s, d * h) == "gather":
            return self.act(own_matmul(x, scenario, self.kernel * self.kernel_p, self.bias + self.bias_p, "gather"))
        # partitioned: scenario p's W (x) W_p formed next to its GEMM (no [S, D, H] product unstacked forward
        # and stacked back backward: ~1/3 less CPU for STAR's first layer at S = 100)
        w_p, b_p = tf.unstack(tf.convert_to_tensor(self.kernel_p)), tf.unstack(tf.convert_to_tensor(self.bias_p))
        return self.act(partition_apply(x, scenario, s, lambda i, rows: tf.matmul(rows, self.kernel * w_p[i])
                                        + (self.bias + b_p[i])))

    def sorted_rows(self, x, rows: SortedRows):
        """``x W*_p + b*_p`` (no activation) of rows sorted by scenario (``rows``): :func:`star_matmul`, or the
        gathered method when :func:`own_method` picks it (a narrow layer at many scenarios)."""
        s, d, h = (int(n) for n in self.kernel_p.shape)
        bias = tf.gather(self.bias + tf.convert_to_tensor(self.bias_p), rows.ids)
        if own_method(s, d * h) == "gather":
            return own_matmul(x, rows.ids, self.kernel * self.kernel_p, method="gather") + bias
        return star_matmul(x, rows, self.kernel, self.kernel_p) + bias


def star_matmul(x, rows: SortedRows, kernel, kernel_p) -> tf.Tensor:
    """``x_b (W (x) W_p[s_b])`` for rows ``x [B, D]`` sorted by scenario (``rows``), kernels ``[D, H]`` and
    ``[S, D, H]``. Forward: per scenario its product (formed next to its GEMM, in cache) and one GEMM on its rows.
    Its gradient is written out: per scenario ``G_s = X_s^T dY_s``, then ``dW = sum_s G_s (x) W_p[s]`` (one
    AddN) and ``dW_p = stack_s G_s (x) W``, and ``dX_s = dY_s (W (x) W_p[s])^T`` from the forward's products
    (autodiff's partition/stitch per layer and its gathers are gone; the same numbers within float rounding)."""
    @tf.custom_gradient
    def run(x, w, w_p):
        w_s = tf.unstack(w_p)
        products = [w * k for k in w_s]
        parts = rows.split(x)
        y = tf.concat([tf.matmul(p, k) for p, k in zip(parts, products)], 0)

        def grad(dy):
            dys = rows.split(dy)
            dx = tf.concat([tf.matmul(g, k, transpose_b=True) for g, k in zip(dys, products)], 0)
            gs = [tf.matmul(p, g, transpose_a=True) for p, g in zip(parts, dys)]
            return dx, tf.add_n([g * k for g, k in zip(gs, w_s)]), tf.stack([g * w for g in gs])

        return y, grad

    return run(x, tf.convert_to_tensor(kernel), tf.convert_to_tensor(kernel_p))


class ScenarioAffine(keras.layers.Layer):
    """Scenario-specific linear transformation ``x' = x * w_s + b_s`` (element-wise; SAR-Net, Shen et al.,
    CIKM 2021, Sec. 3.3 "scenario-specific linear transformation layer"): a per-scenario re-scaling and
    shift of the shared representation, cheap enough for hundreds of scenarios. ``w_s`` starts at ones,
    ``b_s`` at zeros. ``call(x [B, D], scenario [B]) -> [B, D]``.
    """

    def __init__(self, num_scenarios: int, **kwargs):
        super().__init__(**kwargs)
        self.num_scenarios = int(num_scenarios)

    def build(self, input_shape):
        d = int(input_shape[-1])
        self.scale = self.add_weight(name="w_s", shape=(self.num_scenarios, d), initializer="ones")
        self.shift = self.add_weight(name="b_s", shape=(self.num_scenarios, d), initializer="zeros")
        super().build(input_shape)

    def call(self, x, scenario):
        sc = tf.cast(tf.reshape(scenario, [-1]), tf.int32)
        return x * rows_of(self.scale, sc) + rows_of(self.shift, sc)
