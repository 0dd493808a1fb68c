"""Bad input and faults, one at a time, on tiny planted data (issue 29, "Nothing silent").

Every case asserts the message a user sees and that nothing is lost or half-written (no final/ from a
failed run, no run dir from a refused config, no temp files left). Messages (copied from real output;
FILE is the shard, RUN the model dir):

data guards (tfmsr.data.guards, through the parser and read_errors)
  1  NaN numeric value, first shard      FILE: record 37 has a non-finite value (nan) in numeric feature 'price'
                                          (data.non_finite: zero replaces such values by 0, count leaves the example
                                          out; both count them) -- before the run dir is written
  2  +inf numeric value, a later shard   FILE: record 120 has a non-finite value (inf) in numeric feature
                                          'user_activity' ... -- in-graph guard, no final/
  3  data.non_finite: zero               trains; "[data] epoch 1: 1,200 examples read ...; non-finite values 2"; progress
                                          lines "non_finite 2"; history.json / tfmsr train JSON "non_finite": 2
  4  data.non_finite: count              the two examples are left out: 1,198 examples read per epoch, non_finite 2
  5  label 3                             FILE: record 5 has label 'click' = 3.0 (expected 0 or 1)
  6  NaN label                           FILE: record 9 has label 'click' = nan (expected 0 or 1)
  7  scenario 7 of 5 (train)             FILE: record 11 has scenario 7 in field 'scenario' (expected 0..4: s0, s1,
                                          s2, s3, s4)
  8  scenario -1 in the test split       tfmsr evaluate: the same message for the test shard; no metrics.json
  9  NaN numeric in the test split       tfmsr evaluate: FILE: record 3 has a non-finite value (nan) in numeric ...
 10  loss goes non-finite (3e38 values)  tfmsr train exits 2: "tfmsr: error: RUN: the training loss is nan at step N;
                                          training stopped and no final/ was written ..."; no final/
 11  export of that run                  tfmsr export exits 2: "RUN/final: no finished checkpoint (training did not
                                          complete)"; no export folder content
 12  truncated shard                     FILE: not a readable TFRecord file (failed after 289 readable records: ...)
config values (checked before anything is written)
 13  model.params.hidden: "abc"          CFG: model 'dnn': parameter 'hidden' must be a list of integers (like its
                                          default [256, 128, 64]), got 'abc'
 14  model.params.dropout: "high"        CFG: model 'dnn': parameter 'dropout' must be a number (like its default 0.0),
                                          got 'high'
 15  train.seed: abc                     CFG: train.seed must be an integer >= 0, got 'abc'
 16  data.eval_batch_size: -5            CFG: data.eval_batch_size must be a positive integer, got -5
 17  train.early_stopping_patience: abc  CFG: train.early_stopping_patience must be an integer >= 0, got 'abc'
 18  train.validate: maybe               CFG: train.validate must be true or false, got 'maybe'
 19  --set train.seed=abc (CLI)          tfmsr: error: --set train.seed=abc: train.seed must be an integer >= 0, got
                                          'abc' (exit 2, no model dir)
 20  --set train.epoch=2 (unknown key)   --set: unknown key 'train.epoch' (known: ...)
 21  a model's own check (star)          CFG: model 'star': parameter 'normalization' must be partitioned, batch or none
                                          (like its default 'partitioned'), got 'layer' --
                                          raised before the run dir is written
 22  re-run with another config          RUN: holds an unfinished run with a different config (train.learning_rate:
                                          0.001 -> 0.01); resume it with the same config and data, or pass --overwrite
 23  schema numeric std: abc / mean: xyz SCHEMA: feature 'price': std must be a finite number, got 'abc' (mean: the same)
resume, accounting, temp files, outputs
 24  resume restores the training state  a run interrupted in epoch 3 of 4 resumes with "[resume] restored 2 epoch(s)
                                          of history, best val_auc ... (epoch E)"; history.json holds 4 epochs,
                                          best_val_auc = max over all 4 epochs, best/ holds that epoch, early-stopping
                                          wait carried over; examples/s counted from the first step
 25  best/ is never replaced by a worse epoch after a resume (RunState + EpochCheckpoint on a real model)
 26  a killed export's temp dir          the next export removes OUT/.tmp-export-1-<dead pid>; a live pid's is kept
 27  score into a missing folder         the folder is created; a killed score's OUT.tmp-<dead pid> is removed
 28  score a NaN numeric row             counted in "non_finite" and left unscored (null prob), the rest scored
 29  evaluate --predictions              x.parquet is Parquet, x.csv is CSV; x.txt: "--predictions x.txt: unknown
                                          format '.txt' (expected a file ending in .parquet or .csv)" before any write
 30  a PS worker SIGKILLed, not restarted (slow; a real localhost cluster, 2 workers + 1 ps), every row trained
     once: "[data] epoch 2: 4,000 examples read (...); steps per worker [130, 0] -- worker:1 ran no step this
     epoch (lost?): the others took its share of the shared stream; 5 batch(es), 160 rows, fetched by a lost
     worker and never trained (global batches [20, 24, 26, 28, 30]); 5 batch(es), 160 rows, re-read by the
     survivors in as many make-up steps (11.1 s; in this epoch's rows per shard, not in its examples; they
     advance the optimizer's step count, not the epoch's step plan) (global batches [20, 24, 26, 28, 30])";
     "[data] pass 1 over the train split (4,000 rows): 3,840 rows trained + 160 lost with a worker, re-read by
     the survivors (batches [20, 24, 26, 28, 30]) + 0 fetched, untrained at the end (batches [])"; a step the
     dead worker began (read its batch) but could not report: "4,032 examples read ... -- +32 against the plan; ...; 1
     step(s) run again: ..."; each full pass = trained + re-read rows, none twice; rows per shard in the graph
     = those of the first N batches of the same seeded stream, rebuilt (N = batches trained)
 30b worker 1 SIGKILLed in epoch 1, then the chief SIGKILLed in epoch 2, before the make-up (slow; the same
     cluster, rerun): backup/ledger-<step>.json beside the backup checkpoint; the rerun says "[data] ledger
     restored from the backup at stream batch 125: 0 batch(es) lost with a worker and 0 re-read before the
     restart; 5 fetched and untrained when the chief stopped, lost with its job (global batches [29, 31, 33,
     35, 36]); 5 to re-read at this epoch's end (...)", re-reads them at epoch 2's end ("8 batch(es), 256
     rows, re-read by the survivors in as many make-up steps (14.2 s; ...) (global batches [29, 31, 33, 35,
     36, 245, 247, 250])") and "[data] pass 1 over the train split (4,000 rows): 3,840 rows trained + 160 lost
     with a worker, re-read by the survivors (batches [29, 31, 33, 35, 36]) + 0 fetched, untrained at the end
     (batches [])", pass 1's steps run before the restart; the batches trained past the backup and again
     after it are said: "pass 2 ...; 5 batch(es) trained twice"
 31  a servable given a NaN numeric      InvalidArgumentError "tfmsr guard: non-finite value in numeric feature
                                          'price'; first offending value: [nan]" (fresh process, no tfmsr)
retrieval configs (tfmsr.retrieval.config: every value checked against its default's kind before anything is written)
 32  pretrain.enabled: yes, train.seed: abc, eval.k: 0, pretrain.learning_rate: fast, pretrain.sides: user,
     eval.split: 5, train.mode: both, model.params.gamma: abc
                                          CFG: pretrain.enabled must be true or false, got 'yes' / ... / pretrain.sides
                                          must be a non-empty list of user, item, got 'user' / eval.split must be a
                                          non-empty string, got 5 / train.mode 'both' (expected one of mix, single) /
                                          retrieval model 'dssm': parameter 'gamma' must be a number (like its default
                                          10.0), got 'abc'; 32b: every key of DEFAULTS has a check (KINDS)
 33  --set eval.k=-1 (CLI)               tfmsr: error: --set eval.k=-1: eval.k must be a positive integer, got -1
                                          (exit 2, no model dir); --set pretrain.sides=[user, x] / model.params.hidden=abc
                                          / an unknown key name --set
 34  a retrieval model's own check       retrieval model 'sass': gate 'product' with s0_init 'zeros': ... --
                                          raised before the run dir is written
 35  re-run of a finished retrieval run  RUN: holds a finished run with a different config (train.epochs: 1 -> 3);
                                          pass --overwrite to retrain (the same config: "of the same config and data")
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import yaml

from tfmsr.core.errors import ConfigError
from tfmsr.data.pipeline import DataError
from tfmsr.ranking.config import load_config

from conftest import planted

TFMSR = [sys.executable, "-m", "tfmsr.cli"]
QUIET = dict(log=lambda line: None)


# ---------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """1,500 planted rows: train 1,200 in 3 shards of 400, valid 150, test 150."""
    return planted(tmp_path_factory, "tiny", rows=1500, users=100, items=80, categories=10, brands=20,
                   rows_per_shard=400)


def copy_of(tiny, tmp_path, name="data"):
    dst = str(tmp_path / name)
    shutil.copytree(tiny, dst)
    return dst


def shard(data, split, i=0):
    return sorted(glob.glob(os.path.join(data, split, "*.tfrecord*")))[i]


def plant(path, row, name, value):
    """Rewrite one value of record ``row`` of the shard ``path`` (a real TFRecord written again)."""
    recs = [bytes(r.numpy()) for r in tf.data.TFRecordDataset(path)]
    ex = tf.train.Example.FromString(recs[row])
    feat = ex.features.feature[name]
    getattr(feat, feat.WhichOneof("kind")).value[0] = value
    recs[row] = ex.SerializeToString()
    with tf.io.TFRecordWriter(path) as w:
        for r in recs:
            w.write(r)


def config(**sections):
    raw = {"model": {"name": "dnn", "params": {"hidden": [8]}}, "data": {"batch_size": 128},
           "train": {"epochs": 1, "log_every": 1000, "checkpoint_every": 1000, "early_stopping_patience": 0}}
    for section, values in sections.items():
        raw[section].update(values)
    return raw


def train_raw(raw, data, model_dir, **kw):
    from tfmsr.ranking.train import train

    return train(load_config(raw=raw), data, str(model_dir), **{**QUIET, **kw})


def cli(*args, cwd=None):
    r = subprocess.run(TFMSR + [str(a) for a in args], capture_output=True, text=True, cwd=cwd)
    return r.returncode, r.stdout, r.stderr


def no_temp_left(*dirs):
    for d in dirs:
        left = [os.path.join(root, n) for root, ds, fs in os.walk(d) for n in ds + fs if ".tmp-" in n]
        assert not left, left


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """One finished dnn run on the tiny data (export, score and evaluate cases)."""
    model_dir = str(tmp_path_factory.mktemp("trained") / "run")
    train_raw(config(), tiny, model_dir)
    return model_dir


# ---------------------------------------------------------------------------------------- data guards
def test_01_nan_numeric_in_first_shard_stops_before_the_run_dir(tiny, tmp_path):
    data = copy_of(tiny, tmp_path)
    plant(shard(data, "train", 0), 37, "price", float("nan"))
    with pytest.raises(DataError) as e:
        train_raw(config(), data, tmp_path / "run")
    assert str(e.value) == (f"{shard(data, 'train', 0)}: record 37 has a non-finite value (nan) in numeric feature "
                            "'price' (data.non_finite: zero replaces such values by 0, count leaves the example out; "
                            "both count them)")
    assert not os.path.exists(tmp_path / "run")  # pre-flight: nothing written


def test_02_inf_numeric_in_a_later_shard_is_caught_in_the_graph(tiny, tmp_path):
    data = copy_of(tiny, tmp_path)
    plant(shard(data, "train", 2), 120, "user_activity", float("inf"))
    with pytest.raises(DataError, match=r"part-00002.tfrecord: record 120 has a non-finite value \(inf\) in numeric "
                                        r"feature 'user_activity'"):
        train_raw(config(), data, tmp_path / "run")
    assert not os.path.exists(tmp_path / "run" / "final")
    no_temp_left(tmp_path / "run")


@pytest.mark.parametrize("policy,examples", [("zero", 1200), ("count", 1198)])
def test_03_04_non_finite_policies_replace_or_skip_and_count(tiny, tmp_path, policy, examples):
    data = copy_of(tiny, tmp_path)
    plant(shard(data, "train", 1), 10, "price", float("nan"))
    plant(shard(data, "train", 2), 20, "user_activity", float("-inf"))
    lines = []
    raw = config(data={"non_finite": policy}, train={"epochs": 2, "log_every": 5})
    summary = train_raw(raw, data, tmp_path / "run", log=lines.append)
    assert [(e["examples"], e["non_finite"]) for e in summary["data_epochs"]] == [(examples, 2)] * 2
    assert summary["non_finite"] == 4 and summary["examples"] == 2 * examples
    assert np.isfinite(summary["history"]["loss"]).all() and summary["history"]["non_finite"] == [2.0, 2.0]
    assert any(f"[data] epoch 1: {examples:,} examples read (counted in the graph" in l
               and "non-finite values 2;" in l for l in lines), lines
    assert any("  non_finite " in l and " ex/s " in l for l in lines)  # the progress line carries the count
    history = json.load(open(tmp_path / "run" / "history.json"))
    assert history["non_finite"] == 4 and os.path.exists(tmp_path / "run" / "final")


@pytest.mark.parametrize("field,value,message", [
    ("click", 3.0, "has label 'click' = 3.0 (expected 0 or 1)"),
    ("click", float("nan"), "has label 'click' = nan (expected 0 or 1)"),
    ("scenario", 7, "has scenario 7 in field 'scenario' (expected 0..4: s0, s1, s2, s3, s4)"),
])
def test_05_06_07_bad_labels_and_scenarios_name_file_record_field(tiny, tmp_path, field, value, message):
    data = copy_of(tiny, tmp_path)
    plant(shard(data, "train", 0), 11, field, value)
    with pytest.raises(DataError) as e:
        train_raw(config(), data, tmp_path / "run")
    assert str(e.value) == f"{shard(data, 'train', 0)}: record 11 {message}"
    assert not os.path.exists(tmp_path / "run")


def test_07b_bad_scenario_in_a_later_shard_stops_training_with_the_record(tiny, tmp_path):
    data = copy_of(tiny, tmp_path)
    plant(shard(data, "train", 1), 399, "scenario", 5)
    with pytest.raises(DataError, match=r"part-00001.tfrecord: record 399 has scenario 5 in field 'scenario'"):
        train_raw(config(), data, tmp_path / "run")
    assert not os.path.exists(tmp_path / "run" / "final")


@pytest.mark.parametrize("field,value,message", [
    ("scenario", -1, "record 3 has scenario -1 in field 'scenario' (expected 0..4: s0, s1, s2, s3, s4)"),
    ("price", float("nan"), "record 3 has a non-finite value (nan) in numeric feature 'price'"),
])
def test_08_09_evaluate_names_the_bad_test_record(tiny, trained, tmp_path, field, value, message):
    data = copy_of(tiny, tmp_path)
    plant(shard(data, "test"), 3, field, value)
    out = tmp_path / "metrics.json"
    rc, _, err = cli("evaluate", "--model-dir", trained, "--data", data, "--out", out)
    assert rc == 2 and err.strip().splitlines()[-1].startswith(f"tfmsr: error: {shard(data, 'test')}: {message}"), err
    assert not os.path.exists(out)


def test_10_11_diverged_loss_stops_without_final_and_export_refuses(tiny, tmp_path):
    data = copy_of(tiny, tmp_path)
    for row in range(0, 400, 9):  # finite, but they overflow the first layer: inf - inf = NaN
        plant(shard(data, "train", 1), row, "price", 3e38)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config(train={"epochs": 1, "checkpoint_every": 2})))
    rc, out, err = cli("train", "--config", cfg, "--data", data, "--model-dir", tmp_path / "run")
    last = err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith(f"tfmsr: error: {tmp_path / 'run'}: the training loss is nan at step "), err
    assert "training stopped and no final/ was written" in last
    assert not os.path.exists(tmp_path / "run" / "final") and not out.strip()
    rc, out, err = cli("export", "--model-dir", tmp_path / "run", "--out", tmp_path / "export")
    assert rc == 2 and f"{tmp_path / 'run'}/final: no finished checkpoint (training did not complete)" in err
    assert not glob.glob(str(tmp_path / "export" / "*" / "*"))
    no_temp_left(tmp_path / "run", tmp_path)


def test_12_truncated_shard_counts_the_readable_records(tiny, tmp_path):
    from tfmsr.data.pipeline import diagnose
    from tfmsr.features import Schema

    data = copy_of(tiny, tmp_path)
    path = shard(data, "train", 1)
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(int(size * 0.73))
    readable = sum(1 for _ in _records_until_error(path))
    assert 250 < readable < 300
    err = diagnose([path], Schema.load(os.path.join(data, "schema.yaml")))
    assert str(err).startswith(f"{path}: not a readable TFRecord file (failed after {readable} readable records: ")
    with pytest.raises(DataError, match=f"failed after {readable} readable records"):
        train_raw(config(), data, tmp_path / "run")
    assert not os.path.exists(tmp_path / "run" / "final")


def _records_until_error(path):
    it = iter(tf.data.TFRecordDataset(path))
    while True:
        try:
            yield next(it)
        except (StopIteration, tf.errors.DataLossError):
            return


# ---------------------------------------------------------------------------------------- config values
@pytest.mark.parametrize("section,key,value,message", [
    ("model", "hidden", "abc", "model 'dnn': parameter 'hidden' must be a list of integers (like its default "
                               "[256, 128, 64]), got 'abc'"),
    ("model", "dropout", "high", "model 'dnn': parameter 'dropout' must be a number (like its default 0.0), got 'high'"),
    ("train", "seed", "abc", "train.seed must be an integer >= 0, got 'abc'"),
    ("data", "eval_batch_size", -5, "data.eval_batch_size must be a positive integer, got -5"),
    ("train", "early_stopping_patience", "abc", "train.early_stopping_patience must be an integer >= 0, got 'abc'"),
    ("train", "validate", "maybe", "train.validate must be true or false, got 'maybe'"),
])
def test_13_to_18_config_values_are_checked_naming_the_file(tmp_path, section, key, value, message):
    raw = {"model": {"name": "dnn", "params": {}}} if section == "model" else {}
    if section == "model":
        raw["model"]["params"][key] = value
    else:
        raw[section] = {key: value}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert str(e.value) == f"{path}: {message}"


def test_19_20_set_errors_name_set(tiny, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config()))
    rc, out, err = cli("train", "--config", cfg, "--data", tiny, "--model-dir", tmp_path / "run",
                       "--set", "train.seed=abc")
    assert rc == 2 and err.strip().splitlines()[-1] == ("tfmsr: error: --set train.seed=abc: train.seed must be an "
                                                        "integer >= 0, got 'abc'")
    assert not os.path.exists(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^--set: unknown key 'train.epoch' \(known: "):
        load_config(str(cfg), ["train.epoch=2"])
    with pytest.raises(ConfigError, match=r"^--set model.params.hidden=abc: model 'dnn': parameter 'hidden'"):
        load_config(str(cfg), ["model.params.hidden=abc"])


def test_21_a_models_own_check_fails_before_the_run_dir(tiny, tmp_path):
    raw = config()
    raw["model"] = {"name": "star", "params": {"normalization": "layer"}}
    with pytest.raises(ConfigError, match="model 'star': parameter 'normalization' must be partitioned, batch or none"):
        train_raw(raw, tiny, tmp_path / "run")
    assert not os.path.exists(tmp_path / "run")


def test_22_refused_rerun_names_the_key_that_differs(tiny, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.yaml").write_text(yaml.safe_dump({"kind": "ranking", "config": load_config(raw=config()),
                                                  "data": os.path.abspath(tiny)}))
    with pytest.raises(FileExistsError) as e:
        train_raw(config(train={"learning_rate": 0.01}), tiny, run)
    assert str(e.value) == (f"{run}: holds an unfinished run with a different config (train.learning_rate: 0.001 -> "
                            "0.01); resume it with the same config and data, or pass --overwrite to start afresh")


@pytest.mark.parametrize("key,value", [("std", "abc"), ("mean", "xyz"), ("mean", float("nan"))])
def test_23_schema_numeric_statistics_must_be_numbers(tiny, key, value):
    from tfmsr.features import Schema, SchemaError

    raw = yaml.safe_load(open(os.path.join(tiny, "schema.yaml")))
    [f for f in raw["features"] if f["name"] == "price"][0][key] = value
    with pytest.raises(SchemaError) as e:
        Schema.from_dict(raw, source="schema.yaml")
    assert str(e.value) == f"schema.yaml: feature 'price': {key} must be a finite number, got {value!r}"


# ---------------------------------------------------------------------------------------- resume
def test_24_resume_restores_best_history_and_early_stopping(tiny, tmp_path):
    from tfmsr.ranking.train import train

    raw = config(data={"batch_size": 16}, train={"epochs": 4, "checkpoint_every": 10, "early_stopping_patience": 3})
    cfg, run = tmp_path / "c.yaml", tmp_path / "run"
    cfg.write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen(TFMSR + ["train", "--config", str(cfg), "--data", tiny, "--model-dir", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_path = run / "backup" / "state.json"
    while proc.poll() is None and not (state_path.exists() and len(json.load(open(state_path))["epochs"]) >= 2):
        time.sleep(0.02)
    proc.kill()  # SIGKILL in epoch 3: the callbacks' state exists only in backup/state.json
    assert proc.wait() == -9, "training finished before it could be killed"
    state = json.load(open(state_path))
    assert [e["epoch"] for e in state["epochs"]] == [1, 2] and not os.path.exists(run / "final")
    lines = []
    summary = train(load_config(raw=raw), tiny, str(run), log=lines.append)
    skip = summary["resumed_from_step"]  # the backup at the end of epoch 2 (2 x 75 steps) or a little later
    assert 150 <= skip < 225 and skip % 10 == 0
    restored = [l for l in lines if l.startswith("[resume] restored 2 epoch(s) of history")]
    assert restored and f"(epoch {state['best']['epoch']})" in restored[0], lines
    assert f"early-stopping wait {state['early_stopping']['wait']}" in restored[0]
    val = summary["history"]["val_auc"]
    assert len(val) == 4 and val[:2] == [e["val_auc"] for e in state["epochs"]]
    best = int(np.argmax(val)) + 1
    assert summary["best_val_auc"] == max(val) and summary["best_epoch"] == best
    assert os.path.basename(tf.train.latest_checkpoint(str(run / "best"))) == f"best-{best}"
    assert json.load(open(run / "history.json"))["history"]["val_auc"] == val
    assert [e["examples"] for e in summary["data_epochs"]] == [(225 - skip) * 16, 1200]  # what this process read
    assert summary["examples_per_sec"] >= (300 - skip - 1) * 16 / summary["seconds"]  # from the first step on
    assert not os.path.exists(run / "backup")
    no_temp_left(run)


def test_25_best_is_not_replaced_by_a_worse_epoch_after_resume(synth_schema, tmp_path):
    import tf_keras as keras

    from tfmsr.ranking.callbacks import EpochCheckpoint
    from tfmsr.ranking.models import build
    from tfmsr.ranking.resume import RunState

    model = build("dnn", synth_schema, {"hidden": [4]})
    backup = str(tmp_path / "backup")

    def begin(epoch0):
        """One process's callbacks, begun at ``epoch0``: checkpoints, early stopping (patience 3), run state."""
        ckpt = EpochCheckpoint(str(tmp_path))
        stop = keras.callbacks.EarlyStopping("val_auc", mode="max", patience=3)
        state = RunState(backup, epoch0, ckpt, stop)
        for cb in (ckpt, stop, state):
            cb.set_model(model)
            cb.on_train_begin()
        return ckpt, stop, state

    first, stop1, state1 = begin(0)
    for epoch, auc in enumerate([0.70, 0.75]):
        for cb in (first, stop1, state1):
            cb.on_epoch_end(epoch, {"val_auc": auc, "loss": 0.5})
    # the process dies; a new one resumes at epoch 3 (index 2) with fresh callbacks
    again, stop2, state2 = begin(2)
    assert (again.best, state2.best_epoch, stop2.best, stop2.wait) == (0.75, 2, 0.75, 0)
    for cb in (again, stop2, state2):
        cb.on_epoch_end(2, {"val_auc": 0.72, "loss": 0.4})
    assert again.best == 0.75 and again.best_path.endswith("best-2") and stop2.wait == 1
    assert os.path.basename(tf.train.latest_checkpoint(str(tmp_path / "best"))) == "best-2"
    assert state2.history()["val_auc"] == [0.70, 0.75, 0.72]


