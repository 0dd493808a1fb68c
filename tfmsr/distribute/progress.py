"""The training progress line of ``model.fit``, local or under a distribution strategy, and the clock of
its rate: training-step time only (an epoch's validation, checkpoints and other epoch-end work excluded)."""
from __future__ import annotations

import datetime
import time
from typing import Callable, Optional

import tensorflow as tf
import tf_keras as keras

from tfmsr.core.progress import log as log_line


class TrainClock:
    """Seconds spent training: runs from ``start`` (an epoch's begin) to ``stop`` (the end of its last step)
    and is paused in between, so whatever runs at an epoch's end -- the per-scenario validation, checkpoints,
    the accounting -- is never in a rate, whatever the callbacks' order. ``clock``: the time source."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock, self.total, self._since = clock, 0.0, None

    @property
    def running(self) -> bool:
        return self._since is not None

    def start(self) -> None:
        if self._since is None:
            self._since = self.clock()

    def stop(self) -> None:
        if self._since is not None:
            self.total += self.clock() - self._since
            self._since = None

    def elapsed(self) -> float:
        """Training seconds so far (the running part included)."""
        return self.total + (self.clock() - self._since if self._since is not None else 0.0)


def fetch_logs(logs, what: str, log=log_line):
    """A step's logs, copied here when they are a ParameterServerStrategy ``RemoteValue``; None, said in the
    log, when the worker that ran the step was lost before they were copied (the step itself counted: its
    batch and update are in the parameter servers' counts; whether the run goes on is the coordinator's
    call, so a lost parameter server still fails it at the next step)."""
    if not hasattr(logs, "fetch"):
        return logs
    try:
        return logs.fetch()
    except (tf.errors.UnavailableError, tf.errors.CancelledError) as e:
        log(f"[cluster] {what}: the step's logs were on a lost worker ({type(e).__name__}), not read")
        return None


class EveryNSteps(keras.callbacks.Callback):
    """A callback that acts every ``every`` steps of an epoch whatever the steps per call of the train function
    (``train.steps_per_execution``): Keras calls it once per call, ``batch`` = the call's first step at its
    begin, its last step at its end."""

    def on_train_batch_begin(self, batch, logs=None):
        self._first = batch

    def due(self, batch: int, every: int) -> bool:
        """A multiple of ``every`` steps ended in this call (steps ``first .. batch``; one step: ``(batch + 1)
        % every == 0``)."""
        return (batch + 1) // every > getattr(self, "_first", batch) // every


def last_step_of_epoch(callback: keras.callbacks.Callback, batch: int) -> bool:
    """True at the end of an epoch's last step (``batch`` counts from 0 in the epoch)."""
    steps: Optional[int] = (callback.params or {}).get("steps")
    return steps is not None and batch + 1 >= steps


class Progress(EveryNSteps):
    """Every ``every`` steps: global step, examples/s, loss, AUC, the epoch's counts so far (non-finite
    values, out-of-vocabulary ids) and ETA on one line. The rate counts training-step time only
    (``TrainClock``: an epoch's validation is not in it); ``clock`` is its time source."""

    def __init__(self, batch_size: int, steps_per_epoch: int, epochs: int, every: int, log=log_line,
                 clock: Callable[[], float] = time.time):
        super().__init__()
        self._supports_tf_logs = True  # logs stay tensors; only read every `every` steps
        self.batch_size, self.spe, self.epochs, self.every, self.log = batch_size, steps_per_epoch, epochs, every, log
        self.clock = TrainClock(clock)

    def on_train_begin(self, logs=None):
        self._t = self.clock.elapsed()
        self._step = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch  # not from the step count: ps make-up steps and steps run again advance that too
        self.clock.start()

    def on_train_batch_end(self, batch, logs=None):
        if self.due(batch, self.every):
            self._line(int(self.model.optimizer.iterations.numpy()), logs)
        if last_step_of_epoch(self, batch):
            self.clock.stop()

    def _line(self, step: int, logs) -> None:
        now = self.clock.elapsed()
        if self._step is not None:
            rate = (step - self._step) * self.batch_size / max(now - self._t, 1e-9)
            left = max(self.epochs * self.spe - step, 0) * self.batch_size / max(rate, 1e-9)
            vals = "  ".join(f"{k} {float(v):.4f}" for k, v in (logs or {}).items() if k in ("loss", "auc"))
            vals += "".join(f"  {k} {int(v)}" for k, v in (logs or {}).items() if k in ("non_finite", "oov_ids"))
            self.log(f"[{self.model.model_name}] epoch {self._epoch + 1}/{self.epochs}  step {step}/"
                     f"{self.epochs * self.spe}  {rate:,.0f} ex/s  {vals}  ETA {datetime.timedelta(seconds=int(left))}"
                     f"{self.more()}")
        self._t, self._step = now, step

    def more(self) -> str:
        """Anything a subclass adds at the end of the line."""
        return ""
