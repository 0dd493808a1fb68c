"""SASS layers (Zhang et al., "Scenario-Adaptive and Self-Supervised Model for Multi-Scenario Personalized
Recommendation", CIKM 2022, Sec. 4): the scenario auxiliary network (eq. 2), the Multi-Layer Scenario
Adaptive Transfer module (ML-SAT, eq. 3-6) with the gate variants of Table 3, scenario bias fusion (eq.
7-8), the pre-training NT-Xent loss (eq. 9-10) and the fine-tuning pairwise loss (eq. 11-13).

Scenario-specific parameters ("ML-SAT, which is parameter-specific in separate scenario", Sec. 4.1.2)
are stacked with a leading scenario axis (``kernel[s]`` is scenario s's matrix). Every layer computes either
all S scenarios at once on ``[B, S, d]`` tensors (``O(S)`` per example: items, whose vector is needed in
every scenario a batch's users come from) or, given ``scenario [B]``, each example's own scenario only on
``[B, d]`` tensors (a request's user vector: cost flat in S); the loss on the own scenario's vector trains
scenario s's parameters only with scenario s's examples. Each ``kernel[s]`` is
initialised like a single ``[i, o]`` matrix (``scenario_initializer``; Keras' own fans of a stacked
``[S, i, o]`` shape would start every scenario network ``sqrt(S)`` times too small). Like the equations, the gate
matrices carry no bias vectors (the auxiliary output ``a`` is the gates' bias term).
"""
from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf
import tf_keras as keras

from tfmsr.layers._inputs import MultiInputLayer
from tfmsr.layers.mlp import initializer
from tfmsr.layers.scenario import own_matmul, own_rows, scenario_ids

GATES = ("sass", "none", "product", "sigmoid", "simnet")


