"""Attention over behaviour sequences: DIN's activation unit, multi-head target attention, and the
Transformer block with positional embeddings of BST.

Shapes: ``query [B, d_q]``, ``keys [B, L, d_k]``, ``values [B, L, d_v]``, ``mask [B, L]`` (bool, True at
real positions). Padding never receives weight; an all-padding sequence pools to zeros. Layers can run over the
real tokens only (:func:`pack`: ``[n, d]`` tokens, padding rows zeros when scattered back): the Transformer block's
norms and feed-forward, target attention, and self-attention whose queries are a few rows (``rows``; over the real
tokens when most positions are padding, else dense: :func:`_rows_dense`); self-attention in which every token
queries keeps the dense ``[B, L, L]`` form (projections and ``W^O`` on the tokens).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import tensorflow as tf
import tf_keras as keras

from tfmsr.layers._init import fresh
from tfmsr.layers._inputs import MultiInputLayer
from tfmsr.layers.mlp import MLP

_NEG = -1e9


def masked_softmax(scores: tf.Tensor, mask: Optional[tf.Tensor], axis: int = -1) -> tf.Tensor:
    """Softmax of ``scores`` over ``axis`` restricted to ``mask`` (zeros where the mask is False,
    all zeros for a fully masked row). ``mask`` broadcasts against ``scores``."""
    if mask is None:
        return tf.nn.softmax(scores, axis=axis)
    m = tf.cast(mask, scores.dtype)
    w = tf.nn.softmax(scores + (1.0 - m) * _NEG, axis=axis)
    return w * m


class Packed(NamedTuple):
    """The real positions of a ``[B, L]`` mask, row-major: ``index [n, 2]`` (example, position) of each real
    token, ``row [n]`` its example, ``start [B]`` / ``count [B]`` each example's first token and number of tokens,
    ``shape [2]`` = (B, L), ``mask [B, L]`` the mask itself. Layers given one take ``[n, d]`` token tensors
    (``gather``) instead of ``[B, L, d]``."""
    index: tf.Tensor
    row: tf.Tensor
    start: tf.Tensor
    count: tf.Tensor
    shape: tf.Tensor
    mask: tf.Tensor

    def gather(self, x: tf.Tensor) -> tf.Tensor:
        """``[B, L, d] -> [n, d]``: the real tokens (``[B, L]`` ids -> ``[n]``)."""
        return tf.gather_nd(x, self.index)

    def scatter(self, tokens: tf.Tensor, index: Optional[tf.Tensor] = None, length=None) -> tf.Tensor:
        """``[n, d] -> [B, L, d]`` with zeros at padding (``index``/``length``: a subset of the tokens and rows)."""
        shape = tf.stack([self.shape[0], self.shape[1] if length is None else tf.cast(length, tf.int64)])
        return tf.scatter_nd(self.index if index is None else index, tokens,
                             tf.concat([shape, tf.shape(tokens, out_type=tf.int64)[1:]], 0))

    def mean(self, tokens: tf.Tensor) -> tf.Tensor:
        """``[n, d] -> [B, d]``: each example's mean token (zeros for an example without one)."""
        total = segment_sum(tokens, self.row, self.shape[0])
        return total / tf.maximum(tf.cast(self.count, tokens.dtype), 1.0)[:, None]


def pack(mask: tf.Tensor) -> Packed:
    """The :class:`Packed` real positions of ``mask [B, L]`` (bool)."""
    index = tf.where(mask)
    count = tf.reduce_sum(tf.cast(mask, tf.int64), axis=1)
    return Packed(index, index[:, 0], tf.cumsum(count, exclusive=True), count, tf.shape(mask, out_type=tf.int64),
                  mask)


def segment_sum(x: tf.Tensor, segments: tf.Tensor, num) -> tf.Tensor:
    """``[P, ...] -> [num, ...]``: sums of the rows of ``x`` per sorted ``segments [P]`` (a sparse segment sum:
    its gradient is a plain gather, without the negative-id masking of the unsorted form)."""
    return tf.sparse.segment_sum(x, tf.range(tf.shape(segments, out_type=segments.dtype)[0]), segments,
                                 num_segments=num)


