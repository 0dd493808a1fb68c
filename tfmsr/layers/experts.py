"""Mixtures of experts: a bank of MLP experts evaluated as batched matmuls, softmax gates, PLE's CGC
extraction layer, HiNet's scenario extraction layer and a shared + scenario-specific expert mixture.

Shapes: expert outputs are ``[B, E, H]`` (``E`` experts of width ``H``); gate weights ``[B, G, E]``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf
import tf_keras as keras

from tfmsr.layers._init import fresh
from tfmsr.layers.mlp import MLP
from tfmsr.layers.scenario import StackedInit, fixed_id, own_matmul, own_rows, partition_apply, row


def _build(layer, input_shape) -> None:
    """Build ``layer`` (read, not called) as a call would: variables named ``<scope>/<layer>/<weight>``."""
    if not layer.built:
        with tf.name_scope(layer.name):
            layer.build(input_shape)


class ExpertBank(keras.layers.Layer):
    """``E`` independent MLP experts ``f_e(x)`` (each ``hidden`` wide, ``activation`` after every layer),
    their kernels stored together as ``[E, D, H]``.

    Input ``[B, D]`` (every expert sees the same input) or ``[B, E, D]`` (expert ``e`` sees ``x[:, e]``);
    output ``[B, E, hidden[-1]]``.
    """

    def __init__(self, num_experts: int, hidden: Sequence[int], activation="relu", dropout: float = 0.0,
                 kernel_init="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if num_experts < 1 or not hidden:
            raise ValueError(f"ExpertBank: need >= 1 expert and >= 1 layer, got {num_experts}, {list(hidden)}")
        self.num_experts, self.hidden = int(num_experts), [int(h) for h in hidden]
        self.act = keras.activations.get(activation)
        self.kernel_init = StackedInit(kernel_init)
        self.drop = keras.layers.Dropout(dropout) if dropout else None

    def build(self, input_shape):
        if len(input_shape) == 3 and int(input_shape[1]) != self.num_experts:
            raise ValueError(f"ExpertBank: per-expert input has {input_shape[1]} slots for {self.num_experts} experts")
        d, e = int(input_shape[-1]), self.num_experts
        self.kernels, self.biases = [], []
        for i, h in enumerate(self.hidden):
            self.kernels.append(self.add_weight(name=f"kernel_{i}", shape=(e, d, h), initializer=self.kernel_init))
            self.biases.append(self.add_weight(name=f"bias_{i}", shape=(e, h), initializer="zeros"))
            d = h
        super().build(input_shape)

    def call(self, x, scenario=None, head=None, training=False, group: int = 0, stacked: bool = True):
        """``[B, E, H]``; ``scenario [B]`` with ``group=m``: the bank is ``E / m`` groups of ``m`` consecutive
        experts and row ``b`` runs group ``scenario[b]`` only -> ``[B, m, H]`` (rows partitioned by group:
        one group's FLOPs per row, ``O(E / m)`` small GEMMs; a group fixed while tracing reads its experts'
        rows only, :func:`~tfmsr.layers.scenario.row`: a scenario servable's own slices when ``m = 1``).
        ``stacked=False`` (every expert, no group): up to ``LOOP_MAX`` experts the list of their ``E`` outputs
        ``[B, H]`` (no stacking copy; :meth:`ExpertGates.mix` reads it), beyond the ``[B, E, H]`` tensor.
        ``head=(w [E, H], b [E])``: every expert ends in its own linear unit ``f_e(x) . w_e + b_e`` -> ``[B, E]``
        (``[B, m]`` with a group): one ``[H, 1]`` GEMM per expert instead of a stacked ``[B, E, H]`` and an einsum."""
        if not group and self.num_experts > self.LOOP_MAX:
            out = self._batched(x, training)
            return out if head is None else tf.einsum("beh,eh->be", out, head[0]) + head[1]
        join = (lambda outs: tf.concat(outs, axis=1)) if head is not None else (lambda outs: tf.stack(outs, axis=1))
        fixed = fixed_id(scenario) if group else None
        if fixed is not None:          # one group known while tracing (its servable): its experts' rows (row)
            es = range(fixed * group, (fixed + 1) * group)
            kernels, biases = self._weights_of(head, es)
            return join([self._expert(x, e, kernels, biases, training) for e in es])
        kernels, biases = self._weights_of(head)
        if group:
            m = group
            return partition_apply(x, scenario, self.num_experts // m, lambda g, rows: join(
                [self._expert(rows, e, kernels, biases, training) for e in range(g * m, (g + 1) * m)]))
        outputs = [self._expert(x, e, kernels, biases, training) for e in range(self.num_experts)]
        return join(outputs) if stacked or head is not None else outputs

    def _weights_of(self, head=None, es=None):
        """Every layer's per-expert kernels and biases (then ``head``'s ``[H]`` and ``[]``): lists of the unstacked
        tensors, or with ``es`` (a group fixed while tracing) dicts of those experts' rows (:func:`row`)."""
        pick = (lambda t: tf.unstack(tf.convert_to_tensor(t))) if es is None else (lambda t: {e: row(t, e) for e in es})
        pairs = list(zip(self.kernels, self.biases)) + ([tuple(head)] if head is not None else [])
        return [pick(k) for k, _ in pairs], [pick(b) for _, b in pairs]

    # One GEMM per expert on unstacked kernels up to LOOP_MAX experts: ~25% less CPU per training step than
    # a batched matmul over [E, D, H] (which transposes the activations); beyond, one batched op per layer
    # instead of E small ones (PLE/HiNet banks of S x m scenario experts).
    LOOP_MAX = 8

    def _expert(self, x, e, kernels, biases, training):
        """Expert ``e`` on ``x`` ``[B, D]`` (or its slot of ``[B, E, D]``) -> ``[B, H]`` (with a head's weights
        after the layers' in ``kernels`` / ``biases``: ``[B, 1]``)."""
        h = x[:, e] if len(x.shape) == 3 else x
        for i in range(len(self.hidden)):
            if i and self.drop is not None:
                h = self.drop(h, training=training)
            h = self.act(tf.matmul(h, kernels[i][e]) + biases[i][e])
        h = self.drop(h, training=training) if self.drop is not None else h
        return tf.matmul(h, kernels[-1][e][:, None]) + biases[-1][e] if len(kernels) > len(self.hidden) else h

    def _batched(self, x, training):
        """Every expert, one op per layer (cost ``B E D H``, the bank's FLOPs; ``O(1)`` ops in ``E``). A shared
        input ``[B, D]``: one layer is one ``[D, E H]`` GEMM reshaped to ``[B, E, H]`` (no transpose); deeper
        banks run ``[E, B, H]`` batched matmuls from the broadcast input and transpose once at the end.
        Measured (forward + backward, B = 1024, D = 218, CPU ms per step, against a ``[D, E H]`` first layer
        transposed to ``[E, B, H]`` and back): 100 experts [256] 499 -> 375, 500 experts [128, 64] 1514 -> 1152."""
        e = self.num_experts
        if len(x.shape) == 2 and len(self.hidden) == 1:
            k = tf.reshape(tf.transpose(self.kernels[0], [1, 0, 2]), [int(x.shape[-1]), -1])
            return self._dropped(self.act(tf.reshape(tf.matmul(x, k), [-1, e, self.hidden[0]]) + self.biases[0]),
                                 training)
        h = x[None] if len(x.shape) == 2 else tf.transpose(x, [1, 0, 2])               # [1 or E, B, D]
        h = self.act(tf.matmul(h, self.kernels[0]) + self.biases[0][:, None])          # [E, B, H]
        for i in range(1, len(self.hidden)):
            h = self.act(tf.matmul(self._dropped(h, training), self.kernels[i]) + self.biases[i][:, None])
        return tf.transpose(self._dropped(h, training), [1, 0, 2])

    def _dropped(self, h, training):
        return self.drop(h, training=training) if self.drop is not None else h


