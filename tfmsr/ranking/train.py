"""Local trainer: ``model.fit`` from TFRecord shards with resume-after-kill, per-scenario validation,
early stopping on validation AUC, epoch/best checkpoints, TensorBoard logs and a progress line.

Model dir layout::

    run.yaml, schema.yaml     the resolved config and the data schema (enough to rebuild the model)
    stats.json                the dataset's statistics (models that read them at build time, e.g. FIMN)
    backup/                   fault-tolerance backup every ``train.checkpoint_every`` steps (Keras
                              BackupAndRestore); removed when training finishes
    checkpoints/epoch-N       weights at each epoch end (last 3)
    best/best-N               weights of the best validation epoch
    final/                    the weights ``evaluate`` and ``export`` use (best epoch, else last)
    tb/                       TensorBoard logs
    history.json              per-epoch logs (loss, val_auc, val_auc_<scenario>, ...)

Resume: the training stream is a deterministic function of the seed (shuffled, repeated), so a restarted
run restores the backup and skips exactly the batches it already trained on; it continues from the
backed-up global step, not from zero.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from typing import Callable, Optional, Tuple

import tensorflow as tf
import tf_keras as keras

from tfmsr.core.io import atomic_dir, write_json
from tfmsr.core.optim import make_optimizer
from tfmsr.core.progress import log as log_line
from tfmsr.core.tempfiles import sweep
from tfmsr.core.rundir import RunDir, read_stats
from tfmsr.data.pipeline import check_first_record, make_dataset, read_errors, split_files
from tfmsr.data.guards import pop_count
from tfmsr.distribute.accounting import EpochAccounting, LossGuard, attach_counters
from tfmsr.distribute.progress import Progress
from tfmsr.distribute.shared_input import SharedStream, chief_host, job_name
from tfmsr.distribute.strategy import (ClusterBackupAndRestore, ClusterProgress, check_model,
                                       cluster_from_env, make_strategy, per_worker_input, serve, sharded_variables)
from tfmsr.distribute.warm_start import plan_ranking, start_ranking
from tfmsr.features import Schema
from tfmsr.features.lookup import copy_vocabularies, shared_lookups
from tfmsr.ranking.callbacks import EpochCheckpoint, ScenarioValidation
from tfmsr.ranking.evaluate import Predictor
from tfmsr.ranking.evaluator import run_evaluator
from tfmsr.ranking.models import build, get_class
from tfmsr.ranking.preflight import check_buildable, differences
from tfmsr.ranking.resume import RunState


def split_rows(data_dir: str, split: str, stats: dict) -> int:
    """Rows of a split from stats.json, or counted from the shards when there is no stats file."""
    rows = stats.get("splits", {}).get(split, {}).get("rows")
    if rows is not None:
        return int(rows)
    files = split_files(data_dir, split)
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP" if files[0].endswith(".gz") else "")
    return int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1).numpy())


def compile_model(model, cfg: dict):
    """The optimizer of ``cfg`` and the AUC of the predictions; the losses are the model's own
    (``compute_losses``, :class:`tfmsr.core.model.TrainableModel`)."""
    model.compile(optimizer=make_optimizer(cfg["train"]["optimizer"], cfg["train"]["learning_rate"]),
                  metrics=[keras.metrics.AUC(name="auc", num_thresholds=1000)])
    return model


def resume_point(backup_dir: str, steps_per_epoch: int) -> Tuple[int, int]:
    """(epoch, step in epoch) a BackupAndRestore backup resumes at, mirroring Keras' own rule."""
    ckpt = tf.train.latest_checkpoint(os.path.join(backup_dir, "chief"))
    if ckpt is None:
        return 0, 0
    epoch = int(tf.train.load_variable(ckpt, "ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"))
    batch = int(tf.train.load_variable(ckpt, "ckpt_saved_batch/.ATTRIBUTES/VARIABLE_VALUE"))
    if batch >= 0:
        return (epoch + 1, 0) if batch == steps_per_epoch - 1 else (epoch, batch + 1)
    return (epoch + 1, 0) if epoch >= 0 else (0, 0)


