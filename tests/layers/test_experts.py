"""Expert banks, gates, PLE's CGC, HiNet's scenario extraction and the scenario MoE (tfmsr/layers/experts.py),
each against a NumPy re-computation of its equation."""
import numpy as np
import pytest
import tensorflow as tf

from layer_reference import RNG, TOL, rand, relu, softmax, dense

from tfmsr.layers import CGC, ExpertBank, ExpertGates, ScenarioExtraction, ScenarioMoE
from tfmsr.layers.scenario import RowSlices


def np_bank(bank, x):
    """ExpertBank in NumPy: x [B, D] or [B, E, D] -> [B, E, H]."""
    h = x if x.ndim == 3 else np.broadcast_to(x[:, None], (x.shape[0], bank.num_experts, x.shape[1]))
    for k, b in zip(bank.kernels, bank.biases):
        h = relu(np.einsum("bed,edh->beh", h, k.numpy()) + b.numpy())
    return h


def test_expert_bank_is_independent_mlps():
    bank = ExpertBank(3, [5, 4])
    x = rand(6, 7)
    got = bank(tf.constant(x)).numpy()
    for e in range(3):                                   # expert e alone, as a plain MLP
        h = x
        for k, b in zip(bank.kernels, bank.biases):
            h = relu(h @ k.numpy()[e] + b.numpy()[e])
        np.testing.assert_allclose(got[:, e], h, **TOL)
    k0 = bank.kernels[0].numpy()
    assert not np.allclose(k0[0], k0[1])                 # experts start different
    xe = rand(6, 3, 7)
    np.testing.assert_allclose(bank(tf.constant(xe)).numpy(), np_bank(bank, xe), **TOL)


def test_expert_gates_softmax_mixture():
    gates = ExpertGates(2, 3)
    x, experts = rand(4, 5), rand(4, 3, 6)
    got = gates(tf.constant(x), tf.constant(experts)).numpy()
    g = softmax(np.einsum("bd,gde->bge", x, gates.kernel.numpy()) + gates.bias.numpy())
    np.testing.assert_allclose(got, np.einsum("bge,beh->bgh", g, experts), **TOL)
    per_gate_x, per_gate_e = rand(4, 2, 5), rand(4, 2, 3, 6)
    got = gates(tf.constant(per_gate_x), tf.constant(per_gate_e)).numpy()
    g = softmax(np.einsum("bgd,gde->bge", per_gate_x, gates.kernel.numpy()) + gates.bias.numpy())
    np.testing.assert_allclose(got, np.einsum("bge,bgeh->bgh", g, per_gate_e), **TOL)


def np_gate(gates, x, experts):
    k, b = gates.kernel.numpy(), gates.bias.numpy()
    g = softmax(np.einsum("bd,gde->bge" if x.ndim == 2 else "bgd,gde->bge", x, k) + b)
    return np.einsum("bge,beh->bgh" if experts.ndim == 3 else "bge,bgeh->bgh", g, experts)


def np_cgc(layer, x):
    t, m = layer.num_tasks, layer.specific
    x_tasks, x_shared = (x[:, :t], x[:, t]) if x.ndim == 3 else (x, x)
    spec = np_bank(layer.specific_experts, np.repeat(x_tasks, m, axis=1) if x.ndim == 3 else x_tasks)
    shared = np_bank(layer.shared_experts, x_shared)
    per_task = [np.concatenate([spec[:, k * m:(k + 1) * m], shared], 1) for k in range(t)]
    out = np.stack([np_gate(layer.task_gates, x_tasks, np.stack(per_task, 1))[:, k] for k in range(t)], 1)
    if layer.shared_gate is None:
        return out
    every = np.concatenate([spec, shared], 1)
    return np.concatenate([out, np_gate(layer.shared_gate, x_shared, every)], 1)


def test_cgc_levels_ple():
    x = rand(5, 6)
    first = CGC(num_tasks=3, specific=2, shared=1, hidden=[4], shared_output=True)
    h = first(tf.constant(x))
    assert h.shape == (5, 4, 4)
    np.testing.assert_allclose(h.numpy(), np_cgc(first, x), **TOL)
    last = CGC(num_tasks=3, specific=2, shared=1, hidden=[3])
    out = last(h).numpy()
    assert out.shape == (5, 3, 3)
    np.testing.assert_allclose(out, np_cgc(last, h.numpy()), **TOL)


