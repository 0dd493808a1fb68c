"""The base of the layers whose weights depend on more than their first input (the call convention of
:mod:`tfmsr.layers`: every tensor is its own positional argument).

Keras 2 builds a layer from the shape of the first positional argument only. A :class:`MultiInputLayer`
defines ``build_inputs(*shapes)`` (one ``TensorShape`` per tensor, in call order) and starts ``call`` with
``self.build_once(t1, t2, ...)``: the method runs once, lifted out of any ``tf.function`` as Keras lifts
``build``, inside the layer's name scope, so the weights keep the names and checkpoint paths a ``build``
gives them.
"""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras


class MultiInputLayer(keras.layers.Layer):
    """A layer built from the shapes of all its positional tensors (see the module docstring)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._inputs_built = False

    def build_once(self, *tensors) -> None:
        """Run the subclass's ``build_inputs`` on the shapes of ``tensors`` (``None`` for an omitted one)
        the first time only."""
        if self._inputs_built:
            return
        with tf.init_scope():
            self.build_inputs(*(None if t is None else tf.TensorShape(t.shape) for t in tensors))
        self._inputs_built = True