def train(cfg: dict, data_dir: str, model_dir: str, overwrite: bool = False,
          log: Callable[[str], None] = log_line, warm_start: Optional[str] = None) -> dict:
    """Train ``cfg`` on ``data_dir`` into ``model_dir``; returns the summary written to ``history.json``.

    Under ``TF_CONFIG`` this process plays its role in the cluster (``tfmsr.distribute.strategy``): the chief
    of ParameterServerStrategy and every worker of MultiWorkerMirroredStrategy train here under the
    strategy, the workers and parameter servers of ParameterServerStrategy serve until they are stopped,
    and the evaluator scores each checkpoint as it appears (``tfmsr.ranking.evaluator``).
    ``warm_start``: a finished run whose weights this one starts from, tables grown by raw value
    (``tfmsr.distribute.warm_start``); a run resuming from its own backup does not read it again."""
    cluster, strategy = cluster_from_env(cfg), None
    if cluster.kind != "local":
        if cluster.role == "evaluator":
            return run_evaluator(cfg, data_dir, model_dir, log=log)
        if not cluster.trains:
            serve(cluster, log)
            return {"role": cluster.role}
        strategy = make_strategy(cluster, cfg)  # before any other TensorFlow op (collectives, connection)
        log(f"[{cfg['model']['name']}] {cluster.describe()}")
    schema = Schema.load(os.path.join(data_dir, "schema.yaml"))
    stats = read_stats(data_dir)
    train_files = split_files(data_dir, "train")
    valid_files = split_files(data_dir, "valid") if cfg["train"]["validate"] else []
    for f in (train_files[0], *valid_files[:1]):
        check_first_record(f, schema, cfg["data"]["non_finite"])
    check_buildable(cfg, schema, stats)  # a model's own parameter checks, before the run dir is written
    if os.path.exists(os.path.join(model_dir, "final")):
        if not overwrite:
            raise FileExistsError(f"{model_dir}: holds a finished run (final/); pass --overwrite to retrain")
        if cluster.is_chief:
            shutil.rmtree(model_dir)
    elif os.path.exists(os.path.join(model_dir, "run.yaml")) and cluster.is_chief:
        _check_resumable(model_dir, cfg, data_dir, overwrite)
    # the chief writes the model dir; other multi-worker workers save too (saving reads synced variables
    # on every worker) but into a temp dir removed at the end, as Keras does
    plan = plan_ranking(warm_start, cfg, schema, model_dir)  # RUN1 checked before the run dir is written
    out_dir = model_dir if cluster.is_chief else tempfile.mkdtemp(prefix=f"tfmsr-{cluster.role}{cluster.index}-")
    os.makedirs(out_dir, exist_ok=True)
    sweep(out_dir, r".+\.tmp-(\d+)", log)  # temp files of a killed run of this model dir (final/, history.json)
    run = RunDir(out_dir)
    schema.save(run.file("schema.yaml"))
    run.write_stats(stats)  # a model rebuilt from the run dir gets the same data statistics (FIMN's SEM)
    copy_vocabularies(schema, out_dir)  # beside schema.yaml: a restored model and its export map raw values
    run.write_run("ranking", cfg, data_dir)

    t, batch = cfg["train"], cfg["data"]["batch_size"]
    spe = t["steps_per_epoch"] or math.ceil(split_rows(data_dir, "train", stats) / batch)
    keras.utils.set_random_seed(t["seed"])
    if strategy is None:
        model = compile_model(build(cfg["model"]["name"], schema, cfg["model"]["params"], stats), cfg)
    else:
        model = build_in_scope(strategy, cluster, cfg, schema, train_files, stats)
    backup_dir = os.path.join(model_dir, "backup")
    epoch0, step0 = resume_point(backup_dir, spe)
    skip = epoch0 * spe + step0
    warm = start_ranking(plan, model, schema, train_files, out_dir, log)  # RUN1's weights, or resuming: its report
    if skip:
        log(f"[{model.model_name}] resuming from backup at global step {skip} (epoch {epoch0 + 1}, "
            f"step {step0} of {spe})")
    counters = attach_counters(model, train_files, strategy, cluster.num_workers if cluster.kind == "ps" else 0)
    if strategy is None:
        ds = make_dataset(train_files, schema, batch, training=True, seed=t["seed"],
                          shuffle_buffer=cfg["data"]["shuffle_buffer"], skip_batches=skip,
                          non_finite=cfg["data"]["non_finite"], tag_shards=True, cache=cfg["data"]["cache"])
    else:  # multi-worker: each worker its own shards and batch share; ps: one shared stream (shared_input)
        stream = SharedStream(chief_host(cluster.spec), job_name(model_dir, skip), log) if cluster.kind == "ps" else None
        ds = per_worker_input(train_files, lambda files, b, k, ctx: make_dataset(
            files, schema, b, training=True, seed=t["seed"], shuffle_buffer=cfg["data"]["shuffle_buffer"],
            skip_batches=k, input_context=ctx, non_finite=cfg["data"]["non_finite"], tag_shards=True,
            service=stream.apply if stream else None), cluster, batch, skip, log, shared=stream is not None)
    callbacks, stopper = [LossGuard(model_dir, 1 if strategy is None else t["log_every"])], None
    if valid_files:
        callbacks.append(ScenarioValidation(Predictor(valid_files, schema, cfg["data"]["eval_batch_size"],
                                                      non_finite=cfg["data"]["non_finite"]), log))
        if t["early_stopping_patience"]:
            stopper = keras.callbacks.EarlyStopping("val_auc", mode="max", patience=t["early_stopping_patience"])
            callbacks.append(stopper)
    epochs_ckpt = EpochCheckpoint(out_dir)
    run_state = RunState(backup_dir, epoch0, epochs_ckpt, stopper, write=cluster.is_chief, log=log)
    accounting = EpochAccounting(batch, split_rows(data_dir, "train", stats), log, counters)
    backup_cb, progress_cb = ((keras.callbacks.BackupAndRestore, Progress) if strategy is None
                              else (ClusterBackupAndRestore, ClusterProgress))
    callbacks += [
        epochs_ckpt, run_state, accounting,
        backup_cb(backup_dir, save_freq=t["checkpoint_every"], delete_checkpoint=True),
        keras.callbacks.TensorBoard(os.path.join(out_dir, "tb"), write_graph=False, profile_batch=0),
        progress_cb(batch, spe, t["epochs"], t["log_every"], log),
    ]
    start = time.time()
    with read_errors(train_files + valid_files, schema, non_finite=cfg["data"]["non_finite"]):
        model.fit(ds, epochs=t["epochs"], steps_per_epoch=spe, callbacks=callbacks, verbose=0)
    seconds = time.time() - start
    if strategy is None:  # Keras deletes the backup's checkpoints but leaves the folder they were in
        shutil.rmtree(backup_dir, ignore_errors=True)
    steps = int(model.optimizer.iterations.numpy())
    if epochs_ckpt.best_path:  # final weights = best validation epoch
        tf.train.Checkpoint(model=model).read(epochs_ckpt.best_path).expect_partial()
    _write_final(model, out_dir)
    summary = {
        "model": model.model_name, "steps": steps, "steps_per_epoch": spe, "seconds": seconds,
        "examples_per_sec": accounting.examples_per_sec, "resumed_from_step": skip,
        "best_val_auc": epochs_ckpt.best if epochs_ckpt.best_path else None, "best_epoch": run_state.best_epoch,
        "history": run_state.history(), **accounting.totals(), "data_epochs": accounting.epochs,
        "warm_start": warm,
    }
    if strategy is not None:
        summary["cluster"] = {"kind": cluster.kind, "role": cluster.role, "index": cluster.index,
                              "workers": cluster.num_workers, "ps": cluster.num_ps,
                              "sharded_variables": sharded_variables(model), "data_epochs": accounting.epochs}
    write_json(os.path.join(out_dir, "history.json"), summary)
    log(f"[{model.model_name}] done: {steps} steps in {seconds:.1f}s "
        f"({summary['examples_per_sec']:,.0f} ex/s); weights in {os.path.join(model_dir, 'final')}")
    if out_dir != model_dir:
        shutil.rmtree(out_dir, ignore_errors=True)
    return summary


