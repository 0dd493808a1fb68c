"""The progress line's examples/s and the run's throughput count training-step time only: an epoch's
validation is not in the denominator (issue 29; a fake clock, so nothing here is timed)."""
import re

import numpy as np
import tf_keras as keras

from tfmsr.distribute.accounting import EpochAccounting
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
