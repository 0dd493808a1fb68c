"""The training contract (tfmsr.core.model.TrainableModel): the losses a model declares are what its one
train_step minimises, post_step runs once after each update, test_step changes no variable, and the loss
trackers stay out of checkpoints."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tfmsr.core.model import TrainableModel
from tfmsr.data.pipeline import make_dataset, split_files
from tfmsr.ranking.models import build


def _batch(synth_dir, schema, n):
    x, y = next(iter(make_dataset(split_files(synth_dir, "train"), schema, n, training=False)))
    return dict(x), y


def _bce(p, y):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z.astype(np.float64)))


def test_saml_step_minimises_bce_plus_weighted_aux(synth_dir, synth_schema):
    """Eq. 5 on a tiny batch, in NumPy: total = BCE(own branch) + aux_weight * BCE(auxiliary logit); the
    step's logged loss is that total and one SGD step moves every weight by -lr * d total / d w."""
    model = build("saml", synth_schema, {"hidden": [8, 4], "aux_weight": 0.7})
    lr = 0.1
    model.compile(optimizer=keras.optimizers.SGD(lr))
    x, y = _batch(synth_dir, synth_schema, 16)
    out = model.forward(x, training=True)
    yy = y.numpy().astype(np.float64)
    own = out["logits"].numpy()[np.arange(16), x["scenario"].numpy()]
    want = _bce(_sigmoid(own), yy) + 0.7 * _bce(_sigmoid(out["aux_logit"].numpy()), yy)
    with tf.GradientTape() as tape:
        total = model.total_loss(model.compute_losses(x, y, training=True))
    variables = model.trainable_variables
    grads = [None if g is None else tf.convert_to_tensor(g).numpy() for g in tape.gradient(total, variables)]
    before = [v.numpy().copy() for v in variables]
    logs = model.train_step((dict(x), y))
    assert float(total) == pytest.approx(want, rel=1e-4)
    assert float(logs["loss"]) == pytest.approx(want, rel=1e-4)
    assert float(logs["bce"]) + 0.7 * float(logs["aux"]) == pytest.approx(want, rel=1e-4)
    moved = 0
    for v, b, g in zip(variables, before, grads):
        np.testing.assert_allclose(v.numpy(), b if g is None else b - lr * g, rtol=1e-4, atol=1e-6, err_msg=v.name)
        moved += g is not None and bool(np.any(g))
    assert moved > len(variables) // 2


class _Linear(TrainableModel):
    """y ~ w x + b with a squared error; post_step records what it saw (real variables, no mocks)."""

    loss_names = ("mse",)

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)
        self.post_calls = tf.Variable(0, trainable=False)
        self.post_iterations = tf.Variable(-1, dtype=tf.int64, trainable=False)
        self.post_kernel = tf.Variable(tf.zeros([2, 1]), trainable=False)

    def call(self, x, training=False):
        return self.dense(x)[:, 0]

    def compute_losses(self, features, labels, training=False, outputs=None):
        outputs = self.step_outputs(features, training) if outputs is None else outputs
        return {"mse": tf.reduce_mean(tf.square(outputs["prediction"] - labels))}

    def post_step(self, features, labels, outputs):
        self.post_calls.assign_add(1)
        self.post_iterations.assign(tf.cast(self.optimizer.iterations, tf.int64))
        self.post_kernel.assign(self.dense.kernel)


def _linear_data(n=64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 2)).astype(np.float32)
    return x, (x @ np.array([1.5, -2.0], np.float32) + 0.5).astype(np.float32)


