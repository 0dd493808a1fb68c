"""Benchmarks as commands (JSON out): input pipeline examples/s and training examples/s after warm-up."""
from __future__ import annotations

import math
import os
import time

import tensorflow as tf

from tfmsr.core.errors import ConfigError
from tfmsr.core.rundir import read_stats
from tfmsr.data.pipeline import make_dataset, read_errors, split_files, stage_streams, use_cache
from tfmsr.features import Schema
from tfmsr.ranking.train import build_in_scope


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "tensorflow": tf.__version__}


def _timed_batches(ds, steps: int, warmup: int):
    """(rows, wall seconds, CPU seconds of the whole process) of ``steps`` batches of ``ds`` after ``warmup``."""
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    start, cpu, n = time.perf_counter(), time.process_time(), 0
    for _ in range(steps):
        n += int(tf.nest.flatten(next(it))[0].shape[0])
    return n, time.perf_counter() - start, time.process_time() - cpu


def _rates(n: int, secs: float, cpu: float) -> dict:
    return {"examples": n, "seconds": round(secs, 3), "examples_per_sec": round(n / secs, 1),
            "cpu_seconds": round(cpu, 3), "examples_per_cpu_sec": round(n / cpu, 1)}


def bench_input(data_dir: str, batch: int = 1024, steps: int = 300, warmup: int = 20, split: str = "train",
                cache="auto", seed: int = 0, shuffle_buffer: int = 20_000) -> dict:
    """Examples/s of the training input pipeline (read, shuffle, batch, parse) alone; with ``cache``
    (``data.cache``) the rows are parsed once first (``load_seconds``) and the timed batches come from memory."""
    schema = Schema.load(os.path.join(data_dir, "schema.yaml"))
    files = split_files(data_dir, split)
    start, cpu = time.perf_counter(), time.process_time()
    cached = use_cache(cache, files, "error")
    ds = make_dataset(files, schema, batch, training=True, seed=seed, shuffle_buffer=shuffle_buffer, cache=cached)
    load, load_cpu = time.perf_counter() - start, time.process_time() - cpu
    with read_errors(files, schema):
        timed = _rates(*_timed_batches(ds, steps, warmup))
    return {"bench": "input", "data": os.path.abspath(data_dir), "batch": batch, "steps": steps, **timed,
            "cache": cached, **({"load_seconds": round(load, 3), "load_cpu_seconds": round(load_cpu, 3)}
                                if cached else {}),
            "features": {k: sum(1 for f in schema.features if f.kind == k)
                         for k in ("categorical", "numeric", "sequence")}, **_machine()}


def input_stages(data_dir: str, batch: int = 1024, steps: int = 300, warmup: int = 20, split: str = "train",
                 seed: int = 0, shuffle_buffer: int = 20_000, rounds: int = 2) -> dict:
    """Where the streaming pipeline's CPU goes (``bench input --stages``): the stages of
    ``tfmsr.data.pipeline.stage_streams`` (read; + shuffle; + parse) timed in turn, ``rounds`` times
    alternating (a busy machine's drift falls on every stage alike), summed; ``cpu_us_per_row`` of a stage
    minus the one before is that stage's own cost."""
    schema = Schema.load(os.path.join(data_dir, "schema.yaml"))
    files = split_files(data_dir, split)
    streams = stage_streams(files, schema, batch, seed=seed, shuffle_buffer=shuffle_buffer)
    totals = {name: [0, 0.0, 0.0] for name in streams}
    with read_errors(files, schema):
        for _ in range(rounds):
            for name, ds in streams.items():
                totals[name] = [a + b for a, b in zip(totals[name], _timed_batches(ds, steps, warmup))]
    return {name: {**_rates(n, secs, cpu), "cpu_us_per_row": round(1e6 * cpu / n, 3)}
            for name, (n, secs, cpu) in totals.items()}


