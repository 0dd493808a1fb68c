"""What a training run consumed, counted in the graph, and the guard that stops a diverged run (DESIGN
section 7: every example read once per epoch, nothing silent).

``EpochAccounting`` logs, at each epoch end, the examples the epoch actually consumed -- the model's
``examples`` metric, summed in ``train_step`` from the batches themselves (under ParameterServerStrategy
a variable on the parameter servers, under MultiWorkerMirroredStrategy summed over the workers when the
epoch's logs are read) -- next to the plan (steps x batch) and the split's rows, with the epoch's
non-finite values (``data.non_finite``) and out-of-vocabulary ids; a count that differs from the split's
rows is said so. Throughput is counted from the end of the first step (start-up and tracing excluded), in
training-step time only (``progress.TrainClock``: the epochs' validation excluded).

``LossGuard`` stops a run whose loss is NaN or infinite with ``NonFiniteLoss`` naming the step; raised
from inside ``fit``, so the trainer never reaches the code that writes ``final/`` (a TerminateOnNaN that
cannot be mistaken for a finished run). It reads the loss every step locally (the step has finished
anyway) and on the progress steps under ParameterServerStrategy (each read waits for a remote step).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Callable, List, Optional, Sequence

import tensorflow as tf
import tf_keras as keras

from tfmsr.data.guards import SHARD_KEY
from tfmsr.distribute.progress import TrainClock, last_step_of_epoch

_COUNTERS = "_tfmsr_counters"


class NonFiniteLoss(RuntimeError):
    """The training loss went NaN or infinite; the run stopped without writing final weights."""


def _value(logs, key: str) -> Optional[float]:
    if logs is None:
        return None
    if hasattr(logs, "fetch"):  # a ParameterServerStrategy RemoteValue
        logs = logs.fetch()
    v = logs.get(key) if hasattr(logs, "get") else None
    return None if v is None else float(v)


class LossGuard(keras.callbacks.Callback):
    """Raise ``NonFiniteLoss`` at the first step (checked every ``every`` steps) whose loss is not finite."""

    def __init__(self, model_dir: str, every: int = 1):
        super().__init__()
        self._supports_tf_logs = True  # logs stay tensors / remote values; read only on the checked steps
        self.model_dir, self.every = model_dir, every

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.every == 0:
            self._check(_value(logs, "loss"), f"step {int(self.model.optimizer.iterations.numpy())}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(_value(logs, "loss"), f"the end of epoch {epoch + 1}")

    def _check(self, loss: Optional[float], where: str) -> None:
        if loss is not None and not math.isfinite(loss):
            raise NonFiniteLoss(
                f"{self.model_dir}: the training loss is {loss} at {where}; training stopped and no final/ was "
                "written (backups hold only earlier steps). Check the data for extreme values or lower "
                "train.learning_rate, then re-run (it resumes from the last backup) or pass --overwrite")


class _Counts(keras.metrics.Metric):
    """Rows per index (a shard, or the worker of a step): a vector sum, outside the epoch logs."""

    def __init__(self, n: int, name: str):
        super().__init__(name=name)
        self.n = n
        self.counts = self.add_weight(name="counts", shape=(n,), initializer="zeros", dtype=tf.int64)

    def update_state(self, index):
        self.counts.assign_add(tf.math.bincount(tf.cast(index, tf.int32), minlength=self.n, maxlength=self.n,
                                                dtype=tf.int64))

    def result(self):
        return tf.identity(self.counts)

    def reset_state(self):
        self.counts.assign(tf.zeros([self.n], tf.int64))


class Counters:
    """The per-shard row counts (and, under ParameterServerStrategy, per-worker step counts) of a model's
    training steps; created under the strategy's scope, attached to the model untracked (not in its
    checkpoints or logs), read and reset by ``EpochAccounting``."""

    def __init__(self, files: Sequence[str], workers: int = 0):
        self.names = [os.path.basename(f) for f in files]
        self.shards = _Counts(len(files), "rows_per_shard")
        self.workers = _Counts(workers, "steps_per_worker") if workers else None

    def attach(self, model) -> "Counters":
        object.__setattr__(model, _COUNTERS, self)
        return self

    def reset(self) -> None:
        for c in (self.shards, self.workers):
            if c is not None:
                c.reset_state()


def attach_counters(model, files: Sequence[str], strategy=None, workers: int = 0) -> Counters:
    """``Counters`` for ``files`` (and ``workers`` step counts: ParameterServerStrategy) created under the
    strategy's scope and attached to ``model``."""
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        return Counters(files, workers).attach(model)