def test_scenario_extraction_hinet():
    S, b = 3, 6
    layer = ScenarioExtraction(S, shared=2, specific=2, hidden=[4], san_hidden=[5])
    x, sc, emb = rand(b, 7), RNG.integers(0, S, b), rand(b, 4)
    got = layer(tf.constant(x), tf.constant(emb), tf.constant(sc)).numpy()
    shared = np_gate(layer.shared_gate, x, np_bank(layer.shared_experts, x))[:, 0]
    spec = np_bank(layer.specific_experts, x).reshape(b, S, 2, 4)
    every = np_gate(layer.specific_gates, x, spec)                        # [B, S, H]
    own = every[np.arange(b), sc]
    h = emb
    for dl in layer.san_mlp.dense:
        h = dense(dl, h, relu)
    w = softmax(dense(layer.san_out, h)) * (1 - np.eye(S)[sc])           # own scenario zeroed
    transfer = np.einsum("bs,bsh->bh", w, every)
    np.testing.assert_allclose(got, np.concatenate([transfer, own, shared], 1), **TOL)


def test_scenario_moe_uses_own_specific_and_shared_experts():
    S, b, m = 3, 8, 2
    layer = ScenarioMoE(S, shared=2, specific=m, hidden=[4])
    x, sc = rand(b, 5), np.array([0, 1, 2, 0, 1, 2, 2, 0])
    got = layer(tf.constant(x), scenario=tf.constant(sc)).numpy()
    assert layer.specific_experts.kernels[0].shape == (S * m, 5, 4)       # one stacked bank, scenario s: rows s*m..
    shared = np_bank(layer.shared_experts, x)
    every = np_bank(layer.specific_experts, x)                            # [B, S*m, H]
    spec = np.stack([every[i, s * m:(s + 1) * m] for i, s in enumerate(sc)])
    want = np_gate(layer.gate, x, np.concatenate([spec, shared], 1))[:, 0]
    np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("hidden", [[5], [5, 4], [5, 4, 3]])
def test_expert_bank_batched_path_for_many_experts(hidden):
    bank = ExpertBank(ExpertBank.LOOP_MAX + 3, hidden)                   # one batched op per layer
    x, xe = rand(6, 7), rand(6, ExpertBank.LOOP_MAX + 3, 7)
    np.testing.assert_allclose(bank(tf.constant(x)).numpy(), np_bank(bank, x), **TOL)
    np.testing.assert_allclose(bank(tf.constant(xe)).numpy(), np_bank(bank, xe), **TOL)
    with tf.GradientTape() as tape:                                      # the gradient of each expert's kernel
        loss = tf.reduce_sum(bank(tf.constant(x)) ** 2)
    grad = tape.gradient(loss, bank.kernels[0]).numpy()
    single = ExpertBank(1, hidden)
    single.build((None, 7))
    for e in (0, ExpertBank.LOOP_MAX + 2):
        for mine, theirs in zip(single.kernels + single.biases, bank.kernels + bank.biases):
            mine.assign(theirs[e:e + 1])
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(single(tf.constant(x)) ** 2)
        np.testing.assert_allclose(grad[e], tape.gradient(loss, single.kernels[0]).numpy()[0], **TOL)


@pytest.mark.parametrize("experts", [4, ExpertBank.LOOP_MAX + 2])
def test_expert_bank_head_is_each_experts_linear_unit(experts):
    """``head=(w, b)``: ``f_e(x) . w_e + b_e`` per expert, for every expert (loop / batched path), a row's group
    of ``m`` only (rows partitioned; with 10 experts groups 1-3 absent) and a group fixed while tracing."""
    bank, x, m = ExpertBank(experts, [5, 4]), rand(6, 7), 2
    bank.build((None, 7))
    w, b = tf.constant(rand(experts, 4)), tf.constant(rand(experts))
    want = np.einsum("beh,eh->be", np_bank(bank, x), w.numpy()) + b.numpy()              # [B, E]
    np.testing.assert_allclose(bank(tf.constant(x), head=(w, b)).numpy(), want, **TOL)
    last = experts // m - 1
    group = np.array([0, 0, last, 0, last, last])
    got = bank(tf.constant(x), tf.constant(group), group=m, head=(w, b)).numpy()          # [B, m]
    np.testing.assert_allclose(got, want.reshape(6, -1, m)[np.arange(6), group], **TOL)
    fixed = tf.function(lambda v: bank(v, tf.fill([tf.shape(v)[0]], 1), head=(w, b), group=m), autograph=False)
    np.testing.assert_allclose(fixed(tf.constant(x)).numpy(), want[:, m:2 * m], **TOL)


