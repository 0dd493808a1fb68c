"""The masked mean of tfmsr/layers/embedding.py, each against a NumPy re-computation of its equation."""
import numpy as np
import tensorflow as tf

from layer_reference import RNG, TOL, rand

from tfmsr.layers import masked_mean


def test_masked_mean_over_real_positions_and_zero_for_empty_rows():
    seq, mask = rand(5, 7, 3), RNG.random((5, 7)) > 0.4
    mask[0] = False
    m = mask[..., None].astype(np.float32)
    want = (seq * m).sum(1) / np.maximum(m.sum(1), 1.0)
    got = masked_mean(tf.constant(seq), tf.constant(mask)).numpy()
    np.testing.assert_allclose(got, want, **TOL)
    assert not got[0].any()


def _sequence_schema():
    from tfmsr.features import Schema

    return Schema.from_dict({
        "scenario": {"name": "scenario", "values": ["a", "b"]}, "labels": ["click"], "user_key": "user_id",
        "features": [{"name": "user_id", "kind": "categorical", "group": "user", "vocab_size": 9, "dim": 3},
                     {"name": "item_id", "kind": "categorical", "group": "item", "vocab_size": 12, "dim": 4},
                     {"name": "hist", "kind": "sequence", "group": "behavior", "share": "item_id", "length": 6}]},
        "test_embedding")


def test_pooled_sequence_equals_the_masked_mean_of_its_lookup_with_the_same_table_gradient():
    """The sparse-matmul pooling: the masked mean of the looked-up rows (duplicate ids counted twice, an OOV
    id and padding left out, an empty row zero) and the same table gradient; under a strategy the gather path."""
    from tfmsr.layers import FeatureEmbedding

    emb = FeatureEmbedding(_sequence_schema())
    hist = np.array([[3, 3, 5, 0, 0, 0], [0, 0, 0, 0, 0, 0], [11, 99, 1, 2, 7, 4], [-4, 6, 0, 0, 0, 0]])
    x = {"hist": tf.constant(hist, tf.int64), "item_id": tf.constant([1, 2, 3, 4], tf.int64)}
    emb.embed(x, "item_id")
    table = emb.tables["item_id"].embeddings
    with tf.GradientTape(persistent=True) as tape:
        got = emb.pooled(x, "hist")
        want = masked_mean(emb.embed(x, "hist"), emb.mask(x, "hist"))
        w = tf.constant(rand(4, 4))
        loss_got, loss_want = tf.reduce_sum(got * w), tf.reduce_sum(want * w)
    np.testing.assert_allclose(got.numpy(), want.numpy(), **TOL)
    rows = table.numpy()
    np.testing.assert_allclose(got.numpy()[0], (2 * rows[3] + rows[5]) / 3, **TOL)
    assert not got.numpy()[1].any()
    g_got, g_want = tape.gradient(loss_got, table), tape.gradient(loss_want, table)
    assert not isinstance(g_got, tf.IndexedSlices)  # one dense [V, d] product, nothing to scatter
    np.testing.assert_allclose(g_got.numpy(), tf.convert_to_tensor(g_want).numpy(), **TOL)
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        np.testing.assert_allclose(emb.pooled(x, "hist").numpy(), want.numpy(), **TOL)
