"""One training contract for every model, ranking and retrieval (in the spirit of ``tfrs.Model.compute_loss``).

A model says what it minimises; :class:`TrainableModel` runs the step (``fit``, a cluster run and a direct
``model.train_step`` train the same thing):

* ``step_outputs(features, training)``: the forward pass of a step, a dict; ``prediction`` is what the
  compiled metrics read (ranking's AUC), other entries are auxiliary outputs (SAML's ``aux_logit``).
* ``compute_losses(features, labels, training, outputs=None)``: ``{name: scalar}``, the components of the
  objective. The step minimises ``sum_name loss_weights[name] * loss`` (weight 1 when not declared) plus the
  layers' regularization losses (``keras.regularizers``), the total logged as ``loss``.
* ``loss_names``: every name ``compute_losses`` may return. A model with several logs each component's
  epoch mean beside ``loss`` (a single component is just ``loss``).
* ``post_step(features, labels, outputs)``: runs once after each optimizer step (MuSeNet's eq. 14); no-op.
* ``unpack(data) -> (features, labels)``: an ``(x, y)`` tuple, or a dict of features without labels.

The loss trackers are created by ``compile`` (under the model's strategy) and attached untracked: they are in
no checkpoint, so the object graph of weights and optimizer slots, which resume and warm start restore by
path, is the model's own. ``compile`` takes no ``loss``: the model defines its losses.

The steps are traced as plain Python, without AutoGraph (``do_not_convert``): its source rewrite of every layer in
the call stack cost 6-18 s of CPU in each training process (each cluster role) for the same graph. A model
therefore uses no Python control flow on tensors (``tf.cond`` / ``tf.where``), as the export signatures require.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import tensorflow as tf
import tf_keras as keras

TOTAL = "loss"  # the log key of the total objective


class TrainableModel(keras.Model):
    """Base of every model: one ``train_step`` / ``test_step`` over the model's ``compute_losses``."""

    loss_names: Tuple[str, ...] = ()

    @property
    def loss_weights(self) -> Dict[str, float]:
        """``{name: weight}`` of the components that do not count once (e.g. SAML's ``aux_weight``)."""
        return {}

    # ------------------------------------------------------------------ what a model defines
    def unpack(self, data) -> Tuple[dict, Optional[tf.Tensor]]:
        """``(features, labels)`` of a batch: ``(x, y)`` tuples; a dict alone has no labels."""
        if isinstance(data, (tuple, list)):
            return data[0], (data[1] if len(data) > 1 else None)
        return data, None

    def step_outputs(self, features, training: bool = False) -> Dict[str, tf.Tensor]:
        """The forward pass of a step: ``{"prediction": model(features)}`` unless a model returns more."""
        return {"prediction": self(features, training=training)}

    def compute_losses(self, features, labels, training: bool = False,
                       outputs: Optional[Dict[str, tf.Tensor]] = None) -> Dict[str, tf.Tensor]:
        """``{name: scalar}``: the components of the objective (``outputs``: this step's ``step_outputs``,
        computed here when not given)."""
        raise TypeError(f"{type(self).__name__} must define compute_losses()")

    def post_step(self, features, labels, outputs: Dict[str, tf.Tensor]) -> None:
        """Runs once after each optimizer step (a hook; nothing by default)."""
        return None

    # ------------------------------------------------------------------ the step
    def total_loss(self, losses: Dict[str, tf.Tensor]) -> tf.Tensor:
        """``sum_name loss_weights[name] * losses[name]`` plus the layers' regularization losses."""
        undeclared = sorted(set(losses) - set(self.loss_names))
        if undeclared:
            raise TypeError(f"{type(self).__name__}.compute_losses returned {undeclared}, not in its "
                            f"loss_names {list(self.loss_names)}")
        weights = self.loss_weights
        return tf.add_n([weights.get(k, 1.0) * v for k, v in losses.items()] + list(self.losses))

    @tf.autograph.experimental.do_not_convert  # see the module docstring: the steps are traced without AutoGraph
    def train_step(self, data):
        """One optimizer step on the total of ``compute_losses`` (per replica: the total over the number of
        replicas in sync, as Keras scales a mean loss), then ``post_step``."""
        features, labels = self.unpack(data)
        with tf.GradientTape() as tape:
            outputs = self.step_outputs(features, training=True)
            losses = self.compute_losses(features, labels, training=True, outputs=outputs)
            total = self.total_loss(losses)
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = total / replicas if replicas > 1 else total
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
        self.post_step(features, labels, outputs)
        return self.step_logs(labels, outputs, losses, total)

    @tf.autograph.experimental.do_not_convert
    def test_step(self, data):
        """The losses and metrics of a batch in inference mode; no variable changes."""
        features, labels = self.unpack(data)
        outputs = self.step_outputs(features, training=False)
        losses = self.compute_losses(features, labels, training=False, outputs=outputs)
        return self.step_logs(labels, outputs, losses, self.total_loss(losses))

    def step_logs(self, labels, outputs, losses, total) -> Dict[str, tf.Tensor]:
        """Update the loss trackers (example-weighted when there are labels) and the compiled metrics on
        ``outputs["prediction"]``; the logs: ``loss``, this step's components, every other metric."""
        trackers = self._loss_trackers
        weight = None if labels is None else tf.shape(labels)[0]
        trackers[TOTAL].update_state(total, sample_weight=weight)
        for name, value in losses.items():
            if name in trackers:
                trackers[name].update_state(value, sample_weight=weight)
        if labels is not None and "prediction" in outputs:
            self.compiled_metrics.update_state(labels, outputs["prediction"])
        skipped = {id(m) for k, m in trackers.items() if k != TOTAL and k not in losses}
        return {m.name: m.result() for m in self.metrics if id(m) not in skipped}

    # ------------------------------------------------------------------ compile and metrics
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """Keras' compile (optimizer, metrics on the predictions) plus the loss trackers; no ``loss``."""
        if loss is not None:
            raise TypeError(f"{type(self).__name__}.compile: the model defines its losses (compute_losses); "
                            f"compile takes none, got loss={loss!r}")
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)
        names = (TOTAL,) + (tuple(self.loss_names) if len(self.loss_names) > 1 else ())
        with self.distribute_strategy.scope():
            trackers = {n: keras.metrics.Mean(name=n) for n in names}
        object.__setattr__(self, "_loss_trackers", trackers)  # untracked: in no checkpoint

    @property
    def metrics(self):
        """The loss trackers first, then Keras' metrics (compiled, and those the model holds)."""
        return list(getattr(self, "_loss_trackers", {}).values()) + super().metrics