class ExpertGates(keras.layers.Layer):
    """``G`` softmax gates over ``E`` experts (MMoE, Ma et al., KDD 2018, Sec. 4.3):

    ``g^k(x) = softmax(W_gk x + b_gk)``, ``f^k(x) = sum_e g^k(x)_e f_e(x)``.

    ``call(x, experts)``: the gate input ``x`` is ``[B, D]`` (all gates read it) or ``[B, G, D]`` (gate
    ``k`` reads ``x[:, k]``); ``experts`` is ``[B, E, H]`` (all gates mix the same experts) or
    ``[B, G, E, H]`` (each gate its own set). Returns ``[B, G, H]``; ``weights(x)`` gives ``[B, G, E]``.
    """

    def __init__(self, num_gates: int, num_experts: int, use_bias: bool = True, kernel_init="glorot_uniform",
                 **kwargs):
        super().__init__(**kwargs)
        self.num_gates, self.num_experts, self.use_bias = int(num_gates), int(num_experts), use_bias
        self.kernel_init = StackedInit(kernel_init)

    def build(self, input_shape):
        d = int(input_shape[-1])
        self.kernel = self.add_weight(name="W_g", shape=(self.num_gates, d, self.num_experts),
                                      initializer=self.kernel_init)
        self.bias = (self.add_weight(name="b_g", shape=(self.num_gates, self.num_experts), initializer="zeros")
                     if self.use_bias else None)
        super().build(input_shape)

    def weights_of(self, x):
        logits = tf.einsum("bd,gde->bge" if len(x.shape) == 2 else "bgd,gde->bge", x, self.kernel)
        if self.bias is not None:
            logits = logits + self.bias
        return tf.nn.softmax(logits, axis=-1)

    def call(self, x, experts, own=None):
        """``[B, G, H]``; ``own`` (gate ids ``[B]``): row ``b``'s gate ``own[b]`` only, ``[B, H]``
        (:meth:`own_gate`). ``experts`` may also be the list of ``E`` outputs ``[B, H]`` (``ExpertBank(...,
        stacked=False)``)."""
        if own is not None:
            return self.own_gate(x, experts, own)
        g = self.weights_of(x)
        experts = tf.stack(experts, axis=1) if isinstance(experts, (list, tuple)) else experts
        if len(experts.shape) == 3:
            return tf.matmul(g, experts)  # [B, G, E] x [B, E, H]: cheaper than the einsum's transposes
        return tf.einsum("bge,bgeh->bgh", g, experts)

    # The own gate's logits from every gate (one [D, G E] GEMM, the row's own G-slice kept) up to ALL_MAX gate
    # columns: fewer ops than partitioning the rows (measured fwd + bwd, B = 1024, D = 129, E = 4, CPU ms:
    # G = 4 1.53 vs 1.85, G = 16 2.67 vs 3.32, G = 32 3.81 vs 3.51); beyond, :func:`own_matmul`'s own choice.
    ALL_MAX = 64

    def own_gate(self, x, experts, gate, method: str = "auto"):
        """Gate ``gate[b]`` only (a scenario's own gate): ``x [B, D]`` or ``[B, G, D]``, ``experts`` ``[B, E, H]``,
        ``[B, G, E, H]`` or the list of ``E`` outputs ``[B, H]`` -> ``[B, H]``. Cost: one gate's FLOPs whatever
        ``G`` (:func:`own_matmul`, ``method``), or every gate's logits (``all``, at most ``ALL_MAX`` columns)."""
        x = own_rows(x, gate) if len(x.shape) == 3 else x
        if not isinstance(experts, (list, tuple)) and len(experts.shape) == 4:
            experts = own_rows(experts, gate)
        if method == "auto" and self.num_gates * self.num_experts <= self.ALL_MAX:
            method = "all"
        return self.mix(tf.nn.softmax(own_matmul(x, gate, self.kernel, self.bias, method), axis=-1), experts)

    @staticmethod
    def mix(g, experts):
        """``sum_e g[:, e] f_e``: weights ``g [B, E]``, ``experts`` ``[B, E, H]`` (one batched ``[1, E] x [E, H]``
        product per row) or the list of ``E`` outputs ``[B, H]`` (``E`` scaled adds: no stacked copy) -> ``[B, H]``."""
        if isinstance(experts, (list, tuple)):
            return tf.add_n([w * f for w, f in zip(tf.split(g, len(experts), axis=1), experts)])
        return tf.matmul(g[:, None], experts)[:, 0]


