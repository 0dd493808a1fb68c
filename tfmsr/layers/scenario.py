"""Per-scenario parameters stored stacked (``[S, ...]``: one variable per kind of weight, not S layers).

Two ways to use a stacked ``[S, D, H]`` kernel on a batch ``x [B, D]`` whose rows carry a scenario id:

* ``own``: each row through its own scenario's weights only, ``y_b = x_b W_{s_b} + b_{s_b}``; the FLOPs are
  those of one dense layer (``B D H``) whatever ``S``. Two implementations, chosen by :func:`own_method`:
  ``partition`` (rows split by scenario, one GEMM per scenario, rows stitched back: ``O(S)`` small ops) and
  ``gather`` (each row's ``[D, H]`` kernel gathered, one batched matmul: no ``O(S)`` op count but ``B D H``
  memory traffic forward and a ``[B, D, H]`` sparse gradient backward).
* ``all``: every scenario's output ``[B, S, H]`` in one einsum (``B S D H`` FLOPs): for ``scenario_probs``
  and the ``all_scenarios`` servable, or where the math needs every branch.

Measured (forward + backward, ``tf.function``, examples per CPU-second, B = 1024, 2 loaded cores):

    D x H       S      partition    gather    all + gather
    128 x 64    5        605,311    69,739        288,014
    128 x 64    100      213,454    61,029         19,585
    128 x 64    300       87,613    75,760          5,480
    64 x 32     300      124,045   226,500
    64 x 32     1000      45,718   155,737

so ``partition`` wins until ``S`` is large against ``D H`` (:func:`own_method`). Variables are created with
``add_weight`` and split along axis 0 (the scenario axis) by a parameter-server partitioner like any other.

One scenario known while tracing (a servable of scenario ``s`` feeds ``tf.fill([B], s)``): :func:`fixed_id`
finds ``s`` in the graph, and ``own_matmul``, ``partition_apply``, ``own_rows``, ``rows_of`` and
``ScenarioMLP.own`` use slice ``s`` directly: ``O(1)`` ops in ``S`` (no partition, no unstack). Inside
:class:`RowSlices` (``tfmsr.serving`` traces each scenario servable in one) the slice of a stacked variable is
read from a variable of its own holding only that row, so the servable carries ``1/S`` of the stacked weights.
"""
from __future__ import annotations

import re
import threading
from typing import Callable, List, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras as keras

from tfmsr.layers._init import fresh


_PASS_THROUGH = ("Cast", "Reshape", "Identity", "Squeeze", "ExpandDims")


def fixed_id(ids) -> Optional[int]:
    """The one id every row carries when ``ids`` is traced from ``tf.fill(shape, constant)`` (through casts,
    reshapes and identities): a servable of one scenario. None otherwise (data-dependent ids, eager tensors)."""
    t = ids
    while isinstance(t, tf.Tensor) and tf.is_symbolic_tensor(t):
        if t.op.type == "Fill":
            value = tf.get_static_value(t.op.inputs[1])
            return None if value is None else int(value)
        if t.op.type not in _PASS_THROUGH:
            return None
        t = t.op.inputs[0]
    return None


class RowSlices:
    """Row ``s`` of stacked ``weights`` as variables of their own (``<variable name>/row_<s>``, copied when made,
    outside any trace): a function traced inside ``with RowSlices(weights, s):`` that reads row ``s`` of one of
    them (:func:`row`) captures that slice, not the ``[S, ...]`` variable (a scenario servable's weights:
    ``1/S`` of the stacked ones). ``weights``: the candidates (e.g. every variable of leading dimension S);
    the ones a trace does not read are left out of what it captures."""

    _active = threading.local()

    def __init__(self, weights, s: int):
        self.s = int(s)
        self._rows = {id(w): tf.Variable(tf.convert_to_tensor(w)[self.s], trainable=False,
                                         name=f"{w.name.split(':')[0]}/row_{self.s}") for w in weights}

    def get(self, weight, s: int) -> Optional[tf.Variable]:
        return self._rows.get(id(weight)) if s == self.s else None

    def __enter__(self):
        self._prev = getattr(RowSlices._active, "value", None)
        RowSlices._active.value = self
        return self

    def __exit__(self, *exc):
        RowSlices._active.value = self._prev


