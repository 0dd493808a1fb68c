"""Fresh initializer instances per weight.

A reused unseeded Keras initializer returns identical values on every call, so two weights of one shape
(W_Q and W_K, the experts of a bank, the layers of a cross network) would start equal. ``fresh(spec)``
builds a new instance for every weight.
"""
import tf_keras as keras

from tfmsr.layers.mlp import initializer


def fresh(spec):
    """A new initializer for ``spec`` (a name, ``{"normal": std}`` or an Initializer instance)."""
    if isinstance(spec, keras.initializers.Initializer):
        return type(spec).from_config(spec.get_config())
    return initializer(spec)