def test_post_step_runs_once_per_step_after_the_update():
    model = _Linear()
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    x, y = _linear_data()
    model(x[:1])
    start = model.dense.kernel.numpy().copy()
    history = model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat(), steps_per_epoch=3,
                        epochs=2, verbose=0)
    assert int(model.post_calls.numpy()) == 6                              # once per step
    assert int(model.post_iterations.numpy()) == 6                         # after the 6th optimizer update
    np.testing.assert_array_equal(model.post_kernel.numpy(), model.dense.kernel.numpy())  # the updated weights
    assert not np.allclose(start, model.dense.kernel.numpy())
    assert set(history.history) == {"loss"}                                # one component: just the total
    assert history.history["loss"][1] < history.history["loss"][0]


def test_test_step_updates_no_variable(synth_dir, synth_schema):
    model = build("saml", synth_schema, {"hidden": [8, 4]})
    model.compile(optimizer=keras.optimizers.Adam(0.1), metrics=[keras.metrics.AUC(name="auc")])
    x, y = _batch(synth_dir, synth_schema, 32)
    model(x)
    counters = {id(v) for m in model.metrics for v in m.variables}          # examples, oov_ids: they count
    weights = [v for v in model.variables if id(v) not in counters]
    before = [v.numpy().copy() for v in weights]
    logs = model.test_step((dict(x), y))
    assert {"loss", "bce", "aux", "auc", "examples"} <= set(logs)
    assert float(logs["loss"]) == pytest.approx(float(logs["bce"]) + float(logs["aux"]), rel=1e-5)
    assert int(model.optimizer.iterations.numpy()) == 0
    for v, b in zip(weights, before):
        np.testing.assert_array_equal(v.numpy(), b, err_msg=v.name)
    assert float(model.examples.result()) == 32                            # the batch was still counted


def test_trackers_stay_out_of_checkpoints_and_compile_takes_no_loss(tmp_path):
    model = _Linear()
    with pytest.raises(TypeError, match="defines its losses"):
        model.compile(optimizer="sgd", loss="mse")
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    x, y = _linear_data(16)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert [m.name for m in model.metrics] == ["loss"]
    keys = [k for k, _ in tf.train.list_variables(model.save_weights(str(tmp_path / "ckpt")) or
                                                  str(tmp_path / "ckpt"))]
    assert not [k for k in keys if "loss" in k or "tracker" in k]
    assert any("dense" in k for k in keys)


def test_undeclared_loss_name_is_refused():
    class Undeclared(_Linear):
        loss_names = ("mse",)

        def compute_losses(self, features, labels, training=False, outputs=None):
            return {"mse": tf.constant(1.0), "extra": tf.constant(2.0)}

    model = Undeclared()
    model.compile(optimizer="sgd")
    x, y = _linear_data(8)
    with pytest.raises(TypeError, match=r"returned \['extra'\], not in its loss_names \['mse'\]"):
        model.train_step((tf.constant(x), tf.constant(y)))


def _rewritten_model_code():
    """The tfmsr functions outside the input pipeline (whose ``Dataset.map`` functions tf.data traces with
    AutoGraph) that AutoGraph has rewritten in this process: its transpiler's cache of code objects."""
    from tensorflow.python.autograph.impl import api

    files = [getattr(c, "co_filename", "") for c in list(api._TRANSPILER._cache._cache)]
    return sorted(f for f in files if "/tfmsr/" in f and not any(f"/tfmsr/{d}/" in f for d in ("data", "features")))


def test_steps_are_traced_without_autograph(synth_dir, synth_schema):
    """fit and evaluate trace the model's steps as plain Python: AutoGraph rewrites no tfmsr function outside
    the input pipeline (on the old code it rewrote every layer in the call stack, 6-18 s of CPU a process)."""
    ds = make_dataset(split_files(synth_dir, "train"), synth_schema, 64, training=False).take(2)
    model = build("saml", synth_schema, {"hidden": [8, 4]})
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    before = _rewritten_model_code()
    hist = model.fit(ds, epochs=1, verbose=0).history
    model.evaluate(ds, verbose=0)
    assert sorted(set(_rewritten_model_code()) - set(before)) == []
    assert np.isfinite(hist["loss"]).all()
