"""The main job on the embedded default data: generate planted multi-scenario data, train ``dnn``,
``shared_bottom`` (a multi-scenario baseline) and ``sainet`` (of the seed models, the closest to the best
baseline on all three real-data tables: Douban, ml-latest-small, MovieLens-100K), evaluate each per scenario
on the test split next to the oracle AUC, export each for TF Serving (``OUT/saved_models/<model>``) and batch-score the test split through the export
(``OUT/scores/<model>.parquet``).

    python -m tfmsr.ranking.demo --out runs/demo        (or: tfmsr demo --out runs/demo)

Writes ``OUT/data`` (shards in the packed record layout, ``tfmsr.data.layout``), ``OUT/models/<model>`` (runs), ``OUT/results.json`` and ``OUT/results.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import tfmsr  # noqa: F401

MODELS = ("dnn", "shared_bottom", "sainet")


def _config(name: str, epochs: int) -> dict:
    from tfmsr.core.config import PACKAGED
    from tfmsr.ranking.config import load_config

    path = os.path.join(PACKAGED, f"{name}.yaml")
    overrides = [f"train.epochs={epochs}"]
    if os.path.exists(path):
        return load_config(path, overrides)
    return load_config(raw={"model": {"name": name}}, overrides=overrides)


def main(out: str = "runs/demo", rows: int = 400_000, epochs: int = 3, seed: int = 0) -> dict:
    from tfmsr.core import metrics
    from tfmsr.core.io import write_json, write_text
    from tfmsr.core.progress import log
    from tfmsr.data.synth import generate
    from tfmsr.ranking.evaluate import evaluate
    from tfmsr.ranking.export import export
    from tfmsr.ranking.train import train
    from tfmsr.serving.scoring import score

    start = time.time()
    data = os.path.join(out, "data")
    if not os.path.exists(os.path.join(data, "schema.yaml")):
        log(f"== generating {rows:,} planted rows into {data}")
        generate(data, rows=rows, seed=seed, layout="packed")   # the fast record layout (data/layout.py)
    results, serving = {}, {}
    for name in MODELS:
        log(f"== training {name}")
        model_dir = os.path.join(out, "models", name)
        trained = train(_config(name, epochs), data, model_dir, overwrite=True)
        results[name] = evaluate(model_dir, data, "test")
        log(f"== exporting {name} and scoring the test split through the SavedModel")
        exp = export(model_dir, os.path.join(out, "saved_models", name), log=log)
        os.makedirs(os.path.join(out, "scores"), exist_ok=True)
        sc = score(exp["servables"]["all"], os.path.join(data, "test"), os.path.join(out, "scores", f"{name}.parquet"),
                   keep=["user_id", "scenario", "click"], overwrite=True, progress=log)
        serving[name] = {"saved_model": exp["servables"]["all"], "scores": sc["output"], "rows_scored": sc["scored"],
                         "scoring_examples_per_sec": sc["examples_per_sec"],
                         "training_examples_per_sec": round(trained["examples_per_sec"], 1)}
        log(f"[{name}] scoring {sc['examples_per_sec']:,.0f} ex/s vs training {trained['examples_per_sec']:,.0f} ex/s")
    names = list(results[MODELS[0]]["scenarios"])
    table = metrics.format_table(results, names)
    log(f"\n== test split, per-scenario AUC (oracle = AUC of the true click probability)\n{table}")
    with open(os.path.join(data, "stats.json")) as fh:
        gen = json.load(fh)["generator"]
    log(f"scenario clusters (alike scenarios share a number): {dict(zip(names, gen['scenario_clusters']))}")
    summary = {"results": results, "serving": serving, "seconds": round(time.time() - start, 1),
               "scenario_clusters": gen["scenario_clusters"]}
    write_json(os.path.join(out, "results.json"), summary)
    write_text(os.path.join(out, "results.md"), f"```\n{table}\n```\n")
    log(f"== done in {summary['seconds']}s; results in {out}/results.json")
    return summary


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args()
    main(a.out, a.rows, a.epochs)