def count_inputs(model, x) -> None:
    """In a training step: pop the rows' shard indices from the features and count them (and the step's
    worker under ParameterServerStrategy) in the counters attached to ``model``, if any."""
    shards = x.pop(SHARD_KEY, None) if isinstance(x, dict) else None
    counters = getattr(model, _COUNTERS, None)
    if counters is None:
        return
    if shards is not None:
        counters.shards.update_state(shards)
    if counters.workers is not None:
        counters.workers.update_state(tf.reshape(tf.distribute.coordinator.experimental_get_current_worker_index(), [1]))


class EpochAccounting(keras.callbacks.Callback):
    """``[data] epoch N: n examples read ...`` at each epoch end from the graph's counts; ``epochs`` holds
    them (epoch, steps, batch, examples, non_finite, oov_ids); ``examples_per_sec`` from the first step on,
    in training-step time (``clock``: the time source)."""

    def __init__(self, batch: int, rows: int, log: Callable[[str], None], counters: Optional[Counters] = None,
                 clock: Callable[[], float] = time.time):
        super().__init__()
        self._supports_tf_logs = True  # the step hook reads no logs (allowed under ParameterServerStrategy)
        self.batch, self.rows, self.log, self.counters = batch, rows, log, counters
        self.epochs: List[dict] = []
        self.clock = TrainClock(clock)
        self._steps = 0

    def on_epoch_begin(self, epoch, logs=None):
        if self.counters is not None:
            self.counters.reset()
        if self._steps:  # the clock starts at the end of the first step
            self.clock.start()

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        self.clock.start()
        if last_step_of_epoch(self, batch):
            self.clock.stop()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        steps = self.params["steps"]
        row = {"epoch": epoch + 1, "steps": steps, "batch": self.batch,
               "examples": int(logs.get("examples", 0)), "non_finite": int(logs.get("non_finite", 0)),
               "oov_ids": int(logs.get("oov_ids", 0))}
        planned = self.rows if steps == math.ceil(self.rows / self.batch) else steps * self.batch
        off = row["examples"] - planned
        said = f" -- {off:+,} against the plan" if off else ""
        self.log(f"[data] epoch {epoch + 1}: {row['examples']:,} examples read (counted in the graph; plan {steps} "
                 f"steps x {self.batch}, train split {self.rows:,} rows){said}; non-finite values "
                 f"{row['non_finite']:,}; oov ids {row['oov_ids']:,}{self._by_counters(row)}")
        self.epochs.append(row)

    def _by_counters(self, row: dict) -> str:
        """Adds the per-shard rows (and per-worker steps) of the epoch to ``row``; their part of the log line."""
        if self.counters is None:
            return ""
        shards = [int(v) for v in self.counters.shards.result().numpy()]
        row["shards"] = dict(zip(self.counters.names, shards))
        text = f"; rows per shard {min(shards):,}..{max(shards):,} over {sum(1 for v in shards if v)} of {len(shards)} shards"
        if self.counters.workers is not None:
            row["worker_steps"] = [int(v) for v in self.counters.workers.result().numpy()]
            text += f"; steps per worker {row['worker_steps']}"
            before = self.epochs[-1].get("worker_steps") if self.epochs else None
            for i, n in enumerate(row["worker_steps"]):
                if n == 0 and (before is None or before[i] > 0):
                    text += (f" -- worker:{i} ran no step this epoch (lost?): the others took its share of the "
                             "shared stream")
        return text

    @property
    def examples_per_sec(self) -> float:
        """Examples per second from the end of the first step to the end of the last (start-up excluded),
        over training-step time (epoch-end work excluded)."""
        if self._steps < 2:
            return 0.0
        return (self._steps - 1) * self.batch / max(self.clock.elapsed(), 1e-9)

    def totals(self) -> dict:
        return {k: sum(e[k] for e in self.epochs) for k in ("examples", "non_finite", "oov_ids")}
