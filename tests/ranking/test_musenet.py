"""MuSeNet: each layer against a NumPy re-computation of its equation, the prototype update (eq. 14)
exactly and without gradient (also under a 2-replica MirroredStrategy), the variants, the ConfigErrors,
training on the planted data, and the learned-scenario export + figure."""
import copy
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from conftest import quick_config

from pipelines.musenet_figure import adjusted_rand_index, purity
from tfmsr.core.errors import ConfigError
from tfmsr.data.pipeline import make_dataset, split_files
from tfmsr.data.stats import is_repeat
from tfmsr.layers.musenet import (RepeatIntention, ScenarioLearner, combine_scenarios, first_distinct_rows,
                                  kl_to_uniform, prototype_step, repeat_aux_loss, repeat_combine, repeat_indicator)
from tfmsr.ranking.models import build

RNG = np.random.default_rng(7)


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_layer_norm(x, eps=1e-3):  # keras LayerNormalization(center=False, scale=False), default epsilon
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps)


def learner(K=4, m=3, d=6, hard=False, standardize="layer", tau=0.1, alpha=0.2):
    layer = ScenarioLearner(K, m, hard=hard, tau=tau, alpha=alpha, standardize=standardize)
    layer.build((None, d))
    layer.omega.assign(RNG.normal(0, 0.7, (d, m)).astype(np.float32))
    layer.prototypes.assign(RNG.normal(0, 1.0, (K, m)).astype(np.float32))
    layer.initialized.assign(1.0)
    return layer


def np_pi(layer, x, standardize=True):
    f = (np_layer_norm(x) if standardize else x) @ layer.omega.numpy()
    c = layer.prototypes.numpy()
    d = ((f[:, None, :] - c[None]) ** 2).sum(-1)
    return f, np_softmax(-d)


# ---------------------------------------------------------------------------------------- layers vs NumPy
@pytest.mark.parametrize("standardize", ["layer", None])
def test_soft_assignment_eq3(standardize):
    layer = learner(standardize=standardize)
    x = RNG.normal(size=(32, 6)).astype(np.float32)
    a, pi = layer(tf.constant(x), training=False)
    _, want = np_pi(layer, x, standardize is not None)
    np.testing.assert_allclose(pi.numpy(), want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a.numpy(), want, rtol=1e-4, atol=1e-6)  # soft version: a = pi


def test_hard_assignment_gumbel_softmax_eq7_and_argmax_eq4():
    layer = learner(hard=True, tau=0.5)
    x = RNG.normal(size=(16, 6)).astype(np.float32)
    g = -np.log(-np.log(RNG.uniform(1e-6, 1, (16, 4)))).astype(np.float32)
    a, pi = layer(tf.constant(x), training=True, gumbel=tf.constant(g))
    _, p = np_pi(layer, x)
    want = np_softmax((np.log(p) + g) / 0.5)
    np.testing.assert_allclose(a.numpy(), want, rtol=1e-4, atol=1e-5)
    a_inf, _ = layer(tf.constant(x), training=False)  # inference: one-hot of the closest prototype (eq. 4)
    np.testing.assert_array_equal(a_inf.numpy(), np.eye(4)[p.argmax(1)])


def test_kl_to_uniform_eq12():
    a = np_softmax(RNG.normal(size=(20, 5)) * 2)
    want = np.mean((a * (np.log(a) + np.log(5))).sum(1))
    assert float(kl_to_uniform(tf.constant(a, tf.float32))) == pytest.approx(want, rel=1e-5)
    assert float(kl_to_uniform(tf.fill([3, 4], 0.25))) == pytest.approx(0.0, abs=1e-7)
    one_hot = tf.constant(np.eye(4)[[0, 2, 3]], tf.float32)  # 0 log 0 = 0: KL of a one-hot is log K
    assert float(kl_to_uniform(one_hot)) == pytest.approx(np.log(4), rel=1e-6)


