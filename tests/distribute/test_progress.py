"""The progress line's examples/s and the run's throughput count training-step time only: an epoch's
validation is not in the denominator (issue 29; a fake clock, so nothing here is timed)."""
import json
import re

import numpy as np
import tf_keras as keras

from tfmsr.distribute.accounting import BatchLedger, EpochAccounting
from tfmsr.distribute.progress import Progress, TrainClock

BATCH, STEPS, EPOCHS = 8, 5, 3


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Tick(keras.callbacks.Callback):
    """Each training step takes 2 s; each epoch's validation (at its end) 500 s."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def on_train_batch_end(self, batch, logs=None):
        self.clock.now += 2.0

    def on_epoch_end(self, epoch, logs=None):
        self.clock.now += 500.0


def fit(callbacks):
    model = keras.Sequential([keras.layers.Dense(1, input_shape=(3,))])
    model.model_name = "tiny"
    model.compile("sgd", "mse")
    x, y = np.ones((BATCH * STEPS, 3), np.float32), np.ones((BATCH * STEPS, 1), np.float32)
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, callbacks=callbacks, verbose=0)


def test_rate_excludes_validation_whatever_the_callback_order():
    clock, lines = FakeClock(), []
    progress = Progress(BATCH, STEPS, EPOCHS, every=1, log=lines.append, clock=clock)
    accounting = EpochAccounting(BATCH, BATCH * STEPS, log=lambda line: None, clock=clock)
    # the validation runs before Progress's and EpochAccounting's epoch-end hooks (as in ranking.train)
    fit([Tick(clock), progress, accounting])
    rates = [float(re.search(r"([\d,.]+) ex/s", line).group(1).replace(",", "")) for line in lines]
    assert len(rates) == EPOCHS * STEPS - 1  # the first step has no rate
    assert rates == [BATCH / 2.0] * len(rates), lines  # 4 ex/s across the epoch boundaries too
    assert accounting.examples_per_sec == BATCH / 2.0
    assert clock.now - 1000.0 == EPOCHS * (STEPS * 2.0 + 500.0)  # the validation did take the fake time


def test_train_clock_pauses_between_stop_and_start():
    clock = FakeClock()
    c = TrainClock(clock)
    c.start()
    clock.now += 3
    c.stop()
    clock.now += 100
    assert c.elapsed() == 3 and not c.running
    c.start()
    clock.now += 1
    assert c.elapsed() == 4 and c.running



def test_ledger_names_lost_batches_one_epoch_end_late_and_counts_their_make_up():
    """BatchLedger on rows counted per batch (as Counters.batches holds them): a hole filled by its live
    worker's next step is never lost; one still open at the next epoch end is, and a make-up step's rows
    make its pass whole (trained + replayed = the split's rows); what is untrained at the end is ahead."""
    ledger = BatchLedger(rows=100, batch=32, start=4)  # 4 batches a pass (the last of 4 rows); resumed at 4
    counts = np.zeros(18, np.int64)  # slot i: global batch i; the last slot holds the overflow
    counts[[4, 5, 7, 8]] = 32, 32, 4, 32  # epoch end 1: batch 6 fetched, not trained yet
    assert ledger.untrained(counts) == [6] and ledger.settle(counts) == []  # a live worker may still train it
    counts[[6, 10, 11, 12]] = 32, 32, 4, 32  # epoch end 2: it was (not lost); batch 9 is a hole now
    assert ledger.settle(counts) == [] and ledger.lost == []
    counts[13] = 32  # epoch end 3: batch 9 still untrained -> lost
    assert ledger.settle(counts) == [9] and ledger.pending() == [9]
    counts[9] = 32  # its make-up step
    ledger.replayed.extend(ledger.pending())
    counts[[15, 16]] = 4, 32  # the last epoch: batch 14 untrained at the end
    assert ledger.settle(counts, final=True) == [14] and ledger.pending() == [14]
    assert ledger.settle(counts, final=True) == []  # named once
    two, three, four, five = ledger.passes(counts)
    assert (two["pass"], two["trained_rows"], two["replayed_rows"], two["untrained_rows"]) == (2, 100, 0, 0)
    assert three == {"pass": 3, "batches": 4, "trained_twice": 0, "trained_rows": 68, "replayed_rows": 32,
                     "replayed_batches": [9], "lost_rows": 32, "lost_batches": [9], "ahead_rows": 0,
                     "ahead_batches": [], "untrained_rows": 0}
    assert (four["trained_rows"], four["ahead_batches"], four["untrained_rows"]) == (68, [14], 32)
    assert five["trained_rows"] == 32
    counts[9] = 64  # had its dead worker trained it after all: counted, not hidden
    assert ledger.passes(counts)[1]["trained_twice"] == 1


def test_ledger_survives_a_chief_restart():
    """A chief killed after a backup at stream batch 6: the backup's ledger (JSON) names batch 2 (fetched by
    a worker killed before, found untrained at one epoch end: not yet lost), the rows trained per pass before
    6 and the batches 6, 7 trained past it; the restarted chief (stream from 6) takes batch 2 as lost (its
    job is gone), its make-up step makes pass 1 whole, and 6, 7, trained again by the new stream, are
    counted as trained twice."""
    old = BatchLedger(rows=100, batch=32)
    counts = np.zeros(20, np.int64)
    counts[[0, 1, 3, 4, 5, 6, 7]] = 32, 32, 4, 32, 32, 32, 4
    assert old.settle(counts) == [] and old.lost == []  # batch 2: open, found at one epoch end
    state = json.loads(json.dumps(old.state(counts, position=6)))
    assert (state["holes"], state["past"], state["lost"]) == ([2], [6, 7], [])
    assert state["before"] == {"0": {"trained_rows": 68, "trained_twice": 0},
                               "1": {"trained_rows": 64, "trained_twice": 0}}
    new = BatchLedger(rows=100, batch=32, start=6)
    assert new.restore(state) == [2] and new.pending() == [2]
    counts = np.zeros(20, np.int64)
    counts[[2, 6, 7, 8, 9, 10, 11]] = 32, 32, 4, 32, 32, 32, 4  # the make-up step of batch 2, then the stream
    new.replayed.extend(new.pending())
    assert new.pending() == [] and new.settle(counts) == [] and new.settle(counts, final=True) == []
    one, two, three = new.passes(counts)
    assert (one["trained_rows"], one["replayed_rows"], one["lost_batches"], one["untrained_rows"]) == (68, 32, [2], 0)
    assert (two["trained_rows"], two["trained_twice"], three["trained_rows"]) == (100, 2, 100)
    assert json.loads(json.dumps(new.state(counts, position=12)))["lost"] == [2]


def test_steps_per_worker_count_each_step_with_its_rows_in_one_variable():
    """Counters(workers=W): a step adds 1 step and its rows to its worker's row of one [W, 2] variable (one op,
    so a lost worker never has a step counted without its rows); reset zeroes both."""
    from tfmsr.distribute.accounting import Counters

    workers = Counters(["a", "b"], workers=3).workers
    for index, rows in ((1, 32), (1, 7), (2, 32)):
        workers.update_state(index, rows)
    assert workers.result().numpy().tolist() == [0, 2, 1]
    assert workers.rows().numpy().tolist() == [0, 39, 32]
    assert len(workers.variables) == 1
    workers.reset_state()
    assert workers.result().numpy().tolist() == [0, 0, 0] and workers.rows().numpy().tolist() == [0, 0, 0]
