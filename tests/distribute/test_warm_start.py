"""Warm start day over day (tfmsr.distribute.warm_start): a run on DAY2 starts from RUN1 (trained on DAY1).

DAY1 is the small raw-valued dataset of ``raw_dataset`` (string user ids, int64 item ids beyond 2^32, their
vocabularies in shuffled order). DAY2 holds the same rows with grown vocabularies that are **not** a prefix
of DAY1's (every raw value moved to another line, new values in between), so only a copy by raw value
gives RUN1's scores back; its id-only table ``category`` grows from 6 to 9 rows (prefix kept). The real
day-over-day path (``tfmsr data ingest --vocab-from`` on two days of ml-latest-small) is tested too.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import yaml
from conftest import datasets_dir, quick_config
from raw_dataset import read_vocab, write_raw_dataset, write_vocab

from tfmsr.data.pipeline import split_files
from tfmsr.distribute.warm_start import WarmStartError, plan_ranking, sample_batch, start_ranking
from tfmsr.features import Schema
from tfmsr.ranking.evaluate import Predictor, load_trained
from tfmsr.ranking.models import build
from tfmsr.ranking.train import compile_model, train

NEW_USERS, NEW_ITEMS = [f"new-user-{k}" for k in range(10)], [2 * 10 ** 12 + k for k in range(8)]


def grow_dataset(day1, out, seed=5, category_rows=9, drop_items=0):
    """DAY2: DAY1's shards, vocabularies grown and reshuffled (not a prefix); ``drop_items`` old items gone."""
    shutil.copytree(day1, out)
    rng = np.random.default_rng(seed)
    users = list(rng.permutation(read_vocab(day1, "user_id", str) + NEW_USERS))
    items = list(rng.permutation(read_vocab(day1, "item_id", int)[drop_items:] + NEW_ITEMS))
    write_vocab(os.path.join(out, "vocab", "user_id.txt"), users)
    write_vocab(os.path.join(out, "vocab", "item_id.txt"), items)
    schema = Schema.load(os.path.join(out, "schema.yaml"))
    schema.feature("user_id").vocab_size, schema.feature("item_id").vocab_size = len(users) + 1, len(items) + 1
    schema.feature("category").vocab_size = category_rows
    schema.save(os.path.join(out, "schema.yaml"))
    return str(out)


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    base = tmp_path_factory.mktemp("days")
    day1 = str(base / "day1")
    write_raw_dataset(day1)
    return day1, grow_dataset(day1, base / "day2")


def quick(model="dnn", params=None, **train_kw):
    return quick_config(model, params, steps_per_epoch=train_kw.pop("steps_per_epoch", 4), **train_kw)