class CGC(keras.layers.Layer):
    """Customized Gate Control extraction layer of PLE (Tang et al., RecSys 2020, Sec. 4.2-4.3).

    ``T`` tasks (here: scenarios) with ``specific`` experts each and ``shared`` experts. The gate of task
    ``k`` mixes its own experts and the shared ones, ``y^k = sum g^k(x^k)_e S^k(x)_e`` with
    ``g^k(x) = softmax(W^k x)``; a non-final PLE level (``shared_output=True``) also has a shared gate over
    *all* experts, whose output feeds the next level's shared experts (the progressive separation of
    Sec. 4.3). Input ``[B, D]`` (first level: tasks and shared branch read the same input) or
    ``[B, T+1, D]`` (task inputs then the shared input, from the level below). Output ``[B, T, H]``, or
    ``[B, T+1, H]`` with the shared branch last when ``shared_output``.

    ``shared_gate_reads``: ``"all"`` (the paper's: the shared gate mixes every task's specific experts, so a
    row runs all ``T specific`` of them: ``O(T)``) or ``"own"`` (a row's shared gate mixes only its own task's
    specific experts and the shared ones: the same gate weights, softmax over those experts only; one task's
    FLOPs per row, for one-task-per-row data such as scenarios; only :meth:`own_task` has this reading).
    """

    def __init__(self, num_tasks: int, specific: int, shared: int, hidden: Sequence[int],
                 shared_output: bool = False, activation="relu", dropout: float = 0.0, kernel_init="glorot_uniform",
                 shared_gate_reads: str = "all", **kwargs):
        super().__init__(**kwargs)
        if specific < 0 or shared < 0 or specific + shared < 1:
            raise ValueError(f"CGC: need at least one expert per task, got specific={specific}, shared={shared}")
        if shared_gate_reads not in ("all", "own"):
            raise ValueError(f"CGC: shared_gate_reads must be all or own, got {shared_gate_reads!r}")
        self.num_tasks, self.specific, self.shared = int(num_tasks), int(specific), int(shared)
        self.shared_output, self.shared_gate_reads = shared_output, shared_gate_reads
        kw = dict(activation=activation, dropout=dropout, kernel_init=kernel_init)
        self.specific_experts = ExpertBank(num_tasks * specific, hidden, name="specific", **kw) if specific else None
        self.shared_experts = ExpertBank(shared, hidden, name="shared", **kw) if shared else None
        self.task_gates = ExpertGates(num_tasks, specific + shared, kernel_init=kernel_init, name="task_gates")
        self.shared_gate = (ExpertGates(1, num_tasks * specific + shared, kernel_init=kernel_init, name="shared_gate")
                            if shared_output else None)

    def call(self, x, own=None, training=False, task_inputs=False):
        """``[B, T, H]`` (``[B, T+1, H]`` with ``shared_output``); ``own`` (task ids ``[B]``): :meth:`own_task`;
        ``task_inputs``: :meth:`every_task_on_its_input`."""
        if own is not None:
            return self.own_task(x, own, training=training)
        if task_inputs:
            return self.every_task_on_its_input(x, training=training)
        t = self.num_tasks
        x_tasks, x_shared = (x[:, :t], x[:, t]) if len(x.shape) == 3 else (x, x)
        spec, shared = self._experts(x_tasks, x_shared, training)
        per_gate = ([spec] if spec is not None else []) + \
                   ([tf.tile(shared[:, None], [1, t, 1, 1])] if shared is not None else [])
        out = self.task_gates(x_tasks, tf.concat(per_gate, axis=2))                 # [B, T, H]
        if self.shared_gate is None:
            return out
        return tf.concat([out, self._shared_branch(x_shared, spec, shared)[:, None]], axis=1)  # [B, T+1, H]

    def _experts(self, x_tasks, x_shared, training):
        """Every task's specific experts ``[B, T, m, H]`` (task ``k``'s on ``x_tasks[:, k]`` when the input is
        per task, one batched op) and the shared experts on ``x_shared`` ``[B, m_sh, H]`` (None where a kind is
        absent or ``x_shared`` is None)."""
        t, m = self.num_tasks, self.specific
        spec = shared = None
        if self.specific_experts is not None:
            per_task = len(x_tasks.shape) == 3
            spec = self.specific_experts(tf.repeat(x_tasks, m, axis=1) if per_task else x_tasks, training=training)
            spec = tf.reshape(spec, [-1, t, m, spec.shape[-1]])
        if self.shared_experts is not None and x_shared is not None:
            shared = self.shared_experts(x_shared, training=training)
        return spec, shared

    def _shared_branch(self, x_shared, spec, shared):
        """The shared gate over every expert (all tasks' specific ones, then the shared ones) -> ``[B, H]``."""
        flat = ([tf.reshape(spec, [-1, self.num_tasks * self.specific, spec.shape[-1]])] if spec is not None
                else []) + ([shared] if shared is not None else [])
        return self.shared_gate(x_shared, tf.concat(flat, axis=1))[:, 0]

    def every_task_on_its_input(self, x, training=False):
        """``x [B, T, D]`` -> ``[B, T, H]``: task ``k``'s specific experts, the shared experts and gate ``k`` all
        read ``x[:, k]`` (each task head as if the row's whole input were task ``k``'s: HiNet's every-scenario
        heads). Cost: the shared experts run ``T`` times (``B T`` rows)."""
        if self.shared_gate is not None:
            raise ValueError("CGC: per-task inputs only for a last level (no shared_output)")
        t = self.num_tasks
        spec, _ = self._experts(x, None, training)
        experts = [spec] if spec is not None else []                                # [B, T, m, H]
        if self.shared_experts is not None:
            shared = self.shared_experts(tf.reshape(x, [-1, x.shape[-1]]), training=training)  # [B*T, m_sh, H]
            experts.append(tf.reshape(shared, [-1, t, self.shared, shared.shape[-1]]))
        return self.task_gates(x, tf.concat(experts, axis=2))

    def own_task(self, x, task, training=False):
        """Task ``task[b]``'s output only: ``[B, H]``, or with ``shared_output`` ``[B, 2, H]`` (the task's output,
        then the shared branch: the next level's own input).

        A last level reads ``[B, D]`` or the level below's own output ``[B, 2, D]`` (own task's input, shared
        input): only the row's ``specific`` experts run (rows partitioned by task: ``O(T)`` small GEMMs, one
        task's FLOPs), with the shared experts and its own gate. A level with ``shared_output`` reads ``[B, D]``
        or a full level's ``[B, T+1, D]``; its shared gate mixes every task's specific experts, so they all run
        (``O(T)`` FLOPs by the math, one batched op per layer), but only the row's own task gate. With
        ``shared_gate_reads="own"`` such a level reads ``[B, D]`` or ``[B, 2, D]`` like a last level and runs
        only the row's own experts too (its shared gate: :meth:`_own_shared_branch`)."""
        if self.shared_gate is not None and self.shared_gate_reads == "all":
            return self._own_task_and_shared(x, task, training)
        x_own, x_shared = (x[:, 0], x[:, 1]) if len(x.shape) == 3 else (x, x)
        spec = (self.specific_experts(x_own, task, training=training, group=self.specific)    # [B, m, H]
                if self.specific_experts is not None else None)
        shared = self.shared_experts(x_shared, training=training) if self.shared_experts is not None else None
        experts = tf.concat([e for e in (spec, shared) if e is not None], axis=1)
        out = self.task_gates(x_own, experts, own=task)
        if self.shared_gate is None:
            return out
        return tf.stack([out, self._own_shared_branch(x_shared, task, spec is not None, experts)], axis=1)

    def _own_shared_branch(self, x, task, has_spec, experts):
        """The shared gate read ``"own"``: its logits of row ``b``'s own task's specific experts (a gathered
        ``[D, m]`` slice of the gate kernel, :func:`own_matmul`) and of the shared experts, one softmax over
        those, mixing ``experts`` ``[B, m + m_sh, H]`` -> ``[B, H]``."""
        t, m = self.num_tasks, self.specific if has_spec else 0
        _build(self.shared_gate, x.shape)
        kernel, bias = self.shared_gate.kernel[0], self.shared_gate.bias
        bias = bias[0] if bias is not None else tf.zeros([t * m + self.shared], kernel.dtype)
        logits = [tf.matmul(x, kernel[:, t * m:]) + bias[t * m:]] if self.shared else []
        if m:
            per_task = tf.transpose(tf.reshape(kernel[:, :t * m], [-1, t, m]), [1, 0, 2])     # [T, D, m]
            logits.insert(0, own_matmul(x, task, per_task, tf.reshape(bias[:t * m], [t, m])))
        g = tf.nn.softmax(tf.concat(logits, axis=-1), axis=-1)
        return tf.matmul(g[:, None], experts)[:, 0]

    def _own_task_and_shared(self, x, task, training):
        """:meth:`own_task` of a level with a shared gate -> ``[B, 2, H]``."""
        t = self.num_tasks
        per_task = len(x.shape) == 3
        x_tasks, x_shared = (x[:, :t], x[:, t]) if per_task else (x, x)
        spec, shared = self._experts(x_tasks, x_shared, training)
        own = ([own_rows(spec, task)] if spec is not None else []) + ([shared] if shared is not None else [])
        out = self.task_gates(own_rows(x_tasks, task) if per_task else x, tf.concat(own, axis=1), own=task)
        return tf.stack([out, self._shared_branch(x_shared, spec, shared)], axis=1)


