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

import dataclasses
import functools
import math
import os
import shutil
import tempfile
import time
from typing import Callable, List, Optional, Tuple

import tensorflow as tf
import tf_keras as keras

from tfmsr.core.checks import with_added_keys
from tfmsr.core.errors import ConfigError
from tfmsr.core.io import atomic_dir, write_json
from tfmsr.core.optim import make_optimizer
from tfmsr.core.progress import log as log_line
from tfmsr.core.tempfiles import sweep
from tfmsr.core.rundir import RunDir, read_stats
from tfmsr.data.pipeline import check_first_record, make_dataset, read_errors, split_files
from tfmsr.data.guards import pop_count
from tfmsr.distribute.accounting import EpochAccounting, LedgerBackup, LossGuard, attach_counters
from tfmsr.distribute.progress import Progress
from tfmsr.distribute.shared_input import MakeUp, SharedStream, chief_host, job_name
from tfmsr.distribute.strategy import (Cluster, ClusterBackupAndRestore, ClusterProgress, check_model,
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
                  metrics=[keras.metrics.AUC(name="auc", num_thresholds=1000)],
                  steps_per_execution=cfg["train"]["steps_per_execution"])
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
    job = _Job(cfg, data_dir, model_dir, cluster, strategy, log)
    _check_inputs(job, overwrite)
    plan = plan_ranking(warm_start, cfg, job.schema, model_dir)  # RUN1 checked before the run dir is written
    _write_run_dir(job)
    model = _build_model(job)
    warm = start_ranking(plan, model, job.schema, job.train_files, job.out_dir, log)  # RUN1's weights; resuming: report
    if job.skip:
        log(f"[{model.model_name}] resuming from backup at global step {job.skip} (epoch {job.epoch0 + 1}, "
            f"step {job.step0} of {job.spe})")
    counters = attach_counters(model, job.train_files, strategy, cluster.num_workers if cluster.kind == "ps" else 0)
    ds = _train_input(job)
    callbacks, epochs_ckpt, run_state, accounting = _callbacks(job, model, counters)
    start = time.time()
    with read_errors(job.train_files + job.valid_files, job.schema, non_finite=cfg["data"]["non_finite"]):
        model.fit(ds, epochs=cfg["train"]["epochs"], steps_per_epoch=job.spe, callbacks=callbacks, verbose=0)
    return _finish(job, model, time.time() - start, epochs_ckpt, run_state, accounting, warm)


@dataclasses.dataclass
class _Job:
    """What the phases of one training process share: config, cluster role, data, directories, resume point."""
    cfg: dict
    data_dir: str
    model_dir: str
    cluster: Cluster
    strategy: Optional[tf.distribute.Strategy]
    log: Callable[[str], None]
    schema: Optional[Schema] = None
    stats: Optional[dict] = None
    train_files: List[str] = dataclasses.field(default_factory=list)
    valid_files: List[str] = dataclasses.field(default_factory=list)
    out_dir: str = ""  # the model dir on the chief; elsewhere a temp dir removed at the end
    spe: int = 0  # steps per epoch
    epoch0: int = 0  # the backup's resume point: epoch, and step in that epoch
    step0: int = 0

    @property
    def backup_dir(self) -> str:
        """Keras' BackupAndRestore directory (in the model dir on every worker)."""
        return os.path.join(self.model_dir, "backup")

    @property
    def skip(self) -> int:
        """Batches the run this one resumes already trained on."""
        return self.epoch0 * self.spe + self.step0


def _check_inputs(job: _Job, overwrite: bool) -> None:
    """Read the schema, statistics and split files; check them, the model and an earlier run in the model dir."""
    cfg, model_dir = job.cfg, job.model_dir
    job.schema = Schema.load(os.path.join(job.data_dir, "schema.yaml"))
    job.stats = read_stats(job.data_dir)
    job.train_files = split_files(job.data_dir, "train")
    job.valid_files = split_files(job.data_dir, "valid") if cfg["train"]["validate"] else []
    for f in (job.train_files[0], *job.valid_files[:1]):
        check_first_record(f, job.schema, cfg["data"]["non_finite"])
    check_buildable(cfg, job.schema, job.stats)  # a model's own parameter checks, before the run dir is written
    if os.path.exists(os.path.join(model_dir, "final")):
        if not overwrite:
            raise FileExistsError(f"{model_dir}: holds a finished run (final/); pass --overwrite to retrain")
        if job.cluster.is_chief:
            shutil.rmtree(model_dir)
    elif os.path.exists(os.path.join(model_dir, "run.yaml")) and job.cluster.is_chief:
        _check_resumable(model_dir, cfg, job.data_dir, overwrite)


