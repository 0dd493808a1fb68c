"""Attention over the real tokens only (tfmsr.layers.attention.pack, issue 30): the same values at real
positions and the same 5-step training trajectory as the masked dense form, with an empty and a full row, with
and without the length buckets."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from layer_reference import TOL, rand, mask_of

from tfmsr.layers import MultiHeadSelfAttention, MultiHeadTargetAttention, masked_softmax
from tfmsr.layers import attention
from tfmsr.layers.attention import pack
from tfmsr.layers.sainet import ScenarioAdaptiveBlock, TargetAwareInterestFusion


def dense_attention(mha, x, mask):
    """Masked multi-head self-attention over every position (the form before the packed path)."""
    h, d = mha.num_heads, int(mha.wv.shape[-1])
    heads = lambda t: tf.transpose(tf.reshape(t, [t.shape[0], t.shape[1], h, d // h]), [0, 2, 1, 3])
    q, k, v = (heads(tf.einsum("bld,dk->blk", x, w)) for w in (mha.wq, mha.wk, mha.wv))
    w = masked_softmax(tf.matmul(q, k, transpose_b=True) / np.sqrt(d // h), mask[:, None, None, :])
    o = tf.reshape(tf.transpose(tf.matmul(w, v), [0, 2, 1, 3]), [x.shape[0], x.shape[1], d])
    return tf.einsum("bld,dk->blk", o, mha.wo)


# BUCKET_SHARE -1: every-token attention always in length buckets; 2: never (the two forms of _tokens_dense)
@pytest.mark.parametrize("share", [-1.0, 2.0])
def test_packed_self_attention_is_the_dense_form_at_real_positions(monkeypatch, share):
    monkeypatch.setattr(attention, "BUCKET_SHARE", share)
    x, mask = rand(6, 7, 8), mask_of(6, 7)
    layer = MultiHeadSelfAttention(num_heads=2)
    got = layer(tf.constant(x), mask=tf.constant(mask)).numpy()
    want = dense_attention(layer, tf.constant(x), tf.constant(mask)).numpy()
    np.testing.assert_allclose(got[mask], want[mask], **TOL)
    assert not mask[1].any() and mask[0].all()
    p = pack(tf.constant(mask))
    tokens = layer(p.gather(tf.constant(x)), packed=p).numpy()  # [n, d]: the real rows, in order
    np.testing.assert_allclose(tokens, want[mask], **TOL)
    np.testing.assert_allclose(layer(tf.constant(x), mask=tf.constant(mask), rows=2).numpy()[mask[:, :2]],
                               want[:, :2][mask[:, :2]], **TOL)  # a few query rows: the pairs over real tokens
    np.testing.assert_allclose(p.scatter(p.gather(tf.constant(x))).numpy(), x * mask[..., None])
    np.testing.assert_allclose(p.mean(p.gather(tf.constant(x))).numpy(),
                               (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1), 1)[:, None], **TOL)


def sainet_losses(packed: bool, data):
    """5 Adam steps of two scenario-adaptive blocks + TIF + a logit, on packed tokens or the dense form."""
    mask, x, m_s, e_st, z, y = data
    keras.utils.set_random_seed(3)
    blocks = [ScenarioAdaptiveBlock(num_heads=2, residual=True) for _ in range(2)]
    tif, out = TargetAwareInterestFusion(), keras.layers.Dense(1)

    def forward():
        if packed:
            p = pack(mask)
            h, m = p.gather(x), p.gather(m_s)
            for block in blocks:
                h = block(h, m, e_st, packed=p)
            return out(tif(z, h, packed=p))[:, 0]
        h = x
        for block in blocks:
            h = block.stm(h + dense_attention(block.sie.mha, tf.concat([h, m_s], -1), mask), e_st)
        return out(tif(z, h, mask=mask))[:, 0]

    h = x  # the same initial weights in both forms
    for block in blocks:
        h = block(h, m_s, e_st, mask=mask)
    out(tif(z, h, mask=mask))
    variables = [v for layer in blocks + [tif, out] for v in layer.trainable_variables]
    opt, trace = keras.optimizers.Adam(0.05), []
    for _ in range(5):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y, forward()))
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        trace.append(float(loss))
    return trace


@pytest.mark.parametrize("share", [-1.0, 2.0])
def test_sainet_blocks_on_packed_tokens_train_as_the_masked_dense_form(monkeypatch, share):
    monkeypatch.setattr(attention, "BUCKET_SHARE", share)
    y = np.random.default_rng(4).integers(0, 2, 16).astype("float32")
    data = [tf.constant(a) for a in (mask_of(16, 7), rand(16, 7, 8), rand(16, 7, 4), rand(16, 4), rand(16, 6), y)]
    packed, dense = sainet_losses(True, data), sainet_losses(False, data)
    np.testing.assert_allclose(packed, dense, rtol=1e-5)
    assert packed[-1] < packed[0] - 0.01


def test_target_attention_over_real_positions_has_the_dense_value_and_gradients():
    """MultiHeadTargetAttention with a mask (query mapped into key space, values pooled before W^V) against
    the masked dense form: the same value and every gradient (weights, query, keys, values)."""
    b, l, h = 5, 6, 2
    q, k, v, mask = (tf.constant(rand(b, 5)), tf.constant(rand(b, l, 4)), tf.constant(rand(b, l, 6)),
                     tf.constant(mask_of(b, l)))
    layer = MultiHeadTargetAttention(num_heads=h, output_dim=8)
    heads = lambda t, w, n: tf.transpose(tf.reshape(tf.einsum("bld,dk->blk", t, w), [b, l, h, n]), [0, 2, 1, 3])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([q, k, v])
        got = layer(q, k, v, mask=mask)
        w = layer.attention_weights(q, k, mask)                                          # dense, [B, H, L]
        want = tf.matmul(tf.reshape(tf.reduce_sum(w[..., None] * heads(v, layer.wv, layer.vd), 2), [b, -1]),
                         layer.wo)
        r = tf.constant(rand(b, 8))
        loss_got, loss_want = tf.reduce_sum(got * r), tf.reduce_sum(want * r)
    np.testing.assert_allclose(got.numpy(), want.numpy(), **TOL)
    assert not got.numpy()[1].any()                                                      # the empty row
    sources = [q, k, v] + layer.trainable_variables
    for g_got, g_want in zip(tape.gradient(loss_got, sources), tape.gradient(loss_want, sources)):
        np.testing.assert_allclose(tf.convert_to_tensor(g_got).numpy(), tf.convert_to_tensor(g_want).numpy(), **TOL)


def test_length_buckets_hold_each_example_with_a_token_once_in_the_narrowest_width():
    """``_length_buckets``: an example without a token is in no bucket; every other one is in the first bucket whose
    width holds its last real position (widths ceil(f L) for f in BUCKET_WIDTHS, then L), its tokens in order."""
    lengths = np.array([0, 1, 2, 3, 5, 8, 12, 16, 0, 4])
    mask = np.arange(16)[None, :] < lengths[:, None]
    mask[9] = np.arange(16) == 9                           # one token at position 9: the bucket follows its extent
    p = pack(tf.constant(mask))
    widths = [int(np.ceil(f * 16)) for f in attention.BUCKET_WIDTHS] + [16]
    extent = np.array([np.max(np.nonzero(m)[0]) + 1 if m.any() else 0 for m in mask])
    index, seen = p.index.numpy(), []
    for k, (tokens, where, bmask) in enumerate(attention._length_buckets(p)):
        tokens, where, bmask = tokens.numpy(), where.numpy(), bmask.numpy()
        rows = sorted(set(index[tokens, 0]))
        assert bmask.shape == (len(rows), widths[k])
        for r in rows:
            assert extent[r] <= widths[k] and (k == 0 or extent[r] > widths[k - 1])
            np.testing.assert_array_equal(bmask[rows.index(r)], mask[r, :widths[k]])
        np.testing.assert_array_equal(where[:, 1], index[tokens, 1])
        np.testing.assert_array_equal(where[:, 0], [rows.index(r) for r in index[tokens, 0]])
        seen += list(tokens)
    assert sorted(seen) == list(range(len(index)))          # each token once, the empty examples nowhere
