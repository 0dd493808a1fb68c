"""Distributed training on real TensorFlow clusters started on localhost (tfmsr.distribute.strategy / cluster).

Every cluster is separate processes with their own TF_CONFIG (the same code path as several machines);
fixtures stop every process group they start, also when a test fails.

AUC tolerance: a cluster run trains the same model on the same rows for the same number of steps as the
single-process run, but not the same trajectory: under ParameterServerStrategy updates are asynchronous
(a worker's gradient can be one or two steps stale) and each worker shuffles only its own shards;
under MultiWorkerMirroredStrategy the batch order differs (each worker draws its half batch from its
own shards). On these 1,000 validation rows, two single-process runs that differ only in the seed land
about 0.01 AUC apart, so cluster runs must be within 0.02 AUC of the single-process run (and all of them
well above chance).
"""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import tensorflow as tf
import yaml

from tfmsr.core.errors import ConfigError
from tfmsr.distribute.cluster import LocalCluster, cluster_spec, free_ports, run, tf_config
from tfmsr.distribute.strategy import Cluster, cluster_from_env, make_partitioner
from tfmsr.ranking.config import load_config
from tfmsr.ranking.models import available

AUC_TOLERANCE = 0.02
TIMEOUT = 900  # seconds for one cluster run on a loaded 2-core machine


# ---------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def dist_data(tmp_path_factory):
    """10,000 planted rows; 4 training shards of 2,000 rows (2 workers get 2 shards each)."""
    from tfmsr.data.synth import generate

    out = str(tmp_path_factory.mktemp("dist") / "data")
    generate(out, rows=10_000, users=300, items=200, seed=0, rows_per_shard=2000, progress=False)
    return out


RUN = {"model": {"name": "dnn", "params": {"hidden": [64, 32]}}, "data": {"batch_size": 64},
       "train": {"epochs": 2, "checkpoint_every": 1000, "log_every": 25, "early_stopping_patience": 0},
       "cluster": {"min_shard_bytes": 4096}}  # 201 x 16 float32 item table (12.9 KiB) > 4 KiB: split


def write_config(path, base=RUN, **train):
    cfg = json.loads(json.dumps(base))
    cfg["train"].update(train)
    with open(path, "w") as fh:
        yaml.safe_dump(cfg, fh)
    return str(path)


class Clusters:
    """Starts LocalClusters and stops all of them at teardown (also after a failed assertion)."""

    def __init__(self):
        self.started = []

    def start(self, argv, workers, ps, **kw):
        c = LocalCluster(argv, workers, ps, threads=1, log=lambda line: None, **kw)
        self.started.append(c)
        return c.start()

    def stop(self):
        for c in self.started:
            c.stop()


@pytest.fixture(scope="module")
def clusters():
    c = Clusters()
    yield c
    c.stop()


def train_argv(config, data, model_dir):
    return ["train", "--config", config, "--data", data, "--model-dir", model_dir]


def finished(c, rc):
    assert rc == 0, "\n".join(c.lines[-80:])
    if isinstance(c, LocalCluster):
        assert all(proc.poll() is not None for proc in c.procs.values())  # the launcher left nothing running
    else:
        assert len(c.pids) >= 5
        for pid in c.pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


def summary_line(c, prefix):
    lines = [l[len(prefix):] for l in c.lines if l.startswith(prefix) and l[len(prefix):].startswith('{"model"')]
    assert lines, "\n".join(c.lines[-60:])
    return json.loads(lines[-1])


def wait_for_step(c, step, timeout=TIMEOUT):
    pattern = re.compile(r"step (\d+)/")
    end = time.time() + timeout
    while time.time() < end:
        if any((m := pattern.search(l)) and int(m.group(1)) >= step for l in list(c.lines)):
            return
        assert c.procs[c.trainers[0]].poll() is None, "\n".join(c.lines[-60:])
        time.sleep(0.2)
    raise TimeoutError(f"no progress line at step {step}")