@pytest.fixture(scope="module")
def run1(days, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run1") / "run1")
    train(quick(), days[0], out, log=lambda m: None)
    return out


def warm_model(cfg, run1, day2, out_dir, log=lambda m: None):
    """A DAY2 model warm-started from RUN1 exactly as the trainer does it, before any training step."""
    schema = Schema.load(os.path.join(day2, "schema.yaml"))
    model = compile_model(build(cfg["model"]["name"], schema, cfg["model"]["params"]), cfg)
    os.makedirs(out_dir, exist_ok=True)
    plan = plan_ranking(run1, cfg, schema, out_dir)
    return model, schema, start_ranking(plan, model, schema, split_files(day2, "train"), out_dir, log)


# ---------------------------------------------------------------------------------------------- exact scores
@pytest.mark.parametrize("model", ["dnn", "wdl", "din"])
def test_warm_started_model_scores_day1_rows_exactly_as_run1(days, tmp_path, model):
    """Before any step, the DAY2 model gives every DAY1 row RUN1's probability (rows whose category id was
    out of range on DAY1 are left out: DAY2's grown id-only table makes them real ids)."""
    day1, day2 = days
    assert read_vocab(day2, "user_id", str)[:40] != read_vocab(day1, "user_id", str)  # not a prefix
    cfg = quick(model)
    run = str(tmp_path / "run1")
    train(cfg, day1, run, log=lambda m: None)
    lines = []
    m2, s2, report = warm_model(cfg, run, day2, str(tmp_path / "run2"), lines.append)
    m1, s1, _ = load_trained(run)
    p1 = Predictor(split_files(day1, "valid"), s1, keep=["category"]).run(m1)
    p2 = Predictor(split_files(day2, "valid"), s2).run(m2)
    same = (p1["category"] >= 0) & (p1["category"] < 6)
    assert same.mean() > 0.8
    np.testing.assert_array_equal(p1["prob"][same], p2["prob"][same])
    assert report["tables"]["user_id"] == {"policy": "vocab", "rows": [41, 51], "kept": 41, "initialised": 10,
                                           "variables": report["tables"]["user_id"]["variables"]}
    assert report["tables"]["item_id"]["rows"] == [31, 39] and report["tables"]["item_id"]["kept"] == 31
    assert report["tables"]["category"]["policy"] == "ids" and report["tables"]["category"]["initialised"] == 3
    assert report["optimizer_slots"]["grown"] > 0 and report["optimizer_slots"]["carried"] > 0
    assert any("table user_id (vocab): 41 -> 51 rows, 41 kept from RUN1, 10 initialised" in l for l in lines)
    if model == "wdl":  # the wide weights of item_id (one per id, and scenario x id crosses) grew too
        assert report["tables"]["item_id"]["variables"] == 3


def test_rows_move_by_raw_value_and_new_rows_keep_their_fresh_init(days, run1, tmp_path):
    day1, day2 = days
    m2, _, _ = warm_model(quick(), run1, day2, str(tmp_path / "run2"))
    m1, s1, _ = load_trained(run1)
    m1(sample_batch(split_files(day1, "valid"), s1))              # restores the deferred checkpoint values
    old = m1.embedding.tables["user_id"].embeddings.numpy()
    new = m2.embedding.tables["user_id"].embeddings.numpy()
    ids2 = {v: n + 1 for n, v in enumerate(read_vocab(day2, "user_id", str))}
    for n, v in enumerate(read_vocab(day1, "user_id", str), 1):
        np.testing.assert_array_equal(new[ids2[v]], old[n])
    np.testing.assert_array_equal(new[0], old[0])                     # padding / out-of-vocabulary row
    fresh = new[[ids2[v] for v in NEW_USERS]]
    assert np.abs(fresh).max() > 0 and not any(np.allclose(f, o) for f in fresh for o in old)
    cat_old, cat_new = (m.embedding.tables["category"].embeddings.numpy() for m in (m1, m2))
    np.testing.assert_array_equal(cat_new[:6], cat_old)               # id-only table: prefix kept


# ---------------------------------------------------------------------------------------------- the command
def test_train_warm_start_command_reports_in_history(days, run1, tmp_path):
    from tfmsr.cli import main

    day1, day2 = days
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump({"model": {"name": "dnn"}, "data": {"batch_size": 256},
                                        "train": {"epochs": 2, "steps_per_epoch": 3, "early_stopping_patience": 0,
                                                  "log_every": 1000}}))
    run2 = str(tmp_path / "run2")
    assert main(["train", "--config", str(cfg_path), "--data", day2, "--model-dir", run2, "--warm-start", run1]) == 0
    hist = json.load(open(os.path.join(run2, "history.json")))
    assert hist["steps"] == 6                                   # the step counter started afresh
    ws = hist["warm_start"]
    assert ws["from"] == os.path.abspath(run1) and ws["tables"]["user_id"]["kept"] == 41
    assert ws["variables"]["grown"] == 3 and ws == json.load(open(os.path.join(run2, "warm_start.json")))