def test_repeat_aux_loss_eq10_squared_error():
    r, p_r, a = RNG.uniform(size=10), RNG.uniform(size=(10, 3)), np_softmax(RNG.normal(size=(10, 3)))
    want = np.mean((r - (p_r * a).sum(1)) ** 2)
    got = repeat_aux_loss(tf.constant(r, tf.float32), tf.constant(p_r, tf.float32), tf.constant(a, tf.float32))
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_repeat_combination_eq9_and_final_prediction():
    ind = RNG.integers(0, 2, 12).astype(np.float32)
    p_r, s_r, s_e = RNG.uniform(size=(12, 4)), RNG.normal(size=(12, 4)), RNG.normal(size=(12, 4))
    want = ind[:, None] * p_r * s_r + (1 - ind[:, None]) * (1 - p_r) * s_e
    got = repeat_combine(tf.constant(ind), *(tf.constant(v, tf.float32) for v in (p_r, s_r, s_e)))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    a = np_softmax(RNG.normal(size=(12, 4)))
    np.testing.assert_allclose(combine_scenarios(tf.constant(a, tf.float32), got).numpy(), (a * want).sum(1),
                               rtol=1e-5, atol=1e-6)  # soft: sigma(sum_k a_k z_k)
    hard = np.eye(4, dtype=np.float32)[RNG.integers(0, 4, 12)]
    np.testing.assert_allclose(combine_scenarios(tf.constant(hard), got).numpy(), want[hard.astype(bool)],
                               rtol=1e-5, atol=1e-6)  # hard: the assigned scenario's z


def np_bank(x, kernels, biases, w, b):
    h = x
    for k, bias in zip(kernels, biases):
        h = np.maximum(np.einsum("bd,edh->beh" if h.ndim == 2 else "bed,edh->beh", h, k) + bias, 0)
    return np.einsum("beh,eh->be", h, w) + b


