"""FIMN modules (Fusing Multi-Interest and Scenario-Mutual Network, ../shared/papers/FIMN.md, section 4).

Shapes: ``B`` examples, ``S`` scenarios, ``A = |A_i|`` item fields (= interests), ``L = |B|`` behaviours,
``d`` the field width, ``d_s = |A_s| d`` the scenario representation. Field ``j`` of the target item and
of the behaviour matrix is the slice ``[j d, (j + 1) d)`` of their concatenated field embeddings.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfmsr.layers._init import fresh
from tfmsr.layers._inputs import MultiInputLayer
from tfmsr.layers.attention import MultiHeadTargetAttention, masked_softmax, pack, segment_softmax, segment_sum
from tfmsr.layers.interaction import fm_bi_interaction
from tfmsr.layers.mlp import MLP
from tfmsr.layers.scenario import own_rows


def frequency_features(per_scenario: Mapping[str, Mapping], names: Sequence[str], source: str = "stats") -> np.ndarray:
    """``v_s`` of SEM (section 4.2) for every scenario: ``[S, 2]`` float32, both columns in ``[0, 1]``.

    ``per_scenario`` maps scenario name -> ``{"rows": impressions}`` (the per-scenario entries of a split in
    ``stats.json``). Column 0 is the impression probability ``rows_s / sum rows``, column 1 the impression
    number on a log scale, ``log(1 + rows_s) / log(1 + sum rows)`` ("normalized to a small scale").
    Both rise with the scenario's traffic, so a longer-tail scenario has a smaller ``v_s`` in every entry.
    """
    missing = [n for n in names if n not in per_scenario or "rows" not in per_scenario[n]]
    if missing:
        raise ValueError(f"{source}: no 'rows' (impressions) for scenario(s) {missing}")
    rows = np.array([float(per_scenario[n]["rows"]) for n in names])
    if (rows < 0).any() or rows.sum() <= 0:
        raise ValueError(f"{source}: scenario rows must be >= 0 with a positive total, got {rows.tolist()}")
    total = rows.sum()
    return np.stack([rows / total, np.log1p(rows) / np.log1p(total)], axis=1).astype(np.float32)


def _inverse_softplus(y: float) -> float:
    return math.log(math.expm1(y))


class ScenarioEnhancing(keras.layers.Layer):
    """SEM, section 4.2, eq. 1-2: ``v_se = gamma * sigmoid(Monotonic_MLP(-v_s))``, ``e~_s = e_s * v_se``.

    ``v_s`` (``frequency [S, d_vs]``, see :func:`frequency_features`) is a non-trainable weight, so it is
    checkpointed and exported with the model: a restored model keeps the statistics it was trained with.
    Monotonic MLP: dense layers ``hidden`` + ``d_s`` whose kernels are all strictly positive through a
    **positive reparameterisation** ``W = softplus(W_raw)`` (no constraint or clipping; biases are free),
    with a strictly increasing hidden activation (tanh). Every output unit is therefore non-decreasing in
    each entry of ``-v_s``: a scenario with less traffic gets a larger ``v_se`` in every dimension, for any
    value of the trained weights. ``W_raw`` starts at ``softplus^-1(1 / fan_in)`` plus Gaussian(0, 0.05)
    noise (``softplus(W_raw)`` of a Gaussian(0, 0.05) ``W_raw`` is ~0.69 and would saturate the sigmoid).
    ``v_se`` only depends on the scenario, so it is computed for the ``S`` scenarios and gathered. When
    ``e_s`` too depends on the scenario only (the scenario id is the only scenario feature, as in the
    planted data and MovieLens), ``e~_s`` can take exactly the values ``e_s`` can: SEM then changes how the
    rows of the scenario table learn (each row's gradient is scaled by its ``v_se``), not what the model can
    express; it can change the function only with example-level scenario features.

    ``call(e_s [B, d_s], scenario [B]) -> (e~_s [B, d_s], v_se [B, d_s])``.
    """

    def __init__(self, frequency, hidden: Sequence[int] = (16,), gamma: float = 2.0, noise: float = 0.05,
                 **kwargs):
        super().__init__(**kwargs)
        self.frequency_init = np.asarray(frequency, np.float32)
        if self.frequency_init.ndim != 2:
            raise ValueError(f"ScenarioEnhancing: frequency must be [S, d_vs], got shape {self.frequency_init.shape}")
        self.hidden, self.gamma, self.noise = [int(h) for h in hidden], float(gamma), float(noise)

    def build(self, input_shape):
        d_s = int(input_shape[-1])
        self.frequency = self.add_weight(name="v_s", shape=self.frequency_init.shape, trainable=False,
                                         initializer=keras.initializers.Constant(self.frequency_init))
        widths = [self.frequency_init.shape[1]] + self.hidden + [d_s]
        self.raw_kernels, self.biases = [], []
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            init = keras.initializers.RandomNormal(_inverse_softplus(1.0 / fan_in), self.noise)
            self.raw_kernels.append(self.add_weight(name=f"W_raw_{i}", shape=(fan_in, fan_out), initializer=init))
            self.biases.append(self.add_weight(name=f"b_{i}", shape=(fan_out,), initializer="zeros"))
        super().build(input_shape)

    def kernels(self):
        """The strictly positive kernels ``softplus(W_raw)`` of the monotonic MLP."""
        return [tf.nn.softplus(w) for w in self.raw_kernels]

    def monotonic_mlp(self, v):
        """``Monotonic_MLP(v)`` for ``v [N, d_vs]`` (eq. 1 applies it to ``-v_s``)."""
        h = v
        for i, (w, b) in enumerate(zip(self.kernels(), self.biases)):
            h = tf.matmul(h, w) + b
            if i < len(self.biases) - 1:
                h = tf.tanh(h)
        return h

    def scenario_weights(self):
        """``v_se`` of every scenario, ``[S, d_s]`` (eq. 1)."""
        return self.gamma * tf.sigmoid(self.monotonic_mlp(-self.frequency))

    def call(self, e_s, scenario):
        v_se = tf.gather(self.scenario_weights(), tf.cast(scenario, tf.int32))
        return e_s * v_se, v_se


class MultiAspectInterestExtractor(MultiInputLayer):
    """MIE, section 4.3, eq. 3-7: one interest per item field through field-wise target attention (FTA).

    ``e^_s = W_e e~_s`` (``W_e`` of shape ``d x d_s``, no bias); the target item ``e_t [B, A d]`` and the
    behaviour matrix ``E_B [B, L, A d]`` are split into ``A`` fields of width ``d`` (eq. 3, 5); the query of
    field ``j`` is the FM interaction of eq. 4, ``e^_t^j = 0.5 ((e^_s + e_t^j)^2 - (e^_s^2 + (e_t^j)^2))``
    (:func:`~tfmsr.layers.interaction.fm_bi_interaction`, which is ``e^_s * e_t^j``); FTA of field ``j``
    (eq. 6-7) is single-head scaled dot-product attention with its own ``W_j^Q, W_j^K`` (``d x d_k``),
    ``W_j^V`` (``d x d_v``), ``W_j^O`` (``d_v x d``), ``d_k = d_v = d``
    (:class:`~tfmsr.layers.MultiHeadTargetAttention` with one head), keys and values ``E_B_j``; padding
    behaviours get no weight and an empty history gives a zero interest.

    ``call(e~_s [B, d_s], e_t [B, A d], E_B [B, L, A d], mask=None [B, L]) -> E_I [B, A, d]``; with
    ``packed=`` (:func:`~tfmsr.layers.attention.pack` of the mask) ``E_B`` is the ``[n, A d]`` real behaviours
    only (a caller that looked up just those: no ``[B, L, A d]`` tensor, whose gradient is a dense scatter).
    """

    def __init__(self, num_fields: int, kernel_init="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.num_fields, self.kernel_init = int(num_fields), kernel_init

    def build_inputs(self, e_s, target, behaviors):
        width = int(target[-1])
        if width % self.num_fields:
            raise ValueError(f"MIE: target width {width} does not split into {self.num_fields} fields")
        self.d = width // self.num_fields
        self.w_e = keras.layers.Dense(self.d, use_bias=False, kernel_initializer=fresh(self.kernel_init), name="W_e")
        self.fta = [MultiHeadTargetAttention(1, output_dim=self.d, kernel_init=self.kernel_init, name=f"fta_{j}")
                    for j in range(self.num_fields)]
        with tf.name_scope(self.w_e.name):                   # made in the order and with the names of a call
            self.w_e.build(e_s)
        for fta in self.fta:
            with tf.name_scope(fta.name):
                fta.build_once(tf.zeros([0, self.d]), tf.zeros([0, 0, self.d]), tf.zeros([0, 0, self.d]))

    def split(self, x):
        """``[..., A d] -> A x [..., d]`` (eq. 3 and 5; ``tf.split``, whose gradient is one concat)."""
        return tf.split(x, self.num_fields, axis=-1)

    def queries(self, e_s, target):
        """``[e^_t^1, ..., e^_t^A]``, each ``[B, d]``: eq. 4 for every field."""
        e_hat = self.w_e(e_s)
        return [fm_bi_interaction(tf.stack([e_hat, t_j], axis=1)) for t_j in self.split(target)]

    def call(self, e_s, target, behaviors, mask=None, *, packed=None):
        self.build_once(e_s, target, behaviors)
        if packed is not None:
            return self.over_real(e_s, target, behaviors, packed)
        if mask is None:
            return tf.stack([fta(q, k, k) for q, k, fta in
                             zip(self.queries(e_s, target), self.split(behaviors), self.fta)], axis=1)
        packed = pack(mask)
        return self.over_real(e_s, target, packed.gather(behaviors), packed)

    def over_real(self, e_s, target, tokens, packed):
        """Eq. 4-7 for every field at once over the real behaviours ``tokens [n, A d]`` (``packed.gather`` of
        ``E_B``): field ``j`` is one head with its own weights. ``(q W^Q)(k W^K)^T = (q W^Q W^{K T}) k^T`` and
        ``sum_l w_l (k_l W^V) = (sum_l w_l k_l) W^V``, as :class:`~tfmsr.layers.MultiHeadTargetAttention` over a
        mask, with one segment softmax for the ``A`` fields (no split of ``E_B``)."""
        a, d, b = self.num_fields, self.d, tf.shape(e_s, out_type=tf.int64)[0]
        t = tf.reshape(target, [-1, a, d])                                                # eq. 3
        e_hat = tf.broadcast_to(self.w_e(e_s)[:, None, :], tf.shape(t))
        q = fm_bi_interaction(tf.stack([e_hat, t], axis=1))                               # eq. 4, [B, A, d]
        wq, wk, wv, wo = (tf.stack([getattr(f, w) for f in self.fta]) for w in ("wq", "wk", "wv", "wo"))
        q = tf.einsum("bad,adk->bak", q, wq) * float(self.fta[0].kd) ** -0.5
        r = tf.einsum("bak,aek->bae", q, wk)                                              # [B, A, d]
        tokens = tf.reshape(tokens, [-1, a, d])                                           # eq. 5, [n, A, d]
        w = segment_softmax(tf.einsum("nad,nad->na", tf.gather(r, packed.row), tokens), packed.row, b)  # eq. 7
        pooled = segment_sum(w[..., None] * tokens, packed.row, b)                        # [B, A, d]
        return tf.einsum("bav,avo->bao", tf.einsum("bad,adv->bav", pooled, wv), wo)       # eq. 6

    def attention(self, e_s, target, behaviors, mask=None):
        """The FTA weights ``[B, A, L]`` (the softmax of eq. 7 for every field; the layer must have been
        called once)."""
        return tf.stack([fta.attention_weights(q, k, mask)[:, 0] for q, k, fta in
                         zip(self.queries(e_s, target), self.split(behaviors), self.fta)], axis=1)


class ScenarioAwareInterestFusion(MultiInputLayer):
    """SIF, section 4.4, eq. 8-14: multi-resolution fusion gates and scenario-aware interest activation.

    ``x_fg = [e~_s, stop_gradient(flatten(E_I))]`` (eq. 8; the gates do not train the interests),
    ``x'_fg = ReLU(x_fg W_fg + b)`` (eq. 9, width ``d_g``), intra-gate ``v_Ia = gamma * sigmoid(x'_fg W_Ia +
    b_Ia)`` of width ``A d`` (eq. 10) reshaped row-wise to ``E_Ia [A, d]`` (eq. 12), inter-gate ``v_Ie =
    softmax(x'_fg W_Ie + b_Ie)`` over the ``A`` interests (eq. 11), ``E^_I = E_Ia * E_I`` (eq. 13) and
    ``e_If = sum_j v_Ie_j E^_I_j`` (eq. 14).

    ``call(e~_s [B, d_s], E_I [B, A, d]) -> (e_If [B, d], E_Ia [B, A, d], v_Ie [B, A])``.
    """

    def __init__(self, gate_dim: int = 64, gamma: float = 2.0, kernel_init="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.gate_dim, self.gamma, self.kernel_init = int(gate_dim), float(gamma), kernel_init

    def build_inputs(self, e_s, interests):
        a, d = int(interests[1]), int(interests[2])
        self.a, self.d = a, d
        dense = lambda n, name, act=None: keras.layers.Dense(n, activation=act, name=name,
                                                             kernel_initializer=fresh(self.kernel_init))
        self.w_fg = dense(self.gate_dim, "W_fg", "relu")
        self.w_ia = dense(a * d, "W_Ia")
        self.w_ie = dense(a, "W_Ie")

    def call(self, e_s, interests):
        self.build_once(e_s, interests)
        x = tf.concat([e_s, tf.reshape(tf.stop_gradient(interests), [-1, self.a * self.d])], axis=-1)
        h = self.w_fg(x)
        e_ia = tf.reshape(self.gamma * tf.sigmoid(self.w_ia(h)), [-1, self.a, self.d])
        v_ie = tf.nn.softmax(self.w_ie(h), axis=-1)
        fused = tf.reduce_sum(v_ie[..., None] * (e_ia * interests), axis=1)
        return fused, e_ia, v_ie


class ScenarioMutual(keras.layers.Layer):
    """SMM, section 4.5, eq. 15-18: one representation per scenario, mixed with the other scenarios'.

    Eq. 15 reshapes ``e~_s + e_If + e_t + e_p + e_q`` (width ``D``) into ``[M_1; ...; M_S]`` of shape
    ``S x d``, which only fits when ``D = S d``. The dimension-consistent reading used here: a learned linear
    projection ``R^D -> R^{S d}`` (``W_M``, with bias) followed by the reshape, so ``M_i`` is row ``i``.
    ``projection_hidden`` (default none) puts shared ReLU layers before ``W_M``: the projection is then an
    MLP whose hidden layers every scenario's ``M_i`` (and so every scenario's examples) trains.
    Additive attention (eq. 16) with ``M_i`` as query over the other scenarios: ``a_ij = z^T tanh(W^i M_i +
    W^j M_j)``, read as vanilla additive attention with one query matrix ``W^i`` and one key matrix ``W^j``
    (``d_h x d``, shared by all scenarios: the ``M_i`` are already scenario-specific), softmax over
    ``j != i`` (``alpha_ii = 0``); ``M^_i = sum_{j != i} alpha_ij M_j`` (eq. 17); ``theta_i = sigmoid(W^m
    [M_i, M^_i])`` with ``W^m`` of shape ``1 x 2d`` (no bias, as written) and ``M~_i = theta_i M_i +
    (1 - theta_i) M^_i`` (eq. 18).

    ``call(h [B, D]) -> (M~ [B, S, d], alpha [B, S, S], theta [B, S])``; ``alpha[b, i, j]`` is the weight
    scenario ``i`` gives scenario ``j``: every row ``i``, ``O(S^2 d_h)`` per example (``scenario_probs``, the
    ``all_scenarios`` servable, Fig. 5). ``call(h, scenario) -> (M~_s [B, d], alpha_s [B, S], theta_s [B])``:
    row ``s`` of each example's scenario only. Its remaining ``O(S)`` cost per example is the math of
    eq. 15-17: the projection ``W_M`` to all ``S`` rows (``D_h S d``), their keys ``W^j M_j`` (``S d d_h``)
    and the scores ``z^T tanh(W^i M_i + W^j M_j)`` over ``j`` (``S d_h``), each one batched op.
    """

    def __init__(self, num_scenarios: int, dim: int, attention_dim: int = 32, kernel_init="glorot_uniform",
                 projection_hidden: Sequence[int] = (), **kwargs):
        super().__init__(**kwargs)
        if num_scenarios < 2:
            raise ValueError("ScenarioMutual needs at least 2 scenarios (eq. 16 attends over the others)")
        self.s, self.d, self.kernel_init = int(num_scenarios), int(dim), kernel_init
        dense = lambda n, name, bias=True: keras.layers.Dense(n, use_bias=bias, name=name,
                                                              kernel_initializer=fresh(kernel_init))
        self.projection = MLP(projection_hidden, kernel_init=kernel_init, name="projection")
        self.w_m_proj = dense(self.s * self.d, "W_M")
        self.w_query = dense(attention_dim, "W_i", bias=False)
        self.w_key = dense(attention_dim, "W_j", bias=False)
        self.z = dense(1, "z", bias=False)
        self.w_gate = dense(1, "W_m", bias=False)

    def call(self, h, scenario=None):
        m = tf.reshape(self.w_m_proj(self.projection(h)), [-1, self.s, self.d])   # eq. 15
        if scenario is not None:
            return self.own_row(m, scenario)
        q, k = self.w_query(m), self.w_key(m)                                       # [B, S, d_h]
        scores = self.z(tf.tanh(q[:, :, None, :] + k[:, None, :, :]))[..., 0]       # [B, S, S] a_ij
        alpha = masked_softmax(scores, ~tf.eye(self.s, dtype=tf.bool)[None])      # eq. 16
        m_hat = tf.matmul(alpha, m)                                                 # eq. 17
        theta = tf.sigmoid(self.w_gate(tf.concat([m, m_hat], axis=-1)))            # eq. 18
        return theta * m + (1.0 - theta) * m_hat, alpha, theta[..., 0]

    def own_row(self, m, scenario):
        """Eq. 16-18 for row ``i = s`` of each example only, over ``M [B, S, d]``."""
        s = tf.cast(tf.reshape(scenario, [-1]), tf.int32)
        m_i = own_rows(m, s)                                                        # [B, d]
        scores = self.z(tf.tanh(self.w_query(m_i)[:, None, :] + self.w_key(m)))[..., 0]  # [B, S] a_ij
        alpha = masked_softmax(scores, tf.logical_not(tf.cast(tf.one_hot(s, self.s), tf.bool)))  # eq. 16
        m_hat = tf.matmul(alpha[:, None, :], m)[:, 0]                               # eq. 17
        theta = tf.sigmoid(self.w_gate(tf.concat([m_i, m_hat], axis=-1)))          # eq. 18
        return theta * m_i + (1.0 - theta) * m_hat, alpha, theta[:, 0]