def test_incompatible_run1_is_refused_naming_every_difference(days, run1, tmp_path):
    day1, _ = days
    day3 = grow_dataset(day1, tmp_path / "day3", drop_items=3)
    schema = Schema.load(os.path.join(day3, "schema.yaml"))
    schema.features = [f for f in schema.features if f.name != "city"]
    schema.feature("category").vocab_size = 4
    schema.save(os.path.join(day3, "schema.yaml"))
    run3 = str(tmp_path / "run3")
    with pytest.raises(WarmStartError) as e:
        train(quick("dnn", {"hidden": [32]}), day3, run3, log=lambda m: None, warm_start=run1)
    msg = str(e.value)
    assert f"--warm-start {run1}: cannot start this run from it" in msg
    for part in ("model param 'hidden': [256, 128, 64] -> [32]", "feature 'city' removed",
                 "table 'item_id': DAY2's vocabulary is not a superset of RUN1's: 3 of 30 raw values are gone",
                 "table 'category': id-only table shrank from 6 to 4 rows"):
        assert part in msg
    assert not os.path.exists(run3)                             # refused before the run dir is written
    with pytest.raises(WarmStartError, match=r"model 'dnn' -> 'wdl'"):
        train(quick("wdl"), days[1], run3, log=lambda m: None, warm_start=run1)


def test_retrieval_warm_start_and_the_kind_check(days, run1, tmp_path):
    from tfmsr.retrieval.config import load_config
    from tfmsr.retrieval.train import train as train_retrieval

    day1, day2 = days
    cfg = load_config(raw={"model": {"name": "dssm"}, "data": {"batch_size": 128}, "train": {"epochs": 1}})
    r1, r2 = str(tmp_path / "r1"), str(tmp_path / "r2")
    train_retrieval(cfg, day1, r1, log=lambda m: None)
    h = train_retrieval(cfg, day2, r2, log=lambda m: None, warm_start=r1)["history"]["all"]
    assert h["warm_start"]["tables"]["user_id"]["rows"] == [41, 51] and h["warm_start"]["variables"]["grown"] == 3
    assert "optimizer" in h["warm_start"]["optimizer_slots"]["note"]
    with pytest.raises(WarmStartError, match="run kind ranking -> retrieval"):
        train_retrieval(cfg, day2, str(tmp_path / "r3"), log=lambda m: None, warm_start=run1)


# ---------------------------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_killed_warm_start_run_resumes_from_its_own_backup(days, run1, tmp_path):
    """Kill RUN2 after its first backup, take RUN1 away, re-run the same command: it continues from its own
    global step (RUN1 cannot have been read: it no longer exists) and finishes."""
    day1, day2 = days
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump({"model": {"name": "dnn"}, "data": {"batch_size": 32},
                                        "train": {"epochs": 2, "steps_per_epoch": 100, "checkpoint_every": 20,
                                                  "early_stopping_patience": 0, "log_every": 100}}))
    moved = str(tmp_path / "run1")
    shutil.copytree(run1, moved)
    run2 = str(tmp_path / "run2")
    argv = [sys.executable, "-m", "tfmsr.cli", "train", "--config", str(cfg_path), "--data", day2,
            "--model-dir", run2, "--warm-start", moved]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    backup = os.path.join(run2, "backup", "chief", "checkpoint")
    deadline = time.time() + 900  # a start-up on a loaded machine
    while not os.path.exists(backup) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before its first backup: " + proc.stdout.read()[-2000:]
    assert os.path.exists(backup), f"no backup within 900 s: {backup}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(run2, "final"))
    shutil.rmtree(moved)                                        # RUN1 is gone: re-reading it would fail
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["resumed_from_step"] > 0 and out["steps"] == 200
    assert "RUN1 (" + moved + ") is not read again" in done.stdout + done.stderr
    hist = json.load(open(os.path.join(run2, "history.json")))
    assert hist["warm_start"]["from"] == moved and hist["resumed_from_step"] == out["resumed_from_step"]


