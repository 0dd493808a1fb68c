"""Retrieval trainer: pre-training and fine-tuning stages, single- or mix-scenario training, evaluation.

Model dir layout::

    run.yaml, schema.yaml        the resolved config and the data schema
    pairs/                       cross-scenario pair shards (pre-training, unless pretrain.pairs names some)
    pretrain/ckpt-*              model weights after pre-training (SASS Sec. 4.1)
    final/ckpt-*                 weights after fine-tuning (what evaluation and export use)
    scenario-<name>/final/...    single-scenario training: one model per scenario (Table 2 columns)
    history.json                 per-stage, per-epoch losses, examples/s, restore check, pair counts
    metrics.json                 HR@K / NDCG@K per scenario (``tfmsr.retrieval.evaluate``)

**Fine-tuning starts from the pre-trained weights** (Sec. 4.2): pre-training builds every variable of
the model (both towers, even a side without pairs), trains and writes ``pretrain/``; fine-tuning builds a
fresh model and restores that checkpoint with ``assert_consumed`` (every saved value restored into a
matching variable), so a mismatch stops the run instead of silently fine-tuning from scratch.
"""
from __future__ import annotations

import os
import shutil
import time
from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfmsr.core.errors import ConfigError
from tfmsr.core.io import atomic_dir, write_json
from tfmsr.core.optim import make_optimizer
from tfmsr.core.progress import log as log_line
from tfmsr.core.rundir import RunDir
from tfmsr.distribute.warm_start import start_retrieval
from tfmsr.features import Schema
from tfmsr.features.lookup import copy_vocabularies
from tfmsr.retrieval.config import refused_rerun
from tfmsr.retrieval.data import RetrievalData
from tfmsr.retrieval.evaluate import ModelScorer, PopularityScorer, evaluate
from tfmsr.retrieval.models.base import build
from tfmsr.retrieval.pairs import pair_datasets, write_pairs


def sample_inputs(data: RetrievalData, n: int = 2) -> dict:
    """A tiny ``{"request", "items"}`` batch: calling a model on it creates every variable."""
    rows = {k: v[:n] for k, v in data.train.items()}
    items = data.corpus(0)[:n] if len(data.corpus(0)) else np.arange(1, n + 1)
    return {"request": data.numpy_request(rows), "items": data.numpy_items(items, served=False)}


def new_model(cfg: dict, data: RetrievalData, scenario: Optional[int] = None):
    model = build(cfg["model"]["name"], data.schema, cfg["model"]["params"], scenario=scenario)
    model(sample_inputs(data))
    return model


def weights_checkpoint(model) -> tf.train.Checkpoint:
    """The model's layers (embeddings, towers, ...) without its optimizer or loss trackers."""
    return tf.train.Checkpoint(**{l.name: l for l in model.layers if not isinstance(l, keras.metrics.Metric)})


def save_weights(model, prefix: str) -> str:
    """Write the model's weights to ``prefix`` (``DIR/ckpt``): into a temp dir, renamed to DIR."""
    with atomic_dir(os.path.dirname(prefix), replace=True) as tmp:
        weights_checkpoint(model).write(os.path.join(tmp, os.path.basename(prefix)))
    return prefix


def restore_weights(model, prefix: str) -> None:
    """Restore ``prefix`` into a built model; every saved value must find its variable and vice versa."""
    if not os.path.exists(prefix + ".index"):
        raise FileNotFoundError(f"{prefix}: no checkpoint (training did not finish)")
    weights_checkpoint(model).read(prefix).assert_consumed()


class _EpochLog(keras.callbacks.Callback):
    def __init__(self, label, epochs, steps, batch, log):
        super().__init__()
        self.label, self.epochs, self.steps, self.batch, self.log = label, epochs, steps, batch, log
        self.rows = []

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
        sec = time.time() - self.t0
        logs = {k: float(v) for k, v in (logs or {}).items()}
        logs["examples_per_sec"] = self.steps * self.batch / max(sec, 1e-9)
        self.rows.append(logs)
        vals = "  ".join(f"{k}={v:.4f}" for k, v in logs.items() if k != "examples_per_sec")
        self.log(f"[{self.label}] epoch {epoch + 1}/{self.epochs}: {vals}  ({logs['examples_per_sec']:,.0f} ex/s)")


