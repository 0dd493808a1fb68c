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


def test_ids_mask_and_oov_count_at_the_vocabulary_edges():
    """The clamp (ids in [1, vocab) kept, else 0), the mask and the OOV count (outside [0, vocab)) against
    NumPy at the edges of int64 and of the vocabulary (12 rows): the unsigned compares overflow nowhere."""
    from tfmsr.layers import FeatureEmbedding

    emb = FeatureEmbedding(_sequence_schema())
    lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    hist = np.array([[lo, -1, 0, 1, 11, 12], [hi, 13, 5, lo + 1, hi - 1, 0]], np.int64)
    x = {"hist": tf.constant(hist), "item_id": tf.constant([12, -7], tf.int64), "user_id": tf.constant([8, 9])}
    valid = (hist > 0) & (hist < 12)
    np.testing.assert_array_equal(emb.ids(x, "hist").numpy(), np.where(valid, hist, 0))
    np.testing.assert_array_equal(emb.mask(x, "hist").numpy(), valid)
    assert int(emb.oov_count(x)) == int(((hist < 0) | (hist >= 12)).sum()) + 2 + 1


def _batch_penalty_numpy(tables, reads, counts, l2, scale, batch):
    """Eq. 4 by hand, batch-size free: ``l2 * (1024 / batch) * sum_j ||w_j||^2 / k_j`` over the real ids (> 0)
    each table's features read, k_j = batches that read j so far x ``scale`` (epoch rows / rows seen)."""
    total = 0.0
    for table, ids in reads.items():
        rows = np.unique(ids[(ids > 0)])
        total += sum(float(np.sum(tables[table][j] ** 2)) / (counts[table][j] * scale) for j in rows)
    return l2 * (1024.0 / batch) * total


