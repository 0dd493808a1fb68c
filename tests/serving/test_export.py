"""SavedModel export: layout and versions, signatures (saved_model_cli), stock ops only, a fresh process
without tfmsr reproduces the trained model, warm-up records, and every registered model exports."""
import json
import multiprocessing
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import tensorflow as tf
from conftest import planted, quick_config
from raw_serving import PY_FUNC_OPS, fresh_calls, graph_ops, run_fresh, sample_rows, serve_fresh

from tfmsr.features import Schema
from tfmsr.ranking.evaluate import load_trained
from tfmsr.ranking.export import export
from tfmsr.ranking.models import available
from tfmsr.ranking.train import train
from tfmsr.serving.signatures import input_signature, servable_names
from tfmsr.serving.warmup import read_warmup

BIN = os.path.dirname(sys.executable)


def train_and_export(synth_dir, root, name, **train_kw):
    model_dir = os.path.join(root, "models", name)
    train(quick_config(name, **train_kw), synth_dir, model_dir, log=lambda s: None)
    out = os.path.join(root, "saved_models", name)
    export(model_dir, out, log=lambda s: None)
    return model_dir, out


_EXPORTED = {}  # test_scoring imports this fixture too: train and export once per session


@pytest.fixture(scope="session")
def exported(synth_dir, tmp_path_factory):
    """dnn and shared_bottom trained quickly and exported: name -> (model_dir, export root)."""
    if synth_dir not in _EXPORTED:
        root = str(tmp_path_factory.mktemp("export"))
        _EXPORTED[synth_dir] = {name: train_and_export(synth_dir, root, name, validate=False)
                                for name in ("dnn", "shared_bottom")}
    return _EXPORTED[synth_dir]


def expected_probs(model, schema, x):
    """In-process predictions: own scenario, every scenario column, and each scenario fixed."""
    tx = {k: tf.constant(v) for k, v in x.items()}
    fixed = []
    for s in range(schema.num_scenarios):
        xs = dict(tx)
        xs[schema.scenario.name] = tf.fill(tf.shape(tx[schema.scenario.name]), tf.constant(s, tf.int64))
        fixed.append(model(xs, training=False).numpy())
    return model(tx, training=False).numpy(), model.scenario_probs(tx).numpy(), fixed


def assert_reproduces(got, own, cols, fixed, names, scenario, servables=None, tol=dict(atol=1e-5, rtol=0)):
    """The fresh process's outputs (``run_fresh`` keys) equal the in-process model: ``all`` by its scenario
    input (named and serialized inputs), every scenario column and signature, and the scenario servables
    ``servables`` (default: all of them)."""
    np.testing.assert_allclose(got["all/serving_default/prob"], own, **tol)
    np.testing.assert_allclose(got["all/examples/prob"], own, **tol)
    np.testing.assert_allclose(got["all/all_scenarios/prob"], own, **tol)
    np.testing.assert_allclose(got["all/all_scenarios/probs"], cols, **tol)
    for s, n in enumerate(names):
        np.testing.assert_allclose(got[f"all/{n}/prob"], fixed[s], **tol)
        if servables is not None and n not in servables:
            continue
        np.testing.assert_allclose(got[f"{n}/serving_default/prob"], fixed[s], **tol)
        np.testing.assert_allclose(got[f"{n}/examples/prob"], fixed[s], **tol)
        # the scenario servable answers like the own-scenario model on that scenario's rows
        mine = scenario == s
        np.testing.assert_allclose(got[f"{n}/serving_default/prob"][mine], own[mine], **tol)


@pytest.mark.parametrize("name", ["dnn", "shared_bottom"])
def test_fresh_process_reproduces_trained_model(exported, synth_dir, tmp_path, name):
    model_dir, out = exported[name]
    model, schema, _ = load_trained(model_dir)
    x, raw = sample_rows(synth_dir, schema)
    own, cols, fixed = expected_probs(model, schema, x)
    names = servable_names(schema)
    servables = {s: os.path.join(out, s, "1") for s in ["all"] + names}
    for path in servables.values():
        assert not graph_ops(path) & PY_FUNC_OPS
    got = run_fresh(servables, x, raw, tmp_path)
    assert_reproduces(got, own, cols, fixed, names, x[schema.scenario.name])
    assert own.std() > 1e-3  # a trained model, not a constant