class BestEpoch(keras.callbacks.Callback):
    """Early stopping on the validation split: after every epoch, HR@K over the split's queries (of
    ``scenario`` only for a single-scenario model) is logged as ``val_hr@K`` (per scenario in
    ``summary()["scenarios"]``); training stops after ``patience`` epochs without a better value, and the best
    epoch's weights are put back at the end."""

    def __init__(self, data: RetrievalData, split: str, k: int, exclude_train_positives: bool, patience: int,
                 scenario: Optional[int] = None, batch_size: int = 1024):
        super().__init__()
        self.data, self.split, self.k, self.exclude = data, split, k, exclude_train_positives
        self.patience, self.scenario, self.batch = patience, scenario, batch_size
        self.key = f"val_hr@{k}"
        self.best, self.best_epoch, self.best_weights, self.wait = -1.0, None, None, 0
        self.per_scenario = []          # per epoch: {scenario name: validation HR@K}
        self.scorer = None

    def on_epoch_end(self, epoch, logs=None):
        if self.scorer is None:         # one scorer (its traced functions) for every epoch
            self.scorer = ModelScorer(self.model, self.data, self.batch)
        self.scorer.reset()
        only = None if self.scenario is None else [self.scenario]
        res = evaluate(self.scorer if only is None else {self.scenario: self.scorer}, self.data, self.split, self.k,
                       self.exclude, scenarios=only)
        value = res[f"hr@{self.k}"]
        self.per_scenario.append({name: v[f"hr@{self.k}"] for name, v in res["scenarios"].items()})
        if logs is not None:
            logs[self.key] = value
        if value > self.best:
            self.best, self.best_epoch, self.wait = value, epoch + 1, 0
            self.best_weights = self.model.get_weights()
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)

    def summary(self) -> dict:
        return {"monitor": f"{self.split} hr@{self.k}", "patience": self.patience, "best_epoch": self.best_epoch,
                "best": self.best, "scenarios": self.per_scenario}


def _fit(model, ds, steps, epochs, batch, optimizer, lr, label, log, stopper: Optional[BestEpoch] = None):
    model.compile(optimizer=make_optimizer(optimizer, lr))
    cb = _EpochLog(label, epochs, steps, batch, log)
    model.fit(ds, epochs=epochs, steps_per_epoch=steps, verbose=0, callbacks=[c for c in (stopper, cb) if c])
    return cb.rows


def pretrain_sides(cfg: dict) -> list:
    """The contrastive tasks a config pre-trains: ``pretrain.sides`` without ``item`` when the model has a
    single item embedding (``item_per_scenario: false``: an item's two views would be identical)."""
    single_item = not cfg["model"].get("params", {}).get("item_per_scenario", True)
    return [side for side in cfg["pretrain"]["sides"] if not (side == "item" and single_item)]


def pretrain(model, cfg: dict, data: RetrievalData, pairs_dir: str, log=log_line) -> dict:
    """SASS pre-training (Sec. 4.1) on the pair shards of ``pairs_dir``; returns its history."""
    pre = cfg["pretrain"]
    sides = pretrain_sides(cfg)
    if "item" in pre["sides"] and "item" not in sides:
        log(f"[{model.model_name}] single item embedding: no item-side contrastive task (both views are identical)")
    ds, steps, summary = pair_datasets(pairs_dir, data, pre["batch_size"], seed=cfg["train"]["seed"], sides=sides)
    counts = {side: summary.get(side, {}).get("pairs", 0) for side in ("user", "item")}
    if ds is None:
        raise ValueError(f"{pairs_dir}: no cross-scenario pairs for sides {sides} (pairs: {counts}); "
                         "no user or item is seen in two scenarios -- disable pretrain")
    log(f"[{model.model_name}] pre-training on pairs {counts} (sides {sides}), {steps} steps/epoch")
    rows = _fit(model, ds, steps, pre["epochs"], pre["batch_size"], cfg["train"]["optimizer"], pre["learning_rate"],
                f"{model.model_name} pretrain", log)
    return {"epochs": rows, "pairs": counts, "sides": sides, "steps_per_epoch": steps}


def finetune(model, cfg: dict, data: RetrievalData, scenario: Optional[int] = None, log=log_line) -> dict:
    t, batch = cfg["train"], cfg["data"]["batch_size"]
    ds, steps = data.finetune_dataset(batch, model.negatives, seed=t["seed"], scenario=scenario,
                                      with_probability=model.needs_probability, power=model.sampler_power,
                                      shared=model.shared_negatives)
    label = model.model_name if scenario is None else f"{model.model_name} {data.scenario_names[scenario]}"
    model.start_finetune()  # e.g. SASS: the anchors of its scenario_l2 penalty
    stopper = None
    if t["early_stopping_patience"]:
        ev = cfg["eval"]
        stopper = BestEpoch(data, t["validation_split"], ev["k"], ev["exclude_train_positives"],
                            t["early_stopping_patience"], scenario, cfg["data"]["eval_batch_size"])
    rows = _fit(model, ds, steps, t["epochs"], batch, t["optimizer"], t["learning_rate"], f"{label} finetune", log,
                stopper)
    out = {"epochs": rows, "steps_per_epoch": steps, "positives": int(steps * batch)}
    if stopper is not None:
        out["early_stopping"] = stopper.summary()
        log(f"[{label}] best epoch {stopper.best_epoch} of {len(rows)}: {stopper.key}={stopper.best:.4f} "
            "(its weights are kept)")
    return out


