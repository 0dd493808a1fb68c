"""The optimizer factory shared by ranking and retrieval training."""
from __future__ import annotations

import tf_keras as keras

OPTIMIZERS = {"adam": keras.optimizers.Adam, "adagrad": keras.optimizers.Adagrad, "sgd": keras.optimizers.SGD,
              "rmsprop": keras.optimizers.RMSprop}


def make_optimizer(name: str, learning_rate: float):
    """A fresh Keras 2 optimizer ``name`` (one of ``OPTIMIZERS``; configs check the name when read)."""
    return OPTIMIZERS[name](learning_rate=learning_rate)
