"""Target / self attention, BST's transformer block and positions (tfmsr/layers/attention.py),
each against a NumPy re-computation of its equation."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from layer_reference import TOL, rand, sigmoid, dense, masked_np_softmax, mask_of

from tfmsr.layers import attention
from tfmsr.layers import (masked_softmax, MultiHeadSelfAttention, MultiHeadTargetAttention, PositionalEmbedding,
                          TargetAttention, TransformerBlock)


def test_masked_softmax_zero_for_padding_and_empty_rows():
    s = rand(3, 4)
    mask = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    got = masked_softmax(tf.constant(s), tf.constant(mask)).numpy()
    np.testing.assert_allclose(got, masked_np_softmax(s, mask), **TOL)
    assert got[1].sum() == 0.0 and np.allclose(got[[0, 2]].sum(1), 1.0)


@pytest.mark.parametrize("normalize,hidden", [(False, (6, 4)), (True, (6, 4)), (False, ())])
def test_din_activation_unit(normalize, hidden):
    b, l, d = 4, 5, 3
    q, k, mask = rand(b, d), rand(b, l, d), mask_of(b, l)
    layer = TargetAttention(hidden=hidden, activation="sigmoid", normalize=normalize)
    got = layer(tf.constant(q), tf.constant(k), mask=tf.constant(mask)).numpy()
    qq = np.broadcast_to(q[:, None], k.shape)
    h = np.concatenate([k, qq, k - qq, k * qq], -1)
    for dl in layer.mlp.dense:
        h = dense(dl, h, sigmoid)
    s = dense(layer.out, h)[..., 0]
    w = masked_np_softmax(s, mask) if normalize else s * mask
    np.testing.assert_allclose(got, (w[..., None] * k).sum(1), **TOL)
    assert np.allclose(got[1], 0.0)                           # empty history pools to zeros


def test_multi_head_target_attention():
    b, l, h = 3, 6, 2
    q, k, v, mask = rand(b, 5), rand(b, l, 4), rand(b, l, 6), mask_of(b, l)
    layer = MultiHeadTargetAttention(num_heads=h, output_dim=8)
    got = layer(tf.constant(q), tf.constant(k), tf.constant(v), mask=tf.constant(mask)).numpy()
    kd = layer.kd
    Q = (q @ layer.wq.numpy()).reshape(b, h, kd)
    K = (k @ layer.wk.numpy()).reshape(b, l, h, kd)
    V = (v @ layer.wv.numpy()).reshape(b, l, h, layer.vd)
    s = np.einsum("bhk,blhk->bhl", Q, K) / np.sqrt(kd)
    w = masked_np_softmax(s, mask[:, None, :])
    heads = np.einsum("bhl,blhv->bhv", w, V).reshape(b, -1)
    np.testing.assert_allclose(got, heads @ layer.wo.numpy(), **TOL)


def np_self_attention(layer, x, mask):
    b, l, d = x.shape
    h = layer.num_heads
    split = lambda t: t.reshape(b, l, h, d // h).transpose(0, 2, 1, 3)
    q, k, v = (split(x @ w.numpy()) for w in (layer.wq, layer.wk, layer.wv))
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // h)
    w = masked_np_softmax(s, mask[:, None, None, :])
    o = (w @ v).transpose(0, 2, 1, 3).reshape(b, l, d)
    return o @ layer.wo.numpy()


def test_multi_head_self_attention():
    x, mask = rand(3, 5, 8), mask_of(3, 5)
    mask[:, 0] = True
    layer = MultiHeadSelfAttention(num_heads=2)
    got = layer(tf.constant(x), mask=tf.constant(mask)).numpy()
    np.testing.assert_allclose(got, np_self_attention(layer, x, mask), **TOL)  # every token queries: dense form
    np.testing.assert_allclose(layer(tf.constant(x)).numpy(), np_self_attention(layer, x, np.ones_like(mask)), **TOL)
    assert not np.allclose(layer.wq.numpy(), layer.wk.numpy())
    with pytest.raises(TypeError, match="pass the mask by keyword"):
        layer(tf.constant(x), tf.constant(mask))              # a mask in the keys' place is refused


def layer_norm(x, ln):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return ln.gamma.numpy() * (x - mu) / np.sqrt(var + ln.epsilon) + ln.beta.numpy()


def test_transformer_block_bst():
    x, mask = rand(2, 4, 8), mask_of(2, 4)
    mask[:, 0] = True
    block = TransformerBlock(num_heads=4, ff_dim=12, dropout=0.2)
    got = block(tf.constant(x), mask=tf.constant(mask), training=False).numpy()
    s = layer_norm(x + np_self_attention(block.mha, x, mask), block.norm1)
    leaky = lambda t: np.where(t > 0, t, 0.2 * t)
    f = dense(block.ff2, dense(block.ff1, s, leaky))
    np.testing.assert_allclose(got[mask], layer_norm(s + f, block.norm2)[mask], **TOL)
    assert not got[~mask].any()


def test_positional_embedding_adds_position_rows():
    x = rand(2, 3, 4)
    layer = PositionalEmbedding(5)
    got = layer(tf.constant(x)).numpy()
    np.testing.assert_allclose(got, x + layer.table.numpy()[None, :3], **TOL)


# DENSE_ROWS_FILL 0: query rows always in the dense form; 1: always over the real tokens (the two forms of ``rows``)
@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_rows_are_the_first_rows_of_the_full_outputs(monkeypatch, fill):
    """``rows=1`` (the candidate's row only) equals row 0 of the full output, self- and separate-source."""
    monkeypatch.setattr(attention, "DENSE_ROWS_FILL", fill)
    x, y, mask = rand(3, 5, 8), rand(3, 5, 6), mask_of(3, 5)
    mask[:, 0] = True
    m = tf.constant(mask)
    for layer, args in ((MultiHeadSelfAttention(num_heads=2), (x,)), (TransformerBlock(num_heads=2), (x,)),
                        (MultiHeadSelfAttention(num_heads=2), (y, y, x)), (TransformerBlock(num_heads=4), (y, y, x))):
        t = [tf.constant(a) for a in args]
        full = layer(*t, mask=m).numpy()
        np.testing.assert_allclose(layer(*t, mask=m, rows=1).numpy(), full[:, :1], **TOL)


def separate_projection_attention(block, x, mask):
    """BST's block as before the fused QKV and ``rows``: three projections, all rows, then row 0."""
    mha = block.mha
    h, d = mha.num_heads, int(mha.wv.shape[-1])
    heads = lambda t: tf.transpose(tf.reshape(t, [t.shape[0], t.shape[1], h, d // h]), [0, 2, 1, 3])
    q, k, v = (heads(tf.einsum("bld,dk->blk", x, w)) for w in (mha.wq, mha.wk, mha.wv))
    w = masked_softmax(tf.matmul(q, k, transpose_b=True) / np.sqrt(d // h), mask[:, None, None, :])
    o = tf.reshape(tf.transpose(tf.matmul(w, v), [0, 2, 1, 3]), x.shape)
    s = block.norm1(x + tf.einsum("bld,dk->blk", o, mha.wo))
    return block.norm2(s + block.ff2(block.ff1(s)))[:, 0]


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_fused_rows_block_trains_as_the_separate_projections(monkeypatch, fill):
    """Same loss trajectory over 5 Adam steps from the same weights: the fused-QKV, candidate-row block (its
    dense and its real-token form) against the three-projection, all-rows form (issue 30's levers change no
    trained result)."""
    monkeypatch.setattr(attention, "DENSE_ROWS_FILL", fill)
    mask = mask_of(16, 7)
    mask[:, 0] = True
    x, mask = tf.constant(rand(16, 7, 8)), tf.constant(mask)
    y = tf.constant(np.random.default_rng(1).integers(0, 2, 16).astype("float32"))
    losses = []
    for form in ("fused_rows", "separate"):
        keras.utils.set_random_seed(3)
        block, out = TransformerBlock(num_heads=2, ff_dim=12), keras.layers.Dense(1)
        out(block(x, mask=mask)[:, 0])  # same initial weights in both forms
        opt, trace = keras.optimizers.Adam(0.05), []
        for _ in range(5):
            with tf.GradientTape() as tape:
                z = (block(x, mask=mask, rows=1)[:, 0] if form == "fused_rows"
                     else separate_projection_attention(block, x, mask))
                loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y, out(z)[:, 0]))
            variables = block.trainable_variables + out.trainable_variables
            opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
            trace.append(float(loss))
        losses.append(trace)
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    assert losses[0][-1] < losses[0][0] - 0.01


def test_din_activation_unit_over_real_positions_trains_as_the_masked_dense_unit():
    """``call`` with a mask scores only the real behaviours (``_pool_real``): the value and every gradient
    (unit weights, query, keys, values) of the dense, masked ``scores`` form (Eq. 3)."""
    b, l, d = 5, 6, 3
    q, k, v, mask = (tf.constant(rand(b, d)), tf.constant(rand(b, l, d)), tf.constant(rand(b, l, 2)),
                     tf.constant(mask_of(b, l)))
    layer = TargetAttention(hidden=(6, 4), activation="sigmoid")
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([q, k, v])
        got = layer(q, k, v, mask=mask)
        want = tf.reduce_sum(layer.scores(q, k, mask)[..., None] * v, axis=1)
        w = tf.constant(rand(b, 2))
        loss_got, loss_want = tf.reduce_sum(got * w), tf.reduce_sum(want * w)
    np.testing.assert_allclose(got.numpy(), want.numpy(), **TOL)
    sources = [q, k, v] + layer.trainable_variables
    for g_got, g_want in zip(tape.gradient(loss_got, sources), tape.gradient(loss_want, sources)):
        np.testing.assert_allclose(tf.convert_to_tensor(g_got).numpy(), tf.convert_to_tensor(g_want).numpy(), **TOL)