# ---------------------------------------------------------------------------------------- temp files, outputs
def test_26_a_killed_exports_temp_dir_is_swept_by_the_next_export(trained, tmp_path):
    out = tmp_path / "export"
    dead, live = out / f".tmp-export-1-{dead_pid()}", out / f".tmp-export-1-{os.getppid()}"
    for d in (dead, live):
        (d / "all" / "1").mkdir(parents=True)
    rc, stdout, err = cli("export", "--model-dir", trained, "--out", out)
    assert rc == 0, err
    assert f"removed {dead} (a temp file of process" in err
    assert not dead.exists() and live.exists()  # a live process's temp dir is never touched
    assert json.loads(stdout)["version"] == 1 and (out / "all" / "1" / "saved_model.pb").exists()
    # case 31: the servable refuses a NaN numeric input like the parser does (a fresh process, no tfmsr)
    r = subprocess.run([sys.executable, "-c", SERVE_NAN, str(out / "all" / "1")], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "refused", r.stdout + r.stderr[-2000:]


SERVE_NAN = """
import sys
import tensorflow as tf
fn = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
spec = fn.structured_input_signature[1]
x = {k: tf.zeros([2] + [1] * (len(v.shape) - 1), v.dtype) for k, v in spec.items()}
print(fn(**x)["prob"].shape)
x["price"] = tf.constant([float("nan"), 1.0])
try:
    fn(**x)
except tf.errors.InvalidArgumentError as e:
    assert "tfmsr guard: non-finite value in numeric feature" in e.message and "price" in e.message, e.message
    print("refused")
"""


def test_27_28_score_creates_its_folder_sweeps_temps_and_counts_non_finite(tiny, trained, tmp_path):
    from tfmsr.ranking.export import export
    from tfmsr.serving.scoring import score

    saved = tmp_path / "saved"
    export(trained, str(saved), **QUIET)
    data = copy_of(tiny, tmp_path)
    plant(shard(data, "test"), 4, "price", float("nan"))
    output = tmp_path / "new" / "folder" / "scores.parquet"  # the folder does not exist yet
    stale = tmp_path / "new" / "folder" / f"scores.parquet.tmp-{dead_pid()}"
    lines = []
    summary = score(str(saved), shard(data, "test"), str(output), progress=lines.append)
    assert output.exists() and summary["rows"] == 150 and summary["scored"] == 149 and summary["non_finite"] == 1
    assert summary["first_unscored"] == [{"row": 4, "reason": "non_finite"}]
    import pandas as pd

    prob = pd.read_parquet(output)["prob"]
    assert prob.isna().tolist() == [i == 4 for i in range(150)]
    # a killed score of the same output left its temp file: the next run removes it
    stale.write_text("half a file")
    score(str(saved), shard(data, "test"), str(output), overwrite=True, progress=lines.append)
    assert not stale.exists() and any(f"removed {stale}" in l for l in lines)
    no_temp_left(tmp_path / "new")


@pytest.mark.parametrize("name", ["pred.parquet", "pred.csv", "pred.txt"])
def test_29_evaluate_predictions_format_follows_the_extension(tiny, trained, tmp_path, name):
    import pandas as pd

    from tfmsr.ranking.evaluate import evaluate

    path = str(tmp_path / name)
    if name.endswith(".txt"):
        with pytest.raises(DataError) as e:
            evaluate(trained, tiny, "test", out=str(tmp_path / "m.json"), predictions=path)
        assert str(e.value) == (f"--predictions {path}: unknown format '.txt' (expected a file ending in .parquet "
                                "or .csv)")
        assert os.listdir(tmp_path) == []
        return
    res = evaluate(trained, tiny, "test", out=str(tmp_path / "m.json"), predictions=path)
    frame = pd.read_parquet(path) if name.endswith(".parquet") else pd.read_csv(path)
    assert len(frame) == 150 and res["non_finite"] == 0
    with open(path, "rb") as fh:
        assert (fh.read(4) == b"PAR1") == name.endswith(".parquet")
    no_temp_left(tmp_path)


# ---------------------------------------------------------------------------------------- a lost worker
def ps_run(tmp_path):
    """(data, ``tfmsr train`` argv) of a 2-epoch run on 4 x 1,000 synthetic train rows, batch 32: 125 steps
    an epoch, a progress line every 5 steps, no validation."""
    from tfmsr.data.synth import generate

    data = str(tmp_path / "data")
    generate(data, rows=5000, users=200, items=100, seed=0, rows_per_shard=1000, progress=False)  # train: 4 x 1,000
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config(data={"batch_size": 32}, train={"epochs": 2, "log_every": 5,
                                                                          "validate": False})))
    return data, ["train", "--config", str(cfg), "--data", data, "--model-dir", str(tmp_path / "run")]


