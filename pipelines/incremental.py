"""Day over day on real logs: warm start chained over time windows against training from scratch.

    python -m pipelines.incremental --out results/incremental [--datasets ml-latest-small,ml-100k]
        [--seeds 0,1,2] [--model dnn] [--epochs 10] [--patience 2] [--windows 4]

Per dataset (``../shared/datasets``: ml-latest-small ``ratings.csv``, MovieLens-100K ``u.data``):

* **Windows.** The log, ordered by timestamp, is cut into ``--windows`` consecutive windows W1..Wn of
  equal row counts, each written as its own raw log file (``OUT/<dataset>/logs/W<k>.csv``, the original
  columns) as a team's days would be. Two columns are added to each file: ``new_user`` / ``new_item``
  (1 when the user / item appears in no earlier window: evaluation-only extras, never model inputs), and
  on ml-latest-small ``tier``, the user's number of ratings *before* this one in the log so far (0-19 new,
  20-199 regular, >= 200 heavy), the scenario: a user's stage at request time, which later windows keep.
  MovieLens-100K's scenario is its shipped spec's age group (``u.user``).
* **Ingestion** (``tfmsr data ingest``, the shipped spec with the window files as inputs). Training
  datasets split by time: the last 10 % of each dataset's time span is ``valid`` (early stopping); the
  test window Wn is all ``test``. Behaviour sequences come from the ingested files themselves (a day's
  log holds that day's history).
* **Variants**, each evaluated on Wn with its own vocabularies (Wn ingested ``--vocab-from`` the variant's
  last training dataset, so a raw value the variant never trained on is out of vocabulary):

    (a) warm start chained: W1 from scratch, then W2 ``--warm-start`` W1's run, W3 ``--warm-start`` W2's
        (the datasets ingested day over day with ``--vocab-from``); its wall time is the last step's
    (b) from scratch on W(n-1) alone
    (c) from scratch on W1..W(n-1) together

* **Figures** per variant (mean ± std over ``--seeds``): overall AUC and GAUC, per-scenario AUC and GAUC,
  wall time of training, the AUC on the test rows whose user is new in Wn, whose item is new in Wn, and on
  the rest; plus the share of test rows with a new user / a new item. Writes ``OUT/results.json`` and
  ``OUT/results.md`` (atomically, after every dataset).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from typing import Dict, List

import numpy as np
import pandas as pd
import yaml

import tfmsr  # noqa: F401  (pins Keras 2 before TensorFlow loads)
from tfmsr.core.config import PACKAGED

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASETS = os.path.abspath(os.path.join(ROOT, "..", "shared", "datasets"))
TIERS = (20, 200)                   # ml-latest-small scenario: ratings before this one: <20 new, <200 regular
VARIANTS = {"a": "warm start chained", "b": "scratch on last window", "c": "scratch on all windows"}


# ------------------------------------------------------------------------------------------ windows
def read_log(name: str) -> pd.DataFrame:
    """The raw log of a dataset with uniform column names (user, item, timestamp) kept beside the originals."""
    if name == "ml-latest-small":
        df = pd.read_csv(os.path.join(DATASETS, name, "ratings.csv"))
        return df.assign(user=df.userId, item=df.movieId)
    if name == "ml-100k":
        df = pd.read_csv(os.path.join(DATASETS, name, "u.data"), sep="\t", header=None,
                         names=["user", "item", "rating", "timestamp"])
        return df
    raise ValueError(f"unknown dataset {name!r} (ml-latest-small, ml-100k)")


def cut_windows(df: pd.DataFrame, n: int, with_tier: bool) -> List[pd.DataFrame]:
    """``n`` consecutive windows of equal rows by (timestamp, log order), with new_user / new_item (and tier)."""
    df = df.reset_index(drop=True)
    df = df.iloc[np.lexsort((np.arange(len(df)), df.timestamp.to_numpy()))].reset_index(drop=True)
    if with_tier:
        before = df.groupby("user").cumcount().to_numpy()
        df["tier"] = np.searchsorted(np.asarray(TIERS), before, side="right").astype(np.int64)
    bounds = np.linspace(0, len(df), n + 1).round().astype(int)
    windows, seen_u, seen_i = [], set(), set()
    for k in range(n):
        w = df.iloc[bounds[k]:bounds[k + 1]].copy()
        w["new_user"] = (~w.user.isin(seen_u)).astype(np.int64)
        w["new_item"] = (~w.item.isin(seen_i)).astype(np.int64)
        seen_u |= set(w.user)
        seen_i |= set(w.item)
        windows.append(w)
    return windows


def write_windows(name: str, windows: List[pd.DataFrame], out: str) -> List[str]:
    """Each window as its own raw log file, the dataset's own columns plus the added ones."""
    os.makedirs(out, exist_ok=True)
    paths = []
    for k, w in enumerate(windows, 1):
        path = os.path.join(out, f"W{k}.csv")
        cols = [c for c in w.columns if c not in ("user", "item")] if name == "ml-latest-small" else list(w.columns)
        tmp = f"{path}.tmp-{os.getpid()}"
        w[cols].to_csv(tmp, index=False)
        os.replace(tmp, path)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------ specs
