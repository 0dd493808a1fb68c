"""Paper-table runner: specs, end-to-end on planted data (2 tiny models x 2 seeds), aggregates, resume."""
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from pipelines import benchmark
from tfmsr.core import metrics
from tfmsr.core.errors import ConfigError
from tfmsr.data import synth

SPECS = "dnn:hidden=[16],shared_bottom:bottom=[16],tower=[8]"
BASE = "dnn:hidden=[16]"
SB = "shared_bottom:bottom=[16],tower=[8]"


def test_model_specs():
    assert benchmark.split_specs("dnn,saml:mutual_gate=false,k=2,star") == ["dnn", "saml:mutual_gate=false,k=2",
                                                                          "star"]
    assert benchmark.split_specs(SPECS) == [BASE, SB]
    assert benchmark.parse_spec(SB) == ("shared_bottom", ["bottom=[16]", "tower=[8]"])
    assert benchmark.spec_params("dnn:hidden=[64, 32],dropout=0.1") == {"hidden": [64, 32], "dropout": 0.1}
    with pytest.raises(ValueError, match="does not follow"):
        benchmark.split_specs("hidden=[8],dnn")


def test_bad_spec_fails_before_training(synth_dir, tmp_path):
    with pytest.raises(ConfigError, match="unknown parameter"):
        benchmark.main(["--data", synth_dir, "--models", "dnn:hiden=[8]", "--seeds", "0", "--out", str(tmp_path)])
    assert not os.path.exists(tmp_path / "runs")


def test_budget_own_config_or_forced_batch_with_linear_scaling(synth_dir, tmp_path):
    """Without --batch every row keeps its config's batch and rate; --batch rescales the rate linearly."""
    base = ["--data", synth_dir, "--models", "saml", "--out", str(tmp_path), "--set", "train.steps_per_epoch=7"]
    own = benchmark.spec_config("saml", 3, benchmark.parse_args(base))
    assert (own["data"]["batch_size"], own["train"]["learning_rate"]) == (1024, 0.001)  # configs/saml.yaml
    assert own["train"]["seed"] == 3 and own["train"]["steps_per_epoch"] == 7
    assert benchmark.spec_config("saml", 0, benchmark.parse_args(base[:-2]))["train"]["steps_per_epoch"] is None
    forced = benchmark.spec_config("saml", 0, benchmark.parse_args(base + ["--batch", "128"]))
    assert (forced["data"]["batch_size"], forced["train"]["learning_rate"]) == (128, pytest.approx(0.000125))
    kept = benchmark.spec_config("saml", 0, benchmark.parse_args(base + ["--batch", "128", "--lr-scaling", "none"]))
    assert (kept["data"]["batch_size"], kept["train"]["learning_rate"]) == (128, 0.001)
    told = benchmark.spec_config("dnn", 0, benchmark.parse_args(base + ["--set", "train.learning_rate=0.01"]))
    assert told["train"]["learning_rate"] == 0.01  # --set wins over the config
    budget = benchmark.budget_of(benchmark.parse_args(base + ["--epochs", "2"]), 1000)
    assert (budget["examples"], budget["batch_size"], budget["lr_scaling"]) == (2000, "per config", "per config")
    with pytest.raises(ValueError, match="linear or none"):
        benchmark.scaled_learning_rate(0.1, 128, 256, "sqrt")


def _args(synth_dir, out, epochs=1):
    return ["--data", synth_dir, "--models", SPECS, "--seeds", "0,1", "--base", BASE, "--out", out,
            "--epochs", str(epochs), "--batch", "256", "--set", "train.steps_per_epoch=5",
            "--set", "train.log_every=1000", "--set", "train.learning_rate=0.004"]


def _parse(path, names):
    cols = {n: [] for n in names}
    for rec in tf.data.TFRecordDataset(sorted(glob.glob(os.path.join(path, "*.tfrecord")))):
        f = tf.train.Example.FromString(rec.numpy()).features.feature
        for n in names:
            v = f[n]
            cols[n].append((v.int64_list.value or v.float_list.value)[0])
    return {n: np.array(v) for n, v in cols.items()}