def scenario_dense(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """Per-scenario matrix product: ``x [B, S, i] @ kernel [S, i, o] -> [B, S, o]``; ``x [S, i]`` (the
    same for every example) gives ``[S, o]``."""
    if len(x.shape) == 2:
        return tf.einsum("si,sio->so", x, kernel)
    return tf.einsum("bsi,sio->bso", x, kernel)


def scenario_initializer(spec, num_scenarios: int):
    """Initializer of a stacked per-scenario kernel ``[S, i, o]`` that draws every ``kernel[s]`` as the
    ``[i, o]`` matrix ``spec`` would draw. Keras computes the fans of a 3-D shape as ``(S i, S o)`` (the
    leading axis read as a convolution's receptive field), which shrinks a fan-scaled initializer
    (glorot, he, lecun) by ``sqrt(S)``: the scenario networks would start ``sqrt(S)`` times weaker than the
    global one and ``s_T`` would be swamped by the auxiliary bias ``a`` in eq. (7). Fan-scaled
    initializers get ``scale * S`` back; others (``{"normal": sd}``, zeros) do not depend on the shape."""
    init = initializer(spec)
    if isinstance(init, keras.initializers.VarianceScaling):
        init = keras.initializers.VarianceScaling(init.scale * num_scenarios, init.mode, init.distribution, init.seed)
    return init


class TransferIdentity(keras.initializers.Initializer):
    """``[S, d_g + d, d]`` kernel of eq. (4) whose ``g_l`` block is the identity and ``s_{l-1}`` block zero in
    every scenario (``gate_init: transfer``, see ``ScenarioAdaptiveGate``)."""

    def __init__(self, rows_g: int):
        self.rows_g = int(rows_g)

    def __call__(self, shape, dtype=None, **kwargs):
        S, rows, cols = shape
        eye = tf.eye(self.rows_g, cols, dtype=dtype or tf.float32)
        block = tf.concat([eye, tf.zeros([rows - self.rows_g, cols], eye.dtype)], axis=0)
        return tf.tile(block[None], [S, 1, 1])

    def get_config(self):
        return {"rows_g": self.rows_g}


GATE_INITS = ("glorot", "transfer")


def per_scenario(x: tf.Tensor, num_scenarios: int) -> tf.Tensor:
    """``[B, d]`` -> ``[B, S, d]`` (the same input for every scenario); ``[B, S, d]`` unchanged."""
    if len(x.shape) == 3:
        return x
    return tf.tile(x[:, None, :], [1, num_scenarios, 1])


def _plus_bias(z: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
    """``z [B, S, o] + bias`` where ``bias`` is ``[B, S, o]`` or example-independent ``[S, o]``; on the own
    path ``z [B, o] + bias [B, o]``."""
    return z + (bias[None] if len(bias.shape) == len(z.shape) - 1 else bias)


def _dense(x: tf.Tensor, kernel, scenario=None) -> tf.Tensor:
    """Every scenario's ``x_s W_s`` (:func:`scenario_dense`) or, given ``scenario [B]``, each example's own
    ``x_b W_{s_b}`` (``x [B, i]``: one dense layer's FLOPs, :func:`~tfmsr.layers.scenario.own_matmul`)."""
    return scenario_dense(x, kernel) if scenario is None else own_matmul(x, scenario, kernel)


def own_auxiliary(a: tf.Tensor, scenario: tf.Tensor) -> tf.Tensor:
    """The own scenario's auxiliary output ``[B, d_a]`` of ``a [S, d_a]`` or ``[B, S, d_a]``."""
    return tf.gather(a, scenario_ids(scenario)) if len(a.shape) == 2 else own_rows(a, scenario)


class ScenarioAuxiliaryNet(keras.layers.Layer):
    """Scenario auxiliary network, SASS Sec. 4.1.1 eq. (2): ``a = f(W_a x_a + b_a)``.

    ``x_a`` is the embedding of the scenario context features, ``f`` a multi-layer perceptron. Reading:
    ``W_a x_a + b_a`` is one affine layer (no activation) of width ``hidden[0]`` (``dim`` when ``hidden``
    is empty), ``f`` is ReLU layers ``hidden[1:]`` then a ``tanh`` layer of width ``dim``; ``tanh`` keeps
    ``a`` in the range of the gate states it is fused with in eq. (7). ``call(x_a [..., d_a]) -> [..., dim]``.

    ``out_init`` (the paper gives no initialisation): ``glorot`` draws the output layer at random; ``zeros``
    starts its kernel (and bias) at zero, so ``a = 0`` at the start: the scenario bias enters eq. (3), (5) and
    (7) only as training makes it useful, instead of starting as a random per-scenario offset that the
    user and item towers draw independently (see ``SASS``'s ``aux_init``).
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (), kernel_init="glorot_uniform", out_init: str = "glorot",
                 **kwargs):
        super().__init__(**kwargs)
        if out_init not in ("glorot", "zeros"):
            raise ValueError(f"ScenarioAuxiliaryNet: out_init must be glorot or zeros, got {out_init!r}")
        widths = list(hidden) or [dim]
        self.affine = keras.layers.Dense(widths[0], kernel_initializer=initializer(kernel_init), name="W_a")
        self.f = [keras.layers.Dense(w, activation="relu", kernel_initializer=initializer(kernel_init), name=f"f_{i}")
                  for i, w in enumerate(widths[1:])]
        self.f.append(keras.layers.Dense(dim, activation="tanh", name="f_out",
                                         kernel_initializer="zeros" if out_init == "zeros" else initializer(kernel_init)))

    def call(self, x_a):
        h = self.affine(x_a)
        for layer in self.f:
            h = layer(h)
        return h


class ScenarioAdaptiveGate(MultiInputLayer):
    """One layer of ML-SAT, SASS Sec. 4.1.2: the scenario-adaptive gate unit, eq. (3)-(6)::

        r_l = sigmoid(W_r^l [g_l, s_{l-1}] + W_br a)          (3)  adaptive gate, width of g_l
        h_l = tanh(W_h^l [r_l * g_l, s_{l-1}])                 (4)  candidate, width of s
        z_l = sigmoid(W_z^l [g_l, s_{l-1}] + W_bz a)          (5)  update gate, width of s
        s_l = (1 - z_l) * s_{l-1} + z_l * h_l                  (6)

    ``g_l [B, d_g]`` is the l-th global shared layer, ``s_{l-1} [B, S, d]`` the scenario network's previous
    state, ``a [S, d_a]`` (or ``[B, S, d_a]``) the auxiliary output. Eq. (6) needs ``h_l`` and ``s_{l-1}``
    of one width, so the scenario network keeps width ``d`` in every layer. The paper writes ``W_br``,
    ``W_bz`` without a layer index; here each layer has its own (``g_l`` widths may differ by layer).
    All matrices are per scenario.

    ``variant`` selects the transfer mechanisms of Table 3 (Sec. 5.3.1) on the same inputs, with the
    scenario layer's own output ``s'_l = tanh(W_s^l s_{l-1})``:

    * ``sass``: eq. (3)-(6).
    * ``none`` (SASS*, no transfer gate): ``s_l = tanh(W_h^l [g_l, s_{l-1}])``, i.e. eq. (4)/(6) with
      ``r_l = z_l = 1``: the global layer still flows in, ungated.
    * ``product`` (Production Gate, STAR-like): ``s_l = s'_l * g_l``.
    * ``sigmoid`` (Sigmoid Gate, MMoE / cross-stitch style): ``w = sigmoid(W_w [s'_l, g_l])``,
      ``s_l = w * g_l + (1 - w) * s'_l``.
    * ``simnet`` (Simnet Gate): as ``sigmoid`` with ``w = sigmoid(W_w [s'_l * g_l, s'_l - g_l, s'_l + g_l])``.

    The element-wise variants need ``d_g == d``. ``call(g, s_prev, a) -> s_l [B, S, d]`` (every scenario's
    unit, ``O(S)`` per example); ``call(g, s_prev [B, d], a [B, d_a], scenario)`` -> ``s_l [B, d]``: each
    example's own scenario unit only (its gathered matrices; cost flat in S).

    **Initialisation** (the paper gives none; ``init``): ``glorot`` draws every matrix at random, so a
    scenario's unit starts as a random map of ``g_l`` that only that scenario's examples train -- in a
    sparse scenario the user and item sides then stay two unrelated random rotations of the global
    vectors. ``transfer`` starts every scenario as a pass-through of the global network: the ``g_l`` block
    of ``W_h^l`` (``sass``, ``none``) is the identity and its ``s_{l-1}`` block zero, so ``h_l = tanh(r_l g_l)``;
    the gate matrices ``W_r, W_br, W_z, W_bz`` (and ``W_w`` of ``sigmoid`` / ``simnet``) are zero, so
    ``r_l = z_l = w = 1/2``. Same equations; only the starting point differs (``W_s``, ``product``: glorot).
    """

    def __init__(self, num_scenarios: int, variant: str = "sass", kernel_init="glorot_uniform",
                 init: str = "glorot", **kwargs):
        super().__init__(**kwargs)
        if variant not in GATES:
            raise ValueError(f"ScenarioAdaptiveGate: unknown gate '{variant}' (expected one of {', '.join(GATES)})")
        if init not in GATE_INITS:
            raise ValueError(f"ScenarioAdaptiveGate: unknown init '{init}' (expected one of {', '.join(GATE_INITS)})")
        self.num_scenarios, self.variant, self.init = int(num_scenarios), variant, init
        self.kernel_init = kernel_init

    def _w(self, name, rows, cols, transfer=None):
        # a fresh initializer per weight: one unseeded instance would give every weight the same values
        init = scenario_initializer(self.kernel_init, self.num_scenarios)
        if self.init == "transfer" and transfer is not None:
            init = transfer
        return self.add_weight(name=name, shape=(self.num_scenarios, rows, cols), initializer=init)

    def build_inputs(self, g_shape, s_shape, a_shape):
        dg, d, da = int(g_shape[-1]), int(s_shape[-1]), int(a_shape[-1])
        v = self.variant
        if v in ("product", "sigmoid", "simnet") and dg != d:
            raise ValueError(f"ScenarioAdaptiveGate: gate '{v}' combines g_l and s_l element-wise, so the global "
                             f"width ({dg}) must equal the scenario width ({d})")
        zero, eye = "zeros", TransferIdentity(dg)
        if v == "sass":
            self.w_r, self.w_br = self._w("W_r", dg + d, dg, zero), self._w("W_br", da, dg, zero)
            self.w_h = self._w("W_h", dg + d, d, eye)
            self.w_z, self.w_bz = self._w("W_z", dg + d, d, zero), self._w("W_bz", da, d, zero)
        elif v == "none":
            self.w_h = self._w("W_h", dg + d, d, eye)
        else:
            self.w_s = self._w("W_s", d, d)
            if v != "product":
                self.w_w = self._w("W_w", (2 if v == "sigmoid" else 3) * d, d, zero)

    def call(self, g, s_prev, a, scenario=None):
        self.build_once(g, s_prev, a)
        g = per_scenario(g, self.num_scenarios) if scenario is None else g
        dense = lambda x, kernel: _dense(x, kernel, scenario)
        v = self.variant
        if v == "sass":
            gs = tf.concat([g, s_prev], axis=-1)
            r = tf.sigmoid(_plus_bias(dense(gs, self.w_r), dense(a, self.w_br)))   # (3)
            h = tf.tanh(dense(tf.concat([r * g, s_prev], axis=-1), self.w_h))      # (4)
            z = tf.sigmoid(_plus_bias(dense(gs, self.w_z), dense(a, self.w_bz)))   # (5)
            return (1.0 - z) * s_prev + z * h                                       # (6)
        if v == "none":
            return tf.tanh(dense(tf.concat([g, s_prev], axis=-1), self.w_h))
        own = tf.tanh(dense(s_prev, self.w_s))
        if v == "product":
            return own * g
        feats = [own, g] if v == "sigmoid" else [own * g, own - g, own + g]
        w = tf.sigmoid(dense(tf.concat(feats, axis=-1), self.w_w))
        return w * g + (1.0 - w) * own


class MLSAT(MultiInputLayer):
    """Multi-Layer Scenario Adaptive Transfer module, SASS Sec. 4.1.2 (Figure 4a): a global shared network
    (``layers`` dense layers of width ``dim``, shared by all scenarios, outputs ``g_1..g_T``) and, per
    scenario, a stack of ``ScenarioAdaptiveGate`` units reading ``g_l`` and the scenario state.

    The paper leaves ``s_0`` undefined; here ``s_0 = tanh(W_0^s x_s + b_0^s)``, a per-scenario projection
    of the scenario network's input ``x_s`` (``[B, S, D_s]``: e.g. the user's features and behaviour *in
    scenario s*; ``[B, D_s]`` is shared by every scenario). The global network reads ``x_g [B, D_g]``.
    ``s0_init``: ``glorot`` draws ``W_0`` at random; ``zeros`` starts it at zero (``s_0 = 0``: with
    ``init: transfer`` the scenario state then starts as a mix of the global layers only; ``W_0`` still
    trains, its gradient is ``x_s``-weighted).
    ``init``: the gate units' initialisation (``ScenarioAdaptiveGate``). ``global_hidden``: the global
    layers' widths (default ``[dim] * layers``; the paper gives none; the last must be ``dim``, the width
    of ``g_T``; the element-wise gate variants need every width ``== dim``).
    ``call(x_g, x_s, a) -> (s_T [B, S, dim], g_T [B, dim])``; ``call(x_g, x_s [B, D_s], a [B, d_a],
    scenario) -> (s_T [B, dim], g_T)``: each example's own scenario network only (cost flat in S).
    """

    def __init__(self, num_scenarios: int, dim: int, layers: int = 3, gate: str = "sass",
                 activation: str = "tanh", kernel_init="glorot_uniform", init: str = "glorot",
                 global_hidden: Optional[Sequence[int]] = None, s0_init: str = "glorot", **kwargs):
        super().__init__(**kwargs)
        if s0_init not in ("glorot", "zeros"):
            raise ValueError(f"MLSAT: s0_init must be glorot or zeros, got {s0_init!r}")
        self.s0_init = s0_init
        widths = [int(w) for w in global_hidden] if global_hidden else [int(dim)] * int(layers)
        if not widths or min(widths) < 1:
            raise ValueError(f"MLSAT: layers must be >= 1 and widths positive, got {widths}")
        if widths[-1] != dim:
            raise ValueError(f"MLSAT: the last global layer g_T is matched like the scenario vector (eq. 12), so its "
                             f"width must be dim = {dim}, got global_hidden {widths}")
        self.num_scenarios, self.dim = int(num_scenarios), int(dim)
        self.kernel_init = kernel_init
        self.global_net = [keras.layers.Dense(w, activation=activation, kernel_initializer=initializer(kernel_init),
                                              name=f"global_{l}") for l, w in enumerate(widths)]
        layers = len(widths)
        self.gates = [ScenarioAdaptiveGate(num_scenarios, gate, kernel_init, init, name=f"gate_{l}")
                      for l in range(layers)]

    def build_inputs(self, x_g, x_s, a):
        d_s = int(x_s[-1])
        self.w0 = self.add_weight(name="W_0", shape=(self.num_scenarios, d_s, self.dim),
                                  initializer="zeros" if self.s0_init == "zeros" else
                                  scenario_initializer(self.kernel_init, self.num_scenarios))
        self.b0 = self.add_weight(name="b_0", shape=(self.num_scenarios, self.dim), initializer="zeros")

    def call(self, x_g, x_s, a, scenario=None):
        self.build_once(x_g, x_s, a)
        if scenario is None:
            s = tf.tanh(scenario_dense(per_scenario(x_s, self.num_scenarios), self.w0) + self.b0)
        else:
            s = tf.tanh(own_matmul(x_s, scenario, self.w0, self.b0))
        g = x_g
        for dense, gate in zip(self.global_net, self.gates):
            g = dense(g)
            s = gate(g, s, a, scenario=scenario)
        return s, g


class ScenarioBiasFusion(MultiInputLayer):
    """Scenario bias fusion, SASS Sec. 4.1.3 eq. (7)-(8)::

        e_s   = alpha * s_T + (1 - alpha) * a                  (7)
        alpha = sigmoid(W_o [s_T, a])                          (8)

    ``alpha`` is read as element-wise (``W_o`` maps ``[s_T, a]`` to the width of ``s_T``; ``a`` must have
    that width) and ``W_o`` is per scenario, like the rest of the scenario-specific network.
    ``init: transfer`` starts ``W_o`` at zero (``alpha = 1/2``), ``glorot`` at random (see ``ScenarioAdaptiveGate``).
    ``call(s_T [B, S, d], a [S, d] or [B, S, d]) -> e [B, S, d]``; ``call(s_T [B, d], a [B, d], scenario)
    -> e [B, d]``: each example's own scenario only.
    """

    def __init__(self, num_scenarios: int, kernel_init="glorot_uniform", init: str = "glorot", **kwargs):
        super().__init__(**kwargs)
        if init not in GATE_INITS:
            raise ValueError(f"ScenarioBiasFusion: unknown init '{init}' (expected one of {', '.join(GATE_INITS)})")
        self.num_scenarios, self.init = int(num_scenarios), init
        self.kernel_init = kernel_init

    def build_inputs(self, s_shape, a_shape):
        d = int(s_shape[-1])
        if int(a_shape[-1]) != d:
            raise ValueError(f"ScenarioBiasFusion: a has width {int(a_shape[-1])}, s_T has {d}; eq. (7) needs one width")
        self.w_o = self.add_weight(name="W_o", shape=(self.num_scenarios, 2 * d, d),
                                   initializer="zeros" if self.init == "transfer" else
                                   scenario_initializer(self.kernel_init, self.num_scenarios))

    def call(self, s_t, a, scenario=None):
        self.build_once(s_t, a)
        a = tf.broadcast_to(a, tf.shape(s_t)) if len(a.shape) < len(s_t.shape) else a
        alpha = tf.sigmoid(_dense(tf.concat([s_t, a], axis=-1), self.w_o, scenario))  # (8)
        return alpha * s_t + (1.0 - alpha) * a                                        # (7)


def scenario_deviation(weights, anchors) -> tf.Tensor:
    """``sum_w ||w - anchor_w||^2`` over per-scenario weights (the L2-SP penalty of ``SASS``'s
    ``scenario_l2``); ``anchors`` are constants of the same shapes."""
    return tf.add_n([tf.reduce_sum(tf.square(w - a)) for w, a in zip(weights, anchors)])


def cosine(a: tf.Tensor, b: tf.Tensor, eps: float = 1e-8) -> tf.Tensor:
    """Cosine similarity along the last axis (broadcasting)."""
    a = a / tf.maximum(tf.norm(a, axis=-1, keepdims=True), eps)
    b = b / tf.maximum(tf.norm(b, axis=-1, keepdims=True), eps)
    return tf.reduce_sum(a * b, axis=-1)


class NTXentLoss(keras.layers.Layer):
    """Scenario-supervised contrastive loss, SASS Sec. 4.1.4 eq. (9)-(10) (NT-Xent of SimCLR [2])::

        L_ij = -log( exp(sim(e_i, e_j) / tau) / sum_{k=1, k != i}^{2N} exp(sim(e_i, e_k) / tau) )   (9)
        L    = sum_{k=1}^{N} L_ij^(k)                                                             (10)

    For a batch of N pairs ``(e_i, e_j)`` (the same user, or item, in two scenarios) there are 2N vectors;
    ``e_j`` is the positive of ``e_i`` and the other 2(N - 1) are negatives; ``sim`` is the cosine. As eq.
    (10) is written, each pair contributes ``L_ij`` once, with the first view as anchor
    (``symmetric=True`` adds ``L_ji``, as SimCLR does); ``reduction="sum"`` is eq. (10), ``"mean"``
    divides by N. ``call(e_i [N, d], e_j [N, d]) -> scalar``.
    """

    def __init__(self, tau: float = 0.1, symmetric: bool = False, reduction: str = "sum", **kwargs):
        super().__init__(**kwargs)
        if tau <= 0:
            raise ValueError(f"NTXentLoss: tau must be > 0, got {tau}")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"NTXentLoss: reduction must be 'sum' or 'mean', got {reduction!r}")
        self.tau, self.symmetric, self.reduction = float(tau), bool(symmetric), reduction

    def call(self, e_i, e_j):
        n = tf.shape(e_i)[0]
        z = tf.math.l2_normalize(tf.concat([e_i, e_j], axis=0), axis=-1)         # [2N, d]
        sim = tf.matmul(z, z, transpose_b=True) / self.tau                        # [2N, 2N]
        sim = sim - tf.eye(2 * n, dtype=sim.dtype) * 1e9                          # k != i
        pos_idx = tf.concat([tf.range(n) + n, tf.range(n)], axis=0)               # partner of each row
        per_row = tf.reduce_logsumexp(sim, axis=1) - tf.gather(sim, pos_idx, batch_dims=1)
        loss = per_row if self.symmetric else per_row[:n]
        return tf.reduce_sum(loss) if self.reduction == "sum" else tf.reduce_sum(loss) / tf.cast(n, loss.dtype)


class PairwiseCosineLoss(keras.layers.Layer):
    """Fine-tuning pairwise loss, SASS Sec. 4.2.2 eq. (11) (and eq. (12) on the global vectors)::

        printed:  L = 1/N sum_k log(1 + sigmoid(scale * (sim(u^k, n^k) - sim(u^k, p^k))))     (11) as printed
        softplus: L = 1/N sum_k log(1 + exp(scale * (sim(u^k, n^k) - sim(u^k, p^k))))
                    = 1/N sum_k -log sigmoid(scale * (sim(u^k, p^k) - sim(u^k, n^k)))

    ``sim`` is the cosine. With several negatives per positive (``n [N, m, d]``) every (user, positive,
    negative) triplet is one term and the mean runs over all N*m. Eq. (13) ``L_scenario + beta *
    L_auxiliary`` is two calls of this layer.

    ``form: printed`` is eq. (11) character for character. It is degenerate: ``log(1 + sigmoid(x))`` is
    bounded in [0, log 2] and on the cosine range x in [-2, 2] its slope ``sigmoid'(x) / (1 + sigmoid(x))``
    only varies between 0.056 and 0.167, so the loss is about ``mean(cos_n) - mean(cos_p)``, a linear
    objective whose optimum puts every user of a scenario on the direction of the popular items.
    ``form: softplus`` reads the ``sigma`` as the exponential of the standard pairwise logistic (BPR)
    loss ``log(1 + exp(s_n - s_p))`` the matching works the paper cites use; its slope ``sigmoid(x)``
    fades on well-ranked triplets. ``scale`` (default 1, the cosine as printed) multiplies the cosine
    difference -- the inverse temperature ``1 / tau`` of eq. (9)'s ``sim / tau`` applied to eq. (11); it
    is *not* printed in eq. (11). ``call(u [N, d], p [N, d], n [N, d] or [N, m, d]) -> scalar``.
    """

    FORMS = ("printed", "softplus")

    def __init__(self, scale: float = 1.0, form: str = "printed", **kwargs):
        super().__init__(**kwargs)
        if not scale > 0:
            raise ValueError(f"PairwiseCosineLoss: scale must be > 0, got {scale}")
        if form not in self.FORMS:
            raise ValueError(f"PairwiseCosineLoss: form must be one of {self.FORMS}, got {form!r}")
        self.scale, self.form = float(scale), form

    def call(self, u, p, n):
        pos = cosine(u, p)                                   # [N]
        if len(n.shape) == 3:
            return self.of_cosines(pos, cosine(u[:, None, :], n))   # [N, m]
        return self.of_cosines(pos, cosine(u, n)[:, None])

    def of_cosines(self, pos, neg, mask=None, log_q=None):
        """The loss from the cosines: ``pos [N]``, ``neg [N, m]``; ``mask [N, m]`` (optional, 1 = a triplet,
        0 = not one) restricts the mean to the marked triplets (in-batch negatives, ``in_batch_mask``).
        ``log_q [N]`` (optional, in-batch negatives: ``neg [N, N]``, column j the positive of row j): every score
        is ``scale * cos - log q`` (the logQ correction of ``cosine_softmax_loss``), so the difference is
        ``scale (cos_n - cos_p) - (log q_n - log q_p)``."""
        x = self.scale * (neg - pos[:, None])
        if log_q is not None:
            x -= log_q[None, :] - log_q[:, None]
        loss = tf.math.softplus(x) if self.form == "softplus" else tf.math.log1p(tf.sigmoid(x))
        if mask is None:
            return tf.reduce_mean(loss)
        mask = tf.cast(mask, loss.dtype)
        return tf.reduce_sum(loss * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def cosine_softmax_loss(scale: float, pos, neg, mask=None, log_q=None) -> tf.Tensor:
    """Softmax cross-entropy of the positive among itself and the negatives, on smoothed cosines (DSSM eq.
    5-6), averaged over the N rows: ``-log softmax([scale cos_p, scale cos_1 .. scale cos_m])[0]``.
    ``pos [N]``, ``neg [N, m]``; ``mask [N, m]`` (optional) drops the unmarked negatives. ``log_q [N]``
    (optional, in-batch negatives only: ``neg`` is ``[N, N]``, column j the positive of row j) is the logQ
    correction of sampled softmax: every logit of candidate j (row j's positive, column j) minus the log of
    its sampling probability ``q_j``, as ``tfrs.tasks.Retrieval(candidate_sampling_probability=...)``."""
    logits = scale * tf.concat([pos[:, None], neg], axis=1)                     # [N, 1 + m]
    if log_q is not None:
        logits -= tf.concat([log_q[:, None], tf.broadcast_to(log_q[None, :], tf.shape(neg))], axis=1)
    if mask is not None:
        keep = tf.concat([tf.ones_like(pos[:, None], tf.bool), tf.cast(mask, tf.bool)], axis=1)
        logits = tf.where(keep, logits, tf.constant(logits.dtype.min / 2, logits.dtype))
    return tf.reduce_mean(-tf.nn.log_softmax(logits, axis=1)[:, 0])


def in_batch_cosines(u: tf.Tensor, v: tf.Tensor, scenario=None) -> tf.Tensor:
    """``[B, B]``: ``cos(u_b, v_j)`` of every user b against every positive j of the batch; with per-scenario
    item vectors ``v [B, S, d]``, item j's vector in user b's ``scenario [B]`` (its request's scenario)."""
    u = tf.math.l2_normalize(u, -1)
    v = tf.math.l2_normalize(v, -1)
    if len(v.shape) == 2:
        return tf.matmul(u, v, transpose_b=True)
    every = tf.einsum("bd,jsd->bjs", u, v)                                       # [B, B, S]
    own = tf.one_hot(tf.cast(scenario, tf.int32), v.shape[1], dtype=every.dtype)  # [B, S]
    return tf.reduce_sum(every * own[:, None, :], axis=-1)


def in_batch_mask(ids: tf.Tensor) -> tf.Tensor:
    """``[B, B]`` bool: which positives j of the batch are negatives of row b: not the same item as b's own
    positive (which drops the diagonal and the accidental hits, as ``tfrs.tasks.Retrieval(
    remove_accidental_hits=True)``). ``ids [B]``: the positives' item ids."""
    return tf.not_equal(ids[:, None], ids[None, :])