class ScenarioExtraction(keras.layers.Layer):
    """HiNet scenario extraction layer (Zhou et al., ICDE 2023, Sec. III-B), one CTR task:

    * scenario-shared expert module: ``G = sum_k g_k E^sh_k(x)``, ``g = softmax(W x)`` over
      ``shared`` sub-experts (the "subexpert integration" module);
    * scenario-specific expert modules: ``S_j`` likewise over ``specific`` sub-experts of scenario ``j``,
      for every scenario ``j``;
    * SAN (scenario-aware attentive network): ``A_i = sum_{j != i} w_j S_j`` with
      ``w = softmax(MLP(e_i))`` computed from the embedding ``e_i`` of the example's scenario ``i``; as in
      the authors' released code the softmax runs over all scenarios and the own scenario's weight is then
      zeroed (not renormalised).

    Output ``concat(A_i, S_i, G)`` ``[B, 3H]`` (``san=False`` drops ``A_i``: ``[B, 2H]``).
    ``call(x [B, D], scenario_emb [B, d_s], scenario [B])``; ``call(x, every_emb [S, d_s])``: the output
    for every scenario ``i``, ``[B, S, 3H]``. Both compute every ``S_j`` (SAN mixes them): ``O(S)`` experts
    (``S specific`` sub-experts per example, their FLOPs and gradients), run as one batched op per layer;
    without SAN the own call runs only scenario ``i``'s sub-experts (one scenario's FLOPs).

    ``san_top_k = k`` (0: every scenario, the paper's): SAN sums only the ``k`` scenarios of largest weight
    ``w_j`` (the weights depend on the own scenario alone, so each scenario attends to a fixed set of ``k``
    others, the rest weighted 0, not renormalised); the own call then runs ``k + 1`` scenarios' sub-experts per
    example (rows partitioned by scenario: ``O(S)`` small GEMMs, ``k + 1`` scenarios' FLOPs). ``k >= S - 1`` is
    the paper's SAN.
    """

    def __init__(self, num_scenarios: int, shared: int = 5, specific: int = 5, hidden: Sequence[int] = (128, 64),
                 san_hidden: Sequence[int] = (128, 64), san: bool = True, dropout: float = 0.0,
                 kernel_init="glorot_uniform", san_top_k: int = 0, **kwargs):
        super().__init__(**kwargs)
        s = self.num_scenarios = int(num_scenarios)
        self.specific, self.san = int(specific), san
        self.top_k = int(san_top_k) if 0 < int(san_top_k) < s - 1 else 0       # 0: every other scenario
        kw = dict(dropout=dropout, kernel_init=kernel_init)
        self.shared_experts = ExpertBank(shared, hidden, name="shared_experts", **kw)
        self.shared_gate = ExpertGates(1, shared, kernel_init=kernel_init, name="shared_gate")
        self.specific_experts = ExpertBank(s * specific, hidden, name="specific_experts", **kw)
        self.specific_gates = ExpertGates(s, specific, kernel_init=kernel_init, name="specific_gates")
        if san:
            self.san_mlp = MLP(san_hidden, kernel_init=kernel_init, name="san_mlp")
            self.san_out = keras.layers.Dense(s, kernel_initializer=fresh(kernel_init), name="san_out")

    def scenario_outputs(self, x, training=False):
        """``S_j`` for every scenario: ``[B, S, H]``."""
        spec = self.specific_experts(x, training=training)
        spec = tf.reshape(spec, [-1, self.num_scenarios, self.specific, spec.shape[-1]])
        return self.specific_gates(x, spec)

    def san_weights(self, scenario, scenario_emb):
        """SAN weights ``[B, S]`` (zero at the example's own scenario; with ``san_top_k``, zero but the top k)."""
        w = tf.nn.softmax(self.san_out(self.san_mlp(scenario_emb)), axis=-1)
        own = tf.one_hot(tf.cast(tf.reshape(scenario, [-1]), tf.int32), self.num_scenarios, dtype=w.dtype)
        return self._top(w * (1.0 - own))

    def _top(self, w):
        """``w`` ``[N, S]`` with all but each row's ``top_k`` largest entries zeroed (unchanged without); ties
        keep the lower scenario index, as ``tf.math.top_k`` does in the own call (exactly ``k`` kept)."""
        if not self.top_k:
            return w
        kept = tf.one_hot(tf.math.top_k(w, self.top_k).indices, self.num_scenarios, dtype=w.dtype)   # [N, k, S]
        return w * tf.reduce_sum(kept, axis=1)

    def _own_and_top(self, x, scenario, scenario_emb, training):
        """``(S_i [B, H], A_i [B, H])`` from the row's own and its ``top_k`` SAN scenarios' sub-experts only:
        rows repeated ``k + 1`` times, one per scenario, through that scenario's sub-experts and gate."""
        w = tf.nn.softmax(self.san_out(self.san_mlp(scenario_emb)), axis=-1)
        sc = tf.cast(tf.reshape(scenario, [-1]), tf.int32)
        w = w * (1.0 - tf.one_hot(sc, self.num_scenarios, dtype=w.dtype))
        top = tf.math.top_k(w, self.top_k)                                              # [B, k]
        ids = tf.reshape(tf.concat([sc[:, None], top.indices], axis=1), [-1])           # [B (k+1)]
        rows = tf.repeat(x, self.top_k + 1, axis=0)
        spec = self.specific_experts(rows, ids, training=training, group=self.specific)   # [B (k+1), m, H]
        _build(self.specific_gates, x.shape)
        # partitioned: (k + 1) B gathered [D, m] gate kernels cost more than S small GEMMs (HiNet, S = 100)
        out = self.specific_gates.own_gate(rows, spec, ids, method="partition")
        out = tf.reshape(out, [-1, self.top_k + 1, spec.shape[-1]])
        return out[:, 0], tf.einsum("bk,bkh->bh", top.values, out[:, 1:])

    def call(self, x, scenario_emb, scenario=None, training=False):
        shared = self.shared_gate(x, self.shared_experts(x, training=training))[:, 0]      # G   [B, H]
        if scenario is None:
            return self._every_scenario(shared, self.scenario_outputs(x, training=training), scenario_emb)
        if not self.san:                  # S_i only: the row's own sub-experts (rows partitioned by scenario)
            spec = self.specific_experts(x, scenario, training=training, group=self.specific)   # [B, m, H]
            return tf.concat([self.specific_gates(x, spec, own=scenario), shared], axis=-1)
        if self.top_k:
            own, transfer = self._own_and_top(x, scenario, scenario_emb, training)
            return tf.concat([transfer, own, shared], axis=-1)
        every = self.scenario_outputs(x, training=training)                                  # S_j [B, S, H]
        w = self.san_weights(scenario, scenario_emb)
        return tf.concat([tf.einsum("bs,bsh->bh", w, every), own_rows(every, scenario), shared], axis=-1)


    def _every_scenario(self, shared, every, every_emb):
        """``concat(A_i, S_i, G)`` for every scenario ``i``: ``[B, S, 3H]`` (SAN weights ``[S, S]``)."""
        s = self.num_scenarios
        parts = [every, tf.tile(shared[:, None], [1, s, 1])]
        if self.san:
            w = tf.nn.softmax(self.san_out(self.san_mlp(every_emb)), axis=-1) * (1.0 - tf.eye(s, dtype=every.dtype))
            w = self._top(w)
            parts.insert(0, tf.einsum("ij,bjh->bih", w, every))
        return tf.concat(parts, axis=-1)


