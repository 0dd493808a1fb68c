"""SAML modules (Chen, Wang, Ni, Zeng, Lin: "Scenario-aware and Mutual-based approach for Multi-scenario
Recommendation in E-Commerce", ICDMW 2020), one layer per module of Sec. III:

* :class:`ScenarioAwareEmbedding` - III-C-1, every feature in a global and a scenario-specific subspace;
* :class:`ScenarioAwareAttention` - III-C-2 with eq. (1)-(2): ``MultiHead(Q_g, K_g, V_g)`` and
  ``MultiHead(Q_l, K_l, V_g)``;
* :class:`AuxiliaryNetwork` - III-D-1, an MLP on the scenario-independent features (first line of eq. 4);
* :class:`MultiBranchNetwork` - III-D-2, eq. (4): one branch per scenario, each layer also reads the
  auxiliary network's layer output;
* :class:`MutualUnit` - III-D-3, eq. (6)-(8) with the gradient mask of III-D-2.

Per-scenario parameters are stacked ``[S, ...]`` (issue 31): one variable per kind of weight, each layer with
an own-scenario path whose cost per example is flat in S where the math allows it.

Shapes: ``B`` batch, ``S`` scenarios, ``L`` behaviour length (+1 with the candidate token), ``D`` widths.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfmsr.features import Schema
from tfmsr.layers.attention import MultiHeadSelfAttention, PositionalEmbedding, TransformerBlock, masked_softmax
from tfmsr.layers.behavior import embed_behavior, require_behavior
from tfmsr.layers.embedding import FeatureEmbedding, masked_mean
from tfmsr.layers.mlp import MLP
from tfmsr.layers.scenario import ScenarioDense, scenario_ids

_GROUPS = ("user", "item", "context", "query")


class ScenarioFeatures(NamedTuple):
    independent: tf.Tensor       # [B, D_g]  global embeddings (+ standardised numerics)
    dependent: tf.Tensor         # [B, D_l]  scenario-specific embeddings
    tokens_global: tf.Tensor     # [B, L+1, P*d_g]  candidate + behaviours, global subspace
    tokens_specific: tf.Tensor   # [B, L+1, P*d_l]  the same tokens, scenario-specific subspace
    mask: tf.Tensor              # [B, L+1]  bool, real tokens (the candidate always)


def glorot_uniform_of(fan_in: int, fan_out: int) -> keras.initializers.Initializer:
    """Glorot-uniform limits of a ``fan_in x fan_out`` matrix for a variable stored in another shape."""
    limit = (6.0 / (fan_in + fan_out)) ** 0.5
    return keras.initializers.RandomUniform(-limit, limit)


def legacy_specific_value(key: str, old: np.ndarray, shape: Sequence[int]) -> Optional[np.ndarray]:
    """A :class:`SpecificEmbedding` checkpoint value of ``shape`` from the same ``key`` of a checkpoint written
    before issue 31, which held every specific table as ``[R, S d_l]`` (scenario ``s``'s slice ``s``): a table
    is the row-major reshape to ``[R S, d_l]`` (row ``v S + s``), the scenario table the diagonal slices
    ``old[s, s d_l:(s + 1) d_l]`` (the only ones a lookup read). None for any other key or shape."""
    shape = tuple(int(n) for n in shape)
    if "/specific_embedding/" not in key or tuple(old.shape) == shape or len(shape) != 2:
        return None
    s, d = shape
    if "/scenario_table/" in key and old.shape == (s, s * d):
        return np.stack([old[i, i * d:(i + 1) * d] for i in range(s)])
    return old.reshape(shape) if old.ndim == 2 and old.size == s * d and old.shape[1] % d == 0 else None


class SpecificEmbedding(keras.layers.Layer):
    """The scenario-specific subspace (III-C-1) of every schema table, S tables per feature stacked.

    Table ``t`` of ``R`` rows is one variable ``emb_<t>/embeddings [R * S, d_l]``: row ``v * S + s`` is
    ``E_l^{t,s}[v]``, so ``lookup`` gathers ``d_l`` floats per id (cost flat in S; memory ``R S d_l`` as the
    paper's S tables) and the variable splits over parameter servers along its rows like any table. The
    scenario's own embedding in its own subspace is ``emb_scenario [S, d_l]`` (row ``s``). Initialised
    Glorot-uniform as the ``[R, S d_l]`` table of the layout before issue 31 (``R x S d_l`` fans), whose
    checkpoints convert by :func:`legacy_specific_value`.
    """

    def __init__(self, schema: Schema, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.num_scenarios, self.dim = schema.num_scenarios, int(dim)
        s = self.num_scenarios
        self.tables: Dict[str, keras.layers.Embedding] = {}
        for name, owner in schema.tables().items():
            rows = owner.hash_buckets if owner.hashed else owner.vocab_size
            self.tables[name] = keras.layers.Embedding(rows * s, self.dim, name=f"emb_{name}",
                                                       embeddings_initializer=glorot_uniform_of(rows, s * self.dim))
        self.scenario_table = keras.layers.Embedding(s, self.dim, name="emb_scenario",
                                                     embeddings_initializer=glorot_uniform_of(s, s * self.dim))

    def lookup(self, ids: tf.Tensor, table: str, scenario: tf.Tensor) -> tf.Tensor:
        """``E_l^{table, s}[ids]``: ``ids [B]`` or ``[B, L]`` (int64) of the example's scenario ``[B]``."""
        s = tf.cast(scenario, tf.int64)
        s = s if len(ids.shape) == 1 else s[:, None]
        return self.tables[table](ids * self.num_scenarios + s)

    def call(self, x):  # pragma: no cover - lookups go through lookup()
        raise TypeError("SpecificEmbedding: use lookup(ids, table, scenario)")


class ScenarioAwareEmbedding(keras.layers.Layer):
    """Scenario-aware embedding module (Sec. III-C-1, Fig. 1).

    Every categorical feature ``f`` with value ``v`` is embedded in parallel in a **global** subspace,
    ``e_g = E_g^f[v]`` (width ``d_g``, paper 12 public / 8 industrial), and in the **scenario-specific**
    subspace of the request's scenario ``s``, ``e_l = E_l^{f,s}[v]`` (width ``d_l``, paper 4 / 2). The S
    specific tables of a feature are stored stacked as one table of ``R * S`` rows of width ``d_l`` (row
    ``v * S + s`` is ``E_l^{f,s}[v]``, see :class:`SpecificEmbedding`), so a lookup reads ``d_l`` floats
    whatever S is, and shared tables (``hist_item_id`` reading ``item_id``) stay shared in both subspaces.
    Behaviour tokens use the request's scenario too: the scenario-specific attention weights are
    "computed from each scenario separately" (III-C-2).

    Combining per subspace (the paper's "combine the feature vectors from each subspace respectively"):
    ``independent = [e_g of user/item/context/query features, e_g(scenario), masked-mean e_g of non-attended
    sequences, standardised numerics]`` and ``dependent`` = the same list with ``e_l`` and no numerics
    (numerical features are normalised, not embedded (III-A-1), so they have no scenario subspace). The
    behaviour sequences that share an item table become attention tokens ``[candidate, behaviour_1..L]``
    (as in BST, which the paper follows), in both subspaces.

    ``global_embedding``: an existing :class:`FeatureEmbedding` of width ``d_g`` to use as the global
    subspace (the model's own), else one is created.
    """

    def __init__(self, schema: Schema, global_dim: int = 12, specific_dim: int = 4,
                 global_embedding: Optional[FeatureEmbedding] = None, model: str = "saml", **kwargs):
        super().__init__(**kwargs)
        self.schema, self.num_scenarios, self.specific_dim = schema, schema.num_scenarios, int(specific_dim)
        self.pairs = require_behavior(schema, model)
        self.global_embedding = global_embedding or FeatureEmbedding(schema, dim=global_dim, name="global")
        self.specific_embedding = SpecificEmbedding(schema, self.specific_dim, name="specific")
        attended = {s.name for s, _ in self.pairs}
        self.side_sequences = [f.name for f in schema.of_kind("sequence") if f.name not in attended]

    def specific(self, x: Dict[str, tf.Tensor], name: str) -> tf.Tensor:
        """Scenario-specific embedding ``[B, d_l]`` (or ``[B, L, d_l]``) of feature ``name``."""
        with tf.name_scope("specific"):  # table variables: .../specific/emb_<table>
            return self.specific_embedding.lookup(self.global_embedding.ids(x, name), self.schema.feature(name).table,
                                                  x[self.schema.scenario.name])

    def call(self, x: Dict[str, tf.Tensor]) -> ScenarioFeatures:
        g, sc = self.global_embedding, x[self.schema.scenario.name]
        cats = [f.name for grp in _GROUPS for f in self.schema.group(grp, "categorical")]
        with tf.name_scope("global"):
            indep = [g.embed(x, n) for n in cats] + [g.scenario(x)]
            indep += [masked_mean(g.embed(x, n), g.mask(x, n)) for n in self.side_sequences]
            num = g.numeric(x)
            indep += [num] if num is not None else []
            beh = embed_behavior(g, x, self.schema)
        dep = [self.specific(x, n) for n in cats]
        with tf.name_scope("specific"):
            dep.append(self.specific_embedding.scenario_table(tf.cast(sc, tf.int64)))
        dep += [masked_mean(self.specific(x, n), g.mask(x, n)) for n in self.side_sequences]
        keys_l = tf.concat([self.specific(x, s.name) for s, _ in self.pairs], axis=-1)
        target_l = tf.concat([self.specific(x, t.name) for _, t in self.pairs], axis=-1)
        mask = tf.concat([tf.ones_like(beh.mask[:, :1]), beh.mask], axis=1)
        return ScenarioFeatures(tf.concat(indep, axis=-1), tf.concat(dep, axis=-1),
                                tf.concat([beh.target[:, None], beh.keys], axis=1),
                                tf.concat([target_l[:, None], keys_l], axis=1), mask)


class ScenarioAwareAttention(keras.layers.Layer):
    """Scenario-aware attention module (Sec. III-C-2, eq. 1-2).

    ``A_g = MultiHead(Q_g, K_g, V_g)`` and ``A_l = MultiHead(Q_l, K_l, V_g)`` with
    ``MultiHead(Q, K, V) = Concat(head_1..head_H) W^O``,
    ``head_h = Softmax(Q W_h^Q (K W_h^K)^T / sqrt(d_k)) V W_h^V``: the global tokens attend with global
    queries/keys; the scenario-specific queries/keys (width ``P*d_l``) compute their own weights over the
    **shared global values** ``V_g``. Every projection maps into the value width ``d = P*d_g`` (``W^Q`` of the
    specific head is ``P*d_l x d``), ``d_k = d / H``; both outputs are ``[B, L+1, d]``. Padding keys get no
    weight. ``length``: add learned position embeddings to both token sets first (BST's recency position;
    ``None`` = none). ``pooling`` turns ``[B, L+1, d]`` into one vector as BST does: ``target`` (the
    candidate's output; default, see :class:`~tfmsr.ranking.models.saml.SAML`), ``flatten`` (padding zeroed)
    or ``mean`` (over real tokens).

    ``block``: ``bare`` is eq. 1-2 as printed (the multi-head output alone); ``transformer`` wraps each
    multi-head attention in the Transformer layer of BST, which III-A-2 says it follows
    (:class:`~tfmsr.layers.attention.TransformerBlock`: ``S' = LN(T + MH)``, ``LN(S' + FFN(S'))``, LeakyReLU
    feed-forward of width ``d``). The residual stream of ``A_l`` is the global tokens ``T_g`` (its values;
    ``Q_l`` has another width), so the candidate and behaviours survive the mixing in both outputs.

    ``call(tokens_global, tokens_specific, mask=None) -> (A_g, A_l)``, each ``[B, (L+1)*d]`` or ``[B, d]``
    (no mask: every token is real).
    """

    POOLINGS = ("flatten", "mean", "target")
    BLOCKS = ("transformer", "bare")

    def __init__(self, num_heads: int = 4, length: Optional[int] = None, pooling: str = "target",
                 block: str = "bare", **kwargs):
        super().__init__(**kwargs)
        if pooling not in self.POOLINGS:
            raise ValueError(f"ScenarioAwareAttention: pooling must be one of {self.POOLINGS}, got {pooling!r}")
        if block not in self.BLOCKS:
            raise ValueError(f"ScenarioAwareAttention: block must be one of {self.BLOCKS}, got {block!r}")
        self.pooling, self.block = pooling, block
        layer = MultiHeadSelfAttention if block == "bare" else TransformerBlock
        self.global_attention = layer(num_heads, name="global")
        self.specific_attention = layer(num_heads, name="specific")
        self.positions = ([PositionalEmbedding(length, name=f"positions_{n}") for n in ("global", "specific")]
                          if length else None)

    def attend(self, tokens_global, tokens_specific, mask=None, rows=None):
        """The two attention outputs ``[B, L+1, d]`` before pooling (``rows=n``: only the first ``n`` tokens,
        ``[B, n, d]``, the same values)."""
        if self.positions:
            tokens_global, tokens_specific = self.positions[0](tokens_global), self.positions[1](tokens_specific)
        a_g = self.global_attention(tokens_global, mask=mask, rows=rows)
        a_l = self.specific_attention(tokens_specific, tokens_specific, tokens_global, mask=mask, rows=rows)
        return a_g, a_l

    def pool(self, tokens, mask=None):
        m = tf.ones_like(tokens[..., :1]) if mask is None else tf.cast(mask, tokens.dtype)[..., None]
        if self.pooling == "flatten":
            return tf.reshape(tokens * m, [-1, tokens.shape[1] * tokens.shape[2]])
        if self.pooling == "mean":
            return tf.reduce_sum(tokens * m, axis=1) / tf.maximum(tf.reduce_sum(m, axis=1), 1.0)
        return tokens[:, 0]

    def call(self, tokens_global, tokens_specific, mask=None):
        """``target`` pooling reads the candidate's token only, so only its attention row is computed."""
        rows = 1 if self.pooling == "target" else None
        return tuple(self.pool(a, mask) for a in self.attend(tokens_global, tokens_specific, mask=mask, rows=rows))


class AuxiliaryNetwork(keras.layers.Layer):
    """Auxiliary network (Sec. III-D-1; first line of eq. 4): ``V_a^l = delta(V_a^{l-1} W_a^l + b_a^l)`` over
    the scenario-independent features ``V_a^0``, plus one logistic unit trained by its own negative
    log-likelihood (``L_aux`` of eq. 5). Every hidden output ``V_a^l`` is returned for the branches.

    ``call(v [B, D]) -> ([V_a^1 .. V_a^n], logit [B])``.
    """

    def __init__(self, hidden: Sequence[int], activation="relu", **kwargs):
        super().__init__(**kwargs)
        self.mlp = MLP(hidden, activation=activation, name="mlp")
        self.out = keras.layers.Dense(1, name="logit")

    def call(self, v, training=False):
        hidden = self.mlp.hidden_outputs(v, training=training)
        return hidden, self.out(hidden[-1])[:, 0]


def _with_one(t):
    """``[B, D] -> [1, B, D + 1]``: a row with a trailing 1 (the bias row of a kernel), broadcast over branches."""
    return tf.concat([t, tf.ones_like(t[:, :1])], axis=-1)[None]


def own_branch_backward(dy, v, flat, own_pre, acts, scenario, n_aux):
    """The gradient of each row's own branch ``V_s = delta(... delta([v, V_a^1] W_s^1 + b_s^1) ...)`` given
    ``dy = dL/dV_s [B, D]``: its pre-activations ``own_pre`` (``[B, D_l]`` per layer, read from the all-branch
    pass) and ``flat = [V_a^l] * n_aux + [W^l] + [b^l]``; returns ``(dv, *d flat)`` in that order. Per layer one
    partition of the rows by scenario: ``dW_s = x_s^T dz_s``, ``db_s = sum dz_s``, ``dx_s = dz_s W_s^T``
    (``O(S)`` small GEMMs, the FLOPs of one branch's backward pass)."""
    layers = len(own_pre)
    aux, kernels = list(flat[:n_aux]), list(flat[n_aux:n_aux + layers])
    num = int(kernels[0].shape[0])
    rows = tf.dynamic_partition(tf.range(tf.shape(scenario)[0]), scenario, num)
    d_aux, d_w, d_b, dh = [None] * n_aux, [None] * layers, [None] * layers, dy
    for l in reversed(range(layers)):
        z = own_pre[l]
        with tf.GradientTape() as tape:
            tape.watch(z)
            h = acts[l](z)
        dz = tape.gradient(h, z, output_gradients=dh)
        x = v if l == 0 else acts[l - 1](own_pre[l - 1])
        x = tf.concat([x, aux[l]], axis=-1) if n_aux else x
        xs, dzs = tf.dynamic_partition(x, scenario, num), tf.dynamic_partition(dz, scenario, num)
        d_w[l] = tf.stack([tf.matmul(a, b, transpose_a=True) for a, b in zip(xs, dzs)])
        d_b[l] = tf.math.unsorted_segment_sum(dz, scenario, num)
        dx = tf.dynamic_stitch(rows, [tf.matmul(d, w, transpose_b=True)
                                      for d, w in zip(dzs, tf.unstack(kernels[l]))])
        k = int(x.shape[-1]) - (int(aux[l].shape[-1]) if n_aux else 0)
        dh = dx[:, :k]
        if n_aux:
            d_aux[l] = dx[:, k:]
    return (dh, *d_aux, *d_w, *d_b)


class MultiBranchNetwork(keras.layers.Layer):
    """Multi-branch network (Sec. III-D-2, second line of eq. 4): branch ``i``, layer ``l``:
    ``V_{m_i}^l = delta([V_{m_i}^{l-1}, V_a^l] W_{m_i}^l + b_{m_i}^l)``, ``V_{m_i}^0`` = the branch input
    (the scenario-dependent features; shared by all branches). Without ``aux_widths`` (SAML w/o aux) a layer
    reads only ``V_{m_i}^{l-1}``. Each branch has its own weights; the model trains branch ``i`` only on
    scenario ``i`` (loss on the own-scenario output, eq. 5, and the mutual unit's gradient mask).

    The S branches' layer ``l`` is one :class:`~tfmsr.layers.scenario.ScenarioDense` (``dense/<l>``: kernel
    ``[S, D_in, D_l]``, bias ``[S, D_l]``). ``call(v, aux_hidden) -> V [B, S, hidden[-1]]`` evaluates every
    branch for every example (the mutual unit needs every ``V_j``): ``O(S)`` per example by the math,
    ``S sum_l D_in^l D_l`` multiply-adds (3.8M at S = 100 with the paper's 128 x 64), in one broadcast matmul
    for the first layer (its input is shared) and two batched matmuls per later layer, scenario-major;
    ``call(v, aux_hidden, scenario) -> [B, hidden[-1]]`` only the example's own branch (the FLOPs of one
    branch whatever S); ``call(v, aux_hidden, scenario, with_all=True) -> (V, V_s)`` both from the one pass of
    every branch, ``V`` without a gradient and ``V_s`` with the own branch's (:meth:`all_and_own`: the
    gradient-masked training step, no second forward pass of the own branch). ``aux_widths``: the auxiliary
    network's layer widths (one per layer).
    """

    def __init__(self, num_branches: int, hidden: Sequence[int], activation="relu",
                 aux_widths: Optional[Sequence[int]] = None, **kwargs):
        super().__init__(**kwargs)
        self.num_branches, self.hidden = int(num_branches), list(hidden)
        self.aux_widths = None if aux_widths is None else [int(w) for w in aux_widths]
        if self.aux_widths is not None and len(self.aux_widths) != len(self.hidden):
            raise ValueError(f"MultiBranchNetwork: {len(self.hidden)} layers but {len(self.aux_widths)} auxiliary "
                             "widths")
        self.dense = [ScenarioDense(self.num_branches, h, activation, name=f"layer_{l}")
                      for l, h in enumerate(self.hidden)]

    def build(self, input_shape):
        d = int(input_shape[-1])
        for l, layer in enumerate(self.dense):
            with tf.name_scope(layer.name):          # variables <branches>/layer_<l>/kernel, as a called layer's
                layer.build((None, d + (self.aux_widths[l] if self.aux_widths else 0)))
            d = layer.units
        super().build(input_shape)

    @staticmethod
    def _inputs(h, aux_hidden, l):
        """Layer ``l``'s input ``[V_{m_i}^{l-1}, V_a^l]`` of one branch per row (``h [B, D]``)."""
        return h if aux_hidden is None else tf.concat([h, aux_hidden[l]], axis=-1)

    def _check(self, aux_hidden):
        want = 0 if self.aux_widths is None else len(self.hidden)
        got = 0 if aux_hidden is None else len(aux_hidden)
        if got != want:
            raise ValueError(f"MultiBranchNetwork: {len(self.hidden)} layers, built for {want} auxiliary outputs, "
                             f"got {got}")

    def call(self, v, aux_hidden: Optional[List[tf.Tensor]] = None, scenario=None, with_all: bool = False):
        self._check(aux_hidden)
        if scenario is not None:
            return self.all_and_own(v, aux_hidden, scenario) if with_all else self.own(v, aux_hidden, scenario)
        weights = self._weights()
        return tf.transpose(self._all_layers(v, aux_hidden, weights)[1], [1, 0, 2])

    def _weights(self):
        """``[(W^l, b^l)]``: every layer's stacked kernel ``[S, D_in, D_l]`` and bias ``[S, D_l]`` as tensors."""
        return [(tf.convert_to_tensor(d.kernel), tf.convert_to_tensor(d.bias)) for d in self.dense]

    def _all_layers(self, v, aux_hidden, weights):
        """Every branch's layers scenario-major: ``([z^l [S, B, D_l] pre-activations], V [S, B, D])``."""
        h, pre = v, []
        for l, (dense, (w, b)) in enumerate(zip(self.dense, weights)):
            pre.append(self._all_pre(w, b, h, None if aux_hidden is None else aux_hidden[l]))
            h = dense.act(pre[-1])
        return pre, h

    @staticmethod
    def _all_pre(w, b, h, a):
        """Every branch's layer pre-activation ``[S, B, D_l]`` (no transposes of the activations between
        layers): ``[h, a] W + b = h W_h + [a, 1] [W_a; b]``, so a shared ``[h, a]`` (the first layer) is one
        matmul broadcast over the ``[S, D_in + 1, D_l]`` kernel with the bias as its last row, and a per-branch
        ``h [S, B, D]`` one batched matmul beside one of the shared ``[a, 1]`` (no ``[S, B, D_a]`` copy of
        ``V_a^l`` per branch, no separate pass over ``[S, B, D_l]`` to add the bias)."""
        b = b[:, None]
        if len(h.shape) == 2:                                        # a shared input: the first layer
            x = h if a is None else tf.concat([h, a], axis=-1)
            return tf.matmul(_with_one(x), tf.concat([w, b], axis=1))
        if a is None:
            return tf.matmul(h, w) + b
        k = int(h.shape[-1])
        return tf.matmul(h, w[:, :k]) + tf.matmul(_with_one(a), tf.concat([w[:, k:], b], axis=1))

    def all_and_own(self, v, aux_hidden, scenario):
        """``(V [B, S, D], V_s [B, D])`` from one forward pass of every branch: ``V`` without a gradient (the
        mutual unit's masked ``V_j``), ``V_s`` each example's own branch, its value read from that pass (no
        second forward of the own branch) and its gradient the own branch's backward pass
        (:func:`own_branch_backward`): the gradient of :meth:`own`, the same numbers."""
        aux = [] if aux_hidden is None else list(aux_hidden)
        weights = self._weights()
        frozen = [tuple(tf.stop_gradient(t) for t in wb) for wb in weights]
        pre, h = self._all_layers(tf.stop_gradient(v), [tf.stop_gradient(a) for a in aux] or None, frozen)
        sc = scenario_ids(scenario)
        at = tf.stack([sc, tf.range(tf.shape(sc)[0])], axis=1)                     # (branch, row) of each row
        own_pre = [tf.gather_nd(z, at) for z in pre]
        acts = [d.act for d in self.dense]

        @tf.custom_gradient
        def own_branch(v0, *flat):
            def grad(dy):
                return own_branch_backward(dy, v0, flat, own_pre, acts, sc, len(aux))
            return acts[-1](own_pre[-1]), grad

        flat = aux + [w for w, _ in weights] + [b for _, b in weights]
        return tf.transpose(h, [1, 0, 2]), own_branch(v, *flat)

    def own(self, v, aux_hidden, scenario):
        """Each example's own branch ``[B, hidden[-1]]`` (:meth:`ScenarioDense.own` per layer: one branch's
        FLOPs; partitioning the rows once for the whole stack measured the same at S = 100)."""
        h = v
        for l, dense in enumerate(self.dense):
            h = dense(self._inputs(h, aux_hidden, l), scenario)
        return h


class MutualUnit(keras.layers.Layer):
    """Mutual unit (Sec. III-D-3, eq. 6-8) over the branches' last hidden outputs ``V [B, S, D]``:

    * eq. 8: ``alpha_ij = Softmax_j( cos<V_i, V_j> / sum_{j' != i} cos<V_i, V_j'> )`` over ``j != i``
      (``alpha_ii = 0``). Read literally: the cosines are first divided by their sum, then soft-maxed. With
      ReLU branches ``V >= 0`` so the cosines and their sum are ``>= 0``; a sum below ``eps`` in magnitude is
      replaced by ``eps`` (an all-zero ``V``).
    * eq. 7: ``g_i = Sigmoid(W_i V_i + b_i)``, ``W_i in R^D``, ``b_i in R`` per branch (stacked ``W [S, D]``).
    * eq. 6: ``M_i = V_i + g_i * sum_{j != i} alpha_ij V_j``.

    Gradient mask (III-D-2): inside ``M_i`` every ``V_j, j != i`` (in the sum and in the cosines) is a
    ``stop_gradient``, so the loss of a scenario-``i`` example, which only reads ``M_i``, never reaches
    branch ``j``. ``gradient_mask=False`` lets it through (only to show what the mask does).

    ``call(V) -> (M [B, S, D], alpha [B, S, S], g [B, S])``: every row ``i`` (``O(S^2 D)`` per example, for
    the ``all_scenarios`` signature and Fig. 3). ``call(V, v_own, scenario) -> (M_s [B, D], alpha_s [B, S],
    g_s [B])``: only the row of each example's scenario ``s`` with ``V_s = v_own`` (``O(S D)`` per example:
    the cosines and the mix still read every ``V_j``, which is the math of eq. 6-8).
    """

    def __init__(self, gradient_mask: bool = True, eps: float = 1e-8, **kwargs):
        super().__init__(**kwargs)
        self.gradient_mask, self.eps = bool(gradient_mask), float(eps)

    def build(self, input_shape):
        s, d = int(input_shape[1]), int(input_shape[2])
        if s < 2:
            raise ValueError("MutualUnit needs at least 2 branches")
        self.gate_w = self.add_weight(name="W", shape=(s, d), initializer="glorot_uniform")
        self.gate_b = self.add_weight(name="b", shape=(s,), initializer="zeros")
        super().build(input_shape)

    def _norm(self, t, keepdims=False, frozen=False):
        """``max(|t|, eps)`` over the last axis, with a finite gradient at ``t = 0`` (an all-zero ReLU output:
        ``tf.norm``'s gradient there is 0/0); a ``frozen`` ``t`` (no gradient) takes the one-pass norm."""
        if frozen:
            return tf.maximum(tf.math.reduce_euclidean_norm(t, axis=-1, keepdims=keepdims), self.eps)
        return tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(t), axis=-1, keepdims=keepdims), self.eps ** 2))

    def _unit(self, t, frozen=False):
        return t / self._norm(t, keepdims=True, frozen=frozen)

    def _alpha(self, cos, off):
        """Eq. 8 over the last axis given the cosines and the ``j != i`` mask."""
        den = tf.reduce_sum(tf.where(off, cos, tf.zeros_like(cos)), axis=-1, keepdims=True)
        den = tf.where(tf.abs(den) < self.eps, tf.fill(tf.shape(den), self.eps), den)
        return masked_softmax(cos / den, off)

    def call(self, v, v_own=None, scenario=None):
        others = tf.stop_gradient(v) if self.gradient_mask else v
        if scenario is not None:
            return self.own_row(v_own, others, scenario)
        cos = tf.einsum("bid,bjd->bij", self._unit(v), self._unit(others, self.gradient_mask))  # row i: via V_i
        off = tf.logical_not(tf.eye(v.shape[1], dtype=tf.bool))[None]                # [1, S, S]
        alpha = self._alpha(cos, off)                                                # eq. 8
        gate = tf.sigmoid(tf.einsum("bsd,sd->bs", v, self.gate_w) + self.gate_b)     # eq. 7
        m = v + gate[..., None] * tf.einsum("bij,bjd->bid", alpha, others)           # eq. 6
        return m, alpha, gate

    def own_row(self, v_own, others, scenario):
        """Row ``s`` of eq. 6-8 for each example: ``(M_s [B, D], alpha_s [B, S], g_s [B])``. The cosines and
        the mix read ``V [B, S, D]`` as one batched vector-matrix product each (``[1, D] x [D, S]`` and
        ``[1, S] x [S, D]`` per example; the matrix-vector form ``[S, D] x [D, 1]`` is slower on CPU)."""
        s = tf.cast(scenario, tf.int32)
        dots = tf.matmul(self._unit(v_own)[:, None, :], others, transpose_b=True)[:, 0]  # <V_s / |V_s|, V_j>
        cos = dots / self._norm(others, frozen=self.gradient_mask)                  # no unit copy
        off = tf.logical_not(tf.cast(tf.one_hot(s, tf.shape(others)[1]), tf.bool))  # [B, S]
        alpha = self._alpha(cos, off)                                                # eq. 8
        gate = tf.sigmoid(tf.reduce_sum(v_own * tf.gather(self.gate_w, s), -1) + tf.gather(self.gate_b, s))
        m = v_own + gate[:, None] * tf.matmul(alpha[:, None, :], others)[:, 0]      # eq. 6
        return m, alpha, gate
