"""Evaluation: stream a split through a model, then per-scenario AUC, GAUC, logloss and the oracle ceiling."""
from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from tfmsr.core import metrics
from tfmsr.core.io import write_atomic, write_json
from tfmsr.core.rundir import RunDir
from tfmsr.data.pipeline import make_dataset, read_errors, split_files
from tfmsr.features import Schema
from tfmsr.ranking.models import build


class Predictor:
    """One deterministic pass over shards: probabilities and the columns metrics need, as NumPy."""

    def __init__(self, files, schema: Schema, batch_size: int = 4096, keep=()):
        self.files, self.schema, self.batch_size = list(files), schema, batch_size
        self.keep = [schema.scenario.name] + [k for k in (schema.user_key, schema.oracle, *keep) if k]

    def dataset(self):
        return make_dataset(self.files, self.schema, self.batch_size, training=False)

    def run(self, model) -> Dict[str, np.ndarray]:
        if getattr(self, "_model", None) is not model:  # trace once per model, not once per epoch
            self._model = model
            self._step = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        step = self._step

        out = {"prob": [], "label": []}
        out.update({k: [] for k in self.keep})
        with read_errors(self.files, self.schema):
            for x, y in self.dataset():
                out["prob"].append(step(x).numpy())
                out["label"].append(y.numpy())
                for k in self.keep:
                    out[k].append(x[k].numpy())
        return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def summarize(pred: Dict[str, np.ndarray], schema: Schema) -> dict:
    return metrics.summarize(
        pred["label"], pred["prob"], pred[schema.scenario.name], schema.num_scenarios,
        users=pred.get(schema.user_key) if schema.user_key else None,
        oracle=pred.get(schema.oracle) if schema.oracle else None,
        scenario_names=schema.scenario.values)


def load_trained(model_dir: str, schema: Optional[Schema] = None):
    """Rebuild the model of a finished run from ``run.yaml`` and read its ``final`` weights."""
    run_dir = RunDir(model_dir)
    run = run_dir.read()
    schema = schema or Schema.load(os.path.join(model_dir, "schema.yaml"))
    final = tf.train.latest_checkpoint(os.path.join(model_dir, "final"))
    if final is None:
        raise FileNotFoundError(f"{model_dir}/final: no finished checkpoint (training did not complete)")
    model = build(run["config"]["model"]["name"], schema, run["config"]["model"]["params"], run_dir.stats())
    tf.train.Checkpoint(model=model).read(final).expect_partial()
    return model, schema, run


def evaluate(model_dir: str, data_dir: str, split: str = "test", out: Optional[str] = None,
             predictions: Optional[str] = None, batch_size: int = 4096) -> dict:
    """Evaluate a finished run on ``data_dir/split``; writes ``metrics.json`` (and predictions as CSV)."""
    schema = Schema.load(os.path.join(data_dir, "schema.yaml"))
    model, _, run = load_trained(model_dir, schema)
    pred = Predictor(split_files(data_dir, split), schema, batch_size).run(model)
    result = summarize(pred, schema)
    result.update({"model": run["config"]["model"]["name"], "split": split, "data": os.path.abspath(data_dir)})
    out = out or os.path.join(model_dir, "metrics.json")
    write_json(out, result)
    if predictions:
        import pandas as pd

        cols = {"prob": pred["prob"], "label": pred["label"]}
        cols.update({k: pred[k] for k in (schema.scenario.name, schema.user_key) if k})
        write_atomic(predictions, lambda tmp: pd.DataFrame(cols).to_csv(tmp, index=False))
    return result