def _write_run_dir(job: _Job) -> None:
    """Write run.yaml, schema.yaml, stats.json and the vocabularies into this process's output dir."""
    # the chief writes the model dir; other multi-worker workers save too (saving reads synced variables
    # on every worker) but into a temp dir removed at the end, as Keras does
    cluster = job.cluster
    job.out_dir = (job.model_dir if cluster.is_chief
                   else tempfile.mkdtemp(prefix=f"tfmsr-{cluster.role}{cluster.index}-"))
    os.makedirs(job.out_dir, exist_ok=True)
    sweep(job.out_dir, r".+\.tmp-(\d+)", job.log)  # temp files of a killed run of this model dir (final/, history.json)
    run = RunDir(job.out_dir)
    job.schema.save(run.file("schema.yaml"))
    run.write_stats(job.stats)  # a model rebuilt from the run dir gets the same data statistics (FIMN's SEM)
    copy_vocabularies(job.schema, job.out_dir)  # beside schema.yaml: a restored model and its export map raw values
    run.write_run("ranking", job.cfg, job.data_dir)


def _build_model(job: _Job):
    """The compiled model (under the strategy, if any); sets the steps per epoch and the backup's resume point."""
    cfg = job.cfg
    job.spe = cfg["train"]["steps_per_epoch"] or math.ceil(
        split_rows(job.data_dir, "train", job.stats) / cfg["data"]["batch_size"])
    keras.utils.set_random_seed(cfg["train"]["seed"])
    strategy = job.strategy or tf.distribute.get_strategy()  # local: built eagerly too, so fit traces its step once
    model = build_in_scope(strategy, job.cluster, cfg, job.schema, job.train_files, job.stats)
    job.epoch0, job.step0 = resume_point(job.backup_dir, job.spe)
    return model


def _train_input(job: _Job) -> tf.data.Dataset:
    """The training stream, past the batches already trained on: local, per worker, or one shared ps stream."""
    cluster, data = job.cluster, job.cfg["data"]
    batch = data["batch_size"]
    if job.strategy is None:
        return _stream(job, job.train_files, batch, job.skip, cache=data["cache"])
    # multi-worker: each worker its own shards and batch share; ps: one shared stream (shared_input)
    stream = (SharedStream(chief_host(cluster.spec), job_name(job.model_dir, job.skip), job.log, first=job.skip)
              if cluster.kind == "ps" else None)
    return per_worker_input(job.train_files, lambda files, b, k, ctx: _stream(
        job, files, b, k, ctx, stream.apply if stream else None), cluster, batch, job.skip, job.log,
        shared=stream is not None)


def _stream(job: _Job, files, batch: int, skip: int, ctx=None, service=None, cache=False) -> tf.data.Dataset:
    """The training stream of ``files`` past ``skip`` batches (``make_dataset`` with the run's settings): the
    local one, a worker's, or the shared ps stream and its make-up rebuild."""
    cfg, data = job.cfg, job.cfg["data"]
    return make_dataset(files, job.schema, batch, training=True, seed=cfg["train"]["seed"],
                        shuffle_buffer=data["shuffle_buffer"], skip_batches=skip, input_context=ctx,
                        non_finite=data["non_finite"], tag_shards=True, service=service, cache=cache)


def _make_up(job: _Job) -> Optional[MakeUp]:
    """ps: make-up steps for the batches a lost worker took, from the shared stream rebuilt by its seed."""
    if job.cluster.kind != "ps":
        return None
    return MakeUp(lambda first, service: _stream(job, job.train_files, job.cfg["data"]["batch_size"], first,
                                                 service=service))