def test_layout_assets_and_models_config(exported, synth_schema):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    _, out = exported["shared_bottom"]
    names = servable_names(synth_schema)
    assert sorted(os.listdir(out)) == sorted(["all", *names, "models.config"])
    for s in ["all"] + names:
        d = os.path.join(out, s, "1")
        assert Schema.load(os.path.join(d, "assets", "schema.yaml")) == synth_schema
        meta = json.load(open(os.path.join(d, "assets", "export.json")))
        assert meta["servable"] == s and meta["model"] == "shared_bottom" and meta["version"] == 1
        assert (synth_schema.scenario.name in meta["inputs"]) == (s == "all")
    cfg = text_format.Parse(open(os.path.join(out, "models.config")).read(), model_server_config_pb2.ModelServerConfig())
    entries = {c.name: c.base_path for c in cfg.model_config_list.config}
    assert entries == {f"shared_bottom_{s}": os.path.join(os.path.abspath(out), s) for s in ["all"] + names}
    assert all(c.model_platform == "tensorflow" for c in cfg.model_config_list.config)


def test_export_of_some_scenarios_or_only_all(exported, synth_schema, tmp_path):
    """``--scenarios``: only the named scenarios get servables beside ``all`` (``none``: ``all`` alone); an
    unknown name fails before anything is written."""
    from tfmsr.cli import main as cli
    from tfmsr.core.errors import ConfigError

    model_dir, _ = exported["dnn"]
    names = servable_names(synth_schema)
    some = export(model_dir, str(tmp_path / "some"), scenarios=[names[1]], log=lambda m: None)
    assert sorted(os.listdir(tmp_path / "some")) == sorted(["all", names[1], "models.config"])
    assert sorted(some["servables"]) == sorted(["all", names[1]])
    assert cli(["export", "--model-dir", model_dir, "--out", str(tmp_path / "none"), "--scenarios", "none"]) == 0
    assert sorted(os.listdir(tmp_path / "none")) == ["all", "models.config"]
    with pytest.raises(ConfigError, match=r"unknown scenario\(s\) \['mars'\]"):
        export(model_dir, str(tmp_path / "bad"), scenarios=["mars"], log=lambda m: None)
    assert not os.path.exists(tmp_path / "bad")


def test_saved_model_cli_lists_signatures(exported, synth_schema):
    _, out = exported["dnn"]
    names = servable_names(synth_schema)
    show = subprocess.run([os.path.join(BIN, "saved_model_cli"), "show", "--dir", os.path.join(out, "all", "1"), "--all"],
                          capture_output=True, text=True, check=True).stdout
    for sig in ["serving_default", "examples", "all_scenarios", *names]:
        assert f"signature_def['{sig}']" in show
    assert "inputs['hist_item_id']" in show and "inputs['examples']" in show and "outputs['probs']" in show
    # a scenario servable: the same inputs without the scenario (it is fixed)
    m = tf.saved_model.load(os.path.join(out, names[2], "1"))
    assert set(m.signatures) == {"serving_default", "examples"}
    inputs = m.signatures["serving_default"].structured_input_signature[1]
    assert set(inputs) == set(input_signature(synth_schema, with_scenario=False))
    assert synth_schema.scenario.name not in inputs and inputs["hist_item_id"].shape.as_list() == [None, None]


def test_warmup_records_run_against_their_signatures(exported, synth_schema):
    _, out = exported["shared_bottom"]
    for s in ["all", servable_names(synth_schema)[0]]:
        d = os.path.join(out, s, "1")
        requests = read_warmup(d)
        m = tf.saved_model.load(d)
        assert {sig for sig, _ in requests} == set(m.signatures)
        for sig, inputs in requests:
            res = m.signatures[sig](**{k: tf.constant(v) for k, v in inputs.items()})
            prob = res["prob"].numpy()
            assert prob.shape == (4,) and np.all((prob > 0) & (prob < 1))


