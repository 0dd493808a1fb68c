"""MuSeNet layers (Xu et al., "MuSeNet: Multi-Scenario Learning for Repeat-Aware Personalized
Recommendation", WSDM 2023, Sec. 3): the scenario learner with its prototype update, the repeat intention
modules, and the terms of the objective.

Shapes: ``K`` learned scenarios, ``m`` the width of the metric space, ``a [B, K]`` the assignment.

Readings of the paper where it is ambiguous (dimension-consistent choices):

* ``d`` is the **squared** Euclidean distance: Sec. 3.3.1 (eq. 15) expands exactly that, and only for it
  is the weighted mean of eq. 14 the minimiser of eq. 8 given the assignment.
* Eq. 14 averages "``x_i``", but the prototypes live in the metric space of eq. 3 (``d(f_w(x), c)``), so
  the batch mean is taken over ``f_w(x_i)``.
* Eq. 10 is printed with a leading minus, which would *maximise* the squared error; the auxiliary loss
  minimised in eq. 13 is the mean squared error ``mean_i (r_i - sum_k p_r^k a_k,i)^2``.
* ``s_r`` and ``s_e`` (eq. 9) are unbounded scores (linear outputs); ``z`` is a logit, 3.2.3 applies sigma.
"""
from __future__ import annotations

import threading
from typing import Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras as keras

from tfmsr.layers.experts import ExpertBank
from tfmsr.layers.mlp import initializer


# ------------------------------------------------------------------------------------------ equations
def squared_distances(fx: tf.Tensor, prototypes: tf.Tensor) -> tf.Tensor:
    """``d(f_w(x_i), c_k) = ||f_w(x_i) - c_k||^2``: ``[B, m] x [K, m] -> [B, K]`` (eq. 15)."""
    return (tf.reduce_sum(tf.square(fx), -1, keepdims=True) - 2.0 * tf.matmul(fx, prototypes, transpose_b=True)
            + tf.reduce_sum(tf.square(prototypes), -1)[None, :])


def gumbel_softmax(log_pi: tf.Tensor, gumbel: tf.Tensor, tau: float) -> tf.Tensor:
    """Eq. 7: ``a_k = exp((log pi_k + g_k) / tau) / sum_k' exp((log pi_k' + g_k') / tau)``."""
    return tf.nn.softmax((log_pi + gumbel) / tau, axis=-1)


def sample_gumbel(shape, dtype=tf.float32) -> tf.Tensor:
    """i.i.d. ``Gumbel(0, 1)`` draws ``-log(-log U)``, ``U ~ Uniform(0, 1)``."""
    u = tf.random.uniform(shape, minval=1e-10, maxval=1.0, dtype=dtype)
    return -tf.math.log(-tf.math.log(u))


def kl_to_uniform(a: tf.Tensor) -> tf.Tensor:
    """Eq. 12: ``D_KL = 1/N sum_i sum_k a_k,i (log a_k,i + log K)`` (prior ``P(C) = 1/K``); ``0 log 0 = 0``."""
    k = tf.cast(tf.shape(a)[-1], a.dtype)
    safe = tf.where(a > 0, a, tf.ones_like(a))
    return tf.reduce_mean(tf.reduce_sum(a * (tf.math.log(safe) + tf.math.log(k)), axis=-1))


def repeat_aux_loss(r: tf.Tensor, p_r: tf.Tensor, a: tf.Tensor) -> tf.Tensor:
    """Eq. 10 as a squared error (the printed minus sign is a typo, see the module docstring):
    ``L_A = 1/N sum_i (r_i - sum_k p_r^k a_k,i)^2`` with ``r [B]``, ``p_r, a [B, K]``."""
    return tf.reduce_mean(tf.square(tf.cast(r, p_r.dtype) - tf.reduce_sum(p_r * a, axis=-1)))