def base_spec(name: str) -> dict:
    """The shipped ingestion spec of the dataset, reading a window file (CSV with a header) instead."""
    shipped = "ml_latest_small.yaml" if name == "ml-latest-small" else "movielens_100k.yaml"
    with open(os.path.join(PACKAGED, "data", shipped)) as fh:
        spec = yaml.safe_load(fh)
    spec["root"] = os.path.join(DATASETS, name)
    inp = spec["inputs"][0]
    for key in ("format", "header", "names", "sep"):
        inp.pop(key, None)
    inp["columns"].update(new_user="int64", new_item="int64")
    user = "userId" if name == "ml-latest-small" else "user"      # the raw user, for GAUC of unknown users
    spec["extras"] = dict(spec.get("extras") or {}, new_user="int64", new_item="int64", **{user: "int64"})
    if name == "ml-latest-small":
        inp["columns"]["tier"] = "int64"
        spec["derive"] = {k: v for k, v in spec["derive"].items() if k not in ("user_ratings", "tier")}
        spec["scenario"] = {"from": "tier", "names": ["new", "regular", "heavy"]}
    return spec


def window_spec(base: dict, files: List[str], frames: List[pd.DataFrame], test: bool) -> dict:
    """The spec of a dataset made of ``files``: split by time (the last 10 % valid), or all test."""
    spec = copy.deepcopy(base)
    spec["inputs"][0]["path"] = list(files)
    t = np.concatenate([f.timestamp.to_numpy() for f in frames])
    lo, hi = int(t.min()), int(t.max())
    spec["split"] = ({"by": "global_time", "test_from": lo} if test else
                     {"by": "global_time", "valid_from": lo + 0.9 * (hi - lo), "test_from": hi + 1})
    return spec


def ingest_dataset(spec: dict, out: str, vocab_from=None) -> str:
    """``tfmsr data ingest --spec S --out OUT [--vocab-from PREV]`` (reused when OUT exists)."""
    from tfmsr.data.ingest import ingest

    if not os.path.isfile(os.path.join(out, "schema.yaml")):
        path = f"{out}.spec.yaml"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            yaml.safe_dump(spec, fh, sort_keys=False)
        ingest(path, out, vocab_from=vocab_from, log=None, overwrite=os.path.exists(out))
    return out


def prepare(name: str, out: str, n: int) -> dict:
    """Window files and every dataset the variants train and test on."""
    windows = cut_windows(read_log(name), n, with_tier=name == "ml-latest-small")
    files = write_windows(name, windows, os.path.join(out, "logs"))
    base, d = base_spec(name), os.path.join(out, "data")
    chain = []
    for k in range(n - 1):
        chain.append(ingest_dataset(window_spec(base, [files[k]], [windows[k]], False), f"{d}/W{k + 1}",
                                    chain[-1] if chain else None))
    last = ingest_dataset(window_spec(base, [files[n - 2]], [windows[n - 2]], False), f"{d}/last_alone")
    union = ingest_dataset(window_spec(base, files[:n - 1], windows[:n - 1], False), f"{d}/all_windows")
    test = {}
    for v, src in (("a", chain[-1]), ("b", last), ("c", union)):
        test[v] = ingest_dataset(window_spec(base, [files[-1]], [windows[-1]], True), f"{d}/W{n}_test_{v}", src)
    w = windows[-1]
    return {"chain": chain, "train": {"b": last, "c": union}, "test": test,
            "rows": [len(x) for x in windows], "new_user_share": float(w.new_user.mean()),
            "new_item_share": float(w.new_item.mean()), "new_any_share": float((w.new_user | w.new_item).mean())}


