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
What it cannot give back is what a killed worker held when it died, and that is counted, not estimated:
each batch carries its sequence number in the stream (``tag_sequence``, made before the job hands it out),
a trained step counts its rows per sequence number on the parameter servers, and the chief's
``accounting.BatchLedger`` names the batches fetched and never trained, per epoch and per pass over the
split (``[data] pass P ...: R rows trained + L lost with a worker (batches [...])``). Measured (test_faults
case 30: 2 workers, batch 32, worker 1 SIGKILLed at step 80-90; 3 runs): the dead worker took 5 batches
(160 rows, e.g. global batches 104, 106, ..., 112: its share of the stream) with it each time, with or
without ``InputOptions(experimental_fetch_to_device=False)``, more than ``max_outstanding_requests=1``
suggests; and one step it had finished but not reported was run again by the coordinator on the survivor
(4,032 examples in epoch 1, said in the log). Re-issuing the lost batches would need the chief to replay
them into the job (a tf.data service stream has no acknowledgement), so the count is exact and the loss is
said rather than repaired.

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

    def __init__(self, host: str, job: str, log: Optional[Callable[[str], None]] = None):
        if host not in _SERVERS:
            dispatcher = tf.data.experimental.service.DispatchServer(
                tf.data.experimental.service.DispatcherConfig(port=0))
            address = f"{host}:{dispatcher.target.rsplit(':', 1)[1]}"
            worker = tf.data.experimental.service.WorkerServer(tf.data.experimental.service.WorkerConfig(
                dispatcher_address=address, worker_address=f"{host}:%port%"))
            _SERVERS[host] = (dispatcher, worker, address)
        self.address, self.job = _SERVERS[host][2], job
        if log:
            log(f"[data] tf.data service on the chief at {self.address} (job {job}): every worker takes the next "
                "batch of one shared stream, each batch goes to one worker; a lost worker's share goes to the others")

    def apply(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        """``ds`` through the shared job; (records, shard index) batches are first tagged with their sequence
        number in the stream (``tag_sequence``), so the chief can tell which batches were trained."""
        if isinstance(ds.element_spec, tuple):
            ds = tag_sequence(ds)
        return ds.apply(tf.data.experimental.service.distribute(
            processing_mode="parallel_epochs", service=f"grpc://{self.address}", job_name=self.job,
            max_outstanding_requests=1))


def tag_sequence(ds: tf.data.Dataset) -> tf.data.Dataset:
    """(records, shard index) batches -> (records, shard index + ``SEQ`` x the batch's number in ``ds``):
    made in the chief's tf.data worker before the job hands the batch out, counted per batch by
    ``accounting.Counters.batches`` when a step trains it (``accounting.BatchLedger`` finds the lost ones)."""
    return ds.enumerate().map(lambda i, batch: (batch[0], batch[1] + SEQ * i))


def pick_batches(ds: tf.data.Dataset, seqs) -> tf.data.Dataset:
    """The batches numbered ``seqs`` in the (records, shard index) stream ``ds``, in order and tagged as
    ``tag_sequence`` tags them: the same stream rebuilt from the seed, read up to the last one (finite)."""
    wanted = tf.constant(sorted(seqs), tf.int64)
    return (ds.take(int(max(seqs)) + 1).enumerate()
            .filter(lambda i, batch: tf.reduce_any(tf.equal(i, wanted)))
            .map(lambda i, batch: (batch[0], batch[1] + SEQ * i)))


class MakeUp:
    """Make-up steps (ParameterServerStrategy): train again the batches of the shared stream that no step
    trained (``accounting.BatchLedger``: fetched by a lost worker, or fetched and untrained when training
    ends). ``stream(service)`` rebuilds the run's training stream from its seed (the same shards, shuffle
    and resumed-steps skip) with ``service`` applied to its serialized batches, where ``pick_batches``
    keeps the wanted ones. One closure runs them all, in order, on one live worker (a per-worker dataset
    holds every wanted batch, so two workers would train each twice); each is an ordinary ``train_step``
    (counted per shard and batch like the others; it advances ``optimizer.iterations``, not the epoch's
    step plan). Called at an epoch end, after ``fit`` joined the epoch's steps; returns when they are in."""

    def __init__(self, stream: Callable[[Callable], tf.data.Dataset]):
        self.stream = stream

    def __call__(self, model, seqs) -> None:
        seqs = sorted(int(q) for q in seqs)
        strategy, coordinator = model.distribute_strategy, model._cluster_coordinator
        per_worker = coordinator.create_per_worker_dataset(
            lambda: strategy.distribute_datasets_from_function(
                lambda ctx: self.stream(lambda ds: pick_batches(ds, seqs))))

        @tf.function
        def steps(iterator):
            for _ in tf.range(len(seqs)):
                strategy.run(model.train_step, args=(next(iterator),))

        coordinator.schedule(steps, args=(iter(per_worker),))
        coordinator.join()


def chief_host(spec: dict) -> str:
    """The chief's host name in the cluster spec (the workers reach the service there)."""
    return spec["chief"][0].rsplit(":", 1)[0]


def job_name(model_dir: str, skip: int) -> str:
    """A job name unique to this run and start (a restarted chief starts a new job from its resume step)."""
    return f"tfmsr-{abs(hash(os.path.abspath(model_dir))) % 10**8}-{skip}-{os.getpid()}"