@pytest.fixture(scope="module")
def table(synth_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bench"))
    first = benchmark.main(_args(synth_dir, out))
    with open(os.path.join(out, "results.json")) as fh:
        saved = json.load(fh)
    with open(os.path.join(out, "results.md")) as fh:
        md = fh.read()
    return out, first, saved, md


@pytest.mark.slow  # trains 4 tiny runs (~30-60 s on 2 shared cores)
def test_results_structure_and_per_seed_numbers(table):
    out, first, saved, md = table
    assert saved["models"] == [BASE, SB] and saved["seeds"] == [0, 1] and saved["base"] == BASE
    assert list(saved["rows"]) == [BASE, SB, "popularity", "oracle"]
    rows = saved["budget"]["train_rows"]
    assert rows > 1000 and saved["budget"] == {
        "epochs": 1, "train_rows": rows, "examples": rows, "patience": 2, "batch_size": 256, "lr_scaling": "linear",
        "early_stopping": "validation AUC, best epoch's weights evaluated",
        "set": ["train.steps_per_epoch=5", "train.log_every=1000", "train.learning_rate=0.004"]}
    cols = saved["columns"]
    assert cols == [f"auc/s{i}" for i in range(5)] + ["auc", "gauc", "logloss"]
    assert saved["rows"][SB]["params"] == {"bottom": [16], "tower": [8]}
    for spec in (BASE, SB):
        runs = saved["rows"][spec]["runs"]
        assert [r["seed"] for r in runs] == [0, 1] and all(r["status"] == "trained" for r in runs)
        for r in runs:
            with open(os.path.join(r["model_dir"], "metrics.json")) as fh:
                m = json.load(fh)
            with open(os.path.join(r["model_dir"], "history.json")) as fh:
                h = json.load(fh)
            with open(os.path.join(r["model_dir"], "run.yaml")) as fh:
                run = fh.read()
            assert r["model_dir"].startswith(os.path.join(out, "runs"))
            assert f"seed: {r['seed']}" in run and "steps_per_epoch: 5" in run and "batch_size: 256" in run
            # the configs' batch 1024 with lr 0.004 (--set) -> linear scaling to batch 256: lr 0.001
            assert "learning_rate: 0.001" in run and r["learning_rate"] == 0.001 and r["batch_size"] == 256
            assert r["examples_seen"] == 5 * 256 and r["best_epoch"] == 1
            assert r["metrics"]["auc"] == m["auc"] and r["metrics"]["gauc"] == m["gauc"]
            assert r["metrics"]["auc/s3"] == m["scenarios"]["s3"]["auc"]
            assert r["examples_per_sec"] == h["examples_per_sec"] and r["steps"] == 5 and r["epochs"] == 1
        # the two seeds are different trainings
        assert runs[0]["metrics"]["auc"] != runs[1]["metrics"]["auc"]


@pytest.mark.slow  # trains 4 tiny runs (~30-60 s on 2 shared cores)
def test_mean_std_and_rela_impr(table):
    out, first, saved, md = table
    rows = saved["rows"]
    base_mean = {}
    for spec in (BASE, SB):
        row = rows[spec]
        for c in saved["columns"]:
            v = np.array([r["metrics"][c] for r in row["runs"]])
            assert row["mean"][c] == pytest.approx(v.mean())
            assert row["std"][c] == pytest.approx(np.sqrt(((v - v.mean()) ** 2).sum() / (len(v) - 1)))
        eps = [r["examples_per_sec"] for r in row["runs"]]
        assert row["examples_per_sec"]["mean"] == pytest.approx(np.mean(eps))
        if spec == BASE:
            base_mean = row["mean"]
    for name, row in rows.items():
        assert "logloss" not in row["rela_impr"]
        for c in ("auc", "gauc", "auc/s0"):
            want = ((row["mean"][c] - 0.5) / (base_mean[c] - 0.5) - 1) * 100
            assert row["rela_impr"][c] == pytest.approx(want), (name, c)
    assert rows[BASE]["rela_impr"]["auc"] == 0.0
    per_seed = [((r["metrics"]["auc"] - 0.5) / (base_mean["auc"] - 0.5) - 1) * 100 for r in rows[SB]["runs"]]
    assert rows[SB]["rela_impr_std"]["auc"] == pytest.approx(np.std(per_seed, ddof=1))


@pytest.mark.slow  # trains 4 tiny runs (~30-60 s on 2 shared cores)
def test_popularity_and_oracle_rows(table, synth_dir):
    out, first, saved, md = table
    tr = _parse(os.path.join(synth_dir, "train"), ["item_id", "click"])
    te = _parse(os.path.join(synth_dir, "test"), ["item_id", "click", "scenario", "oracle_p"])
    prior, m = tr["click"].mean(), 10.0
    rate = {}
    for item in np.unique(tr["item_id"]):
        sel = tr["item_id"] == item
        rate[item] = (tr["click"][sel].sum() + m * prior) / (sel.sum() + m)
    score = np.array([rate.get(i, prior) for i in te["item_id"]])
    pop = saved["rows"]["popularity"]
    assert pop["item_feature"] == "item_id" and len(pop["runs"]) == 1 and pop["std"]["auc"] == 0.0
    assert pop["mean"]["auc"] == pytest.approx(metrics.auc(te["click"], score))
    s2 = te["scenario"] == 2
    assert pop["mean"]["auc/s2"] == pytest.approx(metrics.auc(te["click"][s2], score[s2]))
    assert pop["mean"]["logloss"] == pytest.approx(metrics.logloss(te["click"], score), rel=1e-5)
    assert pop["mean"]["auc"] > 0.55  # planted clicks depend on item popularity
    assert saved["rows"]["oracle"]["mean"]["auc"] == pytest.approx(metrics.auc(te["click"], te["oracle_p"]))


@pytest.mark.slow  # trains 4 tiny runs (~30-60 s on 2 shared cores)
def test_markdown_table(table):
    out, first, saved, md = table
    lines = md.strip().splitlines()
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    assert header == ["model"] + [f"AUC s{i}" for i in range(5)] + [
        "AUC", "RelaImpr", "GAUC", "RelaImpr (GAUC)", "logloss", "train ex/s", "batch", "lr", "best epoch"]
    cells = lambda rows: {c[0]: c for c in ([x.strip() for x in line.strip("|").split("|")] for line in rows)}
    body = cells(lines[4:lines.index("", 4)])
    assert list(body) == [BASE, SB, "popularity", "oracle"]
    # Table 2's RelaImpr per scenario: every trained row against the base's AUC in that scenario
    start = next(i for i, line in enumerate(lines) if line.startswith("RelaImpr of the AUC per scenario"))
    assert f"vs `{BASE}`" in lines[start]
    assert [c.strip() for c in lines[start + 2].strip("|").split("|")] == (
        ["model"] + [f"s{i}" for i in range(5)] + ["all"])
    per_scenario = cells(lines[start + 4:lines.index("", start + 4)])
    assert list(per_scenario) == [BASE, SB]
    sb = saved["rows"][SB]
    for i, col in enumerate([f"auc/s{i}" for i in range(5)] + ["auc"]):
        base_auc = saved["rows"][BASE]["mean"][col]
        seeds = [(r["metrics"][col] - 0.5) / (base_auc - 0.5) * 100 - 100 for r in sb["runs"]]
        mean, std = per_scenario[SB][1 + i].split("% ± ")
        assert float(mean) == pytest.approx(np.mean(seeds), abs=0.006)
        assert float(std) == pytest.approx(np.std(seeds, ddof=1), abs=0.006)
        assert per_scenario[BASE][1 + i].startswith("+0.00% ± ")
    assert per_scenario[SB][6].split("%")[0] == body[SB][7].rstrip("%")
    # planted data: a table of the generator's premise headroom, per scenario and overall, closes the file
    head = saved["premise_headroom"]
    start = next(i for i, line in enumerate(lines) if line.startswith("Premise headroom"))
    assert [c.strip() for c in lines[start + 2].strip("|").split("|")] == (
        ["logit"] + [f"AUC s{i}" for i in range(5)] + ["AUC"])
    premises = cells(lines[start + 4:])
    assert list(premises) == ["oracle"] + [f"w/o {name}" for name in synth.HEADROOM]
    assert premises["oracle"][1:] == [f"{a:.4f}" for a in head["oracle"]["scenario_auc"] + [head["oracle"]["auc"]]]
    for name in synth.HEADROOM:
        got, top = head[name], head["oracle"]
        gap = got["scenario_auc"][4] - top["scenario_auc"][4]
        assert premises[f"w/o {name}"][5] == f"{got['scenario_auc'][4]:.4f} ({gap:+.4f})"
        gap = got["auc"] - top["auc"]
        assert premises[f"w/o {name}"][6] == f"{got['auc']:.4f} ({gap:+.4f})"
    assert head["behaviour_interest"]["auc"] < head["oracle"]["auc"]
    assert float(body["oracle"][6]) == pytest.approx(head["oracle"]["auc"], abs=2e-4)
    assert body[SB][6] == f"{sb['mean']['auc']:.4f} ± {sb['std']['auc']:.4f}"
    assert body[SB][7] == f"{sb['rela_impr']['auc']:+.2f}%" and body[BASE][7] == "+0.00%"
    assert body[SB][11] == f"{sb['examples_per_sec']['mean']:,.0f}"
    pop = saved["rows"]["popularity"]
    assert body["popularity"][6] == f"{pop['mean']['auc']:.4f}" and body["popularity"][11:] == ["-"] * 4
    assert body[SB][12:] == ["256", "0.001", "1/1"]
    assert "batch 256 for every row, learning rate scaling linear" in lines[0]
    assert "RelaImpr vs `dnn:hidden=[16]`" in lines[0] and "seeds 0,1;" in lines[0]


@pytest.mark.slow  # trains 4 tiny runs (~30-60 s on 2 shared cores)
def test_rerun_reuses_finished_runs(table, synth_dir):
    out, first, saved, md = table
    stamps = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(out, "runs", "*", "seed*", "metrics.json"))}
    assert len(stamps) == 4
    again = benchmark.main(_args(synth_dir, out))
    assert all(r["status"] == "reused" for s in (BASE, SB) for r in again["rows"][s]["runs"])
    assert {p: os.path.getmtime(p) for p in stamps} == stamps
    assert again["rows"][SB]["mean"] == pytest.approx(saved["rows"][SB]["mean"])
    with pytest.raises(ValueError, match="train.epochs: 1 there, 2 now"):
        benchmark.main(_args(synth_dir, out, epochs=2))