def combine_scenarios(a: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
    """Sec. 3.2.3, the final logit ``sum_k a_k,i z_k,i`` ``[B]`` (``y_hat = sigma`` of it). With a one-hot
    ``a`` (hard version at inference, eq. 4; predefined scenarios) it is the assigned scenario's ``z``."""
    return tf.reduce_sum(a * z, axis=-1)


def prototype_step(prototypes: tf.Tensor, weighted_sum: tf.Tensor, mass: tf.Tensor, alpha: float,
                   eps: float = 1e-12) -> tf.Tensor:
    """Eq. 14: ``c_k <- (1 - alpha) c_k + alpha * sum_i a_k,i f_w(x_i) / sum_i a_k,i`` from the batch sums
    ``weighted_sum [K, m] = a^T f_w(x)`` and ``mass [K] = sum_i a_k,i``. A prototype whose batch mass is
    below ``eps`` (its assignment underflowed to 0 on every row) keeps its place: its mean is undefined."""
    ok = mass > eps
    mean = weighted_sum / tf.maximum(mass, eps)[:, None]
    return tf.where(ok[:, None], (1.0 - alpha) * prototypes + alpha * mean, prototypes)


# ------------------------------------------------------------------------------------------ layers
class ScenarioLearner(keras.layers.Layer):
    """Scenario learner of MuSeNet (Sec. 3.1.1 and 3.2.1): projection ``f_w``, ``K`` prototypes, soft
    assignment (eq. 3), hard assignment (eq. 4; Gumbel-softmax eq. 7 in training), prototype update (eq. 8
    via eq. 14).

    * ``f_w(x) = x W``: the transformation matrix ``w`` (``[D, m]``, no bias; Sec. 3.3.1 reads the learner
      as a linear model over ``f_w(x)``), trained by back-propagation.
    * ``pi_k = softmax_k(-d(f_w(x), c_k))`` (eq. 3, ``d`` squared Euclidean). Soft version: ``a = pi``.
      Hard version: in training ``a`` is the Gumbel-softmax sample of eq. 7 with temperature ``tau``; at
      inference the one-hot argmax of eq. 4.
    * The prototypes ``c_k`` are **non-trainable** variables, read through ``stop_gradient``: they never
      receive a gradient. They follow the alternating optimisation of eq. 13: step 1 moves them by
      eq. 14 (the closed-form online minimiser of eq. 8 given ``a``), step 2 (back-propagation) updates
      ``w`` and the rest with them fixed. ``update_prototypes()`` performs step 1 with the ``f_w(x)`` and
      ``a`` of the latest training call; the model's ``post_step`` calls it after the gradient step.
    * Distribution: eq. 14 needs only the batch sums ``sum_i a_k,i f_w(x_i)`` and ``sum_i a_k,i``. Under
      a synchronous strategy (``MirroredStrategy``, ``MultiWorkerMirroredStrategy``) every replica
      all-reduces (sums) them and applies the same update, which equals the single-process update on the
      global batch; the prototypes are mirrored (``ON_WRITE``, ``ONLY_FIRST_REPLICA``: one identical
      value per replica). Under ``ParameterServerStrategy`` the prototypes are a variable on a parameter
      server and each worker step assigns eq. 14 of its own batch to it, asynchronously as the paper's
      parameter-server training does (a step reads the prototypes right before its assign; a concurrent
      step's update in between is overwritten, as with any read-modify-write on a PS variable).
    * Initialisation (the paper does not say): the first update sets the prototypes to ``f_w`` of the
      first K pairwise-distinct examples of that (global) batch (:func:`first_distinct_rows`), k-means
      style, so that they start apart; eq. 14 from two equal prototypes would keep them equal for good,
      which K *random* rows risk with categorical context features (duplicate rows are common).

    ``call(x [B, D], gumbel=None [B, K], training=False) -> (a [B, K], pi [B, K])`` (``gumbel``: fixed noise).
    """

    def __init__(self, num_scenarios: int = 4, metric_dim: int = 16, hard: bool = False, tau: float = 0.1,
                 alpha: float = 0.2, standardize="layer", kernel_init="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if num_scenarios < 2:
            raise ValueError(f"ScenarioLearner: need at least 2 scenarios, got {num_scenarios}")
        if not 0 < alpha <= 1 or tau <= 0:
            raise ValueError(f"ScenarioLearner: need 0 < alpha <= 1 and tau > 0, got alpha={alpha}, tau={tau}")
        self.K, self.metric_dim, self.hard = int(num_scenarios), int(metric_dim), bool(hard)
        self.tau, self.alpha = float(tau), float(alpha)
        self.kernel_init = initializer(kernel_init)
        if standardize not in (None, "layer", "batch"):
            raise ValueError(f"ScenarioLearner: standardize must be 'layer', 'batch' or None, got {standardize!r}")
        norm = {"layer": keras.layers.LayerNormalization, "batch": keras.layers.BatchNormalization}.get(standardize)
        self.norm = norm(center=False, scale=False, name="standardize") if norm else None
        object.__setattr__(self, "_local", threading.local())  # per replica thread, not tracked by Keras

    def build(self, input_shape):
        self.omega = self.add_weight(name="omega", shape=(int(input_shape[-1]), self.metric_dim),
                                     initializer=self.kernel_init)
        sync = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_WRITE,
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.prototypes = self.add_weight(name="prototypes", shape=(self.K, self.metric_dim), initializer="zeros",
                                          **sync)
        self.initialized = self.add_weight(name="initialized", shape=(), initializer="zeros", **sync)
        super().build(input_shape)

    def project(self, x, training=False):
        """``f_w(x)`` ``[B, m]`` (of the standardised ``x`` with ``standardize``)."""
        if self.norm is not None:
            x = self.norm(x, training=training)
        return tf.matmul(x, self.omega)

    def soft(self, fx):
        """Eq. 3: ``(pi [B, K], log pi [B, K])``; prototypes enter without gradient."""
        logits = -squared_distances(fx, tf.stop_gradient(tf.convert_to_tensor(self.prototypes)))
        return tf.nn.softmax(logits, axis=-1), tf.nn.log_softmax(logits, axis=-1)

    def call(self, x, gumbel: Optional[tf.Tensor] = None, training=False):
        fx = self.project(x, training=training)
        pi, log_pi = self.soft(fx)
        if not self.hard:
            a = pi
        elif training:
            g = sample_gumbel(tf.shape(pi), pi.dtype) if gumbel is None else gumbel
            a = gumbel_softmax(log_pi, g, self.tau)
        else:
            a = tf.one_hot(tf.argmax(pi, axis=-1), self.K, dtype=pi.dtype)
        if training:  # kept for step 1 (eq. 14) of this training step (MirroredStrategy: one thread per replica)
            self._local.stash = (fx, a)
        return a, pi

    def update_prototypes(self) -> tf.Tensor:
        """Step 1 of the alternating optimisation (eq. 14) with the latest training call's ``f_w(x)``, ``a``;
        in a replica context of several replicas over the global batch (see the class docstring)."""
        stash = getattr(self._local, "stash", None)
        if stash is None:
            raise RuntimeError("ScenarioLearner.update_prototypes: call the layer with training=True first")
        fx, a = (tf.stop_gradient(t) for t in stash)
        weighted_sum = tf.matmul(a, fx, transpose_a=True)                       # [K, m]
        mass = tf.reduce_sum(a, axis=0)                                           # [K]
        seeds = first_distinct_rows(fx, self.K)                                   # [K, m]
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            weighted_sum, mass = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [weighted_sum, mass])
            seeds = first_distinct_rows(ctx.all_gather(seeds, axis=0), self.K)  # same rows as on the global batch
        stepped = prototype_step(tf.convert_to_tensor(self.prototypes), weighted_sum, mass, self.alpha)
        new = tf.where(self.initialized > 0.5, stepped, seeds)
        self.prototypes.assign(new)
        self.initialized.assign(1.0)
        return new


def first_distinct_rows(v: tf.Tensor, k: int) -> tf.Tensor:
    """The first ``k`` pairwise-distinct rows of ``v [N, m]`` in row order (rows closer than a relative
    ``1e-6`` of the largest squared norm count as equal); while fewer remain, the first row repeats.
    Applied to the concatenated first-``k``-distinct rows of several replicas it gives the same rows as on
    their concatenated batches (a row not kept on its replica repeats an earlier row of that replica)."""
    tol = 1e-6 * tf.reduce_max(tf.reduce_sum(tf.square(v), -1)) + 1e-30
    chosen = v[:1]
    for _ in range(k - 1):
        d = tf.reduce_min(tf.reduce_sum(tf.square(v[:, None, :] - chosen[None]), -1), axis=1)  # [N]
        chosen = tf.concat([chosen, v[tf.argmax(tf.cast(d > tol, tf.int32))][None]], axis=0)
    return chosen


class RepeatIntention(keras.layers.Layer):
    """``K`` repeat intention modules, one per scenario (Sec. 3.2.2, eq. 9), evaluated together.

    Module ``k`` has three MLPs ending in one linear unit:
    intention inference ``p_r^k = sigma(MLP([p_u, B_u, o_u]))`` (``context`` input, no target item),
    repeat layer ``s_r^k`` and explore layer ``s_e^k`` over ``[p_u, B_u, b_t, o_u]`` (``full`` input), and
    ``z_k = I[t in B_u] p_r^k s_r^k + (1 - I[t in B_u]) (1 - p_r^k) s_e^k`` (eq. 9).

    ``repeat=False`` is "w/o M2" (Table 3): no intention inference, ``z_k = s^k([p_u, B_u, b_t, o_u])``.
    ``call(full [B, D], context [B, D'], indicator [B]) -> (z [B, K], p_r [B, K] or None)``.
    """

    def __init__(self, num_scenarios: int, hidden: Sequence[int] = (200, 80), repeat: bool = True,
                 activation="relu", dropout: float = 0.0, kernel_init="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.K, self.repeat = int(num_scenarios), bool(repeat)
        self.kernel_init = kernel_init
        kw = dict(activation=activation, dropout=dropout, kernel_init=kernel_init)
        # scores: s_r then s_e of every module (or one score per module without M2)
        self.scores = ExpertBank(self.K * (2 if repeat else 1), hidden, name="scores", **kw)
        self.intention = ExpertBank(self.K, hidden, name="intention", **kw) if repeat else None

    def build(self, input_shape):
        h = self.scores.hidden[-1]
        heads = [("scores", self.K * (2 if self.repeat else 1))] + ([("intention", self.K)] if self.repeat else [])
        self.head_w, self.head_b = {}, {}
        for name, e in heads:
            self.head_w[name] = self.add_weight(name=f"{name}_out", shape=(e, h),
                                                  initializer=initializer(self.kernel_init))
            self.head_b[name] = self.add_weight(name=f"{name}_bias", shape=(e,), initializer="zeros")
        super().build(input_shape)

    def call(self, full, context=None, indicator=None, training=False) -> Tuple[tf.Tensor, Optional[tf.Tensor]]:
        head = lambda name: (self.head_w[name], self.head_b[name])
        if not self.repeat:
            return self.scores(full, training=training, head=head("scores")), None
        # eq. 9 multiplies s_e by 1 - I and s_r by I: a row needs only the K score modules its indicator keeps
        # (rows partitioned: K of the 2K score MLPs per row, same values and gradients); s = its s_r or s_e
        explore = tf.cast(tf.reshape(indicator, [-1]) < 0.5, tf.int32)
        s = self.scores(full, explore, training=training, group=self.K, head=head("scores"))
        p_r = tf.sigmoid(self.intention(context, training=training, head=head("intention")))
        return repeat_combine(indicator, p_r, s, s), p_r


def repeat_combine(indicator: tf.Tensor, p_r: tf.Tensor, s_r: tf.Tensor, s_e: tf.Tensor) -> tf.Tensor:
    """Eq. 9: ``z = I p_r s_r + (1 - I)(1 - p_r) s_e`` with ``I [B]`` (0/1) broadcast over the K modules."""
    i = tf.cast(tf.reshape(indicator, [-1, 1]), p_r.dtype)
    return i * p_r * s_r + (1.0 - i) * (1.0 - p_r) * s_e


def repeat_indicator(target_ids: tf.Tensor, history_ids: tf.Tensor) -> tf.Tensor:
    """``I[t in B_u]`` ``[B]`` float: the (non-padding) target id occurs in the behaviour ids ``[B, L]``."""
    t = tf.cast(target_ids, history_ids.dtype)[:, None]
    hit = tf.reduce_any(tf.equal(history_ids, t) & tf.not_equal(t, 0), axis=1)
    return tf.cast(hit, tf.float32)