def test_serving_checks_scenario_and_fits_sequence_width(exported, synth_dir, synth_schema):
    _, out = exported["dnn"]
    m = tf.saved_model.load(os.path.join(out, "all", "1"))
    x, _ = sample_rows(synth_dir, synth_schema, n=8)
    fn = m.signatures["serving_default"]
    base = fn(**{k: tf.constant(v) for k, v in x.items()})["prob"].numpy()
    # sequences of any width: wider inputs are truncated to L, narrower ones padded
    wide = {k: (np.pad(v, [(0, 0), (0, 7)]) if v.ndim == 2 else v) for k, v in x.items()}
    np.testing.assert_allclose(fn(**{k: tf.constant(v) for k, v in wide.items()})["prob"].numpy(), base, atol=1e-6)
    narrow = {k: (v[:, :3] if v.ndim == 2 else v) for k, v in x.items()}
    cut = {k: (np.pad(v[:, :3], [(0, 0), (0, v.shape[1] - 3)]) if v.ndim == 2 else v) for k, v in x.items()}
    np.testing.assert_allclose(fn(**{k: tf.constant(v) for k, v in narrow.items()})["prob"].numpy(),
                               fn(**{k: tf.constant(v) for k, v in cut.items()})["prob"].numpy(), atol=1e-6)
    bad = dict(x)
    bad[synth_schema.scenario.name] = np.full(8, synth_schema.num_scenarios, np.int64)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"must be a scenario index in \[0, 5\).*0=s0"):
        fn(**{k: tf.constant(v) for k, v in bad.items()})