@pytest.mark.slow  # reads the 4 tiny runs of the table fixture, trains nothing
def test_only_existing_tabulates_finished_runs_and_trains_nothing(table, synth_dir):
    out, first, saved, md = table
    argv = _args(synth_dir, out)
    argv[argv.index("--models") + 1] = SPECS + ",dnn:hidden=[8]"
    argv[argv.index("--seeds") + 1] = "0,1,2"
    res = benchmark.main(argv + ["--only-existing"])
    assert sorted(os.listdir(os.path.join(out, "runs"))) == sorted(benchmark.run_slug(s) for s in (BASE, SB))
    assert [r["status"] for r in res["rows"][SB]["runs"]] == ["reused", "reused"]
    assert res["rows"]["dnn:hidden=[8]"]["runs"] == []
    with open(os.path.join(out, "results.md")) as fh:
        lines = fh.read().splitlines()
    labels = [line.split("|")[1].strip() for line in lines if line.startswith("| ")]
    assert labels.count(f"{SB} (n=2 of 3 seeds)") == 2  # the AUC table and the RelaImpr table
    assert not any(label.startswith("dnn:hidden=[8]") for label in labels)
    with pytest.raises(ValueError, match="--only-existing and --overwrite"):
        benchmark.main(argv + ["--only-existing", "--overwrite"])
    benchmark.main(_args(synth_dir, out))  # leave the module's results as the table fixture made them


