"""Ranking trainer callbacks: per-scenario validation, epoch and best checkpoints (the progress line is
``tfmsr.distribute.progress.Progress``)."""
from __future__ import annotations

import os

import tensorflow as tf
import tf_keras as keras

from tfmsr.core.progress import log as log_line
from tfmsr.ranking.evaluate import Predictor, summarize


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