def log_match(c, pattern: str, accept=lambda m: True):
    """The first line of the cluster ``c``'s log matching ``pattern`` (and ``accept``), while its chief runs."""
    deadline = time.time() + 900
    while True:
        seen = next((m for l in list(c.lines) if (m := re.search(pattern, l)) and accept(m)), None)
        if seen is not None:
            return seen
        assert time.time() < deadline and c.procs[("chief", 0)].poll() is None, "\n".join(c.lines[-40:])
        time.sleep(0.1)


def kill_worker_while_it_trains(c, epoch: str = r"\d"):
    """SIGKILLs worker 1 of ``c`` while it trains (has fetched batches): once it ran 10 steps in an epoch
    (``epoch``: a pattern) with 25+ steps left (so it dies in the epoch of that line); the progress line."""
    import signal

    seen = log_match(c, rf"epoch ({epoch})/2  step (\d+)/.* worker steps \[\d+, (\d+)\]",
                     lambda m: int(m.group(3)) >= 10 and (int(m.group(2)) - 1) % 125 < 100)
    os.kill(c.pid("worker", 1), signal.SIGKILL)
    return seen


@pytest.mark.slow
def test_30_a_killed_ps_worker_leaves_no_shard_unread(tmp_path):
    """ParameterServerStrategy, 2 workers, worker 1 SIGKILLed while it trains (10 steps into an epoch, as
    the progress line's worker steps show) and not restarted: its share of the shared stream
    (tfmsr.distribute.shared_input) goes to worker 0, and the batches it had fetched and never trained are
    named in the log and trained by make-up steps on the survivor (shared_input.MakeUp, at the last epoch's
    end here, before final/ is written). Counted exactly: every row of each pass over the split
    is trained once (by the stream's steps or a make-up step; none twice); the rows per shard counted in the
    graph equal those of the first N batches of the same seeded stream, rebuilt here, N = the batches
    trained; each epoch's examples = the plan + the steps the coordinator ran again. (With the former
    files[i::W] split, worker 1's 2 shards were not read again: 2 x 1,000 rows short in epoch 2.)"""
    from tfmsr.data.pipeline import make_dataset, split_files
    from tfmsr.distribute.cluster import LocalCluster
    from tfmsr.features import Schema

    data, argv = ps_run(tmp_path)
    with LocalCluster(argv, 2, 1, threads=1, log=lambda line: None) as c:
        c.start()
        seen = kill_worker_while_it_trains(c)
        assert c.wait(timeout=900) == 0, "\n".join(c.lines[-60:])
    assert "[cluster] training continues on 1 worker(s)" in c.lines
    summary = json.load(open(tmp_path / "run" / "history.json"))
    epochs, passes, killed = summary["data_epochs"], summary["passes"], int(seen.group(1))
    assert [e["worker_steps"][1] > 0 for e in epochs] == [e["epoch"] <= killed for e in epochs], epochs
    for e in epochs:  # the plan, plus a step the dead worker began but could not report (run again)
        assert e["examples"] == 4000 + 32 * (sum(e["worker_steps"]) - 125 - len(e["replayed_batches"])), e
    lost = [q for e in epochs for q in e["lost_batches"] + e["ahead_batches"]]
    replayed = [q for e in epochs for q in e["replayed_batches"]]
    assert lost and sorted(replayed) == sorted(set(lost)) == sorted(lost), epochs
    assert summary["replayed_rows"] == summary["lost_rows"] + summary["ahead_rows"] == 32 * len(lost), summary
    assert [p["pass"] for p in passes][:2] == [1, 2], passes
    for p in passes[:2]:  # each pass: every row trained once, by the stream's steps or a make-up step
        assert p["trained_rows"] + p["replayed_rows"] == 4000 and p["untrained_rows"] == 0, p
        assert p["trained_twice"] == 0 and p["replayed_rows"] == p["lost_rows"] + p["ahead_rows"], p
    said = [f"[data] pass {p['pass']} over the train split (4,000 rows): {p['trained_rows']:,} rows trained + "
            for p in passes if p["replayed_batches"]]
    assert said and all(any(t in l and ", re-read by the survivors (batches [" in l for l in c.lines) for t in said), said
    assert not any("rows never trained" in l for l in c.lines), "\n".join(c.lines[-30:])
    assert any(re.search(r"\[data\] epoch 2: .*; \d+ batch\(es\), [\d,]+ rows, re-read by the survivors in as many "
                         r"make-up steps .*\(global batches \[", l) for l in c.lines), "\n".join(c.lines[-30:])
    assert killed == 2 or any("[data] epoch 2: " in l and "worker:1 ran no step this epoch (lost?)" in l for l in c.lines)
    # the rows per shard counted in the graph = those of the first N batches of the same seeded stream
    streams = []
    tf.random.set_seed(0)  # train.seed, set by the trainer before it builds the stream
    make_dataset(split_files(data, "train"), Schema.load(os.path.join(data, "schema.yaml")), 32, training=True,
                 seed=0, shuffle_buffer=20_000, tag_shards=True, service=lambda ds: streams.append(ds) or ds)
    n = sum(p["trained_rows"] + p["replayed_rows"] for p in passes) // 32
    shards = [np.bincount(s.numpy(), minlength=4) for _, s in streams[0].take(n)]
    assert sum(shards[:250]).tolist() == [2000] * 4  # two passes: each shard's 1,000 rows twice
    names = sorted(epochs[0]["shards"])
    assert [sum(e["shards"][k] for e in epochs) for k in names] == sum(shards).tolist(), [e["shards"] for e in epochs]
    assert os.path.exists(tmp_path / "run" / "final")


