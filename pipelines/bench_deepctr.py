"""Training speed of tfmsr's ``deepfm``, ``din`` and ``mmoe`` next to deepctr 0.9.4's DeepFM, DIN and MMOE.

    python -m pipelines.bench_deepctr --deepctr-python /path/to/venv/bin/python [--rows 200000] [--out FILE.json]

The shape is the public baseline's (issue 3): 200,000 rows, batch 1024, categorical ``user_id`` (20k),
``gender`` (3), ``age`` (8), scenario (4), ``item_id`` (20k), ``cate_id`` (500), all 16-d, one numeric
(``price``), behaviour sequences of item and cate ids of length 30 sharing the item/cate tables;
MLP 256-128-64; MMoE 4 experts 256-128, towers 64 (one per scenario: deepctr gets 4 binary tasks).

tfmsr reads TFRecord shards through its input pipeline (``tfmsr.ranking.bench.bench_train``); deepctr is fed the
same rows from in-memory NumPy (its usual ``model.fit(dict_of_arrays)``), in its own virtualenv (deepctr
pins an older TensorFlow and is not a tfmsr dependency), by ``pipelines/bench_deepctr_side.py``. Both time
``steps`` steps of ``model.fit`` after ``warmup`` steps. Prints one JSON object: both figures per model and
``ratio`` = tfmsr / deepctr examples/s (medians over ``--repeats`` alternating runs), and ``cpu_ratio``
the same per CPU-second of the process (all threads): on a shared or throttled machine the wall-clock
figures of one model swing 2x between runs, the CPU-second ones far less. Every run is a fresh process, as
deepctr's. ``--base DIR`` (a ``git worktree`` of an older commit) adds that tfmsr's runs to the same rotation
(``base_*`` figures and ``base_cpu_ratio``): old and new code measured in one alternating run. ``--set KEY=VALUE``
(repeatable) overrides tfmsr's config on the main side only: ``--base`` on this same checkout then measures a
setting against the default in one run (e.g. ``--set train.steps_per_execution=8``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

import tfmsr  # noqa: F401  (pins Keras 2 before TensorFlow loads)
from tfmsr.core.io import write_text  # noqa: E402
from tfmsr.features import Schema

SEQ_LEN, DIM = 30, 16
VOCAB = {"user_id": 20_000, "gender": 3, "age": 8, "item_id": 20_000, "cate_id": 500}
MODELS = {  # tfmsr model -> (params, deepctr model name)
    "deepfm": ({"embedding_dim": DIM, "hidden": [256, 128, 64]}, "DeepFM"),
    "din": ({"attention_hidden": [80, 40], "attention_activation": "sigmoid", "hidden": [256, 128, 64]}, "DIN"),
    "mmoe": ({"num_experts": 4, "expert_hidden": [256, 128], "tower": [64]}, "MMOE"),
}


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tfmsr's side in a fresh process of the tfmsr at PYTHONPATH (this one or --base): bench_train's JSON on stdout
OURS = ("import json, sys; import tfmsr; from tfmsr.ranking.bench import bench_train; "
        "from tfmsr.ranking.config import load_config; a = json.loads(sys.argv[1]); "
        "cfg = load_config(None, overrides=a['overrides']); cfg['model']['params'] = a['params']; "
        "print(json.dumps(bench_train(cfg, a['data'], a['batch'], a['steps'], a['warmup'])))")


def baseline_schema() -> Schema:
    cat = lambda name, group: {"name": name, "kind": "categorical", "group": group,
                               "vocab_size": VOCAB[name] + 1, "dim": DIM}
    return Schema.from_dict({
        "scenario": {"name": "scenario", "values": [f"s{i}" for i in range(4)]},
        "labels": ["click"], "user_key": "user_id",
        "features": [cat("user_id", "user"), cat("gender", "user"), cat("age", "user"),
                     cat("item_id", "item"), cat("cate_id", "item"),
                     {"name": "price", "kind": "numeric", "group": "item", "mean": 0.0, "std": 1.0},
                     {"name": "hist_item_id", "kind": "sequence", "group": "behavior", "share": "item_id",
                      "length": SEQ_LEN},
                     {"name": "hist_cate_id", "kind": "sequence", "group": "behavior", "share": "cate_id",
                      "length": SEQ_LEN}]}, "bench_deepctr")


def baseline_columns(rows: int, seed: int = 0) -> dict:
    """Random rows of the baseline shape (ids 1..V, sequences right-padded with 0, a learnable label)."""
    rng = np.random.default_rng(seed)
    cols = {name: rng.integers(1, v + 1, rows) for name, v in VOCAB.items()}
    cols["scenario"] = rng.integers(0, 4, rows)
    cols["price"] = rng.normal(size=rows).astype(np.float32)
    lengths = rng.integers(1, SEQ_LEN + 1, rows)
    pad = np.arange(SEQ_LEN)[None, :] < lengths[:, None]
    cols["hist_item_id"] = np.where(pad, rng.integers(1, VOCAB["item_id"] + 1, (rows, SEQ_LEN)), 0)
    cols["hist_cate_id"] = np.where(pad, rng.integers(1, VOCAB["cate_id"] + 1, (rows, SEQ_LEN)), 0)
    logit = 0.5 * np.sin(cols["item_id"]) + 0.5 * np.cos(cols["user_id"]) + 0.3 * cols["price"]
    cols["click"] = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return cols


def _side(cmd: list, env: dict, what: str) -> dict:
    """One run in a fresh process; its last stdout line (JSON)."""
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ours(repo: str, name: str, data: str, args, overrides=()) -> dict:
    """tfmsr's ``bench_train`` of ``name`` from the checkout ``repo`` (config ``overrides``), in a fresh process."""
    params, _ = MODELS[name]
    spec = {"overrides": [f"model.name={name}", f"data.batch_size={args.batch}", *overrides], "params": params,
            "data": data, "batch": args.batch, "steps": args.steps, "warmup": args.warmup}
    return _side([sys.executable, "-c", OURS, json.dumps(spec)], {**os.environ, "PYTHONPATH": repo},
                 f"tfmsr ({repo}) {name}")