# ---------------------------------------------------------------------------------------------- real days
def test_vocab_from_keeps_every_old_id_and_the_warm_start_scores_day1_as_run1(tmp_path):
    """Two days of ml-latest-small ingested with `tfmsr data ingest --vocab-from DAY1`: every DAY1 id keeps
    its line, new values are appended; RUN2 warm-started on DAY2 scores DAY1's rows exactly as RUN1."""
    from tfmsr.cli import main

    src = datasets_dir("ml-latest-small")
    ratings = pd.read_csv(os.path.join(src, "ratings.csv")).sort_values("timestamp", kind="stable").head(30_000)
    logs = tmp_path / "logs"
    logs.mkdir()
    ratings.iloc[:15_000].to_csv(logs / "day1.csv", index=False)
    ratings.iloc[15_000:].to_csv(logs / "day2.csv", index=False)
    spec = {"inputs": [{"path": "day1.csv", "columns": {"userId": "int64", "movieId": "int64", "rating": "float64",
                                                        "timestamp": "int64"}}],
            "label": {"rule": "rating >= 4"}, "user": "user_id", "time": "timestamp",
            "features": {"user_id": {"from": "userId", "group": "user"},
                         "item_id": {"from": "movieId", "group": "item", "min_count": 2}},
            "behaviour": {"length": 10, "features": {"hist_item_id": "item_id"}}}
    days = []
    for k in (1, 2):
        spec["inputs"][0]["path"] = f"day{k}.csv"
        (tmp_path / f"d{k}.yaml").write_text(yaml.safe_dump(spec))
        days.append(str(tmp_path / f"day{k}"))
        argv = ["data", "ingest", "--spec", str(tmp_path / f"d{k}.yaml"), "--out", days[-1], "--root", str(logs),
                "--quiet"] + (["--vocab-from", days[0]] if k == 2 else [])
        assert main(argv) == 0
    for table in ("user_id", "item_id"):
        old, new = (read_vocab(d, table, int) for d in days)
        assert new[:len(old)] == old and len(new) > len(old)
    cfg = quick()
    run = str(tmp_path / "run1")
    train(cfg, days[0], run, log=lambda m: None)
    m2, s2, report = warm_model(cfg, run, days[1], str(tmp_path / "run2"))
    m1, s1, _ = load_trained(run)
    p1 = Predictor(split_files(days[0], "test"), s1, keep=["item_id", "hist_item_id"]).run(m1)
    p2 = Predictor(split_files(days[0], "test"), s2).run(m2)
    # rows holding an item out of DAY1's vocabulary (below min_count there) are left out: DAY2 may know it
    known = (p1["item_id"] > 0) & (p1["hist_item_id"] >= 0).all(axis=1)
    assert known.sum() > 300                                    # 37 % of the 1,424 test rows
    np.testing.assert_array_equal(p1["prob"][known], p2["prob"][known])
    assert report["tables"]["user_id"]["initialised"] > 0 and report["tables"]["item_id"]["initialised"] > 0