def row(weight, s: int):
    """``weight[s]`` (row ``s`` along axis 0): inside :class:`RowSlices` holding it, the variable of that row
    only; else a slice of the variable or tensor."""
    slices = getattr(RowSlices._active, "value", None)
    found = slices.get(weight, s) if slices is not None else None
    return tf.convert_to_tensor(weight)[s] if found is None else found


def partition_apply(x: tf.Tensor, scenario: tf.Tensor, num_scenarios: int,
                    fn: Callable[[int, tf.Tensor], tf.Tensor]) -> tf.Tensor:
    """Apply ``fn(s, rows of x with scenario s)`` per scenario and put the results back in row order.

    ``x`` is ``[B, ...]``, ``scenario`` int ``[B]`` in ``[0, S)``; ``fn`` maps ``[n_s, ...]`` to
    ``[n_s, ...]``. Compute is exactly one pass per example (``tf.dynamic_partition``/``dynamic_stitch``);
    a scenario fixed while tracing (:func:`fixed_id`) is ``fn(s, x)``: no partition.
    """
    fixed = fixed_id(scenario)
    if fixed is not None:
        return fn(fixed, x)
    sc = tf.cast(tf.reshape(scenario, [-1]), tf.int32)
    parts = tf.dynamic_partition(x, sc, num_scenarios)
    rows = tf.dynamic_partition(tf.range(tf.shape(x)[0]), sc, num_scenarios)
    return tf.dynamic_stitch(rows, [fn(s, p) for s, p in enumerate(parts)])


class SortedRows:
    """A batch's rows grouped by scenario once for a stack of per-scenario layers: ``order`` (a stable sort of the
    rows by scenario), ``counts`` ``[S]`` and ``ids`` (the sorted rows' scenarios, int32 ``[B]``); ``sort(x)`` puts
    ``x [B, ...]`` in that order, ``split(x)`` cuts sorted rows into ``S`` parts (scenario ``s``'s rows, maybe
    empty), ``unsort(y)`` restores the batch's row order. One sort and one un-permutation per step for the whole
    stack, instead of a partition and a stitch per layer (:func:`partition_apply`)."""

    def __init__(self, scenario: tf.Tensor, num_scenarios: int):
        sc = scenario_ids(scenario)
        self.num_scenarios = int(num_scenarios)
        self.order = tf.argsort(sc, stable=True)
        self.counts = tf.math.bincount(sc, minlength=self.num_scenarios, maxlength=self.num_scenarios)
        self.ids = tf.gather(sc, self.order)

    def sort(self, x: tf.Tensor) -> tf.Tensor:
        return tf.gather(x, self.order)

    def split(self, x: tf.Tensor) -> List[tf.Tensor]:
        return tf.split(x, self.counts, num=self.num_scenarios)

    def unsort(self, y: tf.Tensor) -> tf.Tensor:
        return tf.scatter_nd(self.order[:, None], y, tf.shape(y))