def test_keep_going_records_a_failed_run(synth_dir, tmp_path, monkeypatch):
    def fake_run(spec, seed, args, scenarios):
        if spec == "shared_bottom":
            raise RuntimeError("boom\nin layer towers")
        cols = [f"auc/{s}" for s in scenarios] + ["auc", "gauc", "logloss"]
        return {"seed": seed, "status": "trained", "model_dir": "-", "metrics": {c: 0.6 + 0.01 * seed for c in cols},
                "examples_per_sec": 100.0 * (seed + 1), "seconds": 1.0, "steps": 1, "epochs": 1, "best_val_auc": 0.6}

    monkeypatch.setattr(benchmark, "run_one", fake_run)
    argv = ["--data", synth_dir, "--models", "dnn,shared_bottom", "--seeds", "0,1", "--out", str(tmp_path)]
    with pytest.raises(RuntimeError, match="boom"):
        benchmark.main(argv)
    res = benchmark.main(argv + ["--keep-going"])
    assert res["rows"]["shared_bottom"]["failed"] == [{"seed": 0, "error": "RuntimeError: boom\nin layer towers"},
                                                     {"seed": 1, "error": "RuntimeError: boom\nin layer towers"}]
    assert res["rows"]["dnn"]["mean"]["auc"] == pytest.approx(0.605)
    assert res["rows"]["dnn"]["examples_per_sec"] == {"mean": 150.0, "std": pytest.approx(np.std([100, 200], ddof=1))}
    with open(tmp_path / "results.md") as fh:
        md = fh.read()
    assert "| shared_bottom |" not in md and "`shared_bottom` seed 1 (RuntimeError: boom)" in md
    assert "| dnn | 0.6050 ± 0.0071 |" in md