def query_splits(cfg: dict) -> list:
    """The query splits a run needs: eval.split, and the validation split when early stopping is on."""
    t = cfg["train"]
    return [cfg["eval"]["split"]] + ([t["validation_split"]] if t["early_stopping_patience"] else [])


def _unit_dir(model_dir: str, data: RetrievalData, scenario: Optional[int]) -> str:
    return model_dir if scenario is None else os.path.join(model_dir, f"scenario-{data.scenario_names[scenario]}")


def train(cfg: dict, data_dir: str, model_dir: str, overwrite: bool = False, log: Callable[[str], None] = log_line,
          data: Optional[RetrievalData] = None, warm_start: Optional[str] = None) -> dict:
    """Train ``cfg`` on ``data_dir`` into ``model_dir`` (pre-train if enabled, fine-tune, evaluate);
    returns the summary written to ``history.json`` (with the metrics). ``warm_start``: a finished retrieval
    run each model starts from (``tfmsr.distribute.warm_start``); it skips pre-training unless
    ``pretrain.on_warm_start``."""
    if os.path.exists(os.path.join(model_dir, "metrics.json")) or os.path.exists(os.path.join(model_dir, "final")):
        if not overwrite:
            raise FileExistsError(refused_rerun(model_dir, cfg, data_dir))
        shutil.rmtree(model_dir)
    t0 = time.time()
    data = _checked_data(cfg, data_dir, data)
    os.makedirs(model_dir, exist_ok=True)
    data.schema.save(os.path.join(model_dir, "schema.yaml"))
    copy_vocabularies(data.schema, model_dir)  # beside schema.yaml, as in a ranking run
    RunDir(model_dir).write_run("retrieval", cfg, data_dir)
    keras.utils.set_random_seed(cfg["train"]["seed"])
    units = [None] if cfg["train"]["mode"] == "mix" else list(range(data.num_scenarios))
    history: Dict[str, dict] = {}
    models = {}
    for unit in units:
        key = "all" if unit is None else data.scenario_names[unit]
        history[key], models[0 if unit is None else unit] = _train_unit(cfg, data, data_dir, model_dir, unit,
                                                                        warm_start, log)
    return _evaluate_and_summarize(cfg, data, model_dir, models, history, t0, log)


def _checked_data(cfg: dict, data_dir: str, data: Optional[RetrievalData]) -> RetrievalData:
    """The run's data (loaded unless given), holding every query split the config needs."""
    data = data or RetrievalData.load(data_dir, eval_splits=query_splits(cfg))
    missing = [s for s in query_splits(cfg) if s not in data.queries]
    if missing:
        raise ValueError(f"{data.data_dir}: split(s) {missing} were not loaded; load the data with "
                         "eval_splits=trainer.query_splits(cfg)")
    t = cfg["train"]
    if t["early_stopping_patience"] and not data.queries[t["validation_split"]]:
        raise ValueError(f"{data.data_dir}/{t['validation_split']}: no positive rows to rank, so "
                         "train.early_stopping_patience cannot pick an epoch (set it to 0)")
    with tf.Graph().as_default():  # the model's own checks (its parameter values) before anything is written
        build(cfg["model"]["name"], data.schema, cfg["model"]["params"])
    return data