def own_method(num_scenarios: int, weights_per_scenario: int) -> str:
    """``"partition"`` or ``"gather"`` for ``own`` (the table in the module docstring): gather once the
    per-scenario op overhead of partitioning (``O(S)``) exceeds the per-row cost of gathering ``D H``
    weights, i.e. ``S > max(64, D H / 24)`` (crossover ~300 at 128 x 64, ~100 at 64 x 32)."""
    return "gather" if num_scenarios > max(64, weights_per_scenario // 24) else "partition"


def scenario_ids(scenario: tf.Tensor) -> tf.Tensor:
    """Scenario ids as int32 ``[B]``."""
    return tf.cast(tf.reshape(scenario, [-1]), tf.int32)


def rows_of(weight, ids: tf.Tensor) -> tf.Tensor:
    """``weight[ids]`` along axis 0 for a variable, a tensor or a ``ShardedVariable`` (parameter servers):
    ``tf.gather`` on a ``ShardedVariable`` returns rows of the wrong shard, ``embedding_lookup`` does not.
    Ids fixed while tracing (:func:`fixed_id`): row ``s`` (:func:`row`) broadcast to every row."""
    fixed = fixed_id(ids)
    if fixed is not None:
        r = row(weight, fixed)
        return tf.broadcast_to(r[None], tf.concat([tf.shape(ids)[:1], tf.shape(r)], 0))
    return tf.nn.embedding_lookup(weight, ids)


def own_matmul(x: tf.Tensor, scenario: tf.Tensor, kernel, bias=None, method: str = "auto") -> tf.Tensor:
    """``x_b W_{s_b} (+ b_{s_b})``: ``x [B, D]``, ``kernel [S, D, H]``, ``bias [S, H]`` -> ``[B, H]``.
    Cost: one dense layer's FLOPs; ``O(S)`` small ops (partition) or ``B D H`` gathered weights (gather);
    ``all`` (never chosen by ``auto``): every scenario's product (:func:`all_matmul`, ``S`` times the FLOPs, one
    GEMM) and the row's own kept, for a narrow ``S H``; a scenario fixed while tracing: one dense layer on
    slice ``s`` (:func:`row`)."""
    fixed = fixed_id(scenario)
    if fixed is not None:
        y = tf.matmul(x, row(kernel, fixed))
        return y if bias is None else y + row(bias, fixed)
    s, d, h = (int(n) for n in kernel.shape)
    method = own_method(s, d * h) if method == "auto" else method
    if method == "all":
        return own_rows(all_matmul(x, kernel, bias), scenario)
    sc = scenario_ids(scenario)
    if method == "gather":
        y = tf.matmul(x[:, None, :], rows_of(kernel, sc))[:, 0]
        return y if bias is None else y + rows_of(bias, sc)
    kernels = tf.unstack(tf.convert_to_tensor(kernel))
    biases = tf.unstack(tf.convert_to_tensor(bias)) if bias is not None else None

    def one(i, rows):
        y = tf.matmul(rows, kernels[i])
        return y if biases is None else y + biases[i]

    return partition_apply(x, sc, s, one)


def all_matmul(x: tf.Tensor, kernel, bias=None, activation=None) -> tf.Tensor:
    """Every scenario's ``activation(x W_s + b_s)``: ``x [B, D]`` (shared input) or ``[B, S, D]`` (scenario
    ``s`` reads ``x[:, s]``) -> ``[B, S, H]``. Cost ``B S D H``. A shared input is one GEMM against the kernel
    laid out ``[D, S H]``, bias and activation on the ``[B, S H]`` product (where the CPU kernels fuse them
    into the GEMM); a per-scenario input one batched einsum."""
    if len(x.shape) == 2:
        s, d, h = (int(n) for n in kernel.shape)
        y = tf.matmul(x, tf.reshape(tf.transpose(tf.convert_to_tensor(kernel), [1, 0, 2]), [d, s * h]))
        y = y if bias is None else tf.nn.bias_add(y, tf.reshape(bias, [s * h]))
        return tf.reshape(y if activation is None else activation(y), [-1, s, h])
    y = tf.einsum("bsd,sdh->bsh", x, kernel)
    y = y if bias is None else y + bias
    return y if activation is None else activation(y)


def own_rows(x: tf.Tensor, scenario: tf.Tensor) -> tf.Tensor:
    """``x[b, scenario[b]]`` of a per-scenario input ``[B, S, ...]`` -> ``[B, ...]`` (``x[:, s]`` when the
    scenario is fixed while tracing)."""
    fixed = fixed_id(scenario)
    if fixed is not None:
        return x[:, fixed]
    return tf.gather(x, scenario_ids(scenario)[:, None], batch_dims=1)[:, 0]


class StackedInit(keras.initializers.Initializer):
    """Initialise an ``[S, ...]`` weight as S independent ``[...]`` weights (keeps e.g. Glorot's fans per
    scenario or expert, and S different starting points)."""

    def __init__(self, spec):
        self.spec = spec

    def __call__(self, shape, dtype=None, **kwargs):
        return tf.stack([fresh(self.spec)(shape[1:], dtype=dtype) for _ in range(shape[0])])

    def get_config(self):
        return {"spec": self.spec}


class ScenarioDense(keras.layers.Layer):
    """One dense layer per scenario, stacked: kernel ``[S, D, H]``, bias ``[S, H]``.

    ``own(x [B, D], scenario [B]) -> [B, H]`` (each row through its own scenario: one dense layer's FLOPs,
    see :func:`own_matmul`); ``all(x) -> [B, S, H]`` (``x [B, D]`` or ``[B, S, D]``; one einsum, ``S`` times
    the FLOPs). ``call(x, scenario=None)``: ``own`` with a scenario, else ``all``.
    """

    def __init__(self, num_scenarios: int, units: int, activation=None, use_bias: bool = True,
                 kernel_init="glorot_uniform", method: str = "auto", **kwargs):
        super().__init__(**kwargs)
        if num_scenarios < 1 or units < 1:
            raise ValueError(f"ScenarioDense: need >= 1 scenario and unit, got {num_scenarios}, {units}")
        if method not in ("auto", "partition", "gather"):
            raise ValueError(f"ScenarioDense: method must be auto, partition or gather, got {method!r}")
        self.num_scenarios, self.units, self.use_bias, self.method = int(num_scenarios), int(units), use_bias, method
        self.act = keras.activations.get(activation)
        self.kernel_init = kernel_init

    def build(self, input_shape):
        d, s = int(input_shape[-1]), self.num_scenarios
        self.kernel = self.add_weight(name="kernel", shape=(s, d, self.units),
                                      initializer=StackedInit(self.kernel_init))
        self.bias = (self.add_weight(name="bias", shape=(s, self.units), initializer="zeros")
                     if self.use_bias else None)
        super().build(input_shape)

    def call(self, x, scenario=None):
        return self.all(x) if scenario is None else self.own(x, scenario)

    def own(self, x, scenario):
        return self.act(own_matmul(x, scenario, self.kernel, self.bias, self.method))

    def all(self, x):
        return all_matmul(x, self.kernel, self.bias, self.act)


class ScenarioMLP(keras.layers.Layer):
    """One MLP per scenario, stacked: ``hidden`` layers with ``activation`` (and dropout), then an optional
    linear head of ``out_units`` (e.g. 1: a scenario tower's logit). Variables ``dense/<i>/kernel [S, D_i, H_i]``.

    ``own(x [B, D], scenario) -> [B, H_last]``: each row through its own scenario's MLP only (the FLOPs of one
    MLP; with ``partition`` the rows are split once for the whole stack: ``O(S)`` small GEMMs per layer).
    ``all(x) -> [B, S, H_last]`` (``x [B, D]`` or ``[B, S, D]``): every scenario's MLP, one einsum per layer
    (``S`` times the FLOPs).
    """

    def __init__(self, num_scenarios: int, hidden: Sequence[int], out_units: Optional[int] = None,
                 activation="relu", dropout: float = 0.0, kernel_init="glorot_uniform", method: str = "auto",
                 head_init=None, **kwargs):
        """``head_init``: the head's initializer (default ``kernel_init``)."""
        super().__init__(**kwargs)
        self.num_scenarios, self.method = int(num_scenarios), method
        head = [(int(out_units), None, head_init or kernel_init)] if out_units else []
        sizes = [(int(h), activation, kernel_init) for h in hidden] + head
        if not sizes:
            raise ValueError("ScenarioMLP: no layer (empty hidden and no out_units)")
        self.dense = [ScenarioDense(num_scenarios, h, a, kernel_init=init, method=method, name=f"dense_{i}")
                      for i, (h, a, init) in enumerate(sizes)]
        self.num_hidden = len(hidden)
        self.drop = keras.layers.Dropout(dropout) if dropout else None

    def build(self, input_shape):
        d = int(input_shape[-1])
        for layer in self.dense:
            with tf.name_scope(layer.name):          # variables named <mlp>/dense_<i>/kernel, as a called layer's
                layer.build((None, d))
            d = layer.units
        super().build(input_shape)

    def _layer(self, i, h, apply, training):
        h = apply(self.dense[i], h)
        if i < self.num_hidden and self.drop is not None:
            h = self.drop(h, training=training)
        return h

    def call(self, x, scenario=None, training=False):
        return self.all(x, training=training) if scenario is None else self.own(x, scenario, training=training)

    def all(self, x, training=False):
        for i in range(len(self.dense)):
            x = self._layer(i, x, lambda layer, h: layer.all(h), training)
        return x

    def own(self, x, scenario, training=False):
        if fixed_id(scenario) is not None:   # one scenario (its servable): own_matmul on its slices
            method = "gather"
        else:
            method = self.method
        if method == "auto":
            method = own_method(self.num_scenarios, max(int(l.kernel.shape[1]) * l.units for l in self.dense))
        if method == "gather":
            for i in range(len(self.dense)):
                x = self._layer(i, x, lambda layer, h: layer.act(own_matmul(h, scenario, layer.kernel, layer.bias,
                                                                            "gather")), training)
            return x
        weights = [(tf.unstack(tf.convert_to_tensor(l.kernel)),
                    tf.unstack(tf.convert_to_tensor(l.bias)) if l.bias is not None else None) for l in self.dense]

        def one(s, rows):
            for i, (k, b) in enumerate(weights):
                rows = self._layer(i, rows, lambda layer, h: layer.act(
                    tf.matmul(h, k[s]) + (b[s] if b is not None else 0.0)), training)
            return rows

        return partition_apply(x, scenario, self.num_scenarios, one)


# ---------------------------------------------------------------------- checkpoints before the stacked layout
# Before issue 31 a scenario tower was S Keras layers (ScenarioTowers: ``towers/<s>/dense/<i>`` and
# ``heads/<s>``), SAR-Net's specific experts S banks (``specific_experts/<s>/kernel_<i>``) and PEPNet's
# scenario towers S PPNets (``towers/<s>/...``, ``heads/<s>``); now one ``[S, ...]`` variable each.
# ``legacy_sources`` names the old checkpoint keys a new key is made of.
_TOWER = re.compile(r"^(?P<p>.+)/mlp/dense/(?P<i>\d+)/(?P<w>kernel|bias)(?P<r>/.+)$")
_BANK = re.compile(r"^(?P<p>.+)/specific_experts/(?P<w>kernel|bias)_(?P<i>\d+)(?P<r>/.+)$")


def _per_scenario(template: str, has: Callable[[str], bool]) -> List[str]:
    keys, s = [], 0
    while has(template.format(s=s)):
        keys.append(template.format(s=s))
        s += 1
    return keys


def legacy_sources(key: str, has: Callable[[str], bool]) -> Optional[Tuple[List[str], str]]:
    """``(old keys, "stack" | "concat")`` whose scenario-ordered values make the stacked checkpoint value of
    ``key`` (a new-layout key missing from an old checkpoint; ``has``: whether the old checkpoint holds a key),
    or None when no old layout matches."""
    m = _TOWER.match(key)
    if m:
        p, i, w, r = m["p"], m["i"], m["w"], m["r"]
        for template in (f"{p}/towers/{{s}}/dense/{i}/{w}{r}", f"{p}/heads/{{s}}/{w}{r}"):
            keys = _per_scenario(template, has)          # hidden layer i, else the head (i = len(hidden))
            if keys:
                return keys, "stack"
    m = _BANK.match(key)
    if m:
        keys = _per_scenario(f"{m['p']}/specific_experts/{{s}}/{m['w']}_{m['i']}{m['r']}", has)
        if keys:
            return keys, "concat"
    parts = key.split("/")       # a list of S layers now one stacked layer: a/b/w <- a/<s>/b/w (PEPNet's towers)
    for cut in range(1, len(parts) - 1):
        keys = _per_scenario("/".join(parts[:cut] + ["{s}"] + parts[cut:]), has)
        if keys:
            return keys, "stack"
    return None