def test_own_gate_and_own_cgc_task_equal_the_own_column_of_all():
    S, b = 4, 10
    sc = np.array([0, 3, 3, 1, 0, 1, 3, 0, 1, 1])                         # scenario 2 absent
    gates = ExpertGates(S, 3)
    x, experts = rand(b, 5), rand(b, 3, 6)
    every = gates(tf.constant(x), tf.constant(experts)).numpy()
    np.testing.assert_allclose(gates(tf.constant(x), tf.constant(experts), own=tf.constant(sc)).numpy(),
                               every[np.arange(b), sc], **TOL)
    level = CGC(num_tasks=S, specific=2, shared=1, hidden=[4])
    h = rand(b, S + 1, 6)                                                 # per-task inputs + shared, from a level below
    every = np_cgc(level, h) if level(tf.constant(h)) is not None else None
    h_own = np.stack([h[np.arange(b), sc], h[:, S]], axis=1)              # the level below's own output
    with tf.GradientTape() as tape:
        own = level(tf.constant(h_own), own=tf.constant(sc))
        loss = tf.reduce_sum(own)
    np.testing.assert_allclose(own.numpy(), every[np.arange(b), sc], **TOL)
    grad = tf.convert_to_tensor(tape.gradient(loss, level.specific_experts.kernels[0])).numpy()
    moved = np.abs(grad).reshape(S, 2, -1).sum(axis=(1, 2)) > 0           # task s owns experts 2s, 2s+1
    assert moved.tolist() == [True, True, False, True]


def test_mmoe_own_path_unstacked_experts_and_all_gate_logits_train_the_same():
    """MMoE's own step: the bank's unstacked outputs mixed by the own gate read from every gate's logits
    (``all``) give the output and gradients of the stacked bank through the partitioned own gate."""
    S, E, b = 4, 3, 12
    sc = tf.constant(np.array([0, 3, 3, 1, 0, 1, 3, 0, 1, 1, 2, 0]))
    bank, gates = ExpertBank(E, [6, 5]), ExpertGates(S, E)
    x = tf.constant(rand(b, 7))
    assert isinstance(bank(x, stacked=False), list) and S * E <= ExpertGates.ALL_MAX
    every = gates(x, bank(x, stacked=False)).numpy()                      # every gate from the unstacked list
    np.testing.assert_allclose(every, gates(x, bank(x)).numpy(), **TOL)

    def run(stacked, method):
        with tf.GradientTape() as tape:
            out = gates.own_gate(x, bank(x, stacked=stacked), sc, method=method)
            loss = tf.reduce_sum(tf.sin(out))
        return [out] + tape.gradient(loss, bank.trainable_variables + gates.trainable_variables)

    for new, old in zip(run(False, "auto"), run(True, "partition")):
        np.testing.assert_allclose(tf.convert_to_tensor(new).numpy(), tf.convert_to_tensor(old).numpy(), **TOL)
    np.testing.assert_allclose(run(False, "auto")[0].numpy(), every[np.arange(b), sc.numpy()], **TOL)


def test_own_task_of_a_level_with_a_shared_gate():
    """PLE's lower level in the own pass: the row's own task output and the shared branch (which mixes every
    task's experts), equal to those columns of the full level, flat or per-task input."""
    S, b = 4, 10
    sc = np.array([0, 3, 3, 1, 0, 1, 3, 0, 1, 1])
    for x in (rand(b, 5), rand(b, S + 1, 5)):
        level = CGC(num_tasks=S, specific=2, shared=1, hidden=[4], shared_output=True)
        level(tf.constant(x))                                             # built: the NumPy side reads its weights
        every = np_cgc(level, x)                                          # [B, S+1, H]
        own = level(tf.constant(x), own=tf.constant(sc)).numpy()
        assert own.shape == (b, 2, 4)
        np.testing.assert_allclose(own[:, 0], every[np.arange(b), sc], **TOL)
        np.testing.assert_allclose(own[:, 1], every[:, S], **TOL)


