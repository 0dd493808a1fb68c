"""The training state a resumed run needs besides the weights (issue 29, item 2).

Keras' BackupAndRestore brings back the model, the optimizer and the epoch / step; everything the callbacks
learnt before the kill was lost with the process: the best validation AUC (so the first epoch after a
resume always counted as the best, and ``best/``, which keeps one checkpoint, dropped the better earlier
one), the early-stopping counter and the history of the earlier epochs. ``RunState`` keeps them in
``backup/state.json`` (written atomically at every epoch end by the writing process; removed with the
backup when the run finishes) and puts them back at the start of a resumed run:

    history           every finished epoch's logs (epochs the resumed run trains again are dropped)
    best              the best validation value, its epoch and its checkpoint in best/ -> EpochCheckpoint
    early stopping    wait, best value and its epoch -> keras.callbacks.EarlyStopping

Place it after the callbacks it restores (their ``on_train_begin`` resets them first) and after the ones
that fill the epoch logs (validation), so it records what they wrote.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

import tf_keras as keras

from tfmsr.core.io import write_json


class RunState(keras.callbacks.Callback):
    """Saves and restores the callbacks' state around a resume (see the module docstring).

    ``resume_epoch``: the 0-based epoch the backup resumes at (0 on a fresh run: nothing is restored);
    ``checkpoint``: the ``EpochCheckpoint``; ``stopper``: the ``EarlyStopping`` or None; ``write``: False on
    the processes that only read (the workers of MultiWorkerMirroredStrategy)."""

    def __init__(self, backup_dir: str, resume_epoch: int, checkpoint, stopper=None, write: bool = True, log=None):
        super().__init__()
        self.path = os.path.join(backup_dir, "state.json")
        self.resume_epoch, self.checkpoint, self.stopper, self.write, self.log = (resume_epoch, checkpoint,
                                                                                  stopper, write, log)
        self.epochs: List[dict] = []
        self.best_epoch: Optional[int] = None
        self._best_path: Optional[str] = None

    def on_train_begin(self, logs=None):
        state = self._read() if self.resume_epoch > 0 else None
        if not state:
            return
        self.epochs = [e for e in state.get("epochs", []) if e["epoch"] <= self.resume_epoch]
        best = state.get("best") or {}
        if best.get("path") and os.path.exists(best["path"] + ".index"):
            self.checkpoint.best, self.checkpoint.best_path = float(best["value"]), best["path"]
            self.best_epoch, self._best_path = best["epoch"], best["path"]
        if self.stopper is not None and state.get("early_stopping"):
            es = state["early_stopping"]
            self.stopper.wait, self.stopper.best, self.stopper.best_epoch = es["wait"], es["best"], es["best_epoch"]
        if self.log:
            self.log(f"[resume] restored {len(self.epochs)} epoch(s) of history"
                     + (f", best {self.checkpoint.monitor} {self.checkpoint.best:.4f} (epoch {self.best_epoch})"
                        if self.best_epoch else "")
                     + (f", early-stopping wait {self.stopper.wait}" if self.stopper is not None else ""))

    def on_epoch_end(self, epoch, logs=None):
        self.epochs = [e for e in self.epochs if e["epoch"] < epoch + 1]
        self.epochs.append({"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}})
        if self.checkpoint.best_path != self._best_path:  # EpochCheckpoint saved a new best this epoch
            self.best_epoch, self._best_path = epoch + 1, self.checkpoint.best_path
        if self.write:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            write_json(self.path, self.state())

    def state(self) -> dict:
        best = ({"value": self.checkpoint.best, "epoch": self.best_epoch, "path": self.checkpoint.best_path}
                if self.checkpoint.best_path else None)
        es = ({"wait": int(self.stopper.wait), "best": float(self.stopper.best), "best_epoch": int(self.stopper.best_epoch)}
              if self.stopper is not None else None)
        return {"epochs": self.epochs, "best": best, "early_stopping": es}

    def history(self) -> Dict[str, List[float]]:
        """Per-epoch logs of the whole run, restored epochs first, as ``{key: [value per epoch]}``."""
        keys = list(dict.fromkeys(k for e in self.epochs for k in e if k != "epoch"))
        return {k: [e.get(k, float("nan")) for e in self.epochs] for k in keys}

    def _read(self) -> Optional[dict]:
        try:
            with open(self.path) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None
