"""pipelines/scenario_scaling.py: the Markdown table of its results (rates, kept share, parameters, latency,
a failed run's error) and one real (model, S) measurement in a fresh process (slow)."""
import json
import os
import subprocess
import sys

import pytest

from pipelines.scenario_scaling import table

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_table_rates_kept_share_parameters_latency_and_errors():
    lat = {"scenario_servable": {"wall_ms": 3.5, "cpu_ms": 2.0}, "all_scenarios": {"wall_ms": 9.0, "cpu_ms": 8.5}}
    results = [{"model": "mmoe", "scenarios": 5, "examples_per_cpu_sec": 10000.0, "trainable_parameters": 100,
                "latency": lat},
               {"model": "mmoe", "scenarios": 100, "examples_per_cpu_sec": 7500.0, "trainable_parameters": 900},
               {"model": "star", "scenarios": 5, "examples_per_cpu_sec": 8000.0, "trainable_parameters": 50},
               {"model": "star", "scenarios": 100, "error": "exit 1: ValueError: boom"}]
    lines = table(results, [5, 100]).splitlines()
    assert lines[0].startswith("| model | S = 5 | S = 100 | kept 100/5 |")
    assert lines[2] == "| mmoe | 10,000 | 7,500 | 75% | 100 / 900 | S=5: 3.5 (2.0 cpu) / 9.0 (8.5 cpu) |"
    assert lines[3] == "| star | 8,000 | exit 1: ValueError: boom | - | 50 / - | - |"


@pytest.mark.slow
def test_one_model_one_scenario_count_measured(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pipelines.scenario_scaling", "--models", "shared_bottom",
                          "--scenarios", "3", "--latency-scenarios", "3", "--rows", "3000", "--batch", "256",
                          "--steps", "2", "--warmup", "1", "--calls", "2", "--work", str(tmp_path / "data"),
                          "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.load(open(tmp_path / "out" / "scenario_scaling.json"))["results"]
    assert len(res) == 1 and res[0]["scenarios"] == 3 and res[0]["examples_per_cpu_sec"] > 0
    assert res[0]["trainable_parameters"] > 0 and res[0]["latency"]["all_scenarios"]["wall_ms"] > 0
    assert "| shared_bottom |" in open(tmp_path / "out" / "scenario_scaling.md").read()