class ScenarioMoE(keras.layers.Layer):
    """Scenario-shared and scenario-specific experts fused by a gate (SAR-Net, Shen et al., CIKM 2021,
    Sec. 3.4-3.5): the example of scenario ``s`` is scored by ``shared`` experts common to all scenarios
    and the ``specific`` experts of ``s`` only; a softmax gate over those ``shared + specific`` experts,
    read from ``gate_input`` (default ``x``), mixes them. The ``S x specific`` experts are one stacked bank
    (experts ``s*specific ..`` are scenario ``s``'s) run only on their scenario's rows (row partitioning:
    one scenario's FLOPs per example, ``O(S)`` small GEMMs), so a scenario-s batch never touches another
    scenario's experts.

    ``call(x [B, D], gate_input=None, scenario [B]) -> [B, H]`` (``scenario`` is required).
    """

    def __init__(self, num_scenarios: int, shared: int = 8, specific: int = 2, hidden: Sequence[int] = (128, 64),
                 dropout: float = 0.0, kernel_init="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.num_scenarios = int(num_scenarios)
        kw = dict(dropout=dropout, kernel_init=kernel_init)
        self.shared_experts = ExpertBank(shared, hidden, name="shared_experts", **kw) if shared else None
        self.specific = int(specific)
        self.specific_experts = (ExpertBank(num_scenarios * specific, hidden, name="specific_experts", **kw)
                                 if specific else None)
        self.gate = ExpertGates(1, shared + specific, kernel_init=kernel_init, name="gate")

    def call(self, x, gate_input=None, scenario=None, training=False):
        if scenario is None:
            raise ValueError(f"ScenarioMoE {self.name}: called without the scenario ids")
        groups, m = [], self.specific
        if self.specific_experts is not None:
            groups.append(self.specific_experts(x, scenario, training=training, group=m))
        if self.shared_experts is not None:
            groups.append(self.shared_experts(x, training=training))
        experts = tf.concat(groups, axis=1)
        return self.gate(x if gate_input is None else gate_input, experts)[:, 0]