def _callbacks(job: _Job, model, counters):
    """(callbacks, epoch checkpoints, run state, accounting): loss guard, validation, early stopping, backup, logs."""
    cfg, t, batch, log = job.cfg, job.cfg["train"], job.cfg["data"]["batch_size"], job.log
    replay = _make_up(job)  # make-up steps before the validation; their ledger beside each backup
    accounting = EpochAccounting(batch, split_rows(job.data_dir, "train", job.stats), log, counters, start=job.skip,
                                 replay=replay, backup=LedgerBackup(job.backup_dir) if replay is not None else None)
    callbacks, stopper = [LossGuard(job.model_dir, 1 if job.strategy is None else t["log_every"]), accounting], None
    if job.valid_files:
        callbacks.append(ScenarioValidation(Predictor(job.valid_files, job.schema, cfg["data"]["eval_batch_size"],
                                                      non_finite=cfg["data"]["non_finite"]), log))
        if t["early_stopping_patience"]:
            stopper = keras.callbacks.EarlyStopping("val_auc", mode="max", patience=t["early_stopping_patience"])
            callbacks.append(stopper)
    epochs_ckpt = EpochCheckpoint(job.out_dir)
    run_state = RunState(job.backup_dir, job.epoch0, epochs_ckpt, stopper, write=job.cluster.is_chief, log=log)
    backup_cb, progress_cb = ((keras.callbacks.BackupAndRestore, Progress) if job.strategy is None
                              else (functools.partial(ClusterBackupAndRestore, sidecar=accounting), ClusterProgress))
    callbacks += [
        epochs_ckpt, run_state,
        # Keras counts calls of the train function: checkpoint_every steps in calls of steps_per_execution
        backup_cb(job.backup_dir, save_freq=max(1, t["checkpoint_every"] // t["steps_per_execution"]),
                  delete_checkpoint=True),
        keras.callbacks.TensorBoard(os.path.join(job.out_dir, "tb"), write_graph=False, profile_batch=0),
        progress_cb(batch, job.spe, t["epochs"], t["log_every"], job.log),
    ]
    return callbacks, epochs_ckpt, run_state, accounting


def _finish(job: _Job, model, seconds: float, epochs_ckpt: EpochCheckpoint, run_state: RunState,
            accounting: EpochAccounting, warm) -> dict:
    """Write final/ (the best epoch's weights, else the last) and history.json; returns the summary."""
    if job.strategy is None:  # Keras deletes the backup's checkpoints but leaves the folder they were in
        shutil.rmtree(job.backup_dir, ignore_errors=True)
    steps = int(model.optimizer.iterations.numpy())
    if epochs_ckpt.best_path:  # final weights = best validation epoch
        tf.train.Checkpoint(model=model).read(epochs_ckpt.best_path).expect_partial()
    _write_final(model, job.out_dir)
    summary = {
        "model": model.model_name, "steps": steps, "steps_per_epoch": job.spe, "seconds": seconds,
        "examples_per_sec": accounting.examples_per_sec, "resumed_from_step": job.skip,
        "best_val_auc": epochs_ckpt.best if epochs_ckpt.best_path else None, "best_epoch": run_state.best_epoch,
        "history": run_state.history(), **accounting.totals(), "data_epochs": accounting.epochs,
        "warm_start": warm,
    }
    if job.strategy is not None:
        cluster = job.cluster
        summary["cluster"] = {"kind": cluster.kind, "role": cluster.role, "index": cluster.index,
                              "workers": cluster.num_workers, "ps": cluster.num_ps,
                              "sharded_variables": sharded_variables(model), "data_epochs": accounting.epochs}
    write_json(os.path.join(job.out_dir, "history.json"), summary)
    job.log(f"[{model.model_name}] done: {steps} steps in {seconds:.1f}s "
            f"({summary['examples_per_sec']:,.0f} ex/s); weights in {os.path.join(job.model_dir, 'final')}")
    if job.out_dir != job.model_dir:
        shutil.rmtree(job.out_dir, ignore_errors=True)
    return summary


def build_in_scope(strategy, cluster, cfg: dict, schema: Schema, files, stats: Optional[dict] = None):
    """The model and optimizer under ``strategy``: variables created now by one call on a few rows (on
    the parameter servers, partitioned; or mirrored on every worker), so fit only runs steps. The
    optimizer slots exist before a backup is restored: under ParameterServerStrategy a deferred restore
    of slots created later leaves them at zero."""
    check_model(get_class(cfg["model"]["name"]), cluster)
    if cluster.kind != "local" and cfg["train"]["steps_per_execution"] > 1:
        raise ConfigError(f"train.steps_per_execution: {cfg['train']['steps_per_execution']} runs local training "
                          f"only; this process is the {cluster.role} of a {cluster.kind} cluster (set it to 1)")
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
    old_config = with_added_keys(before.get("config"), cfg)   # a setting added since is not a difference
    for what, old, new in (("config", old_config, cfg), ("data", before.get("data"), os.path.abspath(data_dir))):
        if old != new:
            raise FileExistsError(f"{model_dir}: holds an unfinished run with a different {differences(what, old, new)}; "
                                  "resume it with the same config and data, or pass --overwrite to start afresh")


def _write_final(model, model_dir: str) -> None:
    with atomic_dir(os.path.join(model_dir, "final")) as tmp:
        tf.train.Checkpoint(model=model).write(os.path.join(tmp, "ckpt"))
        with open(os.path.join(tmp, "checkpoint"), "w") as fh:  # so tf.train.latest_checkpoint finds it
            fh.write('model_checkpoint_path: "ckpt"\nall_model_checkpoint_paths: "ckpt"\n')
