"""CLI verbs: data synth, models, bench input/train (JSON output)."""
import json
import os

import pytest

from tfmsr.cli import main


def test_data_synth_and_bench_commands(tmp_path, capsys):
    out = str(tmp_path / "d")
    assert main(["data", "synth", "--out", out, "--rows", "2000", "--users", "100", "--items", "80",
                 "--rows-per-shard", "500", "--gzip", "--search-scenarios", "1,3,4",
                 "--scenario-clusters", "0,0,1,1,1", "--item-scenario", "1.5"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["splits"] == {"train": 1600, "valid": 200, "test": 200}
    generator = json.load(open(os.path.join(out, "stats.json")))["generator"]
    assert generator["search_scenarios"] == [1, 3, 4] and generator["scenario_clusters"] == [0, 0, 1, 1, 1]
    assert generator["item_scenario"] == 1.5
    head = generator["premise_headroom"]
    assert head["item_scenario"]["auc"] < head["oracle"]["auc"]   # one representation per item costs AUC
    assert all(f.endswith(".tfrecord.gz") for f in os.listdir(os.path.join(out, "train")))

    assert main(["bench", "input", "--data", out, "--batch", "256", "--steps", "10", "--warmup", "2",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["bench"] == "input" and 2000 < res["examples"] <= 2560 and res["examples_per_sec"] > 0  # epoch-end batches are partial
    assert res["features"] == {"categorical": 10, "numeric": 2, "sequence": 3}

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: shared_bottom, params: {bottom: [32], tower: [16]}}\n")
    assert main(["bench", "train", "--config", str(cfg), "--data", out, "--batch", "128", "--steps", "5",
                 "--warmup", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["model"] == "shared_bottom" and res["steps"] == 5 and res["trainable_parameters"] > 0
    assert res["cpu_seconds"] > 0 and res["examples_per_cpu_sec"] == pytest.approx(5 * 128 / res["cpu_seconds"], rel=1e-2)

    assert main(["data", "synth", "--out", out, "--rows", "2000"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_models_lists_registry(capsys):
    assert main(["models"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert "dnn" in names and "shared_bottom" in names
