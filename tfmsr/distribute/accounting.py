"""What a training run consumed, counted in the graph, and the guard that stops a diverged run (DESIGN
section 7: every example read once per epoch, nothing silent).

``EpochAccounting`` logs, at each epoch end, the examples the epoch actually consumed -- the model's
``examples`` metric, summed in ``train_step`` from the batches themselves (under ParameterServerStrategy
a variable on the parameter servers, under MultiWorkerMirroredStrategy summed over the workers when the
epoch's logs are read) -- next to the plan (steps x batch) and the split's rows, with the epoch's
non-finite values (``data.non_finite``) and out-of-vocabulary ids; a count that differs from the split's
rows is said so. Throughput is counted from the end of the first step (start-up and tracing excluded), in
training-step time only (``progress.TrainClock``: the epochs' validation excluded). Under
ParameterServerStrategy it also names the batches of the shared stream a lost worker fetched and never
trained (``BatchLedger``) and has them trained again by make-up steps (``shared_input.MakeUp``) at that
epoch end, before the validation and checkpoints (it runs before those callbacks): per pass over the
split, rows trained + rows re-read = the split's rows. The ledger goes beside every backup checkpoint
(``LedgerBackup``), so a chief killed and restarted re-reads the batches lost before its restart too.

``LossGuard`` stops a run whose loss is NaN or infinite with ``NonFiniteLoss`` naming the step; raised
from inside ``fit``, so the trainer never reaches the code that writes ``final/`` (a TerminateOnNaN that
cannot be mistaken for a finished run). It reads the loss every step locally (the step has finished
anyway) and on the progress steps under ParameterServerStrategy (each read waits for a remote step).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from typing import Callable, List, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfmsr.core.io import write_json
from tfmsr.data.guards import SHARD_KEY
from tfmsr.distribute.progress import EveryNSteps, TrainClock, fetch_logs, last_step_of_epoch

_COUNTERS = "_tfmsr_counters"
SEQ = 1 << 24  # the shared stream tags each row with shard + SEQ x its batch's sequence number (shared_input)


class NonFiniteLoss(RuntimeError):
    """The training loss went NaN or infinite; the run stopped without writing final weights."""


def _value(logs, key: str) -> Optional[float]:
    if logs is None:
        return None
    logs = fetch_logs(logs, "the loss check")  # a ParameterServerStrategy RemoteValue, or None if lost
    v = logs.get(key) if hasattr(logs, "get") else None
    return None if v is None else float(v)


class LossGuard(EveryNSteps):
    """Raise ``NonFiniteLoss`` at the first step (checked every ``every`` steps) whose loss is not finite."""

    def __init__(self, model_dir: str, every: int = 1):
        super().__init__()
        self._supports_tf_logs = True  # logs stay tensors / remote values; read only on the checked steps
        self.model_dir, self.every = model_dir, every

    def on_train_batch_end(self, batch, logs=None):
        if self.due(batch, self.every):
            self._check(_value(logs, "loss"), f"step {int(self.model.optimizer.iterations.numpy())}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(_value(logs, "loss"), f"the end of epoch {epoch + 1}")

    def _check(self, loss: Optional[float], where: str) -> None:
        if loss is not None and not math.isfinite(loss):
            raise NonFiniteLoss(
                f"{self.model_dir}: the training loss is {loss} at {where}; training stopped and no final/ was "
                "written (backups hold only earlier steps). Check the data for extreme values or lower "
                "train.learning_rate, then re-run (it resumes from the last backup) or pass --overwrite")


class _Counts(keras.metrics.Metric):
    """Rows per index (a shard, or the worker of a step): a vector sum, outside the epoch logs."""

    def __init__(self, n: int, name: str, shape: Sequence[int] = ()):
        super().__init__(name=name)
        self.n = n
        self.counts = self.add_weight(name="counts", shape=(n, *shape), initializer="zeros", dtype=tf.int64)

    def update_state(self, index):
        self.counts.assign_add(tf.math.bincount(tf.cast(index, tf.int32), minlength=self.n, maxlength=self.n,
                                                dtype=tf.int64))

    def result(self):
        return tf.identity(self.counts)

    def reset_state(self):
        self.counts.assign(tf.zeros_like(self.counts))


class _StepsPerWorker(_Counts):
    """Steps and rows per worker in one ``[W, 2]`` variable, added by one op per step (from the batch, so
    after it arrived): a worker lost mid-step has both or neither counted, never its step without its rows."""

    def __init__(self, n: int):
        super().__init__(n, "steps_per_worker", shape=(2,))

    def update_state(self, index, rows):
        step = tf.stack([tf.constant(1, tf.int64), tf.cast(rows, tf.int64)])
        self.counts.assign_add(tf.scatter_nd(tf.reshape(tf.cast(index, tf.int32), [1, 1]), step[None], [self.n, 2]))

    def result(self):
        return tf.identity(self.counts[:, 0])

    def rows(self):
        return tf.identity(self.counts[:, 1])


class Counters:
    """The per-shard row counts (and, under ParameterServerStrategy, per-worker step counts) of a model's
    training steps; created under the strategy's scope, attached to the model untracked (not in its
    checkpoints or logs), read and reset by ``EpochAccounting``."""

    def __init__(self, files: Sequence[str], workers: int = 0):
        self.names = [os.path.basename(f) for f in files]
        self.shards = _Counts(len(files), "rows_per_shard")
        self.workers = _StepsPerWorker(workers) if workers else None
        self.batches: Optional[_Counts] = None  # rows trained per batch of the shared stream (never reset)

    def track_batches(self, capacity: int, strategy=None) -> None:
        """Count the rows trained per batch of the shared stream, by its sequence number (``SEQ``), for the
        first ``capacity`` batches (later ones share the last slot); created before the step is traced."""
        if self.batches is None:
            with strategy.scope() if strategy is not None else contextlib.nullcontext():
                self.batches = _Counts(capacity, "rows_per_batch")

    def attach(self, model) -> "Counters":
        object.__setattr__(model, _COUNTERS, self)
        return self

    def reset(self) -> None:
        for c in (self.shards, self.workers):
            if c is not None:
                c.reset_state()


def attach_counters(model, files: Sequence[str], strategy=None, workers: int = 0) -> Counters:
    """``Counters`` for ``files`` (and ``workers`` step counts: ParameterServerStrategy) created under the
    strategy's scope and attached to ``model``."""
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        return Counters(files, workers).attach(model)