@pytest.mark.slow
def test_30b_a_killed_chief_re_reads_the_batches_lost_before_its_restart(tmp_path):
    """Worker 1 SIGKILLed in epoch 1 (its fetched batches are holes at that epoch's end, lost only one epoch
    end later), then the chief SIGKILLed in epoch 2, before any make-up: the backup of epoch 1's end holds the
    ledger (backup/ledger-<step>.json: the holes, the rows trained per pass). The rerun (a new cluster, the
    same command) restores it, says so, and re-reads each of those batches once at its epoch end: pass 1 is
    whole (trained + re-read = 4,000 rows) in its history.json, though its steps ran before the restart."""
    import signal

    from tfmsr.distribute.cluster import LocalCluster

    data, argv = ps_run(tmp_path)
    with LocalCluster(argv, 2, 1, threads=1, log=lambda line: None) as c:
        c.start()
        kill_worker_while_it_trains(c, epoch="1")
        log_match(c, r"\[chief:0\] .*epoch 2/2  step \d+/")  # the backup of epoch 1's end is written
        os.kill(c.pid("chief"), signal.SIGKILL)
        assert c.wait(timeout=900) == -signal.SIGKILL, "\n".join(c.lines[-40:])
    assert not any("make-up steps" in l for l in c.lines), "\n".join(c.lines[-40:])
    ledgers = glob.glob(str(tmp_path / "run" / "backup" / "ledger-*.json"))
    assert len(ledgers) == 1, ledgers
    state = json.load(open(ledgers[0]))
    holes = state["holes"]
    assert state["position"] == 125 and holes and max(holes) < 125 and state["lost"] == [], state
    with LocalCluster(argv, 2, 1, threads=1, log=lambda line: None) as again:
        again.start()
        assert again.wait(timeout=900) == 0, "\n".join(again.lines[-60:])
    said = f"lost with its job (global batches {holes}); {len(holes)} to re-read at this epoch's end"
    assert any("[data] ledger restored from the backup at stream batch 125: " in l and said in l
               for l in again.lines), "\n".join(again.lines[-60:])
    assert any(re.search(r"\[data\] epoch 2: .*re-read by the survivors in as many make-up steps .*\(global "
                         r"batches \[", l) for l in again.lines), "\n".join(again.lines[-30:])
    summary = json.load(open(tmp_path / "run" / "history.json"))
    (epoch,), passes = summary["data_epochs"], summary["passes"]
    assert epoch["lost_batches"] == holes and set(holes) <= set(epoch["replayed_batches"]), epoch
    assert sorted(epoch["replayed_batches"]) == sorted(set(epoch["replayed_batches"])), epoch  # each once
    assert summary["lost_rows"] == 32 * len(holes) and summary["resumed_from_step"] == 125, summary
    one = passes[0]
    assert (one["pass"], one["lost_batches"], one["replayed_batches"]) == (1, holes, holes), one
    assert one["trained_rows"] + one["replayed_rows"] == 4000 and one["untrained_rows"] == 0, one
    assert not any("rows never trained" in l for l in again.lines), "\n".join(again.lines[-30:])
    assert os.path.exists(tmp_path / "run" / "final") and not os.path.exists(tmp_path / "run" / "backup")