# ---------------------------------------------------------------------------------------- TF_CONFIG
def test_tf_config_roles_and_errors():
    cfg = load_config()
    spec = {"chief": ["h0:1"], "worker": ["h1:1", "h2:1"], "ps": ["h3:1", "h4:1"]}
    env = lambda role, i: {"TF_CONFIG": json.dumps({"cluster": spec, "task": {"type": role, "index": i}})}
    assert cluster_from_env(cfg, {}) == Cluster()
    chief = cluster_from_env(cfg, env("chief", 0))
    assert (chief.kind, chief.is_chief, chief.trains, chief.num_workers, chief.num_ps) == ("ps", True, True, 2, 2)
    worker = cluster_from_env(cfg, env("worker", 1))
    assert (worker.kind, worker.is_chief, worker.trains) == ("ps", False, False)
    assert cluster_from_env(cfg, env("evaluator", 0)).role == "evaluator"
    mw = {"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}})}
    one = cluster_from_env(cfg, mw)
    assert (one.kind, one.num_workers, one.is_chief, one.trains) == ("multi_worker", 2, False, True)
    assert cluster_from_env(load_config(overrides=["cluster.strategy=local"]), env("worker", 1)).kind == "local"
    with pytest.raises(ConfigError, match="TF_CONFIG: not valid JSON"):
        cluster_from_env(cfg, {"TF_CONFIG": "{cluster"})
    with pytest.raises(ConfigError, match="task.type 'master'"):
        cluster_from_env(cfg, env("master", 0))
    with pytest.raises(ConfigError, match="task.index 2 is not a task of job 'worker'"):
        cluster_from_env(cfg, env("worker", 2))
    with pytest.raises(ConfigError, match="multi_worker with ps jobs"):
        cluster_from_env(load_config(overrides=["cluster.strategy=multi_worker"]), env("chief", 0))
    with pytest.raises(ConfigError, match="needs exactly one chief"):
        cluster_from_env(load_config(overrides=["cluster.strategy=ps"]), mw)
    with pytest.raises(ConfigError, match="cluster.partitioner 'even'"):
        load_config(overrides=["cluster.partitioner=even"])
    with pytest.raises(ConfigError, match="cluster.min_shard_bytes must be a positive integer"):
        load_config(overrides=["cluster.min_shard_bytes=0"])


def test_partitioners_split_large_tables_only():
    shape = lambda *s: tf.TensorShape(s)
    min_size = make_partitioner({"partitioner": "min_size", "partitions": None, "min_shard_bytes": 4096}, 2)
    assert min_size(shape(1000, 16), tf.float32) == [2, 1]   # 64 KiB: 16 shards of 4 KiB, capped at 2 ps
    assert min_size(shape(100, 16), tf.float32) == [2, 1]    # 6.4 KiB > one 4 KiB shard: split
    assert min_size(shape(64, 16), tf.float32) == [1, 1]     # 4 KiB fits one shard: whole
    fixed = make_partitioner({"partitioner": "fixed", "partitions": 3, "min_shard_bytes": 4096}, 2)
    assert fixed(shape(100, 16), tf.float32) == [3, 1]       # >= 4 KiB: exactly `partitions` shards
    assert fixed(shape(10, 16), tf.float32) == [1, 1]
    assert make_partitioner({"partitioner": "min_size", "partitions": None, "min_shard_bytes": 1}, 1) is None


def test_launcher_spec_and_command_check():
    ports = free_ports(5)
    assert len(set(ports)) == 5
    spec = cluster_spec(2, 2, ports=ports)
    assert spec == {"chief": [f"localhost:{ports[0]}"], "worker": [f"localhost:{p}" for p in ports[1:3]],
                    "ps": [f"localhost:{p}" for p in ports[3:]]}
    assert cluster_spec(2, 0, ports=ports[:2]) == {"worker": [f"localhost:{p}" for p in ports[:2]]}
    assert json.loads(tf_config(spec, "ps", 1))["task"] == {"type": "ps", "index": 1}
    with pytest.raises(ValueError, match="runs a training command"):
        run(["--", "evaluate", "--model-dir", "x"], 2, 2)


FAKE_ROLE = textwrap.dedent('''
    """Stand-in for a cluster role (no TensorFlow): servers wait, the chief / workers finish after a while;
    a task listed in FAIL exits with code 3 the first time it runs."""
    import json, os, sys, time
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    name = f"{task['type']}{task['index']}"
    marker = os.path.join(sys.argv[1], name)
    print("up", name, flush=True)
    if name in os.environ.get("FAIL", "").split(",") and not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(0.5)
        sys.exit(3)
    if task["type"] == "chief" or (task["type"] == "worker" and os.environ.get("MW")):
        time.sleep(2)
        sys.exit(0)
    time.sleep(3600)
''')


def _fake_cluster(tmp_path, workers, ps, fail="", restarts=0, mw=False):
    tmp_path.mkdir()
    script = tmp_path / "role.py"
    script.write_text(FAKE_ROLE)
    env = dict(os.environ, FAIL=fail, MW="1" if mw else "")
    c = LocalCluster([str(tmp_path)], workers, ps, restarts=restarts, env=env, log=lambda line: None,
                     program=[sys.executable, str(script)])
    try:
        rc = c.start().wait(timeout=120)
    finally:
        c.stop()
    assert all(p.poll() is not None for p in c.procs.values())  # nothing left running
    return c, rc


def test_launcher_restarts_and_stops_roles(tmp_path):
    c, rc = _fake_cluster(tmp_path / "a", 2, 1, fail="worker1", restarts=1)  # a worker dies, is restarted
    assert rc == 0 and "[cluster] restarting worker:1; it rejoins the run" in c.lines
    assert [l for l in c.lines if l == "[worker:1] up worker1"] == ["[worker:1] up worker1"] * 2
    c, rc = _fake_cluster(tmp_path / "b", 2, 1, fail="worker1")  # no restarts: the other worker goes on
    assert rc == 0 and "[cluster] training continues on 1 worker(s)" in c.lines
    c, rc = _fake_cluster(tmp_path / "c", 1, 2, fail="ps1")  # a lost parameter server fails the run
    assert rc == 3 and "[cluster] ps:1 failed: stopped every process (rerun to resume from the last backup)" in c.lines
    c, rc = _fake_cluster(tmp_path / "d", 1, 1, fail="chief0", restarts=1)  # the whole cluster again
    assert rc == 0 and sum(l.startswith("[cluster] started chief:0") for l in c.lines) == 2
    assert "[cluster] chief:0 failed: restarting the whole cluster; the chief resumes from its backup" in c.lines
    c, rc = _fake_cluster(tmp_path / "e", 2, 0, fail="worker1", mw=True)  # multi-worker: one lost, all stop
    assert rc == 3 and "[cluster] worker:1 failed: stopped every process (rerun to resume from the last backup)" in c.lines
    c, rc = _fake_cluster(tmp_path / "f", 2, 0, mw=True)
    assert rc == 0 and "[cluster] run finished" in c.lines


def test_k8s_manifests_carry_consistent_tf_config():
    from pipelines.k8s.render import manifests

    docs = manifests("fimn", workers=3, ps=2, evaluator=True, image="img", claim="shared",
                     command=["train", "--config", "c.yaml", "--data", "d", "--model-dir", "m"])
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    jobs = [d for d in docs if d["kind"] == "Job"]
    assert len(jobs) == 1 + 3 + 2 + 1 and len(services) == 6
    for job in jobs:
        (container,) = job["spec"]["template"]["spec"]["containers"]
        tfc = json.loads(container["env"][0]["value"])
        assert container["command"][:2] == ["tfmsr", "train"]
        assert {a.split(":")[0] for addrs in tfc["cluster"].values() for a in addrs} == services
        assert job["metadata"]["name"] == f"fimn-{tfc['task']['type']}-{tfc['task']['index']}"
    here = os.path.join(os.path.dirname(__file__), "..", "..", "pipelines", "k8s", "tfjob.yaml")
    tfjob = yaml.safe_load(open(here))
    assert set(tfjob["spec"]["tfReplicaSpecs"]) == {"Chief", "Worker", "PS", "Evaluator"}
    assert tfjob["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["command"][:2] == ["tfmsr", "train"]


# ---------------------------------------------------------------------------------------- real clusters
@pytest.fixture(scope="module")
def local_run(dist_data, tmp_path_factory):
    """The single-process reference: same config, same data."""
    from tfmsr.ranking.train import train

    cfg = load_config(raw=RUN)
    return train(cfg, dist_data, str(tmp_path_factory.mktemp("local") / "run"), log=lambda line: None)


class CliRun:
    """``tfmsr cluster ...`` as a user runs it: its output lines and exit code."""

    def __init__(self, argv):
        self.proc = subprocess.Popen([sys.executable, "-m", "tfmsr.cli", "cluster", *argv], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def wait(self, timeout):
        out, _ = self.proc.communicate(timeout=timeout)
        self.lines = out.splitlines()
        self.pids = [int(m.group(1)) for l in self.lines if (m := re.match(r"\[cluster\] started \S+ \(pid (\d+)", l))]
        return self.proc.returncode

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()  # the launcher stops every role it started, then exits
            self.proc.wait(60)


@pytest.fixture(scope="module")
def ps_run(dist_data, tmp_path_factory):
    """``tfmsr cluster --workers 2 --ps 2 --evaluator -- train ...``: chief + 2 workers + 2 ps + evaluator."""
    tmp = tmp_path_factory.mktemp("ps")
    model_dir = str(tmp / "run")
    c = CliRun(["--workers", "2", "--ps", "2", "--evaluator", "--threads", "1", "--",
                *train_argv(write_config(tmp / "c.yaml"), dist_data, model_dir)])
    try:
        rc = c.wait(timeout=TIMEOUT)
    finally:
        c.stop()
    return c, rc, model_dir


@pytest.fixture(scope="module")
def mw_run(dist_data, clusters, tmp_path_factory):
    """Two MultiWorkerMirroredStrategy workers."""
    tmp = tmp_path_factory.mktemp("mw")
    model_dir = str(tmp / "run")
    c = clusters.start(train_argv(write_config(tmp / "c.yaml"), dist_data, model_dir), workers=2, ps=0)
    rc = c.wait(timeout=TIMEOUT)
    return c, rc, model_dir


def shard_lines(c):
    out = {}
    for line in c.lines:
        m = re.search(r"\[data\] input pipeline (\d+)/(\d+) reads \d+ of (\d+) shards: (.*)$", line)
        if m:
            out[int(m.group(1))] = (int(m.group(2)), int(m.group(3)), m.group(4).split(", "))
    return out


@pytest.mark.slow
def test_ps_cluster_trains_close_to_single_process(ps_run, local_run, dist_data):
    c, rc, model_dir = ps_run
    finished(c, rc)
    prefixes = {"[cluster]", "[chief:0]", "[worker:0]", "[worker:1]", "[ps:0]", "[ps:1]", "[evaluator:0]"}
    assert prefixes <= {line.split(" ", 1)[0] for line in c.lines}  # every role's log, prefixed
    summary = json.load(open(os.path.join(model_dir, "history.json")))
    # the optimizer steps: the 2 x 125 planned, plus one per batch re-read at the last epoch's end (64 rows each)
    assert summary["steps"] - summary["replayed_rows"] // 64 == local_run["steps"] == 2 * 125
    assert summary["best_val_auc"] > 0.65 and local_run["best_val_auc"] > 0.65
    assert abs(summary["best_val_auc"] - local_run["best_val_auc"]) < AUC_TOLERANCE, (summary["best_val_auc"],
                                                                                       local_run["best_val_auc"])
    # the chief's final weights load in a plain process: evaluate them like a local run
    from tfmsr.ranking.evaluate import evaluate

    res = evaluate(model_dir, dist_data, "valid", out=os.path.join(model_dir, "valid.json"))
    assert res["auc"] == pytest.approx(summary["best_val_auc"], abs=1e-6)
    assert not os.path.exists(os.path.join(model_dir, "backup"))


@pytest.mark.slow
def test_ps_largest_table_is_split_across_both_parameter_servers(ps_run, dist_data):
    from tfmsr.features import Schema

    c, rc, model_dir = ps_run
    finished(c, rc)
    sharded = json.load(open(os.path.join(model_dir, "history.json")))["cluster"]["sharded_variables"]
    schema = Schema.load(os.path.join(dist_data, "schema.yaml"))
    owner = max(schema.tables().values(), key=lambda f: (f.hash_buckets or f.vocab_size) * f.dim)
    rows = owner.hash_buckets or owner.vocab_size
    (name,) = [n for n in sharded if n.endswith(f"emb_{owner.name}/embeddings")]
    parts = sharded[name]
    assert [p["part"] for p in parts] == [0, 1]
    assert sum(p["shape"][0] for p in parts) == rows and all(p["shape"][1] == owner.dim for p in parts)
    assert sorted(p["device"].split("/task:")[1][0] for p in parts) == ["0", "1"]
    assert all("/job:ps/" in p["device"] for p in parts)
    # small tables stay whole (at most min_shard_bytes)
    assert not any(n.endswith("emb_scenario/embeddings") for n in sharded)


@pytest.mark.slow
def test_ps_workers_share_one_stream_and_epochs_are_one_pass(ps_run, dist_data):
    c, rc, model_dir = ps_run
    finished(c, rc)
    assert any(l.startswith("[chief:0] [data] tf.data service on the chief at ") for l in c.lines)
    assert not shard_lines(c)  # no worker owns a part of the shards (tfmsr.distribute.shared_input)
    files = sorted(os.listdir(os.path.join(dist_data, "train")))
    epochs = json.load(open(os.path.join(model_dir, "history.json")))["cluster"]["data_epochs"]
    assert [e["examples"] for e in epochs] == [8000, 8000]  # counted in the graph: the split's rows, each epoch
    # rows per shard: the epoch's 8,000 plus the batches re-read at its end (the last epoch's end re-reads every
    # batch a worker fetched and left untrained, so the two passes are complete)
    assert all(sorted(e["shards"]) == files and sum(e["shards"].values()) == 8000 + e.get("replayed_rows", 0)
               for e in epochs), epochs
    # each batch of the one stream went to one worker: every shard once per pass, up to the batch each
    # worker had fetched ahead at an epoch's end (2 workers x 64 rows)
    for f in files:
        assert abs(sum(e["shards"][f] for e in epochs) - 2 * 2000) <= 2 * 64, [e["shards"] for e in epochs]


@pytest.mark.slow
def test_evaluator_scores_each_checkpoint_per_scenario(ps_run):
    c, rc, model_dir = ps_run
    finished(c, rc)
    names = sorted(os.listdir(os.path.join(model_dir, "eval")))
    assert names == ["valid-epoch-1.json", "valid-epoch-2.json", "valid-final.json"], names
    final = json.load(open(os.path.join(model_dir, "eval", "valid-final.json")))
    summary = json.load(open(os.path.join(model_dir, "history.json")))
    # the final step: the 2 x 125 planned, plus one per batch re-read at the last epoch's end (64 rows each)
    assert set(final["scenarios"]) == {"s0", "s1", "s2", "s3", "s4"} and final["step"] == summary["steps"]
    assert summary["steps"] - summary["replayed_rows"] // 64 == 250
    assert final["auc"] == pytest.approx(summary["best_val_auc"], abs=1e-6)  # same weights, same rows
    assert os.listdir(os.path.join(model_dir, "tb", "evaluator"))


@pytest.mark.slow
def test_multi_worker_mirrored_trains_close_to_single_process(mw_run, local_run, dist_data):
    c, rc, model_dir = mw_run
    finished(c, rc)
    summary = json.load(open(os.path.join(model_dir, "history.json")))
    assert summary["steps"] == 250 and summary["cluster"]["kind"] == "multi_worker"
    assert abs(summary["best_val_auc"] - local_run["best_val_auc"]) < AUC_TOLERANCE, (summary["best_val_auc"],
                                                                                       local_run["best_val_auc"])
    # each worker logged its own pipeline: disjoint halves; a global batch of 64 is 32 rows from each, so
    # an epoch of 125 steps reads each worker's 4,000 rows exactly once
    split = shard_lines(c)
    files = sorted(os.listdir(os.path.join(dist_data, "train")))
    assert sorted(split[0][2] + split[1][2]) == files and not set(split[0][2]) & set(split[1][2])
    assert [l for l in c.lines if l.startswith("[worker:0] [data] input pipeline 0/2")]
    assert [l for l in c.lines if l.startswith("[worker:1] [data] input pipeline 1/2")]
    assert [e["examples"] for e in summary["cluster"]["data_epochs"]] == [8000, 8000]
    assert not [d for d, _, _ in os.walk(model_dir) if "workertemp" in d]  # worker 1 wrote to temp dirs only


@pytest.mark.slow
def test_killed_worker_is_tolerated(dist_data, clusters, tmp_path):
    base = json.loads(json.dumps(RUN))
    base["data"]["batch_size"] = 32  # 250 steps per epoch: time to kill a worker mid-run
    config = write_config(tmp_path / "c.yaml", base, epochs=1, validate=False)
    model_dir = str(tmp_path / "run")
    c = clusters.start(train_argv(config, dist_data, model_dir), workers=2, ps=1)
    wait_for_step(c, 50)
    os.kill(c.pid("worker", 1), signal.SIGKILL)
    rc = c.wait(timeout=TIMEOUT)
    finished(c, rc)
    assert "[cluster] worker:1 exited with code -9" in c.lines
    assert "[cluster] training continues on 1 worker(s)" in c.lines
    summary = summary_line(c, "[chief:0] ")
    # at-least-once: a step in flight on the killed worker may have been applied before it was re-run; the
    # batches it fetched and never trained are re-read at the epoch's end, one make-up step each
    with open(os.path.join(model_dir, "history.json")) as fh:
        passes = json.load(fh)["passes"]
    made_up = sum(len(p["replayed_batches"]) for p in passes)
    assert summary["replayed_rows"] == 32 * made_up and summary["lost_rows"] + summary["ahead_rows"] >= 32 * made_up
    assert 250 <= summary["steps"] - made_up <= 252
    assert all(p["untrained_rows"] == 0 for p in passes), passes
    assert os.path.exists(os.path.join(model_dir, "final"))


@pytest.mark.slow
def test_killed_chief_resumes_from_its_checkpoint_step(dist_data, clusters, tmp_path):
    base = json.loads(json.dumps(RUN))
    base["data"]["batch_size"] = 32
    # 120 of the epoch's 250 steps: the kill comes at the first backup (step 40); the rerun trains the rest
    config = write_config(tmp_path / "c.yaml", base, epochs=1, steps_per_epoch=120, validate=False, checkpoint_every=40)
    model_dir = str(tmp_path / "run")
    argv = train_argv(config, dist_data, model_dir)
    c = clusters.start(argv, workers=1, ps=2)
    backup = os.path.join(model_dir, "backup", "chief")
    end = time.time() + TIMEOUT
    while tf.train.latest_checkpoint(backup) is None and c.procs[("chief", 0)].poll() is None and time.time() < end:
        time.sleep(0.1)
    os.kill(c.pid("chief"), signal.SIGKILL)
    rc = c.wait(timeout=TIMEOUT)
    assert rc == -signal.SIGKILL and "[cluster] chief:0 failed: stopped every process (rerun to resume from the " \
                                         "last backup)" in c.lines
    assert all(p.poll() is not None for p in c.procs.values())
    ckpt = tf.train.latest_checkpoint(backup)
    batch = int(tf.train.load_variable(ckpt, "ckpt_saved_batch/.ATTRIBUTES/VARIABLE_VALUE"))
    assert int(tf.train.load_variable(ckpt, "ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE")) == 0
    assert batch + 1 >= 40 and (batch + 1) % 40 == 0 and batch + 1 < 120
    assert not os.path.exists(os.path.join(model_dir, "final"))

    again = clusters.start(argv, workers=1, ps=2)
    finished(again, again.wait(timeout=TIMEOUT))
    assert any(f"resuming from backup at global step {batch + 1} (epoch 1, step {batch + 1} of 120)" in l
               for l in again.lines), "\n".join(again.lines[-40:])
    summary = summary_line(again, "[chief:0] ")
    assert summary["resumed_from_step"] == batch + 1
    assert summary["steps"] == 120  # the optimizer step continued from the backup, nothing re-run


# ---------------------------------------------------------------------------------------- every model
LOOP = textwrap.dedent('''
    """Train every registered model a few steps in this cluster role; the chief writes results.json."""
    import json, os, sys
    import tfmsr  # noqa: F401
    from tfmsr.ranking.config import load_config
    from tfmsr.core.errors import ConfigError
    from tfmsr.ranking.models import available
    from tfmsr.ranking.train import train

    data, out, strategy = sys.argv[1:4]
    results = {}
    for name in available():
        cfg = load_config(raw={"model": {"name": name}, "data": {"batch_size": 32},
                               "train": {"epochs": 1, "steps_per_epoch": 3, "validate": False,
                                         "early_stopping_patience": 0, "log_every": 1000, "checkpoint_every": 1000},
                               "cluster": {"strategy": strategy, "min_shard_bytes": 2048}})
        try:  # a ps / worker of ParameterServerStrategy serves here and never returns
            s = train(cfg, data, os.path.join(out, name), log=lambda line: None)
            results[name] = {"ok": True, "steps": s["steps"], "kind": s["cluster"]["kind"],
                             "sharded": sorted(s["cluster"]["sharded_variables"])}
        except ConfigError as e:
            results[name] = {"ok": False, "unsupported": str(e)}
        except Exception as e:  # reported per model, the loop goes on
            results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:3000]}
        print("MODEL", name, json.dumps(results[name]), flush=True)
    tmp = os.path.join(out, f"results.json.{os.getpid()}.tmp")  # every MultiWorkerMirrored worker writes
    with open(tmp, "w") as fh:
        json.dump(results, fh)
    os.replace(tmp, os.path.join(out, "results.json"))
''')


LOOPS = {"ps_models": ("ps", 1, 2), "mw_models": ("multi_worker", 2, 0)}  # fixture -> strategy, workers, ps


def _start_loop(strategy, workers, ps, dist_data, clusters, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"models_{strategy}")
    script = tmp / "loop.py"
    script.write_text(LOOP)
    (tmp / "runs").mkdir()
    return tmp, clusters.start([dist_data, str(tmp / "runs"), strategy], workers, ps,
                               program=[sys.executable, str(script)])


def _loop_results(tmp, c):
    rc = c.wait(timeout=3 * TIMEOUT)
    (tmp / "cluster.log").write_text("\n".join(c.lines))
    assert rc == 0, "\n".join(c.lines[-80:])
    return json.load(open(tmp / "runs" / "results.json"))


@pytest.fixture(scope="module")
def model_loops(dist_data, clusters, tmp_path_factory, request):
    """The every-model loops the selected tests need, their clusters started together (a model's turn is
    mostly tracing in one or two processes, so the two clusters overlap on the cores): fixture -> running loop."""
    wanted = sorted({f for item in request.session.items for f in item.fixturenames} & set(LOOPS))
    return {f: _start_loop(*LOOPS[f], dist_data, clusters, tmp_path_factory) for f in wanted}


@pytest.fixture(scope="module")
def ps_models(model_loops):
    """One ParameterServerStrategy cluster (chief + 1 worker + 2 ps) trains every model in turn."""
    return _loop_results(*model_loops["ps_models"])


@pytest.fixture(scope="module")
def mw_models(model_loops):
    """Two MultiWorkerMirroredStrategy workers train every model in turn."""
    return _loop_results(*model_loops["mw_models"])


def _check(results, name, kind):
    res = results[name]
    if "unsupported" in res:  # the model says why it cannot train under this strategy
        pytest.skip(res["unsupported"])
    assert res["ok"], res.get("error")
    assert res["steps"] == 3 and res["kind"] == kind


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(available()))
def test_every_model_trains_under_parameter_servers(ps_models, name):
    _check(ps_models, name, "ps")
    assert ps_models[name]["sharded"], "no table was split across the two parameter servers"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(available()))
def test_every_model_trains_under_multi_worker_mirrored(mw_models, name):
    _check(mw_models, name, "multi_worker")
