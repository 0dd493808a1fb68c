"""The mini-batch aware L2's strength does not depend on the batch size (FeatureEmbedding.batch_penalty)."""
import numpy as np
import tensorflow as tf

from tfmsr.features import Schema
from tfmsr.layers import FeatureEmbedding

N, EPOCHS = 48, 4
SCHEMA = Schema.from_dict({
    "scenario": {"name": "scenario", "values": ["a", "b"]}, "labels": ["click"], "user_key": "user_id",
    "features": [{"name": "user_id", "kind": "categorical", "group": "user", "vocab_size": 7, "dim": 3},
                 {"name": "item_id", "kind": "categorical", "group": "item", "vocab_size": 30, "dim": 3},
                 {"name": "hist", "kind": "sequence", "group": "behavior", "share": "item_id", "length": 4}]},
    "test_batch_l2_scale")


def _data():
    """N rows: 6 users (each read by most batches), Zipf-like items (a few frequent, many read once), a history."""
    rng = np.random.default_rng(3)
    items = np.minimum(rng.zipf(1.6, size=N), 29)
    hist = np.where(rng.random((N, 4)) < 0.6, np.minimum(rng.zipf(1.6, size=(N, 4)), 29), 0)
    return {"user_id": rng.integers(1, 7, N), "item_id": items, "hist": hist}, rng.integers(0, 2, N)


def _epoch_gradients(batch: int, weights, data, labels):
    """Per table, the penalty's and the batch-mean BCE's gradients summed over the last epoch, the weights
    held fixed (learning rate 0), after EPOCHS - 1 epochs in the same order build up the counts."""
    emb = FeatureEmbedding(SCHEMA, batch_l2=0.3, epoch_rows=N)
    for name in ("user_id", "item_id"):
        emb.tables[name].build((None,))
    tables = [emb.tables["user_id"].embeddings, emb.tables["item_id"].embeddings]
    for var, value in zip(tables, weights):
        var.assign(value)
    total = {"penalty": [0.0, 0.0], "data": [0.0, 0.0]}
    for epoch in range(EPOCHS):
        for start in range(0, N, batch):
            x = {k: tf.constant(v[start:start + batch], tf.int64) for k, v in data.items()}
            y = tf.constant(labels[start:start + batch], tf.float32)
            with tf.GradientTape(persistent=True) as tape:
                z = tf.reduce_sum(emb.embed(x, "user_id") * emb.embed(x, "item_id") + emb.pooled(x, "hist"), 1)
                data_loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y, z))
                penalty = emb.batch_penalty()
            if epoch < EPOCHS - 1:
                continue
            for key, loss in (("penalty", penalty), ("data", data_loss)):
                grads = tape.gradient(loss, tables)
                total[key] = [t + tf.convert_to_tensor(g).numpy() for t, g in zip(total[key], grads)]
    return total


def test_penalty_gradient_relative_to_data_gradient_is_the_same_at_two_batch_sizes():
    """Same data, same weights, batch 4 and 16: per table, |penalty gradient| / |data gradient| summed over an
    epoch agrees (DIN's alpha_mj / n_j made it ~4x stronger at 16); the data gradient alone halves twice."""
    rng = np.random.default_rng(5)
    weights = [rng.normal(size=(7, 3)).astype(np.float32), rng.normal(size=(30, 3)).astype(np.float32)]
    data, labels = _data()
    small, large = (_epoch_gradients(b, weights, data, labels) for b in (4, 16))
    for t in range(2):
        data_small, data_large = np.linalg.norm(small["data"][t]), np.linalg.norm(large["data"][t])
        np.testing.assert_allclose(data_small / data_large, 4.0, rtol=1e-4)  # the batch mean: 1 / B
        ratio_small = np.linalg.norm(small["penalty"][t]) / data_small
        ratio_large = np.linalg.norm(large["penalty"][t]) / data_large
        assert ratio_small > 0
        np.testing.assert_allclose(ratio_large, ratio_small, rtol=0.05)