# ---------------------------------------------------------------------------------------- retrieval configs
def retrieval_raw(**sections):
    raw = {"model": {"name": "dssm", "params": {"embedding_dim": 8}}, "data": {"batch_size": 128},
           "train": {"epochs": 1}, "eval": {"k": 5}}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


@pytest.mark.parametrize("section,key,value,message", [
    ("pretrain", "enabled", "yes", "pretrain.enabled must be true or false, got 'yes'"),
    ("train", "seed", "abc", "train.seed must be an integer >= 0, got 'abc'"),
    ("eval", "k", 0, "eval.k must be a positive integer, got 0"),
    ("pretrain", "learning_rate", "fast", "pretrain.learning_rate must be > 0, got 'fast'"),
    ("pretrain", "sides", "user", "pretrain.sides must be a non-empty list of user, item, got 'user'"),
    ("eval", "split", 5, "eval.split must be a non-empty string, got 5"),
    ("train", "mode", "both", "train.mode 'both' (expected one of mix, single)"),
    ("model", "gamma", "abc", "retrieval model 'dssm': parameter 'gamma' must be a number (like its default 10.0), "
                               "got 'abc'"),
])
def test_32_retrieval_config_values_are_checked_naming_the_file(tmp_path, section, key, value, message):
    from tfmsr.retrieval.config import load_config as load_retrieval

    raw = retrieval_raw()
    (raw["model"]["params"] if section == "model" else raw.setdefault(section, {}))[key] = value
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as e:
        load_retrieval(str(path))
    assert str(e.value) == f"{path}: {message}"