def _row(kind, values):
    """A results.json row of ``kind`` whose runs have the given per-seed {column: value} metrics."""
    return {"kind": kind, "runs": [{"seed": i, "metrics": m} for i, m in enumerate(values)]}


def test_under_popularity_floor_names_rows_under_it_within_or_beyond_one_std():
    cols = ["auc", "gauc", "logloss"]
    rows = {"popularity": _row("popularity", [{"auc": 0.66, "gauc": 0.65, "logloss": 0.65}]),
            "dnn": _row("model", [{"auc": 0.76, "gauc": 0.644, "logloss": 0.58},     # GAUC mean 0.647, std
                                  {"auc": 0.77, "gauc": 0.650, "logloss": 0.58}]),   # 0.00424: within one std
            "saml": _row("model", [{"auc": 0.75, "gauc": 0.640, "logloss": 0.59},    # GAUC mean 0.6405, std
                                   {"auc": 0.74, "gauc": 0.641, "logloss": 0.59}]),  # 0.00071: beyond
            "star": _row("model", [{"auc": 0.70, "gauc": 0.66, "logloss": 0.9}]),    # above: not named
            "bst": _row("model", [])}                                                # no finished run
    benchmark.aggregate(rows, cols, "dnn")
    under = benchmark.under_floor(rows)
    assert set(under) == {"dnn", "saml"} and set(under["dnn"]) == {"gauc"} and set(under["saml"]) == {"gauc"}
    assert under["dnn"]["gauc"]["gap"] == pytest.approx(-0.003)
    assert under["dnn"]["gauc"]["std"] == pytest.approx(np.std([0.644, 0.650], ddof=1))
    assert not under["dnn"]["gauc"]["beyond_std"] and under["saml"]["gauc"]["beyond_std"]
    assert under["saml"]["gauc"]["gap"] == pytest.approx(-0.0095)
    result = {"rows": rows, "under_popularity": under}
    line = benchmark._floor_lines(result)[1]
    assert "`dnn` GAUC -0.0030 (within one std 0.0042)" in line and "`saml` GAUC -0.0095 (beyond" in line
    assert "star" not in line and "bst" not in line
    rows["popularity"]["mean"]["gauc"] = float("nan")  # a floor without GAUC judges no GAUC
    assert benchmark.under_floor(rows) == {}
    assert benchmark._floor_lines({"rows": rows, "under_popularity": {}})[1].startswith("No model row is under")
    assert benchmark.under_floor({"dnn": rows["dnn"]}) == {} and benchmark._floor_lines({"rows": {}}) == []


def test_a_run_reused_across_an_added_setting(tmp_path):
    """A run dir written before a setting existed (its run.yaml lacks the key) is reused; a changed value is not."""
    import yaml

    cfg = {"model": {"name": "dnn", "params": {"hidden": [8], "embedding_l2": 0.0}}, "train": {"epochs": 2}}
    old = {"model": {"name": "dnn", "params": {"hidden": [8]}}, "train": {"epochs": 2}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"config": old, "data": str(tmp_path)}))
    benchmark.check_reusable(str(tmp_path), cfg, str(tmp_path))
    with pytest.raises(ValueError, match="train.epochs: 2 there, 3 now"):
        benchmark.check_reusable(str(tmp_path), {**cfg, "train": {"epochs": 3}}, str(tmp_path))