def test_batch_penalty_is_the_mini_batch_aware_l2_of_the_rows_read_with_sparse_gradients():
    """DIN eq. 4-5 on two batches: only real ids read (item_id and the shared hist; padding 0 and an OOV id
    out), each row / the batches that read it so far (once per batch, however many features or positions
    read it), times epoch_rows / rows seen, times 1024 / batch; the table gradients stay IndexedSlices; no
    lookups, no penalty; the same feature read twice counts once."""
    from tfmsr.layers import FeatureEmbedding

    emb = FeatureEmbedding(_sequence_schema(), batch_l2=0.5, epoch_rows=6)
    batches = [({"user_id": [1, 2], "item_id": [3, 4], "hist": [[3, 3, 5, 0, 0, 0], [99, 0, 0, 0, 0, 0]]}),
               ({"user_id": [2, 2], "item_id": [5, 7], "hist": [[3, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]})]
    counts = {"user_id": np.zeros(9), "item_id": np.zeros(12)}
    assert emb.batch_penalty() is None
    for step, batch in enumerate(batches, start=1):
        x = {k: tf.constant(v, tf.int64) for k, v in batch.items()}
        with tf.GradientTape() as tape:
            emb.embed(x, "user_id"), emb.embed(x, "item_id"), emb.embed(x, "item_id"), emb.pooled(x, "hist")
            penalty = emb.batch_penalty()
        reads = {"user_id": np.array(batch["user_id"]),
                 "item_id": np.concatenate([batch["item_id"], np.ravel(batch["hist"])])}
        for table, ids in reads.items():
            counts[table][np.unique(ids[(ids > 0) & (ids < len(counts[table]))])] += 1.0
        reads["item_id"] = reads["item_id"][reads["item_id"] < 12]
        tables = {t: emb.tables[t].embeddings.numpy() for t in counts}
        want = _batch_penalty_numpy(tables, reads, counts, 0.5, scale=6 / (2.0 * step), batch=2)
        np.testing.assert_allclose(float(penalty), want, rtol=1e-5)
        for table in counts:
            np.testing.assert_allclose(emb.counts[table].numpy(), counts[table])
        grads = tape.gradient(penalty, [emb.tables[t].embeddings for t in counts])
        assert all(isinstance(g, tf.IndexedSlices) for g in grads)
        assert sorted(np.unique(grads[1].indices.numpy())) == sorted(np.unique(reads["item_id"][reads["item_id"] > 0]))
    assert emb.batch_penalty() is None  # consumed: nothing read since


def test_batch_penalty_off_by_default_and_lookups_keep_sparse_gradients():
    """Without ``batch_l2`` there are no count variables and no penalty; a lookup's gradient is IndexedSlices."""
    from tfmsr.layers import FeatureEmbedding

    emb = FeatureEmbedding(_sequence_schema())
    x = {"item_id": tf.constant([1, 2], tf.int64)}
    with tf.GradientTape() as tape:
        out = tf.reduce_sum(emb.embed(x, "item_id"))
    assert isinstance(tape.gradient(out, emb.tables["item_id"].embeddings), tf.IndexedSlices)
    assert emb.batch_penalty() is None and not emb.counts and not emb.non_trainable_weights


SCALE_N, SCALE_EPOCHS = 48, 4


def _scale_data():
    """SCALE_N rows: 8 users (each read by most batches), Zipf-like items (a few frequent, many read once), a history."""
    rng = np.random.default_rng(3)
    items = np.minimum(rng.zipf(1.6, size=SCALE_N), 11)
    hist = np.where(rng.random((SCALE_N, 6)) < 0.6, np.minimum(rng.zipf(1.6, size=(SCALE_N, 6)), 11), 0)
    return {"user_id": rng.integers(1, 9, SCALE_N), "item_id": items, "hist": hist}, rng.integers(0, 2, SCALE_N)


def _scale_epoch_gradients(batch: int, weights, data, labels):
    """Per table, the penalty's and the batch-mean BCE's gradients summed over the last epoch, the weights
    held fixed (learning rate 0), after SCALE_EPOCHS - 1 epochs in the same order build up the counts."""
    from tfmsr.layers import FeatureEmbedding

    emb = FeatureEmbedding(_sequence_schema(), batch_l2=0.3, epoch_rows=SCALE_N)
    for name in ("user_id", "item_id"):
        emb.tables[name].build((None,))
    tables = [emb.tables["user_id"].embeddings, emb.tables["item_id"].embeddings]
    for var, value in zip(tables, weights):
        var.assign(value)
    total = {"penalty": [0.0, 0.0], "data": [0.0, 0.0]}
    for epoch in range(SCALE_EPOCHS):
        for start in range(0, SCALE_N, batch):
            x = {k: tf.constant(v[start:start + batch], tf.int64) for k, v in data.items()}
            y = tf.constant(labels[start:start + batch], tf.float32)
            with tf.GradientTape(persistent=True) as tape:
                z = tf.reduce_sum(emb.embed(x, "user_id"), 1) + tf.reduce_sum(
                    emb.embed(x, "item_id") * emb.pooled(x, "hist"), 1)
                data_loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y, z))
                penalty = emb.batch_penalty()
            if epoch < SCALE_EPOCHS - 1:
                continue
            for key, loss in (("penalty", penalty), ("data", data_loss)):
                grads = tape.gradient(loss, tables)
                total[key] = [t + tf.convert_to_tensor(g).numpy() for t, g in zip(total[key], grads)]
    return total


def test_penalty_gradient_relative_to_data_gradient_is_the_same_at_two_batch_sizes():
    """Same data, same weights, batch 4 and 16: per table, |penalty gradient| / |data gradient| summed over an
    epoch agrees (DIN's alpha_mj / n_j form: 2.8x and 2.4x stronger at 16); the data gradient is 1/4."""
    rng = np.random.default_rng(5)
    weights = [rng.normal(size=(9, 3)).astype(np.float32), rng.normal(size=(12, 4)).astype(np.float32)]
    data, labels = _scale_data()
    small, large = (_scale_epoch_gradients(b, weights, data, labels) for b in (4, 16))
    for t in range(2):
        data_small, data_large = np.linalg.norm(small["data"][t]), np.linalg.norm(large["data"][t])
        np.testing.assert_allclose(data_small / data_large, 4.0, rtol=1e-4)  # the batch mean: 1 / B
        ratio_small = np.linalg.norm(small["penalty"][t]) / data_small
        ratio_large = np.linalg.norm(large["penalty"][t]) / data_large
        assert ratio_small > 0
        np.testing.assert_allclose(ratio_large, ratio_small, rtol=0.05)