def test_32b_every_retrieval_value_has_a_check():
    from tfmsr.retrieval.config import DEFAULTS, KINDS

    keys = {f"{s}.{k}" for s, section in DEFAULTS.items() for k in section if (s, k) != ("model", "params")}
    checked = {k if isinstance(k, str) else k[0] for kind in KINDS.values() for k in kind}
    assert checked == keys, keys ^ checked


def test_33_retrieval_set_errors_name_set(tiny, tmp_path):
    from tfmsr.retrieval.config import load_config as load_retrieval

    cfg = tmp_path / "r.yaml"
    cfg.write_text(yaml.safe_dump(retrieval_raw()))
    rc, out, err = cli("retrieval", "train", "--config", cfg, "--data", tiny, "--model-dir", tmp_path / "run",
                       "--set", "eval.k=-1")
    assert rc == 2 and err.strip().splitlines()[-1] == ("tfmsr: error: --set eval.k=-1: eval.k must be a positive "
                                                        "integer, got -1"), err
    assert not os.path.exists(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^--set pretrain.sides=\[user, x\]: pretrain.sides must be a non-empty "
                                          r"list of user, item, got \['user', 'x'\]$"):
        load_retrieval(str(cfg), ["pretrain.sides=[user, x]"])
    with pytest.raises(ConfigError, match=r"^--set model.params.hidden=abc: retrieval model 'dssm': parameter 'hidden'"):
        load_retrieval(str(cfg), ["model.params.hidden=abc"])
    with pytest.raises(ConfigError, match=r"^--set: unknown key 'eval.kk'"):
        load_retrieval(str(cfg), ["eval.kk=3"])