# ------------------------------------------------------------------------------------------ runs
def make_config(args, seed: int) -> dict:
    """The model's shipped config (or its defaults) with the shared budget and ``seed``."""
    from tfmsr.core.config import resolve_path
    from tfmsr.ranking.config import load_config

    path = resolve_path(args.model)
    sets = [f"train.seed={seed}", f"train.epochs={args.epochs}", f"train.early_stopping_patience={args.patience}",
            f"data.batch_size={args.batch}", "train.log_every=1000000", "train.checkpoint_every=1000000"]
    if os.path.isfile(path or ""):
        return load_config(path, sets)
    return load_config(None, sets, raw={"model": {"name": args.model, "params": {}}})


def train_run(cfg: dict, data: str, run: str, warm: str = None) -> float:
    """Train (or reuse) one run; returns its wall time in seconds (kept in ``RUN/wall.json``)."""
    from tfmsr.core.io import write_json
    from tfmsr.ranking.train import train

    wall = os.path.join(run, "wall.json")
    if os.path.isfile(wall) and os.path.isdir(os.path.join(run, "final")):
        with open(wall) as fh:
            return json.load(fh)["seconds"]
    t0 = time.time()
    train(cfg, data, run, overwrite=True, log=lambda m: None, warm_start=warm)
    seconds = time.time() - t0
    write_json(wall, {"seconds": seconds, "data": data, "warm_start": warm})
    return seconds


def _subset_auc(pos, prob, mask) -> float:
    from tfmsr.core.metrics import auc

    return float(auc(pos[mask], prob[mask])) if mask.any() and 0 < pos[mask].sum() < mask.sum() else float("nan")


def evaluate_run(run: str, test: str, user_col: str) -> dict:
    """AUC / GAUC (by raw user) overall and per scenario, and the AUC on new-user / new-item / other rows."""
    from tfmsr.core.metrics import gauc
    from tfmsr.data.pipeline import split_files
    from tfmsr.features import Schema
    from tfmsr.ranking.evaluate import Predictor, load_trained, summarize

    schema = Schema.load(os.path.join(test, "schema.yaml"))
    model, _, _ = load_trained(run, schema)
    pred = Predictor(split_files(test, "test"), schema, 4096, keep=["new_user", "new_item", user_col]).run(model)
    res = summarize(pred, schema)
    pos, prob, users, scen = pred["label"] > 0.5, pred["prob"], pred[user_col], pred[schema.scenario.name]
    out = {"auc": res["auc"], "gauc": float(gauc(pos, prob, users)), "scenarios": {}}
    for i, name in enumerate(schema.scenario.values):
        m = scen == i
        out["scenarios"][name] = {"auc": res["scenarios"][name]["auc"], "rows": int(m.sum()),
                                  "gauc": float(gauc(pos[m], prob[m], users[m])) if m.any() else float("nan")}
    nu, ni = pred["new_user"] == 1, pred["new_item"] == 1
    out["subsets"] = {"new_user": _subset_auc(pos, prob, nu), "new_item": _subset_auc(pos, prob, ni),
                      "known": _subset_auc(pos, prob, ~(nu | ni))}
    return out


def run_seed(args, prep: dict, out: str, seed: int, user_col: str) -> dict:
    """The three variants for one seed: {variant: metrics + seconds}."""
    cfg = make_config(args, seed)
    runs = os.path.join(out, "runs", f"seed{seed}")
    res, prev, chain_seconds = {}, None, 0.0
    for k, data in enumerate(prep["chain"], 1):
        run = os.path.join(runs, "a", f"W{k}")
        sec = train_run(cfg, data, run, warm=prev)
        chain_seconds += sec
        prev = run
    res["a"] = dict(evaluate_run(prev, prep["test"]["a"], user_col), seconds=sec, chain_seconds=chain_seconds)
    for v in ("b", "c"):
        run = os.path.join(runs, v)
        sec = train_run(cfg, prep["train"][v], run)
        res[v] = dict(evaluate_run(run, prep["test"][v], user_col), seconds=sec)
    return res