@pytest.mark.slow  # trains 2 tiny runs (~15 s)
def test_individual_row_trains_one_model_per_scenario_on_its_rows(tmp_path):
    """``dnn@individual``: per scenario a run on that scenario's subset, scored on its test rows; the row's
    per-scenario AUC is each model's own, the overall metrics those of the pooled predictions."""
    from tfmsr.ranking.evaluate import evaluate

    data = str(tmp_path / "data")
    synth.generate(data, rows=2400, scenarios=2, users=120, items=90, seed=0, progress=False)
    spec = "dnn@individual:hidden=[8]"
    assert benchmark.parse_spec(spec) == ("dnn", ["hidden=[8]"]) and benchmark.is_individual(spec)
    out = str(tmp_path / "out")
    res = benchmark.main(["--data", data, "--models", spec, "--seeds", "0", "--base", "popularity", "--out", out,
                          "--epochs", "1", "--batch", "128", "--set", "train.log_every=1000"])
    run = res["rows"][spec]["runs"][0]
    assert run["status"] == "trained" and run["best_epoch"] == "1+1"
    stats = {s: json.load(open(os.path.join(out, "subsets", s, "stats.json"))) for s in ("s0", "s1")}
    assert run["examples_seen"] == sum(-(-st["splits"]["train"]["rows"] // 128) * 128 for st in stats.values())
    for s, st in stats.items():
        assert st["subset"]["scenarios"] == [s] and st["splits"]["train"]["rows"] == st["splits"]["train"]["scenarios"][s]["rows"]
        sub = os.path.join(run["model_dir"], s)
        assert json.load(open(os.path.join(sub, "history.json")))["steps"] > 0
        assert run["metrics"][f"auc/{s}"] == pytest.approx(evaluate(sub, os.path.join(out, "subsets", s))["auc"])
    assert run["metrics"]["auc"] not in (run["metrics"]["auc/s0"], run["metrics"]["auc/s1"])
    again = benchmark.main(["--data", data, "--models", spec, "--seeds", "0", "--base", "popularity", "--out", out,
                            "--epochs", "1", "--batch", "128", "--set", "train.log_every=1000"])
    assert again["rows"][spec]["runs"][0]["status"] == "reused"
    assert again["rows"][spec]["runs"][0]["metrics"] == run["metrics"]


def test_popularity_row_is_per_raw_item_whatever_the_vocabulary(tmp_path):
    """An ingested log whose item vocabulary keeps only items with >= 40 train rows: the popularity row still
    scores each test row by its own raw item's train rate (the floor does not move with ``min_count``), as
    computed here from the CSV itself."""
    import yaml

    from tfmsr.data.ingest import ingest
    from tfmsr.features import Schema

    rng = np.random.default_rng(0)
    n = 3000
    items = rng.integers(0, 60, n)
    click = (rng.random(n) < 0.1 + 0.8 * (items % 7) / 6).astype(int)  # each item's own rate
    part = rng.choice(["fit", "val", "eval"], n, p=[0.7, 0.1, 0.2])
    lines = ["user,item,click,part"] + [f"u{rng.integers(50)},i{i},{c},{p}" for i, c, p in zip(items, click, part)]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    spec = {"inputs": {"path": "log.csv", "columns": {"user": "string", "item": "string", "click": "int64",
                                                      "part": "string"}},
            "label": {"name": "label", "from": "click"}, "user": "user_id",
            "features": {"user_id": {"from": "user", "group": "user"},
                         "item_id": {"from": "item", "group": "item", "min_count": 40}},
            "split": {"by": "column", "from": "part", "values": {"train": ["fit"], "valid": ["val"],
                                                                 "test": ["eval"]}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = str(tmp_path / "data")
    ingest(str(tmp_path / "spec.yaml"), out, root=str(tmp_path), log=None)
    schema = Schema.load(os.path.join(out, "schema.yaml"))
    args = benchmark.parse_args(["--data", out, "--models", "dnn", "--out", str(tmp_path / "o")])
    pop = benchmark.reference_rows(args, schema, ["all"])["popularity"]["runs"][0]["metrics"]

    train, test = part == "fit", part == "eval"
    prior, m = click[train].mean(), args.pop_smoothing
    rate = {i: (click[train & (items == i)].sum() + m * prior) / ((train & (items == i)).sum() + m)
            for i in np.unique(items[train])}
    score = np.array([rate.get(i, prior) for i in items[test]])
    assert pop["auc"] == pytest.approx(metrics.auc(click[test], score))
    merged = np.array([rate[i] if (train & (items == i)).sum() >= 40 else -1.0 for i in items[test]])
    assert len(set(items[test][merged < 0])) > 5  # the vocabulary did merge items (the case this is about)