def test_34_a_retrieval_models_own_check_fails_before_the_run_dir(tiny, tmp_path):
    from tfmsr.retrieval.config import load_config as load_retrieval
    from tfmsr.retrieval.train import train

    cfg = load_retrieval(raw=retrieval_raw(model={"name": "sass", "params": {"gate": "product", "s0_init": "zeros"}}))
    with pytest.raises(ConfigError, match=r"^retrieval model 'sass': gate 'product' with s0_init 'zeros': "):
        train(cfg, tiny, str(tmp_path / "run"), **QUIET)
    assert not os.path.exists(tmp_path / "run")


def test_35_refused_retrieval_rerun_names_the_key_that_differs(tiny, tmp_path):
    from tfmsr.retrieval.config import load_config as load_retrieval
    from tfmsr.retrieval.train import train

    run = tmp_path / "run"
    run.mkdir()
    first = load_retrieval(raw=retrieval_raw())
    (run / "run.yaml").write_text(yaml.safe_dump({"kind": "retrieval", "config": first, "data": os.path.abspath(tiny)}))
    (run / "metrics.json").write_text("{}")
    with pytest.raises(FileExistsError) as e:
        train(load_retrieval(raw=retrieval_raw(train={"epochs": 3})), tiny, str(run), **QUIET)
    assert str(e.value) == (f"{run}: holds a finished run with a different config (train.epochs: 1 -> 3); pass "
                            "--overwrite to retrain")
    with pytest.raises(FileExistsError) as e:
        train(first, tiny, str(run), **QUIET)
    assert str(e.value) == f"{run}: holds a finished run of the same config and data; pass --overwrite to retrain"
    assert sorted(os.listdir(run)) == ["metrics.json", "run.yaml"]  # nothing touched