def _train_unit(cfg: dict, data: RetrievalData, data_dir: str, model_dir: str, unit: Optional[int],
                warm_start: Optional[str], log: Callable[[str], None]):
    """(history, model) of one model (every scenario, or scenario ``unit``): warm start, pre-training,
    fine-tuning from the pre-trained weights, final weights."""
    name, out, h = cfg["model"]["name"], _unit_dir(model_dir, data, unit), {}
    model = new_model(cfg, data, unit)
    h["warm_start"] = start_retrieval(warm_start, model, weights_checkpoint(model), cfg, data.schema,
                                      os.path.relpath(out, model_dir), log)
    if cfg["pretrain"]["enabled"] and (not warm_start or cfg["pretrain"]["on_warm_start"]):
        pairs_dir = cfg["pretrain"]["pairs"] or os.path.join(model_dir, "pairs")
        if not os.path.exists(os.path.join(pairs_dir, "pairs.json")):
            summary = write_pairs(data_dir, pairs_dir, overwrite=True)
            log(f"[{name}] wrote cross-scenario pairs to {pairs_dir}: user {summary['user']['pairs']}, "
                f"item {summary['item']['pairs']}")
        h["pretrain"] = pretrain(model, cfg, data, pairs_dir, log)
        prefix = save_weights(model, os.path.join(out, "pretrain", "ckpt"))
        model = new_model(cfg, data, unit)
        restore_weights(model, prefix)
        h["pretrain"]["restored_from"] = prefix
        log(f"[{name}] fine-tuning starts from the pre-trained weights {prefix}")
    h["finetune"] = finetune(model, cfg, data, unit, log)
    h["final"] = save_weights(model, os.path.join(out, "final", "ckpt"))
    return h, model


def _evaluate_and_summarize(cfg: dict, data: RetrievalData, model_dir: str, models: dict, history: dict,
                            t0: float, log: Callable[[str], None]) -> dict:
    """Evaluate the trained models on ``eval.split``; write metrics.json and history.json; returns the summary."""
    name, ev = cfg["model"]["name"], cfg["eval"]
    scorer = ModelScorer(models[0], data, cfg["data"]["eval_batch_size"]) if cfg["train"]["mode"] == "mix" else {
        s: ModelScorer(m, data, cfg["data"]["eval_batch_size"]) for s, m in models.items()}
    res = evaluate(scorer, data, ev["split"], ev["k"], ev["exclude_train_positives"])
    res["model"] = name
    res["mode"] = cfg["train"]["mode"]
    write_json(os.path.join(model_dir, "metrics.json"), res)
    summary = {"model": name, "mode": cfg["train"]["mode"], "history": history, "metrics": res,
               "seconds": time.time() - t0}
    write_json(os.path.join(model_dir, "history.json"), summary)
    k = ev["k"]
    log(f"[{name}] {ev['split']}: " + "  ".join(
        f"{s} hr@{k}={v[f'hr@{k}']:.4f} ndcg@{k}={v[f'ndcg@{k}']:.4f}" for s, v in res["scenarios"].items()))
    return summary


def load_trained(model_dir: str, data: Optional[RetrievalData] = None, data_dir: Optional[str] = None,
                 eval_splits=("test",)):
    """(models ``{scenario or 0: model}``, data, config) of a finished run, weights restored."""
    from tfmsr.retrieval.config import load_config

    run = RunDir(model_dir).read()
    if run["kind"] != "retrieval":
        raise ConfigError(f"{model_dir}: a {run['kind']} run, not a retrieval run")
    cfg = load_config(raw=run["config"])
    data = data or RetrievalData.load(data_dir or run["data"], eval_splits=eval_splits)
    if data.schema.to_dict() != Schema.load(os.path.join(model_dir, "schema.yaml")).to_dict():
        raise ValueError(f"{model_dir}: trained on a different schema than {data.data_dir}/schema.yaml")
    units = [None] if cfg["train"]["mode"] == "mix" else list(range(data.num_scenarios))
    models = {}
    for unit in units:
        model = new_model(cfg, data, unit)
        restore_weights(model, os.path.join(_unit_dir(model_dir, data, unit), "final", "ckpt"))
        models[0 if unit is None else unit] = model
    return models, data, cfg


def evaluate_run(model_dir: str, data_dir: Optional[str] = None, split: str = "test", k: Optional[int] = None,
                 out: Optional[str] = None, popularity: bool = False) -> dict:
    """Re-evaluate a finished run (``tfmsr retrieval evaluate``) on ``split``; ``popularity`` adds the
    popularity reference."""
    models, data, cfg = load_trained(model_dir, data_dir=data_dir, eval_splits=[split])
    k = k or cfg["eval"]["k"]
    scorer = ModelScorer(models[0], data) if len(models) == 1 and cfg["train"]["mode"] == "mix" else {
        s: ModelScorer(m, data) for s, m in models.items()}
    res = {cfg["model"]["name"]: evaluate(scorer, data, split, k, cfg["eval"]["exclude_train_positives"])}
    if popularity:
        res["popularity"] = evaluate(PopularityScorer(data), data, split, k, cfg["eval"]["exclude_train_positives"])
    if out:
        write_json(out, res)
    return res