def test_every_scenario_extraction_and_task_heads_equal_the_own_ones():
    """HiNet's all-scenario pass: column s of the extraction (and of a CGC reading per-task inputs) equals the
    own output of the rows set to scenario s."""
    S, b = 3, 5
    layer = ScenarioExtraction(S, shared=2, specific=2, hidden=[4], san_hidden=[5])
    x, table = rand(b, 7), rand(S, 4)
    every = layer(tf.constant(x), tf.constant(table)).numpy()                     # [B, S, 3H]
    level = CGC(num_tasks=S, specific=2, shared=1, hidden=[3])
    heads = level(tf.constant(every), task_inputs=True).numpy()                         # [B, S, H]
    for s in range(S):
        sc = np.full(b, s)
        own = layer(tf.constant(x), tf.constant(table[sc]), tf.constant(sc)).numpy()
        np.testing.assert_allclose(every[:, s], own, **TOL)
        np.testing.assert_allclose(heads[:, s], level(tf.constant(own), own=tf.constant(sc)).numpy(), **TOL)


def test_scenario_extraction_without_san_runs_only_the_own_experts():
    """``san=False``: the own output ``[S_i, G]`` equals scenario i's column of the every-scenario pass, and only
    scenario i's sub-experts get a gradient."""
    S, b = 3, 6
    layer = ScenarioExtraction(S, shared=2, specific=2, hidden=[4], san=False)
    x, table, sc = rand(b, 7), rand(S, 4), np.array([0, 2, 2, 0, 0, 2])  # scenario 1 absent
    every = layer(tf.constant(x), tf.constant(table)).numpy()               # [B, S, 2H]
    with tf.GradientTape() as tape:
        own = layer(tf.constant(x), tf.constant(table[sc]), tf.constant(sc))
        loss = tf.reduce_sum(own)
    np.testing.assert_allclose(own.numpy(), every[np.arange(b), sc], **TOL)
    grad = tf.convert_to_tensor(tape.gradient(loss, layer.specific_experts.kernels[0])).numpy()
    assert (np.abs(grad).reshape(S, 2, -1).sum(axis=(1, 2)) > 0).tolist() == [True, False, True]


def test_shared_gate_reading_own_mixes_the_rows_own_experts_only():
    """``shared_gate_reads="own"``: a level's shared branch is the shared gate's softmax over the row's own task's
    specific experts and the shared experts only (NumPy), its task output as in the paper's reading, for a flat
    and a ``[B, 2, D]`` (own, shared) input; only the row's own task's experts and gate columns get a gradient."""
    S, b, m = 4, 10, 2
    sc = np.array([0, 3, 3, 1, 0, 1, 3, 0, 1, 1])                         # scenario 2 absent
    for x in (rand(b, 5), rand(b, 2, 5)):
        level = CGC(num_tasks=S, specific=m, shared=1, hidden=[4], shared_output=True, shared_gate_reads="own")
        level(tf.constant(x[:, 0] if x.ndim == 3 else x))                 # built: the NumPy side reads its weights
        with tf.GradientTape() as tape:
            got = level(tf.constant(x), own=tf.constant(sc))
            loss = tf.reduce_sum(got)
        x_own, x_sh = (x[:, 0], x[:, 1]) if x.ndim == 3 else (x, x)
        spec = np_bank(level.specific_experts, x_own).reshape(b, S, m, 4)[np.arange(b), sc]
        own_experts = np.concatenate([spec, np_bank(level.shared_experts, x_sh)], 1)     # [B, m + 1, H]
        task = np.stack([np_gate(level.task_gates, x_own[i:i + 1], own_experts[i:i + 1])[0, s] for i, s in
                         enumerate(sc)])
        k, bias = level.shared_gate.kernel.numpy()[0], level.shared_gate.bias.numpy()[0]
        cols = [np.r_[s * m:(s + 1) * m, S * m] for s in sc]              # own task's experts, then the shared one
        g = softmax(np.stack([x_sh[i] @ k[:, c] + bias[c] for i, c in enumerate(cols)]))
        np.testing.assert_allclose(got.numpy()[:, 0], task, **TOL)
        np.testing.assert_allclose(got.numpy()[:, 1], np.einsum("be,beh->bh", g, own_experts), **TOL)
        grads = tape.gradient(loss, [level.specific_experts.kernels[0], level.shared_gate.kernel])
        moved = np.abs(tf.convert_to_tensor(grads[0]).numpy()).reshape(S, m, -1).sum(axis=(1, 2)) > 0
        assert moved.tolist() == [True, True, False, True]
        assert not np.any(grads[1].numpy()[0][:, 2 * m:3 * m])          # task 2's gate columns untouched


