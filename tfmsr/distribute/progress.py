"""The training progress line of ``model.fit``, local or under a distribution strategy."""
from __future__ import annotations

import datetime
import time

import tf_keras as keras

from tfmsr.core.progress import log as log_line


class Progress(keras.callbacks.Callback):
    """Every ``every`` steps: global step, examples/s, loss, AUC, the epoch's counts so far (non-finite
    values, out-of-vocabulary ids) and ETA on one line."""

    def __init__(self, batch_size: int, steps_per_epoch: int, epochs: int, every: int, log=log_line):
        super().__init__()
        self._supports_tf_logs = True  # logs stay tensors; only read every `every` steps
        self.batch_size, self.spe, self.epochs, self.every, self.log = batch_size, steps_per_epoch, epochs, every, log

    def on_train_begin(self, logs=None):
        self._t = time.time()
        self._step = None

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy()) if (batch + 1) % self.every == 0 else None
        if step is None:
            return
        now = time.time()
        if self._step is not None:
            rate = (step - self._step) * self.batch_size / max(now - self._t, 1e-9)
            left = (self.epochs * self.spe - step) * self.batch_size / max(rate, 1e-9)
            vals = "  ".join(f"{k} {float(v):.4f}" for k, v in (logs or {}).items() if k in ("loss", "auc"))
            vals += "".join(f"  {k} {int(v)}" for k, v in (logs or {}).items() if k in ("non_finite", "oov_ids"))
            self.log(f"[{self.model.model_name}] epoch {(step - 1) // self.spe + 1}/{self.epochs}  step {step}/"
                     f"{self.epochs * self.spe}  {rate:,.0f} ex/s  {vals}  ETA {datetime.timedelta(seconds=int(left))}")
        self._t, self._step = now, step
