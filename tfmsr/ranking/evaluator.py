"""The evaluator role: score each checkpoint the chief writes, as it appears, on one split.

Run as ``tfmsr train ...`` with ``TF_CONFIG`` task type ``evaluator`` (the launcher's ``--evaluator``). It
is outside the training cluster (no server, no strategy): it rebuilds the model from the config, watches
``MODEL_DIR/checkpoints`` (the chief's epoch checkpoints), and for each new one computes the per-scenario
metrics (``tfmsr.ranking.evaluate.summarize``: AUC, per-scenario AUC, GAUC, logloss, oracle AUC) on
``cluster.evaluator_split`` and writes them to ``MODEL_DIR/eval/<split>-epoch-N.json`` and TensorBoard
(``MODEL_DIR/tb/evaluator``). When ``final/`` appears it scores it too (``<split>-final.json``) and exits.

The chief keeps its own per-scenario validation each epoch (early stopping and ``best/`` need it in
step with training); the evaluator adds a second split, or takes the validation off the chief's critical
path when the chief runs with ``train.validate: false``.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Optional

import tensorflow as tf

from tfmsr.core.io import write_json
from tfmsr.core.progress import log as log_line
from tfmsr.core.rundir import read_stats
from tfmsr.data.pipeline import make_dataset, split_files
from tfmsr.features import Schema
from tfmsr.ranking.evaluate import Predictor, summarize
from tfmsr.ranking.models import build


def _checkpoints(model_dir: str):
    state = tf.train.get_checkpoint_state(os.path.join(model_dir, "checkpoints"))
    return list(state.all_model_checkpoint_paths) if state else []


def _step_of(path: str) -> Optional[int]:
    for name, _ in tf.train.list_variables(path):
        if name == "model/optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE":
            return int(tf.train.load_variable(path, name))
    return None


def run_evaluator(cfg: dict, data_dir: str, model_dir: str, log: Callable[[str], None] = log_line,
                  poll_seconds: float = 1.0, timeout: Optional[float] = None) -> dict:
    """Evaluate new checkpoints until ``final/`` is scored (or ``timeout`` seconds pass); returns
    ``{"model", "role", "split", "evaluated": {tag: {"step", "auc"}}}`` (full metrics are in the files)."""
    schema = Schema.load(os.path.join(data_dir, "schema.yaml"))
    split = cfg["cluster"]["evaluator_split"]
    files = split_files(data_dir, split)
    model = build(cfg["model"]["name"], schema, cfg["model"]["params"], read_stats(data_dir))
    model(next(iter(make_dataset(files[:1], schema, 8, training=False)))[0])  # variables exist before restores
    predictor = Predictor(files, schema, cfg["data"]["eval_batch_size"], non_finite=cfg["data"]["non_finite"])
    out_dir = os.path.join(model_dir, "eval")
    writer = None
    done, results, start = set(), {}, time.time()
    log(f"[evaluator] watching {os.path.join(model_dir, 'checkpoints')}; scoring split '{split}'")
    while True:
        final = tf.train.latest_checkpoint(os.path.join(model_dir, "final"))
        todo = [p for p in _checkpoints(model_dir) if p not in done] + ([final] if final else [])
        for path in todo:
            tag = "final" if path == final else f"epoch-{path.rsplit('-', 1)[-1]}"
            try:
                tf.train.Checkpoint(model=model).read(path).expect_partial()
                step = _step_of(path)
            except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as e:
                log(f"[evaluator] {path}: skipped, no longer readable ({type(e).__name__})")
                done.add(path)
                continue
            res = summarize(predictor.run(model), schema)
            res.update({"checkpoint": path, "step": step, "split": split, "model": cfg["model"]["name"]})
            os.makedirs(out_dir, exist_ok=True)
            target = os.path.join(out_dir, f"{split}-{tag}.json")
            write_json(target, res)
            writer = writer or tf.summary.create_file_writer(os.path.join(model_dir, "tb", "evaluator"))
            with writer.as_default(step=step or 0):
                tf.summary.scalar(f"{split}/auc", res["auc"])
                tf.summary.scalar(f"{split}/logloss", res["logloss"])
                for name, v in res["scenarios"].items():
                    tf.summary.scalar(f"{split}/auc_{name}", v["auc"])
            writer.flush()
            per = "  ".join(f"{n} {v['auc']:.4f}" for n, v in res["scenarios"].items())
            log(f"[evaluator] {tag} (step {step}): {split} auc {res['auc']:.4f}  logloss {res['logloss']:.4f}  "
                f"per scenario: {per}")
            done.add(path)
            results[tag] = res
        if final or (timeout is not None and time.time() - start > timeout):
            return {"model": cfg["model"]["name"], "role": "evaluator", "split": split,
                    "evaluated": {tag: {"step": r["step"], "auc": r["auc"]} for tag, r in results.items()}}
        time.sleep(poll_seconds)