def _summary(runs: list, sides: list) -> dict:
    """Medians over the runs of each side's rates, and tfmsr (and base) against deepctr."""
    med = lambda side, key: float(np.median([r[side][key] for r in runs]))
    out = {}
    for side in sides:
        for key in ("examples_per_sec", "examples_per_cpu_sec"):
            out[f"{side}_{key}"] = med(side, key)
    for side in (s for s in sides if s != "deepctr"):
        pre = "" if side == "tfmsr" else f"{side}_"
        out[f"{pre}ratio"] = round(med(side, "examples_per_sec") / med("deepctr", "examples_per_sec"), 3)
        out[f"{pre}cpu_ratio"] = round(med(side, "examples_per_cpu_sec") / med("deepctr", "examples_per_cpu_sec"), 3)
    out["runs_examples_per_cpu_sec"] = {side: [r[side]["examples_per_cpu_sec"] for r in runs] for side in sides}
    return {**out, "repeats": len(runs), "tfmsr_parameters": runs[0]["tfmsr"]["trainable_parameters"],
            "deepctr_parameters": runs[0]["deepctr"]["trainable_parameters"],
            "deepctr_tensorflow": runs[0]["deepctr"]["tensorflow"]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--deepctr-python", required=True, help="python of a virtualenv with deepctr==0.9.4")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--models", default="deepfm,din,mmoe")
    ap.add_argument("--repeats", type=int, default=3, help="runs per side; the figures are medians")
    ap.add_argument("--base", help="a checkout of another tfmsr commit, run in the same rotation (base_*)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="tfmsr config override of the main side (not --base's), repeatable")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)

    from tfmsr.data.tfrecord import DatasetWriter

    with tempfile.TemporaryDirectory(prefix="bench_deepctr-") as tmp:
        data, arrays = os.path.join(tmp, "data"), os.path.join(tmp, "rows.npz")
        cols = baseline_columns(args.rows)
        with DatasetWriter(data, baseline_schema()) as w:
            w.write("train", cols)
        np.savez(arrays, **cols)
        env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}  # deepctr's TF has tf.keras
        side = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_deepctr_side.py")
        sides = ["tfmsr", "deepctr"] + (["base"] if args.base else [])
        results = {}
        for name in args.models.split(","):
            runs = []
            for _ in range(args.repeats):  # alternate the sides so a slow spell hits each
                run = {"tfmsr": _ours(REPO, name, data, args, args.set),
                       "deepctr": _side([args.deepctr_python, side, arrays, MODELS[name][1], str(args.batch),
                                         str(args.steps), str(args.warmup)], env, f"deepctr {MODELS[name][1]}")}
                if args.base:
                    run["base"] = _ours(os.path.abspath(args.base), name, data, args)
                runs.append(run)
            results[name] = _summary(runs, sides)
            print(json.dumps({name: results[name]}), file=sys.stderr, flush=True)
    res = {"bench": "deepctr", "rows": args.rows, "batch": args.batch, "steps": args.steps,
           "warmup": args.warmup, "cpus": os.cpu_count(), **({"base": os.path.abspath(args.base)} if args.base else {}),
           **({"set": args.set} if args.set else {}),
           "models": results}
    text = json.dumps(res, indent=1)
    if args.out:
        write_text(args.out, text)
    print(text)
    return res


if __name__ == "__main__":
    main()