def worker_steps(model) -> Optional[List[int]]:
    """The epoch's steps per worker so far (ParameterServerStrategy counters attached to ``model``), else None."""
    counters = getattr(model, _COUNTERS, None)
    if counters is None or counters.workers is None:
        return None
    return [int(v) for v in counters.workers.result().numpy()]


def count_inputs(model, x, rows) -> None:
    """In a training step: pop the rows' shard indices from the features and count them (and the step's
    worker with its ``rows`` under ParameterServerStrategy) in the counters attached to ``model``, if any."""
    shards = x.pop(SHARD_KEY, None) if isinstance(x, dict) else None
    counters = getattr(model, _COUNTERS, None)
    if counters is None:
        return
    if shards is not None:
        counters.shards.update_state(shards % SEQ)
        if counters.batches is not None:
            counters.batches.update_state(tf.minimum(shards // SEQ, counters.batches.n - 1))
    if counters.workers is not None:
        counters.workers.update_state(tf.distribute.coordinator.experimental_get_current_worker_index(), rows)


class BatchLedger:
    """Which batches of the shared stream were trained (ParameterServerStrategy): from the rows counted per
    global batch number (``Counters.batches``; this process's stream starts at ``start``, the resumed step),
    the batches fetched by a worker and never trained and, per pass over the train split (``ceil(rows /
    batch)`` batches, the last one short), the rows trained and untrained -- all counted, none estimated.

    A live worker trains the batches it fetched ahead at its next steps, so a batch still untrained one epoch
    end after a later batch was trained went with a dead worker (``lost``). Those untrained when training
    ends are ``ahead``: fetched ahead by a live worker, or lost in the last epoch. Make-up steps
    (``shared_input.MakeUp``) train them again: ``replayed``, counted per batch like any trained one.

    A restarted chief gets the ledger of its backup (``state`` / ``restore``, beside each backup checkpoint:
    ``LedgerBackup``): the lost, ahead and re-read batches, the holes below the backup's stream position (lost
    with the old job: the restart starts a new one) and the rows trained per pass before that position."""

    def __init__(self, rows: int, batch: int, start: int = 0):
        self.rows, self.batch, self.start = rows, batch, start
        self.per_pass = max(1, math.ceil(rows / batch))
        self.lost: List[int] = []   # global batch numbers, in the order they were found lost
        self.ahead: List[int] = []  # untrained when training ended
        self.replayed: List[int] = []  # of those, the ones make-up steps trained
        self.before: dict = {}  # pass -> {trained_rows, trained_twice} before ``start`` (restored from a backup)
        self.past: List[int] = []  # batches at or after ``start`` a run before the restart trained (trained again)
        self._open: set = set()

    def batch_rows(self, seq: int) -> int:
        """Rows in global batch ``seq`` (each pass's last batch holds the remainder)."""
        return self.rows - (self.per_pass - 1) * self.batch if (seq + 1) % self.per_pass == 0 else self.batch

    def untrained(self, counts) -> List[int]:
        """Global numbers of the batches of this process's stream with no trained row before the last trained one."""
        trained = np.flatnonzero(np.asarray(counts)[:-1])  # the last slot holds the overflow
        last = int(trained[-1]) if len(trained) else -1
        return [i for i in range(self.start, last) if counts[i] == 0]

    def settle(self, counts, final: bool = False) -> List[int]:
        """The batches found lost now (untrained at two epoch ends in a row), or with ``final`` (training
        ended) the ones still untrained, recorded as ``ahead``."""
        holes = set(self.untrained(counts)) - set(self.lost) - set(self.ahead)
        new = sorted(holes if final else holes & self._open)
        (self.ahead if final else self.lost).extend(new)
        self._open = holes - set(new)
        return new

    def pending(self) -> List[int]:
        """Lost and ahead batches (global numbers) no make-up step has trained yet."""
        done = set(self.replayed)
        return [q for q in self.lost + self.ahead if q not in done]

    def state(self, counts, position: int) -> dict:
        """What a chief restarted from a backup at stream ``position`` needs (JSON): the lost, ahead and
        re-read batches, the holes below ``position`` (lost with the job when the chief restarts), the
        batches at or after it already trained, and the rows trained per pass before it."""
        holes, counts = self.untrained(counts), np.asarray(counts)[:-1]
        known = set(self.lost) | set(self.ahead)
        below = {k: dict(v) for k, v in self.before.items()}
        for i in np.flatnonzero(counts[:position]):
            self._add(below, int(i), int(counts[i]))
        return {"position": position, "lost": self.lost, "ahead": self.ahead, "replayed": self.replayed,
                "holes": [q for q in holes if q < position and q not in known],
                "past": sorted(set(self.past) | {int(i) for i in np.flatnonzero(counts[position:]) + position}),
                "before": {str(k): v for k, v in below.items()}}

    def restore(self, state: dict) -> List[int]:
        """Takes a backup's ``state``; returns its holes before this stream's start, now lost (their make-up
        is pending, with the lost batches not re-read before the restart)."""
        self.lost, self.ahead, self.replayed = list(state["lost"]), list(state["ahead"]), list(state["replayed"])
        self.before = {int(k): dict(v) for k, v in state["before"].items()}
        self.past = [q for q in state["past"] if q >= self.start]
        new = sorted(q for q in state["holes"] if q < self.start)
        self.lost.extend(new)
        return new

    def _add(self, out: dict, seq: int, rows: int) -> None:
        """Counts ``rows`` trained in global batch ``seq`` into its pass of ``out``."""
        p = out.setdefault(seq // self.per_pass, {"trained_rows": 0, "trained_twice": 0})
        p["trained_rows"] += rows
        p["trained_twice"] += int(rows > self.batch_rows(seq))

    def passes(self, counts) -> List[dict]:
        """Per pass touched: batches, rows trained, lost and untrained at the end (and those batches), batches
        trained twice."""
        counts = np.asarray(counts)[:-1]
        out = {k: dict(v) for k, v in self.before.items()}
        for i in np.flatnonzero(counts):
            self._add(out, int(i), int(counts[i]))
        for q in self.past:  # trained before the chief restarted, after its backup, and by this stream again
            if q < len(counts) and counts[q]:
                out[q // self.per_pass]["trained_twice"] += 1
        for key, seqs in (("lost", self.lost), ("ahead", self.ahead), ("replayed", self.replayed)):
            for seq in seqs:
                out.setdefault(seq // self.per_pass, {"trained_rows": 0, "trained_twice": 0}).setdefault(
                    f"{key}_batches", []).append(seq)
        return [self._pass(k, v) for k, v in sorted(out.items())]

    def _pass(self, k: int, v: dict) -> dict:
        """One pass's record; ``trained_rows`` by the stream's own steps, ``replayed_rows`` by make-up steps."""
        record = {"pass": k + 1, "batches": self.per_pass, "trained_twice": v["trained_twice"]}
        for key in ("lost", "ahead", "replayed"):
            seqs = v.get(f"{key}_batches", [])
            record.update({f"{key}_rows": sum(self.batch_rows(q) for q in seqs), f"{key}_batches": seqs})
        record["trained_rows"] = v["trained_rows"] - record["replayed_rows"]
        record["untrained_rows"] = record["lost_rows"] + record["ahead_rows"] - record["replayed_rows"]
        return record


class LedgerBackup:
    """``backup/ledger-<step>.json``: the ``BatchLedger`` state of the backup checkpoint taken at optimizer
    step ``step`` (the step it restores, so a restarted chief reads the ledger of exactly the checkpoint it
    resumed from). Written atomically before the checkpoint; the older ones are removed after it, so a chief
    killed in between still finds the ledger of the checkpoint it restores."""

    def __init__(self, backup_dir: str):
        self.dir = backup_dir

    def path(self, step: int) -> str:
        return os.path.join(self.dir, f"ledger-{step}.json")

    def write(self, step: int, state: dict) -> None:
        os.makedirs(self.dir, exist_ok=True)
        write_json(self.path(step), state)

    def read(self, step: int) -> Optional[dict]:
        """The ledger of the backup at ``step``, or None (a fresh run, or a backup without a ledger)."""
        try:
            with open(self.path(step)) as fh:
                return json.load(fh)
        except FileNotFoundError:
            return None

    def prune(self, step: int) -> None:
        """Removes the ledgers of the backups before the one at ``step``."""
        for name in os.listdir(self.dir):
            if name.startswith("ledger-") and name != os.path.basename(self.path(step)):
                os.remove(os.path.join(self.dir, name))


class EpochAccounting(keras.callbacks.Callback):
    """``[data] epoch N: n examples read ...`` at each epoch end from the graph's counts; ``epochs`` holds
    them (epoch, steps, batch, examples, non_finite, oov_ids); ``examples_per_sec`` from the first step on,
    in training-step time (``clock``: the time source). Under ParameterServerStrategy also the steps run
    again after a lost worker and the batches of the shared stream (numbered from ``start``, the resumed
    step) it fetched and never trained (``BatchLedger``: counted, per epoch, and per pass over the split in
    ``passes`` at the end of training), which ``replay(model, batches)`` (``shared_input.MakeUp``) trains
    on the live workers at the epoch end they are found lost, and at the last epoch's end every batch
    still untrained -- before the epoch's validation and checkpoints (this callback runs before them).
    With ``backup`` (a ``LedgerBackup``) the ledger goes beside every backup checkpoint (``before_backup`` /
    ``after_backup``, called by ``strategy.ClusterBackupAndRestore``) and a resumed chief restores it: the
    batches lost before the restart and not yet re-read are re-read at its first epoch end."""

    def __init__(self, batch: int, rows: int, log: Callable[[str], None], counters: Optional[Counters] = None,
                 clock: Callable[[], float] = time.time, start: int = 0,
                 replay: Optional[Callable[[object, List[int]], None]] = None, backup: Optional[LedgerBackup] = None):
        super().__init__()
        self._supports_tf_logs = True  # the step hook reads no logs (allowed under ParameterServerStrategy)
        self.batch, self.rows, self.log, self.counters = batch, rows, log, counters
        self.start, self.replay, self.backup = start, replay, backup
        self._restored: List[int] = []  # holes of the backup, lost with the chief's restart
        self.epochs: List[dict] = []
        self.clock = TrainClock(clock)
        self._steps = 0
        self.ledger: Optional[BatchLedger] = None
        self.passes: List[dict] = []

    def on_train_begin(self, logs=None):
        if self.counters is not None and self.counters.workers is not None:  # the shared stream's batches
            steps = self.params["steps"]
            self.counters.track_batches(self.params["epochs"] * steps + max(64, steps), self.model.distribute_strategy)

    def on_epoch_begin(self, epoch, logs=None):
        if self.counters is not None:
            self.counters.reset()
        if self.ledger is None and self.counters is not None and self.counters.batches is not None:
            self.ledger = BatchLedger(self.rows, self.batch, self.start)
            self._restore()
        if self._steps:  # the clock starts at the end of the first step
            self.clock.start()

    def _restore(self) -> None:
        """A resumed chief: the ledger of the backup it restored (keyed by the optimizer step), logged."""
        state = self.backup.read(self._step()) if self.backup is not None and self.start else None
        if state is None:
            return
        self._restored = self.ledger.restore(state)
        pending = self.ledger.pending()
        self.log(f"[data] ledger restored from the backup at stream batch {state['position']:,}: "
                 f"{len(self.ledger.lost) - len(self._restored)} batch(es) lost with a worker and "
                 f"{len(self.ledger.replayed)} re-read before the restart; "
                 f"{len(self._restored)} fetched and untrained when the chief stopped, lost with its job "
                 f"(global batches {self._restored}); {len(pending)} to re-read at this epoch's end "
                 f"(global batches {pending})")

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def before_backup(self) -> None:
        """Writes the ledger of the backup about to be taken (every scheduled step is in)."""
        if self.backup is not None and self.ledger is not None:
            counts = self.counters.batches.result().numpy()
            self.backup.write(self._step(), self.ledger.state(counts, self.start + self._steps))

    def after_backup(self) -> None:
        """The backup is written: the ledgers of the earlier ones go."""
        if self.backup is not None and self.ledger is not None:
            self.backup.prune(self._step())

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        self.clock.start()
        if last_step_of_epoch(self, batch):
            self.clock.stop()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        examples = self._examples(logs)
        made = self._make_up(epoch)  # before the counters are read: the epoch's rows include the make-up
        steps = self.params["steps"]
        row = {"epoch": epoch + 1, "steps": steps, "batch": self.batch,
               "examples": examples, "non_finite": int(logs.get("non_finite", 0)),
               "oov_ids": int(logs.get("oov_ids", 0))}
        planned = self.rows if steps == math.ceil(self.rows / self.batch) else steps * self.batch
        off = row["examples"] - planned
        said = f" -- {off:+,} against the plan" if off else ""
        self.log(f"[data] epoch {epoch + 1}: {row['examples']:,} examples read (counted in the graph; plan {steps} "
                 f"steps x {self.batch}, train split {self.rows:,} rows){said}; non-finite values "
                 f"{row['non_finite']:,}; oov ids {row['oov_ids']:,}{self._by_counters(row, made)}")
        self.epochs.append(row)

    def _examples(self, logs) -> int:
        """The epoch's examples before its make-up steps: under ParameterServerStrategy the rows summed with
        the steps per worker (one op a step: a worker lost mid-step counts both or neither), else the
        ``examples`` metric."""
        if self.counters is not None and self.counters.workers is not None:
            return int(self.counters.workers.rows().numpy().sum())
        return int(logs.get("examples", 0))

    def _make_up(self, epoch: int) -> dict:
        """Settles the ledger at this epoch end (at the last epoch's end every batch still untrained too)
        and trains the lost ones again (``replay``); {lost, ahead, replayed: global batch numbers}."""
        if self.ledger is None:
            return {}
        counts = self.counters.batches.result().numpy()
        made = {"lost": self._restored + self.ledger.settle(counts), "replayed": []}
        self._restored = []
        made["ahead"] = self.ledger.settle(counts, final=True) if epoch + 1 >= self.params["epochs"] else []
        if self.replay is not None and self.ledger.pending():
            made["replayed"], began = self.ledger.pending(), self.clock.clock()
            self.replay(self.model, made["replayed"])
            self.ledger.replayed.extend(made["replayed"])
            made["seconds"] = self.clock.clock() - began
        return made

    def _by_counters(self, row: dict, made: dict) -> str:
        """Adds the per-shard rows (and per-worker steps) of the epoch to ``row``; their part of the log line."""
        if self.counters is None:
            return ""
        shards = [int(v) for v in self.counters.shards.result().numpy()]
        row["shards"] = dict(zip(self.counters.names, shards))
        text = f"; rows per shard {min(shards):,}..{max(shards):,} over {sum(1 for v in shards if v)} of {len(shards)} shards"
        if self.counters.workers is not None:
            row["worker_steps"] = [int(v) for v in self.counters.workers.result().numpy()]
            text += f"; steps per worker {row['worker_steps']}"
            before = self.epochs[-1].get("worker_steps") if self.epochs else None
            for i, n in enumerate(row["worker_steps"]):
                if n == 0 and (before is None or before[i] > 0):
                    text += (f" -- worker:{i} ran no step this epoch (lost?): the others took its share of the "
                             "shared stream")
            again = sum(row["worker_steps"]) - row["steps"] - len(made.get("replayed", []))
            if again > 0:
                text += (f"; {again} step(s) run again: a lost worker read their batches but did not report "
                         f"the steps, so the coordinator ran them on another worker with the next batch")
        return text + self._lost(row, made)

    def _lost(self, row: dict, made: dict) -> str:
        """Adds the batches found lost, untrained at the end and re-read at this epoch end (``_make_up``) to
        ``row``; their part of the log line."""
        text = ""
        for key, what in (("lost", "fetched by a lost worker and never trained"),
                          ("ahead", "fetched and untrained when training ended (fetched ahead by a live worker, "
                                    "or lost with one in this epoch)"),
                          ("replayed", f"re-read by the survivors in as many make-up steps "
                                       f"({made.get('seconds', 0):.1f} s; in this epoch's rows per shard, not in "
                                       "its examples; they advance the optimizer's step count, not the epoch's "
                                       "step plan)")):
            if key not in made:
                continue
            seqs = made[key]
            row[f"{key}_batches"], row[f"{key}_rows"] = seqs, sum(self.ledger.batch_rows(q) for q in seqs)
            if seqs:
                text += f"; {len(seqs)} batch(es), {row[f'{key}_rows']:,} rows, {what} (global batches {seqs})"
        return text

    def on_train_end(self, logs=None):
        if self.ledger is None or not self.epochs:
            return
        ahead = self.ledger.settle(self.counters.batches.result().numpy(), final=True)  # stopped early
        if ahead:
            last = self.epochs[-1]
            last["ahead_batches"] = last.get("ahead_batches", []) + ahead
            last["ahead_rows"] = sum(self.ledger.batch_rows(q) for q in last["ahead_batches"])
            self.log(f"[data] training stopped early: {len(ahead)} batch(es) fetched and never trained, not re-read "
                     f"(global batches {ahead})")
        self.passes = self.ledger.passes(self.counters.batches.result().numpy())
        for p in self.passes:
            self.log(self._pass_line(p))

    def _pass_line(self, p: dict) -> str:
        """``[data] pass P over the train split ...``: rows trained by the stream's steps + lost / untrained
        at the end (re-read or not) = the split's rows, unless the pass is partial."""
        replayed = set(p["replayed_batches"])

        def group(key: str, what: str) -> str:
            seqs = p[f"{key}_batches"]
            again = [q for q in seqs if q in replayed]
            said = (", re-read by the survivors" if again == seqs else
                    f", {len(again)} of them re-read by the survivors ({again})" if again else "")
            return f"{p[f'{key}_rows']:,} {what}{said if seqs else ''} (batches {seqs})"

        partial = "" if p["trained_rows"] + p["lost_rows"] + p["ahead_rows"] == self.rows else " -- a partial pass"
        never = f"; {p['untrained_rows']:,} rows never trained" if p["untrained_rows"] else ""
        twice = f"; {p['trained_twice']} batch(es) trained twice" if p["trained_twice"] else ""
        return (f"[data] pass {p['pass']} over the train split ({self.rows:,} rows): {p['trained_rows']:,} rows "
                f"trained + {group('lost', 'lost with a worker')} + "
                f"{group('ahead', 'fetched, untrained at the end')}{partial}{never}{twice}")

    @property
    def examples_per_sec(self) -> float:
        """Examples per second from the end of the first step to the end of the last (start-up excluded),
        over training-step time (epoch-end work excluded)."""
        if self._steps < 2:
            return 0.0
        return (self._steps - 1) * self.batch / max(self.clock.elapsed(), 1e-9)

    def totals(self) -> dict:
        """Examples, non-finite values and OOV ids over the epochs; with the shared stream also the rows lost
        with a worker and the ``passes`` over the split."""
        out = {k: sum(e[k] for e in self.epochs) for k in ("examples", "non_finite", "oov_ids")}
        if self.ledger is not None:  # the ledger's lists: with those restored from before a chief restart
            ledger = self.ledger
            out.update({f"{k}_rows": sum(ledger.batch_rows(q) for q in getattr(ledger, k))
                        for k in ("lost", "ahead", "replayed")}, passes=self.passes)
        return out
