"""FusedAdam (tfmsr.core.optim): the same trajectory and checkpoint as Keras' Adam, in fewer kernels."""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfmsr.core.optim import FusedAdam, make_optimizer


def _model():
    """A tiny embedding + dense model on planted data: ids repeat within a batch (duplicate-id gradients)."""
    keras.utils.set_random_seed(0)
    ids = keras.Input((3,), dtype="int64")
    emb = keras.layers.Embedding(40, 4, name="emb")(ids)
    out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(emb))
    return keras.Model(ids, out)


def _train(optimizer, steps=6):
    model = _model()
    model.compile(optimizer=optimizer, loss="binary_crossentropy")
    rng = np.random.default_rng(1)
    x = rng.integers(0, 40, (steps * 32, 3))
    y = (x[:, 0] % 2).astype("float32")
    losses = [float(model.train_on_batch(x[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32])) for i in range(steps)]
    return model, losses


def test_fused_adam_follows_keras_adam_on_sparse_and_dense_gradients():
    ref, ref_losses = _train(keras.optimizers.Adam(0.05))
    got, got_losses = _train(make_optimizer("adam", 0.05))
    assert isinstance(got.optimizer, FusedAdam)
    np.testing.assert_allclose(got_losses, ref_losses, rtol=1e-5)
    assert ref_losses[-1] < ref_losses[0]  # the planted label is learnt: the updates are not no-ops
    for a, b in zip(got.weights, ref.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    for a, b in zip(got.optimizer.variables, ref.optimizer.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_fused_adam_checkpoint_restores_into_keras_adam(tmp_path):
    got, _ = _train(FusedAdam(0.05), steps=2)
    path = tf.train.Checkpoint(model=got, optimizer=got.optimizer).write(str(tmp_path / "ckpt"))
    ref = _model()
    ref.compile(optimizer=keras.optimizers.Adam(0.05), loss="binary_crossentropy")
    ref.optimizer.build(ref.trainable_variables)
    tf.train.Checkpoint(model=ref, optimizer=ref.optimizer).read(path).assert_consumed()
    for a, b in zip(got.optimizer.variables, ref.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_densify_sums_duplicate_rows_as_a_segment_sum():
    from tfmsr.core.optim import densify

    rng = np.random.default_rng(2)
    idx = tf.constant(rng.integers(0, 7, 40))
    values = tf.constant(rng.normal(size=(40, 3)).astype(np.float32))
    got = densify(tf.IndexedSlices(values, idx, tf.constant([9, 3], tf.int64))).numpy()
    np.testing.assert_allclose(got, tf.math.unsorted_segment_sum(values, idx, 9).numpy(), rtol=1e-6, atol=1e-6)
    assert got.shape == (9, 3) and not got[7:].any()


def test_fused_adam_makes_the_step_scalars_once_per_traced_step():
    """The beta powers, learning rate and epsilon are made once per step and dtype, not once per variable (two
    ``Pow`` a variable before): the trajectory test above checks that the shared values are the right ones."""
    model = _model()
    model.compile(optimizer=FusedAdam(0.05), loss="binary_crossentropy")
    x, y = np.arange(96).reshape(32, 3) % 40, np.ones(32, np.float32)
    model.train_on_batch(x, y)
    graph = model.train_function.get_concrete_function(
        iter(tf.data.Dataset.from_tensors((x, y)).repeat())).graph
    ops = [op.type for op in graph.get_operations()]
    assert len(model.trainable_variables) == 3 and ops.count("ResourceApplyAdam") == 3
    assert ops.count("Pow") == 2