def segment_softmax(scores: tf.Tensor, segments: tf.Tensor, num) -> tf.Tensor:
    """Softmax of ``scores [P, ...]`` within each group of sorted ``segments [P]`` (ids < ``num``): the masked
    softmax over the real positions only (a group is one query's keys)."""
    top = tf.stop_gradient(tf.math.segment_max(scores, segments))
    e = tf.exp(scores - tf.gather(top, segments))
    return e / tf.gather(segment_sum(e, segments, num), segments)


class TargetAttention(keras.layers.Layer):
    """DIN local activation unit (Zhou et al., KDD 2018, Sec. 4.3, Eq. 3).

    ``v_U(A) = sum_j a(e_j, v_A) e_j``: the weight of behaviour ``e_j`` for the candidate ``v_A`` is an
    MLP over ``[e_j, v_A, e_j - v_A, e_j * v_A]`` (the out-product/difference inputs of the released
    DIN code) ending in one linear unit. As the paper stresses, the weights are **not** softmax-normalised
    (``normalize=False``), so the pooled vector keeps the intensity of the interest; ``normalize=True``
    is the softmax variant. ``hidden=(80, 40)`` with sigmoid units follows the released code (the paper's
    figure shows PReLU/Dice; ``activation`` switches it). Padding positions get weight 0.

    ``call(query [B, d], keys [B, L, d], values=None, mask=None) -> [B, d_v]`` (values default to keys;
    without a mask every position is real).
    """

    def __init__(self, hidden: Sequence[int] = (80, 40), activation="sigmoid", normalize: bool = False,
                 kernel_init="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.normalize = normalize
        self.mlp = MLP(hidden, activation=activation, kernel_init=kernel_init, name="unit")
        self.out = keras.layers.Dense(1, kernel_initializer=fresh(kernel_init), name="score")

    def _first_layer(self, keys):
        """``(W_e + W_d, W_q - W_d, W_p, b)`` of the unit's first layer (see ``scores``)."""
        dense0 = self.mlp.dense[0] if self.mlp.dense else self.out
        if not dense0.built:
            dense0.build(tf.TensorShape([None, 4 * int(keys.shape[-1])]))
        w_e, w_q, w_d, w_p = tf.split(dense0.kernel, 4, axis=0)
        return w_e + w_d, w_q - w_d, w_p, dense0.bias

    def _unit(self, pre):
        """The unit's score ``[..., 1]`` from its first layer's pre-activation."""
        return self.out(self.mlp.hidden_outputs(None, first_preactivation=pre)[-1]) if self.mlp.dense else pre

    def scores(self, query, keys, mask):
        """Attention weights ``[B, L]`` (after masking / optional softmax).

        The first layer of the unit, ``[e, q, e - q, e * q] W + b`` with ``W = [W_e; W_q; W_d; W_p]``, is
        computed as ``e (W_e + W_d) + q (W_q - W_d) + (e * q) W_p + b``: the same value, with the query
        term once per example instead of once per behaviour (half the FLOPs of the unit's widest layer)."""
        w_k, w_q, w_p, bias = self._first_layer(keys)
        pre = (tf.einsum("bld,dh->blh", keys, w_k) + tf.matmul(query, w_q)[:, None, :]
               + tf.einsum("bld,dh->blh", keys * query[:, None, :], w_p) + bias)
        s = self._unit(pre)[..., 0]
        if self.normalize:
            return masked_softmax(s, mask)
        return s if mask is None else s * tf.cast(mask, s.dtype)

    def call(self, query, keys, values=None, mask=None):
        if mask is not None and not self.normalize:
            return self._pool_real(query, keys, values, mask)
        w = self.scores(query, keys, mask)
        return tf.reduce_sum(w[..., None] * (keys if values is None else values), axis=1)

    def _pool_real(self, query, keys, values, mask):
        """Eq. 3 with unnormalised weights over the real positions only: the ``n`` behaviours of ``mask`` are
        gathered (``[n, d]``), scored by the unit and summed per example (a padded position's weight is 0,
        so the value is ``call``'s; the unit's cost follows the real behaviours, not ``B x L``)."""
        real = tf.where(mask)  # [n, 2] (row, position), rows ascending
        row = real[:, 0]
        k = tf.gather_nd(keys, real)
        w_k, w_q, w_p, bias = self._first_layer(keys)
        pre = (tf.matmul(k, w_k) + tf.gather(tf.matmul(query, w_q) + bias, row)
               + tf.matmul(k * tf.gather(query, row), w_p))
        v = k if values is None else tf.gather_nd(values, real)
        return tf.sparse.segment_sum(self._unit(pre) * v, tf.range(tf.shape(row)[0]), row,
                                     num_segments=tf.shape(query)[0])


def _sources(query, keys=None, values=None):
    """``(query, keys, values)`` with keys defaulting to the query and values to the keys (self-attention).
    A boolean ``keys`` is a mask passed by position (the call form before the one convention): refused."""
    if keys is not None and keys.dtype == tf.bool:
        raise TypeError("attention: keys is a boolean tensor; pass the mask by keyword (mask=...)")
    keys = query if keys is None else keys
    return query, keys, keys if values is None else values


def _project(x: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    """``x W`` for tokens ``[n, d]`` or sequences ``[B, L, d]``."""
    return tf.matmul(x, w) if x.shape.rank == 2 else tf.einsum("bld,dk->blk", x, w)


def _over_tokens(sources, mask) -> bool:
    """Whether a masked (self-)attention over ``sources [B, L, d_i]`` runs over the real tokens: the query has
    the keys' positions (one mask for both)."""
    q, k = sources[0].shape, sources[1].shape
    return mask is not None and q.rank == 3 and q[1] is not None and q[1] == k[1]


DENSE_ROWS_FILL = 0.5


def _rows_dense(mask: tf.Tensor) -> tf.Tensor:
    """Whether a few query rows (``rows=``) attend in the dense ``[B, L]`` form (scalar bool): when more than
    ``DENSE_ROWS_FILL`` of the positions are real; else over the real tokens (their cost follows their number, at
    about twice the dense form's per position: measured SAML on mostly full and mostly empty sequences)."""
    return tf.reduce_mean(tf.cast(mask, tf.float32)) > DENSE_ROWS_FILL


def _query_tokens(packed: Packed, rows):
    """Indices of the query tokens: all (``None``) or those at a position ``< rows``."""
    return None if rows is None else tf.where(packed.index[:, 1] < rows)[:, 0]


def _via_tokens(fn, sources, mask, rows):
    """``fn(tokens, packed) -> [m, d]`` over the real tokens of ``sources`` (each distinct tensor gathered once),
    scattered back to ``[B, L or rows, d]`` with zeros at padding."""
    packed, tokens, seen = pack(mask), [], {}
    for src in sources:
        if id(src) not in seen:
            seen[id(src)] = packed.gather(src)
        tokens.append(seen[id(src)])
    queries = _query_tokens(packed, rows)
    out = fn(tuple(tokens), packed)
    return packed.scatter(out, None if queries is None else tf.gather(packed.index, queries), rows)


def _projections(sources, kernels):
    """``[src_i W_i]`` (``[B, L, d_i]``) for each source; sources that are the same tensor share one matmul
    with their kernels concatenated (self-attention: one fused QKV projection), split after it. The kernels
    stay separate variables (checkpoints keep ``W_Q``, ``W_K``, ``W_V``)."""
    groups = []  # (source, [positions])
    for i, src in enumerate(sources):
        match = [g for g in groups if g[0] is src]
        match[0][1].append(i) if match else groups.append((src, [i]))
    out = [None] * len(sources)
    for src, idx in groups:
        ws = [kernels[i] for i in idx]
        y = _project(src, ws[0] if len(ws) == 1 else tf.concat(ws, axis=1))
        for i, part in zip(idx, [y] if len(ws) == 1 else tf.split(y, [int(w.shape[-1]) for w in ws], axis=-1)):
            out[i] = part
    return out


def _qkv(sources, kernels) -> tf.Tensor:
    """``concat_i(src_i W_i)``: self-attention's one matmul with the kernels concatenated, not split and re-joined."""
    if sources[0] is sources[1] is sources[2]:
        return _project(sources[0], tf.concat(kernels, axis=1))
    return tf.concat(_projections(sources, kernels), axis=-1)


def _split_heads(x: tf.Tensor, heads: int) -> tf.Tensor:
    """``[B, L, H*k] -> [B, H, L, k]``."""
    b, l = tf.shape(x)[0], tf.shape(x)[1]
    k = x.shape[-1] // heads
    return tf.transpose(tf.reshape(x, [b, l, heads, k]), [0, 2, 1, 3])


class MultiHeadTargetAttention(MultiInputLayer):
    """Scaled dot-product attention of one query vector over a sequence, ``H`` heads (Vaswani et al. 2017):

    ``head_h = softmax((q W_h^Q)(K W_h^K)^T / sqrt(d_k)) V W_h^V``, output ``concat_h(head_h) W^O``.
    Used for SAR-Net's scenario-/item-aware attention over cross-scenario behaviours and reusable for
    field-wise target attention. ``key_dim`` is the per-head width (default ``d_out / H``), ``output_dim``
    the width of ``W^O`` (default: the value width; ``use_output_projection=False`` drops ``W^O``).

    ``call(query [B, d_q], keys [B, L, d_k], values [B, L, d_v], mask=None [B, L]) -> [B, d_out]``.
    """

    def __init__(self, num_heads: int = 4, key_dim: Optional[int] = None, output_dim: Optional[int] = None,
                 use_output_projection: bool = True, kernel_init="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.key_dim, self.output_dim = int(num_heads), key_dim, output_dim
        self.use_output_projection = use_output_projection
        self.kernel_init = kernel_init  # a fresh initializer per weight (a reused unseeded one repeats values)

    def build_inputs(self, query, keys, values):
        dq, dk, dv = (int(s[-1]) for s in (query, keys, values))
        h, out = self.num_heads, self.output_dim or dv
        if self.use_output_projection:
            self.kd = self.vd = self.key_dim or max(1, out // h)
        else:
            if out % h:
                raise ValueError(f"MultiHeadTargetAttention: output width {out} must divide by {h} heads "
                                 "without an output projection")
            self.vd = out // h
            self.kd = self.key_dim or self.vd
        self.wq = self.add_weight(name="W_Q", shape=(dq, h * self.kd), initializer=fresh(self.kernel_init))
        self.wk = self.add_weight(name="W_K", shape=(dk, h * self.kd), initializer=fresh(self.kernel_init))
        self.wv = self.add_weight(name="W_V", shape=(dv, h * self.vd), initializer=fresh(self.kernel_init))
        self.wo = (self.add_weight(name="W_O", shape=(h * self.vd, out), initializer=fresh(self.kernel_init))
                   if self.use_output_projection else None)

    def attention_weights(self, query, keys, mask):
        """``[B, H, L]`` softmax weights (the layer must have been called once)."""
        h = self.num_heads
        q = tf.reshape(tf.matmul(query, self.wq), [-1, h, 1, self.kd])             # [B, H, 1, k]
        k = _split_heads(tf.einsum("bld,dk->blk", keys, self.wk), h)                 # [B, H, L, k]
        s = tf.matmul(q, k, transpose_b=True)[:, :, 0, :] / tf.sqrt(float(self.kd))  # [B, H, L]
        return masked_softmax(s, None if mask is None else mask[:, None, :])

    def call(self, query, keys, values, mask=None):
        self.build_once(query, keys, values)
        if mask is not None:
            return self._over_real(query, keys, values, pack(mask))
        w = self.attention_weights(query, keys, mask)                                # [B, H, L]
        v = _split_heads(tf.einsum("bld,dk->blk", values, self.wv), self.num_heads)  # [B, H, L, v]
        heads = tf.reduce_sum(w[..., None] * v, axis=2)                              # [B, H, v]
        out = tf.reshape(heads, [-1, self.num_heads * self.vd])
        return tf.matmul(out, self.wo) if self.wo is not None else out


    def _over_real(self, query, keys, values, packed: Packed):
        """``call`` over the real positions, no projection of the sequence: ``(q W_h^Q)(k W_h^K)^T =
        (q W_h^Q W_h^{K T}) k^T`` and ``sum_j w_hj (v_j W_h^V) = (sum_j w_hj v_j) W_h^V`` (linear maps), so the
        query is mapped into key space once per example and the values are pooled before ``W^V``."""
        h, b = self.num_heads, tf.shape(query, out_type=tf.int64)[0]
        q = tf.reshape(tf.matmul(query, self.wq), [-1, h, self.kd]) * self.kd ** -0.5            # [B, H, k]
        r = tf.einsum("bhk,dhk->bhd", q, tf.reshape(self.wk, [-1, h, self.kd]))                 # [B, H, d_k]
        s = tf.einsum("nhd,nd->nh", tf.gather(r, packed.row), packed.gather(keys))              # [n, H]
        w = segment_softmax(s, packed.row, b)
        pooled = segment_sum(w[..., None] * packed.gather(values)[:, None, :], packed.row, b)   # [B, H, d_v]
        heads = tf.einsum("bhd,dhv->bhv", pooled, tf.reshape(self.wv, [-1, h, self.vd]))
        out = tf.reshape(heads, [-1, h * self.vd])
        return tf.matmul(out, self.wo) if self.wo is not None else out


class MultiHeadSelfAttention(MultiInputLayer):
    """Multi-head self-attention over a sequence (BST, Chen et al. 2019, Sec. 2.3 ``MH(E)``):

    ``head_i = softmax((E W_i^Q)(E W_i^K)^T / sqrt(d)) (E W_i^V)``, ``S = concat(head_1..head_h) W^H``.
    Per-head width ``d / h`` (``d`` must divide by ``num_heads``); padding keys get no weight.

    ``call(query [B, Lq, d_q], keys=None [B, L, d_k], values=None [B, L, d], mask=None [B, L]) -> [B, Lq, d]``:
    keys default to the query and values to the keys, so ``call(x, mask=mask)`` is self-attention; separate
    sources are SAML's ``MultiHead(Q_l, K_l, V_g)`` (Sec. III-C-2): ``W^Q`` is ``d_q x d``, ``W^K`` is
    ``d_k x d``, the output has the value width.
    ``units`` sets the projection width ``d`` instead of the value width (SAINet's SIE attends over
    ``[X, M_S]`` and projects back to the width of ``X``). ``rows=n``: only the first ``n`` query tokens
    (``[B, n, d]``; the same rows as without it), for a caller that reads only those (a candidate token).
    Sources that are one tensor are projected by one matmul (fused QKV, :func:`_projections`).
    """

    def __init__(self, num_heads: int = 8, dropout: float = 0.0, kernel_init="glorot_uniform",
                 units: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.dropout, self.units = int(num_heads), dropout, units
        self.kernel_init = kernel_init  # a fresh initializer per weight (a reused unseeded one repeats values)
        self.drop = keras.layers.Dropout(dropout) if dropout else None

    def build_inputs(self, query, keys, values):
        widths = [int(s[-1]) for s in (query, keys, values)]
        d = self.units or widths[2]
        if d % self.num_heads:
            raise ValueError(f"MultiHeadSelfAttention: width {d} does not divide by {self.num_heads} heads")
        self.wq, self.wk, self.wv, self.wo = (
            self.add_weight(name=n, shape=(w, d), initializer=fresh(self.kernel_init))
            for n, w in zip(("W_Q", "W_K", "W_V", "W_H"), widths + [d]))

    def call(self, query, keys=None, values=None, mask=None, training=False, *, rows=None, packed=None):
        sources = _sources(query, keys, values)
        self.build_once(*sources)
        if packed is not None:
            return self.over_tokens(sources, packed, rows, training)
        if rows is not None and _over_tokens(sources, mask):
            return tf.cond(_rows_dense(mask), lambda: self._dense(sources, mask, training, rows), lambda: _via_tokens(
                lambda t, p: self.over_tokens(t, p, rows, training), sources, mask, rows))
        return self._dense(sources, mask, training, rows)

    def _dense(self, sources, mask, training, rows):
        """The ``[B, L(q), L]`` form over ``[B, L, d_i]`` sequences (query rows ``< rows`` when given)."""
        if rows is not None:
            sources = (sources[0][:, :rows],) + sources[1:]
        h, d = self.num_heads, self.wv.shape[-1]
        q, k, v = (_split_heads(t, h) for t in _projections(sources, (self.wq, self.wk, self.wv)))
        s = tf.matmul(q, k, transpose_b=True) / tf.sqrt(float(d // h))               # [B, H, Lq, L]
        w = masked_softmax(s, None if mask is None else mask[:, None, None, :])
        if self.drop is not None:
            w = self.drop(w, training=training)
        o = tf.transpose(tf.matmul(w, v), [0, 2, 1, 3])                              # [B, L, H, d/h]
        o = tf.reshape(o, [tf.shape(sources[0])[0], tf.shape(sources[0])[1], d])
        return tf.einsum("bld,dk->blk", o, self.wo)

    def over_tokens(self, sources, packed: Packed, rows=None, training=False):
        """The attention over real tokens: ``sources`` are ``[n, d_i]`` tokens of ``packed``; each query token
        (all, or those at a position ``< rows``) attends to the tokens of its example. ``-> [m, d]``. When every
        token queries, the dense form runs on the tokens scattered back (batched matmuls over ``B x L x L`` beat
        gathered pairs once sequences are mostly full: SAINet on ML-100K 4x); with ``rows``, :meth:`_row_queries`."""
        if rows is None:
            return self._tokens_dense(sources, packed, training)
        return self._row_queries(sources, packed, rows, training)

    def _row_queries(self, sources, packed: Packed, rows, training=False):
        """``over_tokens`` when only the tokens at positions ``< rows`` query: their projections are laid out as
        ``[B, rows, d]`` (zeros at padding), gathered by each token's example, so every real token is a key of its
        example's ``rows`` query slots at once: scores ``[n, rows, H]``, a softmax within each example, values
        summed per example (no per-pair gathers of keys and values); the real query slots are read back."""
        h, d = self.num_heads, int(self.wv.shape[-1])
        q, k, v = _projections(sources, (self.wq * (d // h) ** -0.5, self.wk, self.wv))
        queries = _query_tokens(packed, rows)
        slots = tf.gather(packed.index, queries)                                           # [m, 2]
        b = packed.shape[0]
        q = tf.scatter_nd(slots, tf.gather(q, queries), tf.stack([b, tf.cast(rows, tf.int64), d]))   # [B, r, d]
        heads = lambda t, r=1: tf.reshape(t, [-1, r, h, d // h])
        s = tf.reduce_sum(heads(tf.gather(q, packed.row), rows) * heads(k), axis=-1)      # [n, r, H]
        w = segment_softmax(s, packed.row, b)
        if self.drop is not None:
            w = self.drop(w, training=training)
        o = tf.gather_nd(segment_sum(w[..., None] * heads(v), packed.row, b), slots)   # [m, H, d/h]
        return tf.matmul(tf.reshape(o, [-1, d]), self.wo)

    def _tokens_dense(self, sources, packed: Packed, training=False):
        """``over_tokens`` when every token queries: Q, K, V projected on the tokens (one fused matmul for
        self-attention; ``1/sqrt(d_k)`` folded into ``W^Q``), scattered to ``[b, l, 3d]`` per bucket of
        :func:`_length_buckets` for the ``[b, H, l, l]`` batched matmuls (padding keys masked; rows of padding
        queries are never read, so not zeroed), the heads gathered back to tokens before ``W^O``. The same value as
        ``_dense`` on the scattered sources."""
        h, d = self.num_heads, int(self.wv.shape[-1])
        qkv = _qkv(sources, (self.wq * (d // h) ** -0.5, self.wk, self.wv))

        def attend(dense, mask):   # [b, l, 3d] -> [b, l, d]
            b, l = tf.shape(dense)[0], tf.shape(dense)[1]
            q, k, v = tf.unstack(tf.transpose(tf.reshape(dense, [b, l, 3, h, d // h]), [2, 0, 3, 1, 4]))
            pad = (1.0 - tf.cast(mask, qkv.dtype)) * _NEG                                     # [b, l]
            w = tf.nn.softmax(tf.matmul(q, k, transpose_b=True) + pad[:, None, None, :])     # [b, H, l, l]
            if self.drop is not None:
                w = self.drop(w, training=training)
            return tf.reshape(tf.transpose(tf.matmul(w, v), [0, 2, 1, 3]), [b, l, d])

        def bucketed():
            parts, outs = [], []
            for tokens, index, mask in _length_buckets(packed):
                shape = tf.concat([tf.shape(mask, out_type=tf.int64), [3 * d]], 0)
                outs.append(tf.gather_nd(attend(tf.scatter_nd(index, tf.gather(qkv, tokens), shape), mask), index))
                parts.append(tokens)
            return tf.dynamic_stitch(parts, outs)

        o = tf.cond(_short_share(packed) > BUCKET_SHARE, bucketed,
                    lambda: packed.gather(attend(packed.scatter(qkv), packed.mask)))
        return tf.matmul(o, self.wo)


BUCKET_WIDTHS = (0.125, 0.25, 0.5)  # the short buckets' widths, fractions of the sequence length (then one of all of it)
BUCKET_SHARE = 0.25  # bucket when more than this share of the examples is short (else the bucketing's copies cost more)


def _extents(packed: Packed):
    """``(extent [B], widths [k + 1])``: each example's last real position + 1 (0 without a token) and the widths of
    the buckets of :func:`_length_buckets`, ``ceil(f L)`` for ``f`` in ``BUCKET_WIDTHS`` and ``L``."""
    length = packed.shape[1]
    short = tf.math.ceil(tf.constant(BUCKET_WIDTHS, tf.float32) * tf.cast(length, tf.float32))
    widths = tf.concat([tf.maximum(tf.cast(short, tf.int64), 1), [length]], 0)
    extent = tf.math.unsorted_segment_max(packed.index[:, 1] + 1, packed.row, packed.shape[0])    # [B]
    return tf.maximum(extent, 0), widths


def _short_share(packed: Packed) -> tf.Tensor:
    """The share of the examples (with or without tokens) in the short buckets of :func:`_length_buckets`."""
    extent, widths = _extents(packed)
    return tf.reduce_mean(tf.cast(extent <= widths[-2], tf.float32))


def _length_buckets(packed: Packed):
    """The examples of ``packed`` with a token in buckets by extent (the narrowest of :func:`_extents`' widths that
    holds their real tokens), each as ``(tokens [n_k] (indices into the tokens), index [n_k, 2] (row in the bucket,
    position), mask [b_k, l_k])``: the dense ``[b, l, l]`` attention of a bucket costs ``l^2`` per example, not
    ``L^2``, and an example without tokens costs nothing."""
    extent, widths = _extents(packed)
    lower = tf.concat([[0], widths[:-1]], 0)
    buckets = []
    for k in range(len(BUCKET_WIDTHS) + 1):
        sel = tf.logical_and(extent > lower[k], extent <= widths[k])                             # [B]
        tokens = tf.cast(tf.where(tf.gather(sel, packed.row))[:, 0], tf.int32)                 # [n_k]
        row = tf.gather(tf.cumsum(tf.cast(sel, tf.int64), exclusive=True), tf.gather(packed.row, tokens))
        index = tf.stack([row, tf.gather(packed.index[:, 1], tokens)], axis=1)
        buckets.append((tokens, index, tf.boolean_mask(packed.mask, sel)[:, :widths[k]]))
    return buckets


def _norm(layer, x: tf.Tensor) -> tf.Tensor:
    """A LayerNormalization of ``[B, L, d]`` or of tokens ``[n, d]`` (as ``[1, n, d]``: the layer keeps the rank
    it was built with)."""
    return layer(x[None])[0] if x.shape.rank == 2 else layer(x)


class TransformerBlock(MultiInputLayer):
    """One Transformer encoder layer as in BST (Chen et al. 2019, Sec. 2.3):

    ``S' = LayerNorm(S + Dropout(MH(S)))``, ``F = LayerNorm(S' + Dropout(LeakyReLU(S' W1 + b1) W2 + b2))``.
    ``ff_dim`` defaults to the input width. ``call(query, keys=None, values=None, mask=None, training=False)``
    as :class:`MultiHeadSelfAttention` (``call(x [B, L, d], mask=mask) -> [B, L, d]``); with separate sources
    (SAML's ``MultiHead(Q_l, K_l, V_g)``) the residual stream is the value tokens ``V`` (width ``d``).
    ``rows=n`` computes only the first ``n`` output tokens (``[B, n, d]``: every step after the attention is
    per token, so they equal those rows of the full output), e.g. ``rows=1`` when only the candidate is read.
    """

    def __init__(self, num_heads: int = 8, ff_dim: Optional[int] = None, dropout: float = 0.0,
                 activation="leaky_relu", kernel_init="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.ff_dim, self.activation, self.kernel_init = ff_dim, activation, kernel_init
        self.mha = MultiHeadSelfAttention(num_heads, kernel_init=kernel_init, name="mha")
        self.drop1 = keras.layers.Dropout(dropout)
        self.drop2 = keras.layers.Dropout(dropout)
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-6, name="ln_1")
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-6, name="ln_2")

    def build_inputs(self, query, keys, values):
        d = int(values[-1])
        self.ff1 = keras.layers.Dense(self.ff_dim or d, activation=self.activation,
                                      kernel_initializer=fresh(self.kernel_init),
                                      name="ff_1")
        self.ff2 = keras.layers.Dense(d, kernel_initializer=fresh(self.kernel_init), name="ff_2")

    def call(self, query, keys=None, values=None, mask=None, training=False, *, rows=None, packed=None):
        sources = _sources(query, keys, values)
        self.build_once(*sources)
        if packed is None and _over_tokens(sources, mask):
            tokens = lambda: _via_tokens(lambda t, p: self._layer(t, None, training, rows, p), sources, mask, rows)
            if rows is None or not self.norm2.built:   # the first call builds the sublayers outside a cond
                return tokens()
            return tf.cond(_rows_dense(mask), lambda: self._layer(sources, mask, training, rows, None), tokens)
        return self._layer(sources, mask, training, rows, packed)

    def _layer(self, sources, mask, training, rows, packed):
        """The block over ``[B, L, d_i]`` sequences, or over the ``[n, d_i]`` tokens of ``packed``."""
        attended = self.mha(*sources, mask=mask, training=training, rows=rows, packed=packed)
        if rows is None:
            v = sources[2]
        else:  # the residual stream of the query rows
            v = sources[2][:, :rows] if packed is None else tf.gather(sources[2], _query_tokens(packed, rows))
        s = _norm(self.norm1, v + self.drop1(attended, training=training))
        return _norm(self.norm2, s + self.drop2(self.ff2(self.ff1(s)), training=training))


class PositionalEmbedding(keras.layers.Layer):
    """Learned position embeddings added to a sequence: ``x[:, p] + P[p]`` for ``p < length``.

    BST embeds the time gap between a behaviour and the recommendation; sequences here are stored most
    recent first, so position ``p`` is the recency rank (the candidate, prepended, is position 0).
    """

    def __init__(self, length: int, **kwargs):
        super().__init__(**kwargs)
        self.length = int(length)

    def build(self, input_shape):
        self.table = self.add_weight(name="positions", shape=(self.length, int(input_shape[-1])),
                                     initializer=keras.initializers.RandomNormal(0.0, 0.05))
        super().build(input_shape)

    def call(self, x):
        return x + self.table[None, : x.shape[1]]