# ---------------------------------------------------------------------------------------------- next version
def test_export_writes_the_next_version_beside_and_pin_rolls_back(days, run1, tmp_path):
    """RUN1 -> version 1, the warm-started RUN2 -> version 2 of the same export, each with its own vocabulary
    assets and warm-up requests; models.config serves the latest, ``tfmsr serving pin`` version 1 and back.
    In a python without tfmsr, a raw user new on DAY2 is out of vocabulary for version 1 (scored like the
    missing value) and has its own row in version 2."""
    from google.protobuf import text_format
    from raw_serving import raw_requests, serve_fresh
    from tensorflow_serving.config import model_server_config_pb2

    from tfmsr.cli import main
    from tfmsr.core.errors import ConfigError
    from tfmsr.serving.rollback import pin

    day1, day2 = days
    run2, out = str(tmp_path / "run2"), str(tmp_path / "saved_models" / "ctr")
    train(quick(), day2, run2, log=lambda m: None, warm_start=run1)
    for run in (run1, run2):
        assert main(["export", "--model-dir", run, "--out", out]) == 0
    for v, users in ((1, 40), (2, 50)):
        d = os.path.join(out, "all", str(v))
        assert len(open(os.path.join(d, "assets", "user_id.txt")).read().split()) == users
        assert os.path.getsize(os.path.join(d, "assets.extra", "tf_serving_warmup_requests")) > 0

    def policies():
        cfg = text_format.Parse(open(os.path.join(out, "models.config")).read(),
                                model_server_config_pb2.ModelServerConfig())
        return {c.name: list(c.model_version_policy.specific.versions) for c in cfg.model_config_list.config}

    assert policies() == {"ctr_all": [], "ctr_feed": [], "ctr_search": []}        # latest (TF Serving default)
    assert main(["serving", "pin", "--out", out, "--version", "1"]) == 0
    assert policies() == {"ctr_all": [1], "ctr_feed": [1], "ctr_search": [1]}
    assert "    model_version_policy {\n      specific {\n        versions: 1\n      }\n    }\n" in \
        open(os.path.join(out, "models.config")).read()
    before = open(os.path.join(out, "models.config")).read()
    with pytest.raises(ConfigError, match=r"ctr/all: no version 3 to serve \(versions on disk: 1, 2\)"):
        pin(out, 3)
    assert open(os.path.join(out, "models.config")).read() == before
    assert main(["serving", "pin", "--out", out, "--latest"]) == 0 and policies()["ctr_all"] == []
    x, _ = raw_requests(day1, "test", 4)
    x = {c: np.concatenate([v, v]) for c, v in x.items()}          # rows k and k + 4 differ only in the user
    x["user_id"] = np.array([NEW_USERS[0].encode()] * 4 + [b""] * 4, dtype=object)
    got = serve_fresh([(os.path.join(out, "all", str(v)), "serving_default", x) for v in (1, 2)],
                      str(tmp_path / "fresh"))
    p1, p2 = got[0]["prob"].reshape(-1), got[1]["prob"].reshape(-1)
    np.testing.assert_allclose(p1[:4], p1[4:], atol=1e-7)       # version 1: the new user is out of vocabulary
    assert np.abs(p2[:4] - p2[4:]).min() > 1e-6                  # version 2: its own (fresh, trained) row


# ---------------------------------------------------------------------------------------------- PS cluster
@pytest.mark.slow
def test_partitioned_tables_grow_across_parameter_servers(days, run1, tmp_path):
    """`tfmsr cluster --ps 2 -- train --warm-start RUN1` on localhost: the user and item tables are split
    across both parameter servers and grown there by raw value; at a learning rate of 1e-9 the run's final
    weights are the warm-started ones, so DAY1's rows score as RUN1 scores them."""
    day1, day2 = days
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump({"model": {"name": "dnn"}, "data": {"batch_size": 64},
                                        "train": {"epochs": 1, "steps_per_epoch": 2, "learning_rate": 1e-9,
                                                  "early_stopping_patience": 0, "validate": False},
                                        "cluster": {"min_shard_bytes": 1024}}))
    run2 = str(tmp_path / "run2")
    done = subprocess.run([sys.executable, "-m", "tfmsr.cli", "cluster", "--workers", "2", "--ps", "2", "--threads",
                           "1", "--", "train", "--config", str(cfg_path), "--data", day2, "--model-dir", run2,
                           "--warm-start", run1], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    hist = json.load(open(os.path.join(run2, "history.json")))
    assert hist["warm_start"]["tables"]["user_id"]["rows"] == [41, 51]
    parts = {k: v for k, v in hist["cluster"]["sharded_variables"].items() if "emb_user_id" in k}
    assert parts and all(len({p["device"] for p in v}) == 2 for v in parts.values())
    m1, s1, _ = load_trained(run1)
    m2, s2, _ = load_trained(run2)
    p1 = Predictor(split_files(day1, "valid"), s1, keep=["category"]).run(m1)
    p2 = Predictor(split_files(day2, "valid"), s2).run(m2)
    same = (p1["category"] >= 0) & (p1["category"] < 6)
    np.testing.assert_allclose(p1["prob"][same], p2["prob"][same], atol=1e-5)