def test_repeat_intention_modules_against_numpy():
    K, B = 3, 9
    layer = RepeatIntention(K, hidden=[8, 5])
    full, ctx = RNG.normal(size=(B, 7)).astype(np.float32), RNG.normal(size=(B, 4)).astype(np.float32)
    ind = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1], np.float32)
    z, p_r = layer(tf.constant(full), tf.constant(ctx), tf.constant(ind))
    sc, it = layer.scores, layer.intention
    s = np_bank(full, [v.numpy() for v in sc.kernels], [v.numpy() for v in sc.biases],
                layer.head_w["scores"].numpy(), layer.head_b["scores"].numpy())
    want_pr = 1 / (1 + np.exp(-np_bank(ctx, [v.numpy() for v in it.kernels], [v.numpy() for v in it.biases],
                                       layer.head_w["intention"].numpy(), layer.head_b["intention"].numpy())))
    s_r, s_e = s[:, :K], s[:, K:]
    want = ind[:, None] * want_pr * s_r + (1 - ind[:, None]) * (1 - want_pr) * s_e
    np.testing.assert_allclose(p_r.numpy(), want_pr, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(z.numpy(), want, rtol=1e-4, atol=1e-5)
    plain = RepeatIntention(K, hidden=[8], repeat=False)  # w/o M2: z_k = s^k(full)
    z2, none = plain(tf.constant(full))
    assert none is None and z2.shape == (B, K)
    np.testing.assert_allclose(z2.numpy(), np_bank(full, [plain.scores.kernels[0].numpy()], [plain.scores.biases[0].numpy()],
                                                   plain.head_w["scores"].numpy(), plain.head_b["scores"].numpy()),
                               rtol=1e-4, atol=1e-5)


def tf_bank(x, bank, w, b):
    """An ExpertBank and its heads as dense TF ops (every module on every row) -> ``[B, E]``."""
    h = x
    for k, bias in zip(bank.kernels, bank.biases):
        h = tf.nn.relu(tf.einsum("bd,edh->beh" if len(h.shape) == 2 else "bed,edh->beh", h, k) + bias)
    return tf.einsum("beh,eh->be", h, w) + b


@pytest.mark.parametrize("ind", [[1, 0, 1, 1, 0, 0, 1, 0, 1], [1] * 9, [0] * 9])
def test_repeat_intention_runs_the_kept_score_modules_only_with_the_dense_gradients(ind):
    """Eq. 9 multiplies s_e by 1 - I and s_r by I: the layer runs a row through the K score modules its
    indicator keeps (rows partitioned); its values and every gradient (weights, inputs) equal the dense eq. 9
    over all 2K modules from the same weights, also when every row is a repeat or every row is not."""
    K, B = 3, 9
    layer = RepeatIntention(K, hidden=[8, 5])
    full, ctx = tf.constant(RNG.normal(size=(B, 7)), tf.float32), tf.constant(RNG.normal(size=(B, 4)), tf.float32)
    ind, up = tf.constant(ind, tf.float32), tf.constant(RNG.normal(size=(B, K)), tf.float32)
    layer(full, ctx, ind)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([full, ctx])
        z, p_r = layer(full, ctx, ind)
        s = tf_bank(full, layer.scores, layer.head_w["scores"], layer.head_b["scores"])
        want_pr = tf.sigmoid(tf_bank(ctx, layer.intention, layer.head_w["intention"], layer.head_b["intention"]))
        want = repeat_combine(ind, want_pr, s[:, :K], s[:, K:])
        got_loss, want_loss = (tf.reduce_sum(up * a) + tf.reduce_sum(b ** 2) for a, b in ((z, p_r), (want, want_pr)))
    np.testing.assert_allclose(z.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p_r.numpy(), want_pr.numpy(), rtol=1e-5, atol=1e-6)
    sources, names = layer.trainable_variables + [full, ctx], [v.name for v in layer.trainable_variables] + ["x", "c"]
    dense = lambda g, v: np.zeros(v.shape, np.float32) if g is None else tf.convert_to_tensor(g).numpy()
    for v, g, r, n in zip(sources, tape.gradient(got_loss, sources), tape.gradient(want_loss, sources), names):
        np.testing.assert_allclose(dense(g, v), dense(r, v), rtol=1e-5, atol=1e-6, err_msg=n)


def test_repeat_indicator_matches_stats():
    target = np.array([3, 5, 0, 7], np.int64)
    hist = np.array([[1, 3, 0], [2, 4, 6], [0, 0, 0], [7, 7, 1]], np.int64)
    np.testing.assert_array_equal(repeat_indicator(tf.constant(target), tf.constant(hist)).numpy(),
                                  is_repeat(target, hist).astype(np.float32))


# ---------------------------------------------------------------------------------------- prototypes (eq. 14)
@pytest.mark.parametrize("hard", [False, True])
def test_prototype_update_eq14_exact(hard):
    layer = learner(hard=hard, alpha=0.2)
    x = RNG.normal(size=(40, 6)).astype(np.float32)
    c0 = layer.prototypes.numpy().copy()
    a, _ = layer(tf.constant(x), training=True)
    new = layer.update_prototypes().numpy()
    f = np_layer_norm(x) @ layer.omega.numpy()
    a = a.numpy()  # soft: pi; hard: the Gumbel-softmax sample of this very call
    want = 0.8 * c0 + 0.2 * (a.T @ f) / a.sum(0)[:, None]
    np.testing.assert_allclose(new, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.prototypes.numpy(), want, rtol=1e-4, atol=1e-5)
    # a prototype without any mass keeps its place
    kept = prototype_step(tf.constant(c0), tf.zeros_like(c0), tf.constant([0.0, 1.0, 1.0, 1.0]), 0.2).numpy()
    np.testing.assert_array_equal(kept[0], c0[0])


def np_first_distinct(f, k):
    keep = []
    for row in f:
        if len(keep) < k and all(np.abs(row - c).max() > 1e-4 for c in keep):
            keep.append(row)
    return np.array(keep + [f[0]] * (k - len(keep)))


def test_first_update_seeds_prototypes_from_distinct_rows_of_the_batch():
    layer = learner()
    layer.initialized.assign(0.0)
    x = RNG.normal(size=(10, 6)).astype(np.float32)
    x[1] = x[0]  # a repeated context: seeding on it would give two equal prototypes, equal for good
    x[3] = x[2]
    layer(tf.constant(x), training=True)
    layer.update_prototypes()
    f = np_layer_norm(x) @ layer.omega.numpy()
    np.testing.assert_allclose(layer.prototypes.numpy(), f[[0, 2, 4, 5]], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np_first_distinct(f, 4), f[[0, 2, 4, 5]])
    assert float(layer.initialized.numpy()) == 1.0
    few = first_distinct_rows(tf.constant([[1.0, 2.0], [1.0, 2.0], [3.0, 0.0]]), 4).numpy()
    np.testing.assert_array_equal(few, [[1, 2], [3, 0], [1, 2], [1, 2]])  # fewer distinct rows than K


def batch(synth_dir, schema, n=256):
    x, y = next(iter(make_dataset(split_files(synth_dir, "train"), schema, n, training=False)))
    return x, y


def test_model_train_step_moves_prototypes_by_eq14_not_by_gradient(synth_dir, synth_schema):
    from tfmsr.ranking.train import compile_model

    model = compile_model(build("musenet", synth_schema, {"kl_weight": 1.0}), quick_config("musenet"))
    x, y = batch(synth_dir, synth_schema)
    model.train_step((x, y))                               # first step seeds the prototypes
    L = model.learner
    assert all(v is not L.prototypes for v in model.trainable_variables)
    assert any(v is L.prototypes for v in model.non_trainable_variables)
    before, omega_before = L.prototypes.numpy().copy(), L.omega.numpy().copy()
    model.train_step((x, y))
    fx, a = (t.numpy() for t in L._local.stash)            # the assignment of that step's forward pass
    want = 0.8 * before + 0.2 * (a.T @ fx) / a.sum(0)[:, None]
    np.testing.assert_allclose(L.prototypes.numpy(), want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(L.omega.numpy(), omega_before)   # omega is trained by back-propagation
    with tf.GradientTape() as tape:
        losses = model.compute_losses(x, y, training=True)
        loss = model.total_loss(losses)
    g_proto, g_omega = tape.gradient(loss, [L.prototypes, L.omega])
    assert g_proto is None and g_omega is not None
    assert set(losses) == {"bce", "kl", "repeat"}           # BCE, KL (eq. 12) and L_A (eq. 10, weighted by beta)


def test_prototype_update_under_two_replica_mirrored_strategy():
    """Each replica sees half the batch; the seeding and the all-reduced update equal the single-process
    ones on the global batch (replica 0's rows first), identical on both replicas."""
    script = textwrap.dedent("""
        import numpy as np, tfmsr, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from tfmsr.layers.musenet import ScenarioLearner
        rng = np.random.default_rng(0)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        x = rng.normal(size=(32, 6)).astype(np.float32)
        x[2:16] = x[[0, 1] * 7]  # replica 0 holds two distinct rows: seeds 3 and 4 come from replica 1
        with strategy.scope():
            layer = ScenarioLearner(4, 3, standardize=None)
            layer.build((None, 6))
        w = layer.omega.numpy()
        xs = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(x[16 * ctx.replica_id_in_sync_group:16 * ctx.replica_id_in_sync_group + 16]))
        @tf.function
        def step(xb):
            def fn(xr):
                a, _ = layer(xr, training=True)
                layer.update_prototypes()
                return a
            return strategy.run(fn, args=(xb,))
        f = x @ w
        values = lambda v: [t.numpy() for t in v.values]
        step(xs)
        for got in values(layer.prototypes):
            np.testing.assert_allclose(got, f[[0, 1, 16, 17]], rtol=1e-5, atol=1e-6)
        assert all(v == 1.0 for v in values(layer.initialized))
        for _ in range(2):
            c0 = layer.prototypes.numpy()
            step(xs)
            d = ((f[:, None] - c0[None]) ** 2).sum(-1)
            a = np.exp(-d - (-d).max(1, keepdims=True)); a /= a.sum(1, keepdims=True)
            want = 0.8 * c0 + 0.2 * (a.T @ f) / a.sum(0)[:, None]
            got = values(layer.prototypes)
            assert len(got) == 2, got
            np.testing.assert_array_equal(got[0], got[1])
            np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-5)
        print("OK")
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]


CLUSTER_STEP = textwrap.dedent('''
    """One role of a real cluster: MuSeNet.train_step twice on fixed rows under the strategy of TF_CONFIG;
    each trainer (the ParameterServerStrategy chief, every MultiWorkerMirroredStrategy worker) writes the
    prototypes after each step and the f_w(x), a of each step's forward pass over the global batch."""
    import json, os, sys
    import numpy as np
    import tfmsr  # noqa: F401
    import tensorflow as tf
    from tfmsr.ranking.config import load_config
    from tfmsr.data.pipeline import make_dataset, split_files
    from tfmsr.features import Schema
    from tfmsr.ranking.models import build
    from tfmsr.distribute.strategy import cluster_from_env, make_strategy, serve
    from tfmsr.ranking.train import compile_model

    data, out, kind = sys.argv[1:4]
    cfg = load_config(raw={"model": {"name": "musenet"}, "cluster": {"strategy": kind, "min_shard_bytes": 64}})
    cluster = cluster_from_env(cfg)
    if not cluster.trains:
        serve(cluster, print)
    strategy = make_strategy(cluster, cfg)
    schema = Schema.load(os.path.join(data, "schema.yaml"))
    x, y = next(iter(make_dataset(split_files(data, "train"), schema, 64, training=False)))
    x, y = {k: v.numpy() for k, v in x.items()}, y.numpy()
    if kind == "multi_worker":  # worker i's replica holds rows [32 i, 32 i + 32) of the global batch
        i = cluster.index
        x, y = {k: v[32 * i:32 * i + 32] for k, v in x.items()}, y[32 * i:32 * i + 32]
    with strategy.scope():
        model = build("musenet", schema)
        model({k: tf.constant(v) for k, v in x.items()})
        compile_model(model, cfg)
        model.optimizer.build(model.trainable_variables)
    L = model.learner


    def replica_step(xb, yb):
        model.train_step((xb, yb))
        fx, a = L._local.stash
        ctx = tf.distribute.get_replica_context()
        if ctx.num_replicas_in_sync > 1:  # the global batch, in replica order
            fx, a = ctx.all_gather(fx, axis=0), ctx.all_gather(a, axis=0)
        return fx, a


    @tf.function
    def step():
        return strategy.run(replica_step, args=({k: tf.constant(v) for k, v in x.items()}, tf.constant(y)))


    if kind == "ps":
        coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
        run = lambda: coordinator.schedule(step).fetch()
    else:
        run = lambda: [strategy.experimental_local_results(t)[0].numpy() for t in step()]
    read = lambda v: tf.convert_to_tensor(v).numpy()
    res = {}
    for k in (1, 2):
        fx, a = run()
        res[f"fx{k}"], res[f"a{k}"] = np.asarray(fx).tolist(), np.asarray(a).tolist()
        res[f"c{k}"] = read(L.prototypes).tolist()
    res["initialized"] = float(read(L.initialized))
    res["devices"] = sorted({v.device for v in model.non_trainable_variables if "prototypes" in v.name})
    res["replicas"] = strategy.num_replicas_in_sync
    path = os.path.join(out, f"{cluster.role}{cluster.index}.json")
    with open(path + ".tmp", "w") as fh:
        json.dump(res, fh)
    os.replace(path + ".tmp", path)
    print("DONE", path, flush=True)
''')


@pytest.mark.slow
@pytest.mark.parametrize("kind,workers,ps", [("multi_worker", 2, 0), ("ps", 1, 2)])
def test_model_prototype_update_on_a_real_cluster(kind, workers, ps, synth_dir, tmp_path):
    """MuSeNet.train_step on localhost clusters (one process per role, as ``tfmsr cluster`` starts them):
    under MultiWorkerMirroredStrategy each worker's replica holds half of a 64-row batch and both apply
    the seeding and eq. 14 of the whole batch; under ParameterServerStrategy the worker assigns them to
    the prototypes sharded over both parameter servers."""
    from tfmsr.distribute.cluster import LocalCluster

    (tmp_path / "step.py").write_text(CLUSTER_STEP)
    out = tmp_path / "out"
    out.mkdir()
    c = LocalCluster([synth_dir, str(out), kind], workers, ps, threads=1, log=lambda line: None,
                     program=[sys.executable, str(tmp_path / "step.py")])
    try:
        rc = c.start().wait(timeout=900)
    finally:
        c.stop()
    assert rc == 0, "\n".join(c.lines[-60:])
    trainers = [f"worker{i}" for i in range(workers)] if kind == "multi_worker" else ["chief0"]
    results = [json.load(open(out / f"{t}.json")) for t in trainers]
    for r in results:
        f1, f2, a2, c1, c2 = (np.array(r[k]) for k in ("fx1", "fx2", "a2", "c1", "c2"))
        assert f1.shape == (64, 16) and r["initialized"] == 1.0
        assert r["replicas"] == (workers if kind == "multi_worker" else 1)
        np.testing.assert_allclose(c1, np_first_distinct(f1, 4), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(c2, 0.8 * c1 + 0.2 * (a2.T @ f2) / a2.sum(0)[:, None], rtol=1e-4, atol=1e-5)
        assert np.abs(c2 - c1).max() > 1e-3
    if kind == "multi_worker":
        np.testing.assert_array_equal(results[0]["c2"], results[1]["c2"])  # one value on every replica
    else:
        assert sorted(d.split("/task:")[1][0] for d in results[0]["devices"]) == ["0", "1"]
        assert all("/job:ps/" in d for d in results[0]["devices"])


# ---------------------------------------------------------------------------------------- model
VARIANTS = {
    "soft": {}, "hard": {"assignment": "hard"}, "soft w/o M2": {"repeat_module": False},
    "hard w/o M2": {"assignment": "hard", "repeat_module": False},
    "w/o M1&M2": {"assignment": "none", "repeat_module": False},
    "predefined": {"assignment": "predefined"},
    "paper reading": {"learner_inputs": ["user", "behavior", "item", "context"], "kl_weight": 1.0,
                      "learner_standardize": None, "embedding_init": None},
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variants_build_and_step(name, synth_dir, synth_schema):
    from tfmsr.ranking.train import compile_model

    model = compile_model(build("musenet", synth_schema, VARIANTS[name]), quick_config("musenet"))
    x, y = batch(synth_dir, synth_schema, 64)
    logs = model.train_step((x, y))
    assert np.isfinite(float(logs["loss"]))
    p = model(x).numpy()
    assert p.shape == (64,) and ((p > 0) & (p < 1)).all()
    out = model.explain(x)
    K = {"predefined": synth_schema.num_scenarios, "w/o M1&M2": 1}.get(name, 4)
    assert out["pi"].shape == (64, K)
    if name == "predefined":
        np.testing.assert_array_equal(out["pi"].numpy().argmax(1), x["scenario"].numpy())
    if name.startswith("hard"):  # inference uses the one-hot of eq. 4
        assert set(np.unique(out["a"].numpy())) <= {0.0, 1.0}
    assert model.scenario_probs(x).shape == (64, synth_schema.num_scenarios)


def test_config_errors(synth_schema):
    no_label = copy.deepcopy(synth_schema)
    no_label.extras.pop("user_repeat_rate")
    with pytest.raises(ConfigError, match="repeat_label='user_repeat_rate'.*does not have"):
        build("musenet", no_label)
    build("musenet", no_label, {"repeat_module": False})      # w/o M2 needs no label
    build("musenet", no_label, {"repeat_label": None})         # repeat module without eq. 10
    with pytest.raises(ConfigError, match="parameter 'assignment' must be soft, hard, predefined or none"):
        build("musenet", synth_schema, {"assignment": "fuzzy"})
    with pytest.raises(ConfigError, match="learner_inputs"):
        build("musenet", synth_schema, {"learner_inputs": ["weather"]})
    with pytest.raises(ConfigError, match="parameter 'embedding_init_scope' must be context or learner"):
        build("musenet", synth_schema, {"embedding_init_scope": "all"})
    no_context = copy.deepcopy(synth_schema)
    no_context.features = [f for f in no_context.features if f.group not in ("context", "query")]
    with pytest.raises(ConfigError, match="has no context features"):
        build("musenet", no_context)
    build("musenet", no_context, {"learner_inputs": ["user", "behavior", "item"]})


def test_trains_an_epoch_then_figure(synth_dir, tmp_path):
    from pipelines.musenet_figure import run
    from tfmsr.ranking.train import train

    model_dir = str(tmp_path / "run")
    summary = train(quick_config("musenet"), synth_dir, model_dir, log=lambda *_: None)
    assert summary["best_val_auc"] > 0.6
    out = str(tmp_path / "fig.png")
    res = run(model_dir, synth_dir, out, features=["price", "user_activity", "hour"])
    import pandas as pd

    df = pd.read_parquet(res["assignments"])
    assert len(df) == 600 and {"pi_0", "pi_3", "learned", "latent_scenario", "repeat", "p_r", "hour"} <= set(df)
    np.testing.assert_allclose(df.filter(like="pi_").sum(1), 1.0, rtol=1e-5)
    assert res["truth"] == "latent_scenario" and -1 <= res["vs_truth"]["ari"] <= 1
    with open(out, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.exists(str(tmp_path / "fig.json"))


# ---------------------------------------------------------------------------------------- agreement metrics
def test_adjusted_rand_index_and_purity():
    truth, pred = [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]
    assert adjusted_rand_index(pred, truth) == pytest.approx(0.24242424, rel=1e-6)  # the textbook example
    assert purity(pred, truth) == pytest.approx(5 / 6)
    assert adjusted_rand_index([3, 3, 1, 1, 2], [0, 0, 1, 1, 2]) == pytest.approx(1.0)  # label permutation
    rng = np.random.default_rng(0)
    assert abs(adjusted_rand_index(rng.integers(0, 4, 20000), rng.integers(0, 4, 20000))) < 0.01


@pytest.mark.parametrize("params,small", [({}, {"hour", "device"}), ({"assignment": "none"}, set()),
                                          ({"learner_inputs": ["user", "context"]}, {"hour", "device"}),
                                          ({"learner_inputs": ["user", "behavior"]}, set()),
                                          ({"learner_inputs": ["user", "context"], "embedding_init_scope": "learner"},
                                           {"hour", "device", "user_id", "gender", "age", "user_level"})])
def test_embedding_init_applies_to_the_learner_context_tables_only(params, small, synth_dir, synth_schema):
    """The small init reaches the context tables the learner reads (scope ``learner``: every table it reads)."""
    model = build("musenet", synth_schema, params)
    x, _ = batch(synth_dir, synth_schema, 8)
    model(x)
    std = {name: float(np.std(t.embeddings.numpy())) for name, t in model.embedding.tables.items()}
    assert {n for n, s in std.items() if s < 0.02} == small, std
