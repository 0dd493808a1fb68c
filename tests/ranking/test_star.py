"""STAR's embedding initialisation switch and the shipped configuration (models/star.py, configs/star.yaml)."""
import numpy as np

from tfmsr.data.pipeline import make_dataset, split_files
from tfmsr.ranking.models import build


def _tables(model, x):
    model(x)
    return {name: t.embeddings.numpy() for name, t in model.embedding.tables.items()}


def test_embedding_std_sets_every_table(synth_dir, synth_schema):
    """``embedding_std``: every table starts N(0, std); None keeps the base's Glorot uniform (bounded by
    sqrt(6 / (rows + dim)), so a table wider than it is long can exceed 0.01 by far)."""
    (x, _), = make_dataset(split_files(synth_dir, "valid"), synth_schema, 64, training=False).take(1)
    small = _tables(build("star", synth_schema, {"hidden": [8], "embedding_std": 0.01}), x)
    glorot = _tables(build("star", synth_schema, {"hidden": [8]}), x)
    for name, w in small.items():
        assert abs(w.std() - 0.01) < 0.003 and np.abs(w).max() < 0.07, name
    assert max(w.std() for w in glorot.values()) > 0.05


def test_shipped_config_builds(synth_schema):
    """configs/star.yaml (PN off, N(0, 0.01) tables; measured in its header) is a valid STAR config."""
    import os

    from tfmsr.core.config import PACKAGED
    from tfmsr.ranking.config import load_config

    cfg = load_config(os.path.join(PACKAGED, "star.yaml"))
    model = build("star", synth_schema, cfg["model"]["params"])
    assert model.norm is None and model.embedding_initializer()["config"]["stddev"] == 0.01


def test_sorted_star_fcn_equals_partitioned(synth_dir, synth_schema):
    """Rows sorted by scenario once (``SORT_MIN_SCENARIOS``, used from 16 scenarios) give the per-layer
    partitioned path's own logits and every gradient, on the same weights."""
    import tensorflow as tf

    (x, y), = make_dataset(split_files(synth_dir, "valid"), synth_schema, 64, training=False).take(1)
    model = build("star", synth_schema, {"hidden": [8, 4]})
    model(x)
    runs = []
    for threshold in (1, 10 ** 9):          # sorted, then partitioned per layer
        model.SORT_MIN_SCENARIOS = threshold
        with tf.GradientTape() as tape:
            z = model.logits(x, training=True, own=True)
            loss = tf.reduce_sum(z * tf.cast(tf.reshape(y, [-1]), tf.float32) + tf.square(z))
        runs.append([z] + [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)])
    assert len(runs[0]) > 8
    for got, want in zip(*runs):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
