"""SAINet modules (Scenario-adaptive Interest Network, ../shared/papers/SAINet.md, section 4).

Shapes: behaviours ``X [B, N, d]``, their scenarios ``M_S [B, N, d_s]``, target scenario ``e_st [B, d_s]``,
``mask [B, N]`` (True at real behaviours). With ``packed=`` (:func:`tfmsr.layers.attention.pack` of the mask) the
sequence layers take the real behaviours as tokens ``[n, d]`` / ``[n, d_s]`` instead: STM and TIF run on the
tokens; SIE's attention, in which every behaviour queries, scatters them back to the dense ``[B, N, N]`` form
(:meth:`~tfmsr.layers.attention.MultiHeadSelfAttention.over_tokens`). Padding never has weight.
"""
from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf
import tf_keras as keras

from tfmsr.layers._init import fresh
from tfmsr.layers._inputs import MultiInputLayer
from tfmsr.layers.attention import MultiHeadSelfAttention, masked_softmax, segment_softmax, segment_sum


class ScenarioAwareInterestExtracting(keras.layers.Layer):
    """SIE, section 4.1, eq. 2-3: multi-head self-attention whose Q, K, V add a projection of the scenario
    each behaviour happened in: ``Q = X W_i^Q + M_S W_S^Q`` (same for K, V), ``head_i = softmax(Q K^T /
    sqrt(d_k)) V``, ``X^ = concat(head_1..head_h) W^O`` with ``d = h d_k``.

    ``X W^Q + M_S W_S^Q = [X, M_S] [W^Q; W_S^Q]``, so SIE is the shared multi-head self-attention over the
    feature concatenation ``[X, M_S]`` with projections of width ``d`` (the width of X); padding keys get
    no weight. ``scenario=False`` drops the ``M_S`` terms (plain self-attention over X).

    ``residual=True`` returns ``X + MultiHead(X)``: the MHA of [21] that eq. 2 cites is a sublayer with a
    residual connection ("Add"); eq. 2 prints only ``MultiHead(X)``, whose rows are mixtures of all
    behaviours, so after L blocks TIF can no longer pick single behaviours. ``residual=False`` is eq. 2 as
    printed. ``call(X [B, N, d], M_S [B, N, d_s], mask=None [B, N]) -> X^ [B, N, d]`` (rows of padding:
    read by no caller); ``packed=``: tokens ``X [n, d]``, ``M_S [n, d_s]`` -> ``[n, d]``.
    """

    def __init__(self, num_heads: int = 4, scenario: bool = True, kernel_init="glorot_uniform",
                 residual: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.scenario, self.residual = scenario, residual
        self.num_heads, self.kernel_init = num_heads, kernel_init

    def build(self, input_shape):
        d = int(input_shape[-1])
        self.mha = MultiHeadSelfAttention(self.num_heads, units=d, kernel_init=self.kernel_init, name="mha")
        super().build(input_shape)

    def call(self, x, m_s, mask=None, *, packed=None):
        src = tf.concat([x, m_s], axis=-1) if self.scenario else x
        x_hat = self.mha(src, mask=mask, packed=packed)
        return x + x_hat if self.residual else x_hat


class ScenarioTailoring(keras.layers.Layer):
    """STM, section 4.1, eq. 4-5: ``v_i = gamma * sigmoid([x^_i, e_st] W_G + b_G)`` (one gate unit shared by
    the N positions, ``W_G`` of shape ``(d + d_s) x d``), ``x_i = x^_i * v_i``.
    ``call(X^ [B, N, d], e_st [B, d_s]) -> [B, N, d]``; ``packed=``: tokens ``X^ [n, d]`` -> ``[n, d]``."""

    def __init__(self, gamma: float = 2.0, kernel_init="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.gamma, self.kernel_init = float(gamma), kernel_init

    def build(self, input_shape):
        d = int(input_shape[-1])
        self.gate = keras.layers.Dense(d, activation="sigmoid", kernel_initializer=fresh(self.kernel_init),
                                       name="W_G")
        super().build(input_shape)

    def call(self, x_hat, e_st, *, packed=None):
        if packed is not None:
            e = tf.gather(e_st, packed.row)
        else:
            e = tf.broadcast_to(e_st[:, None, :], tf.concat([tf.shape(x_hat)[:2], tf.shape(e_st)[-1:]], 0))
        return x_hat * (self.gamma * self.gate(tf.concat([x_hat, e], axis=-1)))


class ScenarioAdaptiveBlock(keras.layers.Layer):
    """Scenario-adaptive Block, section 4.1: ``X^l = STM(SIE(X^{l-1}, M_S), e_st)``. ``sie=False`` is
    Table 3's "w/o SIE" (``X^ = X``), ``stm=False`` its "w/o STM" (``X^l = X^``). ``kernel_init``
    initialises STM's gate, ``attention_init`` SIE's projections (default: ``kernel_init``).
    ``call(X [B, N, d], M_S [B, N, d_s], e_st [B, d_s], mask=None [B, N]) -> X^l [B, N, d]``; ``packed=``:
    tokens ``X [n, d]``, ``M_S [n, d_s]`` -> ``[n, d]``."""

    def __init__(self, num_heads: int = 4, gamma: float = 2.0, sie: bool = True, stm: bool = True,
                 sie_scenario: bool = True, kernel_init="glorot_uniform", residual: bool = False,
                 attention_init=None, **kwargs):
        super().__init__(**kwargs)
        att_init = kernel_init if attention_init is None else attention_init
        self.sie = (ScenarioAwareInterestExtracting(num_heads, sie_scenario, att_init, residual, name="sie")
                    if sie else None)
        self.stm = ScenarioTailoring(gamma, kernel_init, name="stm") if stm else None

    def call(self, x, m_s, e_st, mask=None, *, packed=None):
        if self.sie is not None:
            x = self.sie(x, m_s, mask=mask, packed=packed)
        if self.stm is not None:
            x = self.stm(x, e_st, packed=packed)
        return x


class TargetAwareInterestFusion(MultiInputLayer):
    """TIF, section 4.2, eq. 7-8: ``alpha_j = (W_Q z_t) . (W_K x_j)``, ``mu = softmax(alpha)`` over the real
    behaviours, ``V_t = sum_j mu_j W_V x_j`` with ``z_t = [e_it, e_st]``. As written, the dot product is
    not scaled; ``W_V`` keeps the width d. ``attention_dim`` is the width of ``W_Q z`` and ``W_K x``
    (default d). ``call(z_t [B, d_z], X [B, N, d], mask=None [B, N]) -> [B, d]``; ``packed=``: ``X`` is the
    real behaviours ``[n, d]``, eq. 8 as ``W_V sum_j mu_j x_j`` (one projection per example, not per behaviour)."""

    def __init__(self, attention_dim: Optional[int] = None, kernel_init="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.attention_dim, self.kernel_init = attention_dim, kernel_init

    def build_inputs(self, z_t, x):
        d = int(x[-1])
        a = self.attention_dim or d
        dense = lambda n, name: keras.layers.Dense(n, use_bias=False, kernel_initializer=fresh(self.kernel_init),
                                                   name=name)
        self.w_q, self.w_k, self.w_v = dense(a, "W_Q"), dense(a, "W_K"), dense(d, "W_V")

    def weights_of(self, z_t, x, mask):
        """``mu [B, N]``."""
        alpha = tf.einsum("ba,bna->bn", self.w_q(z_t), self.w_k(x))
        return masked_softmax(alpha, mask)

    def call(self, z_t, x, mask=None, *, packed=None):
        self.build_once(z_t, x)
        if packed is not None:
            alpha = tf.reduce_sum(tf.gather(self.w_q(z_t), packed.row) * self.w_k(x), axis=-1)   # [n]
            mu = segment_softmax(alpha, packed.row, packed.shape[0])
            return self.w_v(segment_sum(mu[:, None] * x, packed.row, packed.shape[0]))
        mu = self.weights_of(z_t, x, mask)
        return tf.einsum("bn,bnd->bd", mu, self.w_v(x))


class ScenarioAwareDNNTower(keras.layers.Layer):
    """SDT, section 4.3, eq. 9-11: each layer scales its input by a scenario-aware gate before the dense map,
    ``H^{j+1} = ReLU(W_T^j (H^j * gamma sigmoid([H^j, e_st] W_g^j + b_g^j)) + b_T^j)``.

    Eq. 11 writes ``H^j (x) sigma(concat(H^j, e_st))``, whose two sides differ in width (d_j vs d_j + d_s);
    the dimension-consistent reading, used here, projects the concatenation back to d_j with a learned
    ``W_g^j`` (as STM's eq. 4 does) before the sigmoid. The gated layers are the hidden layers; the output
    logit is a plain linear unit on the last one (``sDNN`` in eq. 10 ends in a scalar).

    ``gamma`` scales the gate: eq. 11 prints a plain sigmoid (``gamma = 1``), which halves every layer's input
    while the gate is untrained; the hidden-unit scaling section 4.3 builds on (LHUC, Swietojanski et al.,
    the paper's ref. list) uses ``2 sigmoid``, a gate in (0, 2) that starts near the identity, as STM's
    ``gamma`` (eq. 4) does. ``call(H [B, D], e_st [B, d_s]) -> [B, hidden[-1]]``.
    """

    def __init__(self, hidden: Sequence[int] = (512, 256, 128, 64), kernel_init="glorot_uniform",
                 gamma: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden, self.kernel_init, self.gamma = list(hidden), kernel_init, float(gamma)

    def build(self, input_shape):
        widths = [int(input_shape[-1])] + self.hidden[:-1]
        self.gates = [keras.layers.Dense(w, activation="sigmoid", kernel_initializer=fresh(self.kernel_init),
                                         name=f"W_g_{j}") for j, w in enumerate(widths)]
        self.dense = [keras.layers.Dense(h, activation="relu", kernel_initializer=fresh(self.kernel_init),
                                         name=f"W_T_{j}") for j, h in enumerate(self.hidden)]
        super().build(input_shape)

    def call(self, h, e_st):
        for gate, dense in zip(self.gates, self.dense):
            h = dense(h * (self.gamma * gate(tf.concat([h, e_st], axis=-1))))
        return h
