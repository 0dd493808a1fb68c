"""Trainer callbacks: progress line, per-scenario validation, epoch and best checkpoints."""
from __future__ import annotations

import datetime
import os
import time

import tensorflow as tf
import tf_keras as keras

from tfmsr.training.evaluation import Predictor, summarize
from tfmsr.utils import log as log_line


class Progress(keras.callbacks.Callback):
    """Every ``every`` steps: global step, examples/s, loss, AUC and ETA on one line."""

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
            self.log(f"[{self.model.model_name}] epoch {step // self.spe + 1}/{self.epochs}  step {step}/"
                     f"{self.epochs * self.spe}  {rate:,.0f} ex/s  {vals}  ETA {datetime.timedelta(seconds=int(left))}")
        self._t, self._step = now, step


class ScenarioValidation(keras.callbacks.Callback):
    """At each epoch end: exact per-scenario AUC, overall AUC, GAUC and logloss on the validation split,
    added to the epoch logs as ``val_auc``, ``val_auc_<scenario>``, ... (early stopping reads them)."""

    def __init__(self, predictor: Predictor, log=log_line):
        super().__init__()
        self.predictor, self.log = predictor, log
        self.last = None

    def on_epoch_end(self, epoch, logs=None):
        res = summarize(self.predictor.run(self.model), self.predictor.schema)
        self.last = res
        logs = logs if logs is not None else {}
        logs["val_auc"], logs["val_logloss"] = res["auc"], res["logloss"]
        if "gauc" in res:
            logs["val_gauc"] = res["gauc"]
        per = "  ".join(f"{name} {v['auc']:.4f}" for name, v in res["scenarios"].items())
        for name, v in res["scenarios"].items():
            logs[f"val_auc_{name}"] = v["auc"]
        self.log(f"[{self.model.model_name}] epoch {epoch + 1} validation: auc {res['auc']:.4f}  "
                 f"logloss {res['logloss']:.4f}  per scenario: {per}")


class EpochCheckpoint(keras.callbacks.Callback):
    """Weights at every epoch end (``checkpoints/``, last ``keep``) and of the best validation epoch
    (``best/``); an evaluator or a human can pick up either while training goes on."""

    def __init__(self, model_dir: str, monitor: str = "val_auc", keep: int = 3):
        super().__init__()
        self.model_dir, self.monitor, self.keep = model_dir, monitor, keep
        self.best = -float("inf")
        self.best_path = None

    def on_train_begin(self, logs=None):
        ckpt = tf.train.Checkpoint(model=self.model)
        self.manager = tf.train.CheckpointManager(ckpt, os.path.join(self.model_dir, "checkpoints"), self.keep,
                                                  checkpoint_name="epoch")
        self.best_manager = tf.train.CheckpointManager(ckpt, os.path.join(self.model_dir, "best"), 1,
                                                       checkpoint_name="best")

    def on_epoch_end(self, epoch, logs=None):
        self.manager.save(checkpoint_number=epoch + 1)
        value = (logs or {}).get(self.monitor)
        if value is not None and float(value) > self.best:
            self.best = float(value)
            self.best_path = self.best_manager.save(checkpoint_number=epoch + 1)