def _timed_fit(model, ds, files, schema, cfg, data_dir, batch, steps, warmup, **extra) -> dict:
    """``model.fit`` for ``warmup`` steps, then ``steps`` timed steps; the ``bench train`` result."""
    with read_errors(files, schema):
        model.fit(ds, epochs=1, steps_per_epoch=warmup, verbose=0)
        start, cpu = time.perf_counter(), time.process_time()
        model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
    secs, cpu = time.perf_counter() - start, time.process_time() - cpu
    params = int(sum(math.prod(v.shape) for v in model.trainable_variables))
    return {"bench": "train", "model": cfg["model"]["name"], "data": os.path.abspath(data_dir), "batch": batch,
            "steps": steps, "warmup": warmup, "seconds": round(secs, 3),
            "examples_per_sec": round(steps * batch / secs, 1), "ms_per_step": round(1000 * secs / steps, 2),
            # all threads of this process: comparable on a busy machine (on a cluster: this role's only)
            ("role_cpu_seconds" if "cluster" in extra else "cpu_seconds"): round(cpu, 3),
            **({} if "cluster" in extra else {"examples_per_cpu_sec": round(steps * batch / cpu, 1)}),
            "trainable_parameters": params, **extra, **_machine()}


def bench_train(cfg: dict, data_dir: str, batch: int = 1024, steps: int = 200, warmup: int = 30) -> dict:
    """Training examples/s of ``model.fit`` from TFRecord shards, measured after ``warmup`` steps.
    Under ``TF_CONFIG`` (``tfmsr cluster ... -- bench train ...``) the same measurement on the cluster."""
    from tfmsr.distribute.strategy import cluster_from_env

    cluster = cluster_from_env(cfg)
    if cluster.kind != "local":
        return bench_train_cluster(cluster, cfg, data_dir, batch, steps, warmup)
    schema = Schema.load(os.path.join(data_dir, "schema.yaml"))
    files = split_files(data_dir, "train")
    model = build_in_scope(tf.distribute.get_strategy(), cluster, cfg, schema, files, read_stats(data_dir))
    cached = use_cache(cfg["data"]["cache"], files, cfg["data"]["non_finite"])
    ds = make_dataset(files, schema, batch, training=True, seed=cfg["train"]["seed"],
                      shuffle_buffer=cfg["data"]["shuffle_buffer"], non_finite=cfg["data"]["non_finite"], cache=cached)
    return _timed_fit(model, ds, files, schema, cfg, data_dir, batch, steps, warmup, cache=cached)


def bench_train_cluster(cluster, cfg: dict, data_dir: str, batch: int, steps: int, warmup: int) -> dict:
    """``bench_train`` as one role of a cluster: the chief (ParameterServerStrategy) or every worker
    (MultiWorkerMirroredStrategy) measures ``model.fit`` of global batches of ``batch`` rows, each
    worker reading its own shards; the other roles serve until the launcher stops them."""
    from tfmsr.distribute import strategy as dist

    if not cluster.trains:
        if cluster.role == "evaluator":
            raise ConfigError("bench train has no evaluator role; start the cluster without --evaluator")
        dist.serve(cluster, print)
        return {}
    strategy = dist.make_strategy(cluster, cfg)  # before any other TensorFlow op
    schema = Schema.load(os.path.join(data_dir, "schema.yaml"))
    files = split_files(data_dir, "train")
    model = build_in_scope(strategy, cluster, cfg, schema, files, read_stats(data_dir))
    ds = dist.per_worker_input(files, lambda f, b, k, ctx: make_dataset(
        f, schema, b, training=True, seed=cfg["train"]["seed"], shuffle_buffer=cfg["data"]["shuffle_buffer"],
        input_context=ctx), cluster, batch, 0, lambda line: None)
    return _timed_fit(model, ds, files, schema, cfg, data_dir, batch, steps, warmup,
                      cluster={"kind": cluster.kind, "role": cluster.role, "workers": cluster.num_workers,
                               "ps": cluster.num_ps})
