"""Trainer: train/evaluate round trip, resume after the process is killed, config errors."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import yaml
from conftest import quick_config

from tfmsr.core.errors import ConfigError
from tfmsr.ranking.config import load_config
from tfmsr.ranking.evaluate import Predictor, evaluate, load_trained
from tfmsr.ranking.models import build
from tfmsr.ranking.train import train

TFMSR = [sys.executable, "-m", "tfmsr.cli"]


def test_train_then_evaluate(synth_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    cfg = quick_config("shared_bottom", epochs=2, early_stopping_patience=1, checkpoint_every=5)  # backups written
    lines = []
    summary = train(cfg, synth_dir, model_dir, log=lines.append)
    assert summary["steps"] == 2 * 19  # ceil(4800 / 256) steps per epoch
    assert len(summary["history"]["val_auc"]) == 2 and "val_auc_s4" in summary["history"]
    assert any("validation: auc" in l for l in lines)
    for name in ("final", "best", "checkpoints", "tb", "run.yaml", "schema.yaml", "history.json"):
        assert os.path.exists(os.path.join(model_dir, name)), name
    assert not os.path.exists(os.path.join(model_dir, "backup"))  # removed after a finished run
    res = evaluate(model_dir, synth_dir, "test", predictions=str(tmp_path / "pred.csv"))
    assert set(res["scenarios"]) == {"s0", "s1", "s2", "s3", "s4"}
    assert 0.55 < res["auc"] < res["oracle_auc"]
    assert json.load(open(os.path.join(model_dir, "metrics.json")))["auc"] == res["auc"]
    # the restored model predicts exactly what the evaluation reported
    model, schema, _ = load_trained(model_dir)
    pred = Predictor([os.path.join(synth_dir, "test", f) for f in sorted(os.listdir(os.path.join(synth_dir, "test")))],
                     schema).run(model)
    import pandas as pd

    np.testing.assert_allclose(pd.read_csv(tmp_path / "pred.csv")["prob"], pred["prob"], rtol=1e-6)
    with pytest.raises(FileExistsError, match="holds a finished run"):
        train(cfg, synth_dir, model_dir)


def _train_proc(synth_dir, model_dir, config_path):
    return subprocess.Popen(TFMSR + ["train", "--config", config_path, "--data", synth_dir, "--model-dir", model_dir],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_resume_after_kill_continues_from_checkpoint_step(synth_dir, tmp_path):
    cfg = {"model": {"name": "dnn", "params": {"hidden": [32]}}, "data": {"batch_size": 32},
           "train": {"epochs": 2, "checkpoint_every": 10, "log_every": 50, "early_stopping_patience": 0,
                     "validate": False}}
    config_path = str(tmp_path / "cfg.yaml")
    yaml.safe_dump(cfg, open(config_path, "w"))
    model_dir = str(tmp_path / "run")
    backup = os.path.join(model_dir, "backup", "chief", "checkpoint")
    proc = _train_proc(synth_dir, model_dir, config_path)
    deadline = time.time() + 900  # a start-up on a loaded machine; the kill comes at the first backup
    while not os.path.exists(backup) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed:\n" + proc.stdout.read()
    assert os.path.exists(backup), f"no backup within 900 s: {backup}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = tf.train.latest_checkpoint(os.path.dirname(backup))
    saved_epoch = int(tf.train.load_variable(ckpt, "ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"))
    saved_batch = int(tf.train.load_variable(ckpt, "ckpt_saved_batch/.ATTRIBUTES/VARIABLE_VALUE"))
    steps_per_epoch = 150  # 4800 rows / 32
    expected = saved_epoch * steps_per_epoch + saved_batch + 1
    assert expected >= 10 and not os.path.exists(os.path.join(model_dir, "final"))

    out, _ = _train_proc(synth_dir, model_dir, config_path).communicate(timeout=600)
    assert f"resuming from backup at global step {expected}" in out, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["resumed_from_step"] == expected
    assert summary["steps"] == cfg["train"]["epochs"] * steps_per_epoch  # the optimizer step continued, not restarted
    assert os.path.exists(os.path.join(model_dir, "final"))


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown model 'dnnn'"):
        load_config(raw={"model": {"name": "dnnn"}})
    with pytest.raises(ConfigError, match=r"model 'dnn': unknown parameter\(s\) \['hiden'\]"):
        load_config(raw={"model": {"name": "dnn", "params": {"hiden": [1]}}})
    with pytest.raises(ConfigError, match="unknown key 'train.epoch'"):
        load_config(raw={"train": {"epoch": 1}})
    with pytest.raises(ConfigError, match="train.optimizer 'adamw'"):
        load_config(overrides=["train.optimizer=adamw"])
    with pytest.raises(ConfigError, match="data.batch_size must be a positive integer"):
        load_config(overrides=["data.batch_size=0"])
    cfg = load_config(overrides=["model.name=shared_bottom", "model.params.tower=[8]", "train.epochs=4"])
    assert cfg["model"]["params"]["tower"] == [8] and cfg["train"]["epochs"] == 4
    bad = tmp_path / "c.yaml"
    bad.write_text("model: {name: dnn}\ntrain: {learning_rate: -1}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: train.learning_rate must be > 0"):
        load_config(str(bad))


def test_cli_reports_user_errors_in_one_line(synth_dir, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: nosuch}\n")
    r = subprocess.run(TFMSR + ["train", "--config", str(cfg), "--data", synth_dir, "--model-dir", str(tmp_path / "m")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("tfmsr: error: ") and "unknown model 'nosuch'" in r.stderr


def test_shared_bottom_tower_trained_only_by_its_scenario(synth_schema):
    model = build("shared_bottom", synth_schema, {"bottom": [16], "tower": [8]})
    x = {f.name: tf.ones([4, f.length] if f.kind == "sequence" else [4],
                         tf.float32 if f.kind == "numeric" else tf.int64) for f in synth_schema.features}
    x["scenario"] = tf.constant([2, 2, 2, 2], tf.int64)
    model(x)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model(x, training=True))
    stacked = model.towers.trainable_variables  # one [S, ...] variable per tower layer
    assert stacked and all(v.shape[0] == synth_schema.num_scenarios for v in stacked)
    for v, g in zip(stacked, tape.gradient(loss, stacked)):
        per_row = tf.reduce_sum(tf.abs(tf.reshape(tf.convert_to_tensor(g), [v.shape[0], -1])), axis=1).numpy()
        assert per_row[2] > 0 and not np.any(np.delete(per_row, 2)), (v.name, per_row)


def test_scenario_probs_matches_own_scenario_output(synth_dir, synth_schema):
    files = [os.path.join(synth_dir, "valid", f) for f in sorted(os.listdir(os.path.join(synth_dir, "valid")))]
    from tfmsr.data.pipeline import make_dataset

    x, _ = next(iter(make_dataset(files, synth_schema, 64, training=False)))
    for name in ("dnn", "shared_bottom"):
        model = build(name, synth_schema, {})
        own = model(x).numpy()
        allp = model.scenario_probs(x).numpy()
        np.testing.assert_allclose(allp[np.arange(64), x["scenario"].numpy()], own, rtol=1e-5)


def test_unfinished_run_resumes_only_with_the_same_config(synth_dir, tmp_path):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    other = quick_config("dnn", {"hidden": [4]})
    (model_dir / "run.yaml").write_text(yaml.safe_dump({"config": other, "data": synth_dir}))
    with pytest.raises(FileExistsError, match="unfinished run with a different config"):
        train(quick_config("shared_bottom"), synth_dir, str(model_dir))
    summary = train(quick_config("dnn", {"hidden": [4]}, validate=False), synth_dir, str(model_dir), overwrite=True,
                    log=lambda m: None)
    assert summary["resumed_from_step"] == 0 and os.path.exists(model_dir / "final")


def test_unfinished_run_of_an_older_tfmsr_resumes(synth_dir, tmp_path):
    """A run.yaml written before a setting existed (no such key) is the same config: the run resumes."""
    cfg = quick_config("dnn", {"hidden": [4]}, validate=False)
    older = yaml.safe_load(yaml.safe_dump(cfg))
    del older["model"]["params"]["embedding_l2"], older["train"]["log_every"]
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    (model_dir / "run.yaml").write_text(yaml.safe_dump({"config": older, "data": synth_dir}))
    summary = train(cfg, synth_dir, str(model_dir), log=lambda m: None)
    assert summary["resumed_from_step"] == 0 and os.path.exists(model_dir / "final")


def _five_step_losses(synth_dir, synth_schema, name, strategy=None):
    """The loss of 5 Adam steps of ``name`` from seed 0 on the first training batches (under ``strategy``)."""
    import tf_keras as keras

    from tfmsr.data.pipeline import make_dataset, split_files
    from tfmsr.ranking.train import compile_model

    keras.utils.set_random_seed(0)
    batches = list(make_dataset(split_files(synth_dir, "train"), synth_schema, 256, training=True).take(5))
    with strategy.scope() if strategy else tf.init_scope():
        model = compile_model(build(name, synth_schema, {}), quick_config(name))
    return [float(model.train_on_batch(x, y, return_dict=True)["loss"]) for x, y in batches]


@pytest.mark.parametrize("name", ["deepfm", "mmoe"])
def test_sparse_matmul_pooling_trains_as_the_gathered_masked_mean(synth_dir, synth_schema, name):
    """Local training pools sequences by one sparse matmul (``FeatureEmbedding.pooled``); under a strategy the
    gather + masked mean is kept: from the same weights both give the same 5-step loss trajectory."""
    local = _five_step_losses(synth_dir, synth_schema, name)
    gathered = _five_step_losses(synth_dir, synth_schema, name, tf.distribute.OneDeviceStrategy("/cpu:0"))
    np.testing.assert_allclose(local, gathered, rtol=1e-5)
    assert local[-1] < local[0]


def test_local_fit_traces_its_train_step_once(synth_dir, tmp_path, monkeypatch):
    """The local model and its optimizer slots are built before fit (as under a strategy): a first trace
    that creates variables would make tf.function trace the whole step a second time."""
    from tfmsr.core.model import TrainableModel

    traced, step = [], TrainableModel.train_step
    monkeypatch.setattr(TrainableModel, "train_step", lambda self, data: traced.append(1) or step(self, data))
    summary = train(quick_config("dnn", {"hidden": [4]}, validate=False), synth_dir, str(tmp_path / "m"))
    assert summary["steps"] > 1 and len(traced) == 1


def test_steps_per_execution_trains_the_same_steps(synth_dir, tmp_path):
    """``train.steps_per_execution: 4`` runs the same 19 steps an epoch in 5 calls (the last one 3 steps): the same
    losses and weights as one step per call; the progress line still comes every ``log_every`` steps."""
    runs = {}
    for spe, every in ((1, 5), (4, 5), (4, 1)):
        lines = []
        cfg = quick_config("dnn", {"hidden": [8]}, validate=False, log_every=every, steps_per_execution=spe)
        summary = train(cfg, synth_dir, str(tmp_path / f"m{spe}_{every}"), log=lines.append)
        model, _, _ = load_trained(str(tmp_path / f"m{spe}_{every}"))
        runs[spe, every] = (summary, [v.numpy() for v in model.trainable_variables],
                            sum(" ex/s " in line for line in lines))
    (one, w1, lines1), (four, w4, lines4), (_, _, calls) = runs[1, 5], runs[4, 5], runs[4, 1]
    assert one["steps"] == four["steps"] == 19
    np.testing.assert_allclose(four["history"]["loss"], one["history"]["loss"], rtol=1e-5)
    for a, b in zip(w4, w1):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert lines1 == lines4 == 2          # due after steps 5, 10, 15; the first due call starts the clock
    assert calls == 4                     # log_every 1: due at each of the 5 calls


def test_every_n_steps_is_due_once_per_multiple_whatever_the_call_size():
    """``EveryNSteps.due`` at the end of a call of steps ``first .. last`` is true exactly when the call holds a
    step ending a multiple of ``every`` (one step per call: ``(batch + 1) % every == 0``)."""
    from tfmsr.distribute.progress import EveryNSteps

    cb = EveryNSteps()
    for spe in (1, 2, 3, 4, 7):
        for every in (1, 3, 5):
            for first in range(0, 20, spe):
                last = min(first + spe, 20) - 1
                cb.on_train_batch_begin(first)
                want = any((s + 1) % every == 0 for s in range(first, last + 1))
                assert cb.due(last, every) == want, (spe, every, first)


def test_steps_per_execution_is_refused_on_a_cluster():
    from tfmsr.distribute.strategy import Cluster
    from tfmsr.ranking.train import build_in_scope

    cfg = quick_config("dnn", steps_per_execution=2)
    with pytest.raises(ConfigError, match="train.steps_per_execution: 2 runs local training only"):
        build_in_scope(tf.distribute.get_strategy(), Cluster("ps", "chief"), cfg, None, [])
