"""One training stream for every ParameterServerStrategy worker: a tf.data service job (issue 29, item 3).

Before: worker i read ``files[i::W]`` on its own, so the shards of a worker that died and was not restarted
were never read again (and a faster worker re-read its own shards while a slower one's went short) while
the log reported full epochs. Now the chief runs a tf.data service dispatcher and one tf.data worker in
its own process; that worker reads the shards (all of them, shuffled by the seed, batched, repeated, the
resumed steps skipped: the same stream a single process trains on) and every training worker consumes
the serialized batches of one shared job, first come first served. Each batch goes to exactly one worker,
so a lost worker's share goes to the others without any re-planning, and every shard is read once per
pass over the data.

Measured against the alternative of re-planning each epoch's files over the live workers: a re-plan needs
the chief to know which workers are alive and new per-worker datasets each epoch (one ``fit`` per epoch),
and still reads a fast worker's shards more than once per epoch, since ParameterServerStrategy schedules
each step on whichever worker is free; the shared job needs neither and is exact whatever the speeds.
What a killed worker held when it died is counted, then trained again: each batch carries its sequence
number in the stream (``tag_sequence``, made before the job hands it out), a trained step counts its rows
per sequence number on the parameter servers, and the chief's ``accounting.BatchLedger`` names the batches
fetched and never trained. A tf.data service stream never confirms that a batch was consumed, so they are
not re-issued into the job: ``MakeUp`` rebuilds the same stream from the seed in a per-worker dataset,
keeps only those sequence numbers (``pick_batches``) and trains them in make-up steps on a live worker, at
the epoch end a batch is found lost (untrained at two epoch ends in a row: a live worker trains what it
fetched ahead at its next steps) and, at the last epoch's end, for every batch still untrained -- before
that epoch's validation, checkpoints and backup, so ``final/`` and a resumed run include them. Per pass
over the split the log says ``R rows trained + L lost with a worker, re-read by the survivors (batches
[...]) + A fetched, untrained at the end (batches [...])``: R + L + A = the split's rows, each row trained
once. Measured (test_faults case 30: 2 workers, batch 32, worker 1 SIGKILLed while it trains; 5 runs):
the dead worker took 5 batches (160 rows, e.g. global batches 92, 94, 96, 98, 99: its share of the
stream) with it each time, more than ``max_outstanding_requests=1`` suggests; one step it had begun
(read its batch) but not reported is sometimes run again by the coordinator on the survivor (4,032 examples in that
epoch, said in the log). The 5 make-up steps took 11.1 s on a loaded 2-core machine: 5.3 s tracing the
make-up dataset on the chief, 0.5 s scheduling (``fit``'s traced step reused; 9 s when traced anew),
5.3 s on the worker; the seeded stream from the first lost batch to the last is read again.

Make-up steps are ordinary optimizer steps: ``optimizer.iterations`` (the global step of the progress
line and of ``history.json``'s ``steps``; Adam's bias correction; the learning rate is a constant) grows
by one per make-up batch, while the epoch's plan (``steps_per_epoch`` fit steps) and the backup's (epoch,
batch) -- the stream position a restarted chief skips to -- do not move; the batches the regular steps
train shift by as many, so the last pass of a run is partial by the make-up batches. Batches are numbered
globally (a resumed stream's first batch is its resume step), and the ledger goes beside every backup
checkpoint (``accounting.LedgerBackup``): a restarted chief restores it, takes the batches fetched and
untrained before the backup's stream position as lost (the restart starts a new job) and re-reads them,
with the lost ones not yet re-read, at its first epoch end (test_faults case 30b).

Parsing stays on the training workers (after the job), so the vocabulary tables of raw-valued datasets
are the workers' own copies, as before; the service carries serialized records and their shard index.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import tensorflow as tf

from tfmsr.distribute.accounting import SEQ

_SERVERS: dict = {}


class SharedStream:
    """The chief's tf.data service (dispatcher + one worker, started once per process) and the job the
    training workers share. ``apply(ds)`` sends ``ds`` (serialized batches) through the job."""

    def __init__(self, host: str, job: str, log: Optional[Callable[[str], None]] = None, first: int = 0):
        if host not in _SERVERS:
            dispatcher = tf.data.experimental.service.DispatchServer(
                tf.data.experimental.service.DispatcherConfig(port=0))
            address = f"{host}:{dispatcher.target.rsplit(':', 1)[1]}"
            worker = tf.data.experimental.service.WorkerServer(tf.data.experimental.service.WorkerConfig(
                dispatcher_address=address, worker_address=f"{host}:%port%"))
            _SERVERS[host] = (dispatcher, worker, address)
        self.address, self.job, self.first = _SERVERS[host][2], job, first
        if log:
            log(f"[data] tf.data service on the chief at {self.address} (job {job}): every worker takes the next "
                "batch of one shared stream, each batch goes to one worker; a lost worker's share goes to the others")

    def apply(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        """``ds`` through the shared job; (records, shard index) batches are first tagged with their sequence
        number in the stream (``tag_sequence``, from ``first``: the resumed step), so the chief can tell which
        batches were trained."""
        if isinstance(ds.element_spec, tuple):
            ds = tag_sequence(ds, self.first)
        return ds.apply(tf.data.experimental.service.distribute(
            processing_mode="parallel_epochs", service=f"grpc://{self.address}", job_name=self.job,
            max_outstanding_requests=1))


def tag_sequence(ds: tf.data.Dataset, first: int = 0) -> tf.data.Dataset:
    """(records, shard index) batches -> (records, shard index + ``SEQ`` x the batch's global number: ``first``
    + its number in ``ds``): made in the chief's tf.data worker before the job hands the batch out, counted per
    batch by ``accounting.Counters.batches`` when a step trains it (``accounting.BatchLedger`` finds the lost ones)."""
    return ds.enumerate(first).map(lambda i, batch: (batch[0], batch[1] + SEQ * i))


def pick_batches(ds: tf.data.Dataset, seqs, first: int = 0) -> tf.data.Dataset:
    """The batches numbered ``seqs`` (global numbers) in the (records, shard index) stream ``ds`` that starts
    at global batch ``first``, in order and tagged as ``tag_sequence`` tags them: the same stream rebuilt from
    the seed, read up to the last one (finite)."""
    wanted = tf.constant(sorted(seqs), tf.int64)
    return (ds.take(int(max(seqs)) - first + 1).enumerate(first)
            .filter(lambda i, batch: tf.reduce_any(tf.equal(i, wanted)))
            .map(lambda i, batch: (batch[0], batch[1] + SEQ * i)))


class MakeUp:
    """Make-up steps (ParameterServerStrategy): train again the batches of the shared stream that no step
    trained (``accounting.BatchLedger``: fetched by a lost worker, or fetched and untrained when training
    ends). ``stream(first, service)`` rebuilds the run's training stream from its seed (the same shards
    and shuffle, from global batch ``first``: the first wanted one, also before a resumed step) with
    ``service`` applied to its serialized batches, where ``pick_batches`` keeps the wanted ones. One closure
    runs them all, in order, on one live worker (a per-worker dataset holds every wanted batch, so two
    workers would train each twice); each is a call of ``fit``'s own traced step (``model.train_tf_function``:
    not traced again), counted per shard and batch like the others; it advances ``optimizer.iterations`` and
    Keras' train counter, not the epoch's step plan. Called at an epoch end, after ``fit`` joined the epoch's
    steps; returns when they are in."""

    def __init__(self, stream: Callable[[int, Callable], tf.data.Dataset]):
        self.stream = stream

    def __call__(self, model, seqs) -> None:
        seqs = sorted(int(q) for q in seqs)
        first = seqs[0]  # the stream rebuilt from the first wanted batch (those before the resumed step too)
        strategy, coordinator = model.distribute_strategy, model._cluster_coordinator
        per_worker = coordinator.create_per_worker_dataset(
            lambda: strategy.distribute_datasets_from_function(
                lambda ctx: self.stream(first, lambda ds: pick_batches(ds, seqs, first))))

        step = model.train_tf_function  # fit's traced step (one batch), reused: its graph is not traced again

        @tf.function
        def steps(iterator):
            for _ in tf.range(len(seqs)):
                step(iterator)

        coordinator.schedule(steps, args=(iter(per_worker),))
        coordinator.join()


def chief_host(spec: dict) -> str:
    """The chief's host name in the cluster spec (the workers reach the service there)."""
    return spec["chief"][0].rsplit(":", 1)[0]


def job_name(model_dir: str, skip: int) -> str:
    """A job name unique to this run and start (a restarted chief starts a new job from its resume step)."""
    return f"tfmsr-{abs(hash(os.path.abspath(model_dir))) % 10**8}-{skip}-{os.getpid()}"