def build_in_scope(strategy, cluster, cfg: dict, schema: Schema, files, stats: Optional[dict] = None):
    """The model and optimizer under ``strategy``: variables created now by one call on a few rows (on
    the parameter servers, partitioned; or mirrored on every worker), so fit only runs steps. The
    optimizer slots exist before a backup is restored: under ParameterServerStrategy a deferred restore
    of slots created later leaves them at zero."""
    check_model(get_class(cfg["model"]["name"]), cluster)
    x, _ = next(iter(make_dataset(files[:1], schema, 8, training=False, non_finite=cfg["data"]["non_finite"])))
    pop_count(x)
    with strategy.scope():
        model = build(cfg["model"]["name"], schema, cfg["model"]["params"], stats)
        model(x)
        compile_model(model, cfg)
        model.optimizer.build(model.trainable_variables)
        shared_lookups(schema)  # the input pipeline's vocabulary tables: under ps, one copy on every worker
    if cluster.kind == "multi_worker":  # step logs: this worker's metrics, not a per-step all-reduce summing them
        model.distribute_reduction_method = "first"
    return model


def _check_resumable(model_dir: str, cfg: dict, data_dir: str, overwrite: bool) -> None:
    """An unfinished run resumes only with the same config and data; --overwrite starts it afresh."""
    if overwrite:
        shutil.rmtree(model_dir)
        return
    before = RunDir(model_dir).read()
    for what, old, new in (("config", before.get("config"), cfg), ("data", before.get("data"),
                                                                    os.path.abspath(data_dir))):
        if old != new:
            raise FileExistsError(f"{model_dir}: holds an unfinished run with a different {differences(what, old, new)}; "
                                  "resume it with the same config and data, or pass --overwrite to start afresh")


def _write_final(model, model_dir: str) -> None:
    with atomic_dir(os.path.join(model_dir, "final")) as tmp:
        tf.train.Checkpoint(model=model).write(os.path.join(tmp, "ckpt"))
        with open(os.path.join(tmp, "checkpoint"), "w") as fh:  # so tf.train.latest_checkpoint finds it
            fh.write('model_checkpoint_path: "ckpt"\nall_model_checkpoint_paths: "ckpt"\n')