def test_versions_never_overwrite_and_cli(exported, tmp_path, capsys):
    import shutil

    from tfmsr.cli import main

    model_dir, first = exported["dnn"]
    out = str(tmp_path / "sm" / "run")
    shutil.copytree(first, out)  # version 1 exists
    pb = os.path.join(out, "all", "1", "saved_model.pb")
    stamp = os.stat(pb).st_mtime_ns
    assert main(["export", "--model-dir", model_dir, "--out", out, "--base-path", "/models/run"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["version"] == 2 and res["servables"]["all"] == os.path.join(out, "all", "2")
    assert main(["export", "--model-dir", model_dir, "--out", out, "--version", "2"]) == 2
    assert "version 2 already exists" in capsys.readouterr().err
    assert main(["export", "--model-dir", str(tmp_path / "nope"), "--out", out]) == 2
    assert "no run.yaml" in capsys.readouterr().err
    assert os.stat(pb).st_mtime_ns == stamp
    assert sorted(os.listdir(os.path.join(out, "all"))) == ["1", "2"]
    assert not [d for d in os.listdir(out) if d.startswith(".")]  # temp dirs renamed / removed
    assert 'base_path: "/models/run/all"' in open(os.path.join(out, "models.config")).read()


def test_hashed_string_features_and_scenario_names(tmp_path):
    """Raw-string (hashed) features and sequences go through both signatures and the warm-up file;
    scenario names are made path-safe and never clash with 'all'."""
    from tfmsr.ranking.models import build
    from tfmsr.serving.signatures import ServingFunctions, sample_batch, to_examples
    from tfmsr.serving.warmup import write_warmup
    from tfmsr.serving.writer import _Servable, _warmup_requests, build_model

    schema = Schema.from_dict({
        "scenario": {"name": "page", "values": ["home page", "all"]}, "labels": ["click"],
        "features": [
            {"name": "user_id", "kind": "categorical", "group": "user", "vocab_size": 50, "dim": 8},
            {"name": "query", "kind": "categorical", "group": "query", "hash_buckets": 100, "dim": 8},
            {"name": "item", "kind": "categorical", "group": "item", "hash_buckets": 200, "dim": 8},
            {"name": "hist", "kind": "sequence", "group": "behavior", "share": "item", "length": 5},
            {"name": "price", "kind": "numeric", "group": "item", "mean": 1.0, "std": 2.0}]})
    assert servable_names(schema) == ["home_page", "all_1"]
    model = build("dnn", schema, {"hidden": [8]})
    build_model(model, schema)
    fns = ServingFunctions(model, schema)
    sigs = fns.signatures(None)
    d = str(tmp_path / "all")
    tf.saved_model.save(_Servable(model.variables, []), d, signatures=sigs)
    write_warmup(d, "t_all", _warmup_requests(schema, sigs))
    m = tf.saved_model.load(d)
    x = sample_batch(schema, n=6, seed=3)
    assert x["hist"].dtype == object and (x["hist"] == b"").any()
    want = model({k: tf.constant(v) for k, v in x.items()}).numpy()
    wide = dict(x, hist=np.pad(x["hist"], [(0, 0), (0, 3)], constant_values=b""))
    got = m.signatures["serving_default"](**{k: tf.constant(v) for k, v in wide.items()})["prob"].numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    got = m.signatures["examples"](examples=tf.constant(to_examples(x, schema)))["prob"].numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    for sig, inputs in read_warmup(d):
        assert m.signatures[sig](**{k: tf.constant(v) for k, v in inputs.items()})["prob"].shape == (4,)


EVERY_ROWS = 64  # rows every servable of every model scores in the fresh process


@pytest.fixture(scope="module")
def every_data(tmp_path_factory):
    """2,000 planted rows with 3 scenarios: an export is 4 servables (all/ + one per scenario)."""
    return planted(tmp_path_factory, "every", rows=2000, scenarios=3, users=100, items=100, categories=10,
                   brands=20, seq_len=10, rows_per_shard=1000)


def _export_one(data_dir, root, name):
    """``name`` trained 2 steps and exported; ``tfmsr score`` of the test split; the in-process reference."""
    import pandas as pd

    from tfmsr.serving.scoring import score

    model_dir, out = train_and_export(data_dir, root, name, steps_per_epoch=2, validate=False)
    model, schema, _ = load_trained(model_dir)
    x, raw = sample_rows(data_dir, schema, n=EVERY_ROWS)
    own, cols, fixed = expected_probs(model, schema, x)
    scores = os.path.join(root, f"{name}.parquet")
    res = score(out, os.path.join(data_dir, "test"), scores, progress=lambda s: None)
    names = servable_names(schema)
    return {"out": out, "x": x, "raw": raw, "own": own, "cols": cols, "fixed": fixed, "names": names,
            "scenario": x[schema.scenario.name], "score": res, "scored": pd.read_parquet(scores)["prob"].values,
            "ops": {s: graph_ops(os.path.join(out, s, "1")) for s in ["all"] + names}}


def _export_every(data_dir, root, names, processes=2):
    """``_export_one`` of each model in ``processes`` spawned pythons (a model's turn is mostly single-threaded
    tracing: two run at once on two cores): name -> results, or {"error": ...} (the other models go on)."""
    results = {}
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {name: pool.submit(_export_one, data_dir, root, name) for name in names}
        for name, future in futures.items():
            try:
                results[name] = future.result()
            except Exception as e:  # reported by this model's test
                results[name] = {"error": f"{type(e).__name__}: {e}"[:3000]}
    return results


@pytest.fixture(scope="module")
def every_model(every_data, tmp_path_factory):
    """Every registered model exported here (``_export_every``), then every signature of its ``all`` servable
    and of its last scenario servable called in ONE python that imports only TensorFlow (one start-up; each
    scenario servable of dnn / shared_bottom: test_fresh_process_reproduces_trained_model): name -> results,
    or {"error": ...}."""
    root = str(tmp_path_factory.mktemp("every_export"))
    results, calls = _export_every(every_data, root, sorted(available())), []
    for name, r in results.items():
        if "error" in r:
            continue
        r["fresh"] = {}
        servables = {s: os.path.join(r["out"], s, "1") for s in ["all", r["names"][-1]]}
        calls += [(name, f"{s}/{sig}", call) for s, sig, call in fresh_calls(servables, r["x"], r["raw"])]
    got = serve_fresh([c for _, _, c in calls], os.path.join(root, "fresh"), collect=True)
    for (name, key, _), outputs in zip(calls, got):
        results[name]["fresh"].update({f"{key}/{k}": v for k, v in outputs.items()})
    return results


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(available()))
def test_every_registered_model_exports_and_scores(every_model, name):
    """Models added later must pass too: export, stock ops only in every servable, a python without tfmsr
    reproduces the model (own scenario, every scenario signature, a scenario servable, named and serialized
    inputs), and ``tfmsr score`` streams the test split through it."""
    r = every_model[name]
    assert "error" not in r, r.get("error")
    py_funcs = {s: sorted(ops & PY_FUNC_OPS) for s, ops in r["ops"].items() if ops & PY_FUNC_OPS}
    assert not py_funcs, py_funcs
    errors = [str(v) for k, v in r["fresh"].items() if k.endswith("/error")]
    assert not errors, errors
    assert_reproduces(r["fresh"], r["own"], r["cols"], r["fixed"], r["names"], r["scenario"], [r["names"][-1]])
    assert r["score"]["rows"] == r["score"]["scored"] == len(r["scored"]) > EVERY_ROWS
    np.testing.assert_allclose(r["scored"][:EVERY_ROWS], r["own"], atol=1e-5)
