"""The optimizer factory shared by ranking and retrieval training."""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras
from tensorflow.python.ops.resource_variable_ops import BaseResourceVariable


class FusedAdam(keras.optimizers.Adam):
    """Keras' Adam (Kingma & Ba 2015, Algorithm 1 with Keras' epsilon hat) whose update of a variable is one
    fused kernel (``ResourceApplyAdam``: m, v and the variable in one pass over memory).

    Keras' own update is about ten element-wise ops per variable, each a pass over the whole variable (its
    sparse path first sums duplicate ids with ``tf.unique``, then decays all of m and v and scatters); on CPU
    that was ~40% of DeepFM's step (10 of 25 ms, mostly the embedding tables). Here an embedding gradient
    (``tf.IndexedSlices``) is summed into a dense gradient (one segment sum, no ``tf.unique``) inside the
    variable's update, i.e. where the variable lives (on its parameter server under ParameterServerStrategy,
    so only the touched rows travel): the same numbers as Keras' deduplicated sparse update, which also decays
    every row. Slots, names and checkpoints are Keras Adam's; AMSGrad, adaptive epsilon and variables that are
    not plain resource variables take Keras' path (its deduplicated sparse update)."""

    def _deduplicate_sparse_grad(self, grads):
        """Slices stay as they are until ``update_step`` (which densifies them, or deduplicates for Keras' path)."""
        return grads

    def _keras_path(self, variable) -> bool:
        return self.amsgrad or self.adaptive_epsilon or not isinstance(variable, BaseResourceVariable)

    def update_step(self, gradient, variable):
        if self._keras_path(variable):
            if isinstance(gradient, tf.IndexedSlices):
                gradient = super()._deduplicate_sparse_grad([gradient])[0]
            return super().update_step(gradient, variable)
        if isinstance(gradient, tf.IndexedSlices):
            gradient = densify(gradient)
        key = self._var_key(variable)
        return tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[self._index_dict[key]].handle,
            v=self._velocities[self._index_dict[key]].handle, grad=gradient, use_locking=False,
            **self._coefficients(variable.dtype))

    def _coefficients(self, dtype) -> dict:
        """ResourceApplyAdam's scalars of this step (beta powers at step t, learning rate, betas, epsilon) as
        ``dtype``: made once per traced step and dtype, not once per variable (7 scalar ops a variable, about
        160 of DeepFM's step), when no strategy places the variables apart (a parameter server would fetch
        them from the first variable's server)."""
        graph = None if tf.executing_eagerly() or tf.distribute.has_strategy() else tf.compat.v1.get_default_graph()
        made, cache = getattr(self, "_coefficient_cache", (None, {}))
        if graph is None or made is not graph:
            cache = {}
        if dtype not in cache:
            step = tf.cast(self.iterations + 1, dtype)
            beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
            cache[dtype] = dict(beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step), beta1=beta_1,
                                beta2=beta_2, lr=tf.cast(self.learning_rate, dtype),
                                epsilon=tf.cast(self.epsilon, dtype))
        if graph is not None:
            object.__setattr__(self, "_coefficient_cache", (graph, cache))  # untracked: no checkpoint entry
        return cache[dtype]


def densify(slices: tf.IndexedSlices) -> tf.Tensor:
    """The dense gradient of ``slices`` (rows with the same index summed): one sparse x dense matmul of the
    ``[V, n]`` one-hot index matrix with the ``[n, d]`` values (each output row sums its slices in order, the
    numbers of ``unsorted_segment_sum`` at about half its CPU time on TensorFlow's CPU kernels)."""
    idx = tf.cast(slices.indices, tf.int64)
    n = tf.shape(idx, out_type=tf.int64)[0]
    one_hot = tf.SparseTensor(tf.stack([idx, tf.range(n)], axis=1), tf.ones([n], slices.values.dtype),
                              tf.stack([tf.cast(slices.dense_shape[0], tf.int64), n]))
    values = tf.reshape(slices.values, tf.stack([n, -1]))
    return tf.reshape(tf.sparse.sparse_dense_matmul(one_hot, values), tf.cast(slices.dense_shape, tf.int32))


OPTIMIZERS = {"adam": FusedAdam, "adagrad": keras.optimizers.Adagrad, "sgd": keras.optimizers.SGD,
              "rmsprop": keras.optimizers.RMSprop}


def make_optimizer(name: str, learning_rate: float):
    """A fresh Keras 2 optimizer ``name`` (one of ``OPTIMIZERS``; configs check the name when read)."""
    return OPTIMIZERS[name](learning_rate=learning_rate)
