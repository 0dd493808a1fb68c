"""``tfmsr score`` rate next to ``tfmsr bench train`` rate per model, per CPU-second, in one alternating run.

    python -m pipelines.bench_score --data DIR --models deepfm,din,mmoe,saml --work DIR [--repeats 2] [--out FILE.json]

For each model: trains one epoch on ``DIR`` (``train.epochs=1``) and exports it into ``WORK/<model>`` unless that
export exists, then alternates, ``--repeats`` times, a fresh ``tfmsr bench train`` process (batch ``--batch``,
``--steps`` timed steps after ``--warmup``; the config's ``data.cache``) and a fresh ``tfmsr score`` process
scoring every row of ``DIR/<--split>`` (Parquet, the scenario routed by the ``all`` servable). Per CPU-second of
the process (all threads): ``score`` is the scoring loop (read, parse, guards, OOV counts, SavedModel calls,
output), ``score_steady`` the same over the rows between a quarter and three quarters of the way through
(tracing and the signature's first call paid; ``tfmsr score``'s ``steady_examples_per_cpu_sec``), and
``score_process`` the whole ``tfmsr score`` process (Python and TensorFlow start-up and the SavedModel load
included). ``ratio`` = median score / median train; the issue's goal is >= 3. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile

import tfmsr  # noqa: F401  (pins Keras 2 before TensorFlow loads)
from tfmsr.core.io import write_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tfmsr(args, log: str) -> dict:
    """Runs ``tfmsr ARGS`` in a fresh process; its last stdout line (JSON) and the process's CPU-seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "tfmsr.cli", *args], capture_output=True, text=True, cwd=REPO)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "a") as fh:
        fh.write(f"$ tfmsr {' '.join(args)}\n{proc.stdout}{proc.stderr[-4000:]}\n")
    if proc.returncode:
        raise RuntimeError(f"tfmsr {' '.join(args)} failed (exit {proc.returncode}); see {log}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "process_cpu_seconds": round(cpu, 3)}


def _exported(model: str, data: str, work: str, log: str) -> str:
    """``WORK/<model>``: one epoch of ``configs/<model>.yaml`` on ``data``, exported (reused when present)."""
    out = os.path.join(work, model)
    if not os.path.isdir(out):
        run = os.path.join(work, "runs", model)
        _tfmsr(["train", "--config", f"configs/{model}.yaml", "--data", data, "--model-dir", run,
                "--set", "train.epochs=1"], log)
        _tfmsr(["export", "--model-dir", run, "--out", out], log)
    return out


def _round(model: str, saved: str, args, scratch: str, log: str) -> dict:
    """One alternating round for ``model``: ``bench train`` then ``score``, each in a fresh process."""
    train = _tfmsr(["bench", "train", "--config", f"configs/{model}.yaml", "--data", args.data, "--batch",
                    str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup), "--json"], log)
    res = _tfmsr(["score", "--saved-model", saved, "--input", os.path.join(args.data, args.split),
                  "--output", os.path.join(scratch, f"{model}.parquet"), "--overwrite"], log)
    return {"train": train["examples_per_cpu_sec"], "score": res["examples_per_cpu_sec"],
            "score_steady": res["steady_examples_per_cpu_sec"],
            "score_process": round(res["rows"] / res["process_cpu_seconds"], 1), "rows": res["rows"],
            "load_cpu_seconds": res["load_cpu_seconds"], "first_batch_cpu_seconds": res["first_batch_cpu_seconds"],
            "train_cache": train.get("cache")}


def _medians(rounds: list) -> dict:
    """Medians of the rates over the rounds, and score / train."""
    keys = ("train", "score", "score_steady", "score_process", "load_cpu_seconds", "first_batch_cpu_seconds")
    med = {k: round(statistics.median(r[k] for r in rounds), 3 if k.endswith("seconds") else 1) for k in keys}
    return {**med, "ratio": round(med["score"] / med["train"], 3),
            "ratio_steady": round(med["score_steady"] / med["train"], 3),
            "ratio_process": round(med["score_process"] / med["train"], 3)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="a dataset directory (e.g. tfmsr data synth --rows 250000)")
    ap.add_argument("--models", default="deepfm,din,mmoe,saml")
    ap.add_argument("--work", required=True, help="exports are read from / written to WORK/<model>")
    ap.add_argument("--split", default="train", help="the split scored (default train: the most rows)")
    ap.add_argument("--batch", type=int, default=1024, help="bench train batch")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2, help="alternating rounds; the figures are medians")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    log = os.path.join(args.work, "bench_score.log")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    saved = {m: _exported(m, args.data, args.work, log) for m in models}
    rounds = {m: [] for m in models}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.repeats):
            for m in models:
                rounds[m].append(_round(m, saved[m], args, scratch, log))
    result = {"bench": "score_vs_train", "data": os.path.abspath(args.data), "split": args.split,
              "train_batch": args.batch, "steps": args.steps, "repeats": args.repeats,
              "models": {m: {**_medians(rounds[m]), "rounds": rounds[m]} for m in models}}
    text = json.dumps(result, indent=1)
    if args.out:
        write_text(args.out, text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