def test_san_top_k_runs_the_own_and_top_scenarios_only():
    """``san_top_k=2`` of 5 scenarios: A_i sums the 2 largest SAN weights' S_j (NumPy, from the every-scenario
    sub-experts); the own call equals the every-scenario call's column (which masks the same weights), and a
    scenario-0 batch gives a gradient to the sub-experts of scenario 0 and its top 2 only."""
    S, b, m = 5, 6, 2
    layer = ScenarioExtraction(S, shared=2, specific=m, hidden=[4], san_hidden=[5], san_top_k=2)
    x, table, sc = rand(b, 7), rand(S, 4), np.array([0, 3, 3, 1, 0, 1])
    every = layer(tf.constant(x), tf.constant(table)).numpy()                   # [B, S, 3H]
    got = layer(tf.constant(x), tf.constant(table[sc]), tf.constant(sc))
    spec = np_gate(layer.specific_gates, x, np_bank(layer.specific_experts, x).reshape(b, S, m, 4))
    h = table[sc]
    for dl in layer.san_mlp.dense:
        h = dense(dl, h, relu)
    w = softmax(dense(layer.san_out, h)) * (1 - np.eye(S)[sc])
    top = np.argsort(-w, axis=1, kind="stable")[:, :2]                 # ties (a dead SAN layer): lower index
    keep = np.zeros_like(w)
    np.put_along_axis(keep, top, 1.0, axis=1)
    np.testing.assert_allclose(got.numpy()[:, :4], np.einsum("bs,bsh->bh", w * keep, spec), **TOL)
    np.testing.assert_allclose(got.numpy()[:, 4:8], spec[np.arange(b), sc], **TOL)
    np.testing.assert_allclose(got.numpy(), every[np.arange(b), sc], **TOL)
    zero = np.zeros(b, np.int64)                                   # a scenario-0 batch: scenario 0 and its top 2
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(tf.constant(x), tf.constant(table[zero]), tf.constant(zero)))
    grad = tf.convert_to_tensor(tape.gradient(loss, layer.specific_experts.kernels[0])).numpy()
    moved = np.abs(grad).reshape(S, m, -1).sum(axis=(1, 2)) > 0
    assert moved.tolist() == [s in {0} | set(top[sc == 0][0]) for s in range(S)] and moved.sum() == 3


def test_own_reading_servable_of_one_scenario_holds_its_expert_rows_only():
    """A PLE level read ``own`` traced for one scenario inside ``RowSlices`` (a scenario servable): it answers the
    own pass's rows of that scenario and captures the row slices of the one-expert-per-scenario bank, not the
    ``[S, D, H]`` kernels."""
    S, b, s = 4, 6, 2
    level = CGC(num_tasks=S, specific=1, shared=1, hidden=[4], shared_output=True, shared_gate_reads="own")
    x = rand(b, 5)
    level(tf.constant(x))
    want = level(tf.constant(x), own=tf.constant(np.full(b, s))).numpy()
    stacked = [v for v in level.variables if v.shape.rank and v.shape[0] == S]
    slices = RowSlices(stacked, s)                                       # holds the row variables
    with slices:
        fn = tf.function(lambda v: level(v, own=tf.fill(tf.shape(v)[:1], s))).get_concrete_function(
            tf.TensorSpec([None, 5], tf.float32))
    np.testing.assert_allclose(fn(tf.constant(x)).numpy(), want, **TOL)
    held = {v.name for v in fn.variables}
    assert not held & {v.name for v in level.specific_experts.variables}
    assert {f"{v.name.split(':')[0]}/row_{s}:0" for v in level.specific_experts.variables} <= held
