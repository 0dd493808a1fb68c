"""Evaluation: stream a split through a model, then per-scenario AUC, GAUC, logloss and the oracle ceiling."""
from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from tfmsr.core import metrics
from tfmsr.core.io import write_atomic, write_json
from tfmsr.core.rundir import RunDir
from tfmsr.data.guards import pop_count
from tfmsr.data.pipeline import DataError, make_dataset, make_parser, read_errors, split_files
from tfmsr.features import Schema
from tfmsr.ranking.models import build


class Predictor:
    """One deterministic pass over shards: probabilities and the columns metrics need, as NumPy.
    ``non_finite``: the run's ``data.non_finite`` policy; ``self.non_finite`` counts what it replaced or left out."""

    def __init__(self, files, schema: Schema, batch_size: int = 4096, keep=(), non_finite: str = "error"):
        self.files, self.schema, self.batch_size = list(files), schema, batch_size
        self.keep = [schema.scenario.name] + [k for k in (schema.user_key, schema.oracle, *keep) if k]
        self.policy, self.non_finite = non_finite, 0

    def dataset(self):
        return make_dataset(self.files, self.schema, self.batch_size, training=False,
                            parser=make_parser(self.schema, non_finite=self.policy))

    def run(self, model) -> Dict[str, np.ndarray]:
        if getattr(self, "_model", None) is not model:  # trace once per model, not once per epoch
            self._model = model
            self._step = tf.function(lambda x: model(x, training=False), reduce_retracing=True, autograph=False)
        step = self._step

        out = {"prob": [], "label": []}
        out.update({k: [] for k in self.keep})
        self.non_finite = 0
        with read_errors(self.files, self.schema, non_finite=self.policy):
            for x, y in self.dataset():
                self.non_finite += int(pop_count(x))
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
    """Evaluate a finished run on ``data_dir/split``; writes ``metrics.json`` (and per-row predictions,
    Parquet or CSV by the extension of ``predictions``). Non-finite numeric values follow the run's
    ``data.non_finite`` policy and are counted in ``non_finite``."""
    fmt = predictions_format(predictions) if predictions else None
    schema = Schema.load(os.path.join(data_dir, "schema.yaml"))
    model, _, run = load_trained(model_dir, schema)
    predictor = Predictor(split_files(data_dir, split), schema, batch_size,
                          non_finite=run["config"].get("data", {}).get("non_finite", "error"))
    pred = predictor.run(model)
    result = summarize(pred, schema)
    result.update({"model": run["config"]["model"]["name"], "split": split, "data": os.path.abspath(data_dir),
                   "non_finite": predictor.non_finite})
    out = out or os.path.join(model_dir, "metrics.json")
    write_json(out, result)
    if predictions:
        import pandas as pd

        cols = {"prob": pred["prob"], "label": pred["label"]}
        cols.update({k: pred[k] for k in (schema.scenario.name, schema.user_key) if k})
        frame = pd.DataFrame(cols)
        write_atomic(predictions, lambda tmp: frame.to_parquet(tmp, index=False) if fmt == "parquet"
                     else frame.to_csv(tmp, index=False))
    return result


def predictions_format(path: str) -> str:
    """``parquet`` or ``csv`` from the extension of a predictions file (anything else is refused)."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".parquet", ".csv"):
        raise DataError(f"--predictions {path}: unknown format '{ext}' (expected a file ending in .parquet or .csv)")
    return ext[1:]
