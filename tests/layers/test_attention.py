"""Target / self attention, BST's transformer block and positions (tfmsr/layers/attention.py),
each against a NumPy re-computation of its equation."""
import numpy as np
import pytest
import tensorflow as tf

from layer_reference import TOL, rand, sigmoid, dense, masked_np_softmax, mask_of

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
    np.testing.assert_allclose(got, np_self_attention(layer, x, mask), **TOL)
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
    np.testing.assert_allclose(got, layer_norm(s + f, block.norm2), **TOL)


def test_positional_embedding_adds_position_rows():
    x = rand(2, 3, 4)
    layer = PositionalEmbedding(5)
    got = layer(tf.constant(x)).numpy()
    np.testing.assert_allclose(got, x + layer.table.numpy()[None, :3], **TOL)