# ------------------------------------------------------------------------------------------ tables
def _mean_std(values) -> dict:
    v = np.asarray([x for x in values if x is not None and not np.isnan(x)], float)
    if not len(v):
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}


def aggregate(per_seed: Dict[int, dict]) -> dict:
    """{variant: {metric: mean/std over seeds}} of the per-seed results."""
    out = {}
    for v in VARIANTS:
        rows = [r[v] for r in per_seed.values()]
        agg = {k: _mean_std([r[k] for r in rows]) for k in ("auc", "gauc", "seconds")}
        if v == "a":
            agg["chain_seconds"] = _mean_std([r["chain_seconds"] for r in rows])
        agg["scenarios"] = {s: {k: _mean_std([r["scenarios"][s][k] for r in rows]) for k in ("auc", "gauc")}
                            for s in rows[0]["scenarios"]}
        agg["subsets"] = {s: _mean_std([r["subsets"][s] for r in rows]) for s in rows[0]["subsets"]}
        out[v] = agg
    return out


def _cell(m: dict, digits: int = 4) -> str:
    if m["mean"] is None:
        return "-"
    return f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f}"


def markdown(name: str, res: dict) -> str:
    """One dataset's table: a row per variant."""
    agg, prep = res["aggregate"], res["windows"]
    scen = list(agg["a"]["scenarios"])
    head = (["variant", "AUC", "GAUC"] + [f"AUC {s}" for s in scen] + [f"GAUC {s}" for s in scen]
            + ["AUC new-user rows", "AUC new-item rows", "AUC other rows", "train wall s"])
    lines = [f"### {name}: test = W{len(prep['rows'])} ({prep['rows'][-1]:,} rows); windows {prep['rows']}",
             "", f"Test rows with a user new in the test window: {prep['new_user_share']:.1%}; with a new item: "
             f"{prep['new_item_share']:.1%}; either: {prep['new_any_share']:.1%}. Seeds: {res['seeds']}; "
             f"model {res['model']}.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v, label in VARIANTS.items():
        a = agg[v]
        cells = [f"({v}) {label}", _cell(a["auc"]), _cell(a["gauc"])]
        cells += [_cell(a["scenarios"][s]["auc"]) for s in scen] + [_cell(a["scenarios"][s]["gauc"]) for s in scen]
        cells += [_cell(a["subsets"][k]) for k in ("new_user", "new_item", "known")]
        wall = _cell(a["seconds"], 1) + (f" (chain {_cell(a['chain_seconds'], 1)})" if v == "a" else "")
        lines.append("| " + " | ".join(cells + [wall]) + " |")
    return "\n".join(lines) + "\n"


def write_results(out: str, results: dict) -> None:
    from tfmsr.core.io import write_json, write_text

    write_json(os.path.join(out, "results.json"), results)
    text = "# Day over day: warm start vs. from scratch\n\n" + "\n".join(
        markdown(name, r) for name, r in results["datasets"].items())
    write_text(os.path.join(out, "results.md"), text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.incremental", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/incremental")
    p.add_argument("--datasets", default="ml-latest-small,ml-100k")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--model", default="dnn", help="a ranking model (its shipped config when there is one)")
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--batch", type=int, default=512)
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    results = {"model": args.model, "seeds": seeds, "budget": {"epochs": args.epochs, "patience": args.patience,
                                                               "batch": args.batch}, "datasets": {}}
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        out = os.path.join(args.out, name)
        t0 = time.time()
        prep = prepare(name, out, args.windows)
        user_col = "userId" if name == "ml-latest-small" else "user"
        per_seed = {}
        for seed in seeds:
            per_seed[seed] = run_seed(args, prep, out, seed, user_col)
            print(f"[incremental] {name} seed {seed}: " + "  ".join(
                f"({v}) auc {r['auc']:.4f} gauc {r['gauc']:.4f} {r['seconds']:.0f}s" for v, r in per_seed[seed].items()),
                file=sys.stderr, flush=True)
        results["datasets"][name] = {"windows": {k: prep[k] for k in ("rows", "new_user_share", "new_item_share",
                                                                      "new_any_share")},
                                     "per_seed": per_seed, "aggregate": aggregate(per_seed), "seeds": seeds,
                                     "model": args.model, "seconds": time.time() - t0}
        write_results(args.out, results)
    print(open(os.path.join(args.out, "results.md")).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
