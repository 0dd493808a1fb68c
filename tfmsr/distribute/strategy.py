"""The distribution strategy from ``TF_CONFIG`` (DESIGN section 5): what a process is in a TensorFlow
cluster and what it runs.

    no TF_CONFIG (or cluster.strategy: local)   local training, one process
    cluster with ps jobs (or strategy: ps)      ParameterServerStrategy: the chief runs ``model.fit``
                                                through the cluster coordinator; workers and parameter
                                                servers run a ``tf.distribute.Server`` and wait
    cluster without ps (or multi_worker)        MultiWorkerMirroredStrategy: every worker runs the same
                                                ``model.fit`` (worker 0, or the chief, is the chief)
    task type evaluator (any kind)              scores each new checkpoint (tfmsr.ranking.evaluator)

Parameter servers hold the variables; a variable larger than ``cluster.min_shard_bytes`` is split along
its rows into ``ceil(bytes / min_shard_bytes)`` shards (``min_size``, TF's MinSizePartitioner), at most
``cluster.partitions`` (default: one shard per parameter server), placed round-robin on the parameter
servers; with ``partitioner: fixed`` every variable of at least ``min_shard_bytes`` is split into exactly
``partitions`` shards. Embedding lookups on a sharded table gather from each shard
(``tf.nn.embedding_lookup`` on a ``ShardedVariable``); checkpoints store whole tables, so a run restores
under any number of parameter servers, or none.

Input: each worker reads a disjoint part of the training shards, ``files[i::W]`` for worker i of W
(``ds.shard`` on the sorted file list; under ParameterServerStrategy the worker index is a value
captured at call time, as ``experimental_get_current_worker_index`` documents). Under
MultiWorkerMirroredStrategy a global batch B is B/W rows from each worker, so an epoch of
``rows / B`` steps reads each row once when shards divide evenly. Under ParameterServerStrategy each step
is one batch of B on whichever worker is free, so the trainer does not split the files: every worker
takes the next batch of one stream of all shards served from the chief (``per_worker_input(shared=True)``,
``tfmsr.distribute.shared_input``), and a faster worker, or the survivors of a lost one, simply take more
batches of it; the files[i::W] split is kept for ``tfmsr bench`` (its split is logged, not enforced).

Fault tolerance: Keras' BackupAndRestore skips its step-level backups under ParameterServerStrategy, so
``ClusterBackupAndRestore`` waits for the scheduled steps (``coordinator.join``) every
``train.checkpoint_every`` steps and at each epoch end and writes the same backup (model, optimizer,
epoch, batch); a restarted chief restores it and continues at the step after it (Keras reads the
saved epoch and batch). A worker lost under ParameterServerStrategy is tolerated by the coordinator (its
steps are re-run on the others; a restarted worker rejoins): its share of the shared stream goes to the
others, and the epoch's log line says which worker ran no step (``tfmsr.distribute.accounting``); the
batches it had fetched and not trained are trained again by make-up steps on the live workers
(``tfmsr.distribute.shared_input.MakeUp``), also after a chief restart (their ledger is in each backup).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import tensorflow as tf
import tf_keras as keras

from tfmsr.core.errors import ConfigError
from tfmsr.distribute.accounting import worker_steps
from tfmsr.distribute.progress import Progress, fetch_logs

ROLES = ("chief", "worker", "ps", "evaluator")
_CACHE: Dict[tuple, tf.distribute.Strategy] = {}


@dataclass(frozen=True)
class Cluster:
    """What this process is: ``kind`` local | ps | multi_worker, its ``role`` and ``index``, the cluster
    ``spec`` ({job: [host:port]}, without the evaluator)."""

    kind: str = "local"
    role: str = "chief"
    index: int = 0
    spec: Dict[str, List[str]] = field(default_factory=dict)

    @property
    def num_workers(self) -> int:
        """Workers that read training data (MultiWorkerMirroredStrategy: the chief too)."""
        return len(self.spec.get("worker", [])) + (len(self.spec.get("chief", [])) if self.kind == "multi_worker" else 0)

    @property
    def num_ps(self) -> int:
        return len(self.spec.get("ps", []))

    @property
    def is_chief(self) -> bool:
        """Writes the model dir: the chief, or worker 0 of a chief-less multi-worker cluster."""
        if self.kind == "local" or self.role == "chief":
            return True
        return self.role == "worker" and self.index == 0 and "chief" not in self.spec

    @property
    def trains(self) -> bool:
        """Runs ``model.fit``: the chief of ps training, every worker of multi-worker training."""
        return self.kind == "local" or self.role == "chief" or (self.kind == "multi_worker" and self.role == "worker")

    def describe(self) -> str:
        if self.kind == "local":
            return "local (no TF_CONFIG)"
        jobs = ", ".join(f"{len(v)} {k}" for k, v in self.spec.items())
        return f"{self.kind} cluster ({jobs}); this process is {self.role}:{self.index}"


def cluster_from_env(cfg: dict, env: Optional[dict] = None) -> Cluster:
    """Parse ``TF_CONFIG`` (``env`` defaults to ``os.environ``) against ``cfg["cluster"]["strategy"]``."""
    raw = (os.environ if env is None else env).get("TF_CONFIG", "").strip()
    want = cfg["cluster"]["strategy"]
    if not raw or want == "local":
        return Cluster()
    try:
        tfc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG: not valid JSON ({e})") from None
    if not isinstance(tfc, dict) or not isinstance(tfc.get("cluster"), dict) or not isinstance(tfc.get("task"), dict):
        raise ConfigError('TF_CONFIG: expected {"cluster": {job: [host:port, ...]}, "task": {"type": ..., "index": ...}}')
    spec = {job: list(addrs) for job, addrs in tfc["cluster"].items() if job != "evaluator"}
    for job, addrs in spec.items():
        if job not in ("chief", "worker", "ps"):
            raise ConfigError(f"TF_CONFIG: unknown job '{job}' in cluster (expected chief, worker, ps)")
        if not addrs or not all(isinstance(a, str) and ":" in a for a in addrs):
            raise ConfigError(f"TF_CONFIG: cluster.{job} must be a non-empty list of host:port strings")
    role, index = tfc["task"].get("type"), tfc["task"].get("index", 0)
    if role not in ROLES:
        raise ConfigError(f"TF_CONFIG: task.type '{role}' (expected one of {', '.join(ROLES)})")
    if not isinstance(index, int) or index < 0 or (role != "evaluator" and index >= len(spec.get(role, []))):
        raise ConfigError(f"TF_CONFIG: task.index {index!r} is not a task of job '{role}' in the cluster")
    kind = want if want != "auto" else ("ps" if "ps" in spec else "multi_worker")
    if kind == "ps" and (len(spec.get("chief", [])) != 1 or not spec.get("worker") or not spec.get("ps")):
        raise ConfigError("TF_CONFIG: ParameterServerStrategy needs exactly one chief, at least one worker and "
                          f"one ps (cluster has {', '.join(spec) or 'no jobs'})")
    if kind == "multi_worker":
        if "ps" in spec:
            raise ConfigError("TF_CONFIG: cluster.strategy multi_worker with ps jobs in the cluster "
                              "(drop the ps jobs or use strategy ps)")
        if len(spec.get("chief", [])) > 1 or not (spec.get("worker") or spec.get("chief")):
            raise ConfigError("TF_CONFIG: MultiWorkerMirroredStrategy needs workers (and at most one chief)")
    return Cluster(kind, role, index, spec)


# ---------------------------------------------------------------------------------------- strategies
def make_partitioner(cluster_cfg: dict, num_ps: int):
    """The variable partitioner of ``cluster_cfg`` for ``num_ps`` parameter servers (None: no splitting)."""
    shards = cluster_cfg["partitions"] or num_ps
    min_bytes = cluster_cfg["min_shard_bytes"]
    if shards <= 1:
        return None
    if cluster_cfg["partitioner"] == "min_size":
        return tf.distribute.experimental.partitioners.MinSizePartitioner(min_shard_bytes=min_bytes, max_shards=shards)
    fixed = tf.distribute.experimental.partitioners.FixedShardsPartitioner(shards)

    def partition(shape, dtype):
        if shape.num_elements() * tf.as_dtype(dtype).size < min_bytes:
            return [1] * shape.rank
        return fixed(shape, dtype)

    return partition


def make_strategy(cluster: Cluster, cfg: dict) -> tf.distribute.Strategy:
    """The strategy of a training process (cached: one per process and settings, as collective ops and
    the cluster connection are process-wide). Call it before running any TensorFlow op."""
    c = cfg["cluster"]
    key = (cluster.kind, json.dumps(cluster.spec, sort_keys=True), cluster.role, cluster.index,
           c["partitioner"] if cluster.kind == "ps" else None, c["partitions"] if cluster.kind == "ps" else None,
           c["min_shard_bytes"] if cluster.kind == "ps" else None)
    if key in _CACHE:
        return _CACHE[key]
    os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")  # fail over to other workers instead of hanging
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster.spec), task_type=cluster.role, task_id=cluster.index, rpc_layer="grpc")
    if cluster.kind == "ps":
        strategy = tf.distribute.experimental.ParameterServerStrategy(
            resolver, variable_partitioner=make_partitioner(c, cluster.num_ps))
    elif cluster.kind == "multi_worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    else:
        raise ValueError(f"no strategy for a {cluster.kind} process")
    _CACHE[key] = strategy
    return strategy


def serve(cluster: Cluster, log: Callable[[str], None]) -> None:
    """Run this worker / parameter server until the process is stopped (the chief drives it)."""
    os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")
    server = tf.distribute.Server(tf.train.ClusterSpec(cluster.spec), job_name=cluster.role,
                                  task_index=cluster.index, protocol="grpc", start=True)
    log(f"[{cluster.role}:{cluster.index}] server up at {cluster.spec[cluster.role][cluster.index]}; "
        f"waiting for the chief ({cluster.describe()})")
    server.join()


def check_model(cls, cluster: Cluster) -> None:
    """A model that cannot train under a strategy says why in ``unsupported_strategies = {kind: why}``."""
    why = (getattr(cls, "unsupported_strategies", None) or {}).get(cluster.kind)
    if why:
        raise ConfigError(f"model '{cls.model_name}' cannot train under {cluster.kind}: {why}")


def sharded_variables(model) -> Dict[str, List[dict]]:
    """``{variable name: [{shape, device}, ...]}`` of every variable split across parameter servers
    (Keras lists a ``ShardedVariable`` as its shards, ``<name>/part_<k>``)."""
    out: Dict[str, List[dict]] = {}
    for v in model.variables:
        m = re.match(r"(.+)/part_(\d+):\d+$", v.name)
        if m:
            out.setdefault(m.group(1), []).append({"part": int(m.group(2)), "shape": list(v.shape), "device": v.device})
    return {k: sorted(parts, key=lambda p: p["part"]) for k, parts in out.items()}


# ---------------------------------------------------------------------------------------- input
class _WorkerContext:
    """``InputContext`` stand-in for ParameterServerStrategy: the worker index is a call-time tensor."""

    def __init__(self, num_workers: int):
        self.num_input_pipelines = num_workers
        self.input_pipeline_id = tf.distribute.coordinator.experimental_get_current_worker_index()


def per_worker_input(files: Sequence[str], make: Callable, cluster: Cluster, batch: int, skip: int,
                     log: Callable[[str], None], shared: bool = False) -> keras.utils.experimental.DatasetCreator:
    """``DatasetCreator`` whose function gives each worker its own shards (``files[i::W]``) and batch
    (``B / W`` under multi-worker, ``B`` under ps), skipping its share of ``skip`` global steps.
    ``make(files, batch, skip, context)`` builds the dataset (``make_dataset`` with the run's settings).
    ``shared`` (ps): every worker reads the one stream of all shards that ``make`` sends through the
    chief's tf.data service job (``tfmsr.distribute.shared_input``): batch B, ``skip`` global steps."""
    files, w = list(files), cluster.num_workers
    if len(files) < w:
        raise ConfigError(f"{os.path.dirname(files[0])}: {len(files)} training shard(s) for {w} workers; "
                          "write at least one shard per worker")

    def log_split(ids):
        for i in ids:
            mine = files[i::w]
            log(f"[data] input pipeline {i}/{w} reads {len(mine)} of {len(files)} shards: "
                + ", ".join(os.path.basename(f) for f in mine))

    def fn(ctx: tf.distribute.InputContext):
        if cluster.kind == "ps" and shared:  # one stream, each batch to one worker
            return make(files, batch, skip, None)
        if cluster.kind == "ps":  # traced once on the chief, run on every worker with its own index
            log_split(range(w))
            return make(files, batch, skip // w, _WorkerContext(w))
        log_split([ctx.input_pipeline_id])
        return make(files, ctx.get_per_replica_batch_size(batch), skip, ctx)

    return keras.utils.experimental.DatasetCreator(fn)


# ---------------------------------------------------------------------------------------- callbacks
def _is_ps(model) -> bool:
    return bool(getattr(model.distribute_strategy, "_should_use_with_coordinator", False))


class ClusterBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that also backs up every ``save_freq`` steps under ParameterServerStrategy (Keras'
    own skips step backups there): waits for the scheduled steps, then saves the same state (model,
    optimizer, epoch, batch) Keras restores and resumes from; a backup at each epoch end too. ``sidecar``
    (``accounting.EpochAccounting``: the shared stream's batch ledger) writes its state before each backup
    checkpoint (``before_backup``) and drops the older ones after it (``after_backup``)."""

    def __init__(self, backup_dir: str, *args, sidecar=None, **kwargs):
        super().__init__(backup_dir, *args, **kwargs)
        self.sidecar = sidecar

    def on_train_batch_end(self, batch, logs=None):
        if not _is_ps(self.model):
            return super().on_train_batch_end(batch, logs)
        self._batches_count += 1
        if isinstance(self.save_freq, int) and self._batches_count >= self.save_freq:
            self._batches_count = 0
            self._save(batch)

    def on_epoch_end(self, epoch, logs=None):
        if not _is_ps(self.model) or self.save_freq == "epoch":
            return super().on_epoch_end(epoch, logs)
        self._save(self.params["steps"] - 1)  # fit has joined: the whole epoch is in

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        if self.delete_checkpoint and self.model.distribute_strategy.extended.should_checkpoint:
            shutil.rmtree(self.backup_dir, ignore_errors=True)  # Keras leaves the emptied dir behind

    def _save(self, batch):
        self.model._cluster_coordinator.join()  # every step scheduled so far has been applied
        self._training_state._ckpt_saved_batch.assign(batch)
        self._backup(epoch=self._current_epoch, batch=batch)

    def _backup(self, epoch, batch=0):
        if self.sidecar is not None:
            self.sidecar.before_backup()
        super()._backup(epoch, batch)
        if self.sidecar is not None:
            self.sidecar.after_backup()


class ClusterProgress(Progress):
    """``Progress`` whose step logs may be a ``RemoteValue`` (ParameterServerStrategy): fetched only on
    the steps that print; the line ends with the epoch's steps per worker so far (a straggler or a lost
    worker shows)."""

    def more(self) -> str:
        steps = worker_steps(self.model)
        return f"  worker steps {steps}" if steps is not None else ""

    def on_train_batch_end(self, batch, logs=None):
        if self.due(batch, self.every) and hasattr(logs, "fetch"):
            logs = fetch_logs(logs, "the progress line", self.log)
        elif hasattr(logs, "fetch"):
            logs = None
        super().on_train_batch_end(batch, logs)

