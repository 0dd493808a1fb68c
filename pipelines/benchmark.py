"""Paper-table benchmark: train every model spec x seed with one budget, evaluate on test, tabulate.

    python -m pipelines.benchmark --data DIR --models dnn,shared_bottom,saml,saml:mutual_gate=false \\
        --seeds 0,1,2 --base dnn --out DIR [--epochs 3 --patience 2 --batch 1024 --lr-scaling linear --set ...]

* A **model spec** is ``name[:key=value,key=value]``; the values are YAML (``dnn:hidden=[64,32]``) and
  set ``model.params``, so ablation variants are rows of their own. ``--models all`` = every registered
  model. The base model (``--base``, RelaImpr's reference) is added when it is not listed.
  ``name@individual[:key=value,...]`` is the "Individual" row of SAML's Table III: one model per scenario,
  each trained on its scenario's rows alone (``tfmsr data subset``, under ``OUT/subsets/``; the same epochs
  over its own rows) and scored on that scenario's test rows; the row's metrics pool their predictions.
* **Config** of a spec: ``configs/<name>.yaml`` when it exists, else the model's defaults; then the budget
  every row shares (``--epochs``, ``--patience``, ``--set`` pass-through), ``train.seed = <seed>``, then the
  spec's params.
* **Budget** (the same for every row): ``--epochs`` passes over the training split, i.e. ``epochs x train
  rows`` examples seen (``train.steps_per_epoch`` is reset to one pass unless ``--set`` says otherwise),
  with early stopping on validation AUC (``--patience``) and the weights of each model's best validation
  epoch evaluated. Each model trains at **its own config's batch and learning rate** (the paper settings the
  configs carry). ``--batch N`` forces one batch size on every row and rescales each row's learning rate by
  the linear scaling rule (Goyal et al. 2017), ``lr = lr_config * N / batch_config``, so a model keeps its
  step size per example; ``--lr-scaling none`` keeps the config's rate. ``results.json`` records the budget
  (``budget``: epochs, train rows, examples, patience, batch rule) and each run's batch, learning rate,
  epochs run and best epoch.
* **Runs** go to ``OUT/runs/<spec>/seed<k>`` (``tfmsr.ranking.train.train``, then
  ``tfmsr.ranking.evaluate.evaluate`` writes ``metrics.json`` there). A run whose ``metrics.json`` exists
  is reused, a trained run without it is only evaluated, an interrupted one resumes from its backup; so a
  long table is resumed by re-running the same command. A run made with a different config is an error
  (``--overwrite`` retrains every run). ``--only-existing`` trains nothing: it tabulates the runs already
  finished (a row with fewer seeds than ``--seeds`` is labelled ``(n=k of m seeds)``).
* **Rows**: per-scenario AUC, overall AUC, GAUC (by user), logloss as mean ± std over seeds (sample std,
  ddof 1), RelaImpr (SAML eq. 10) of every AUC column against the base's mean AUC in that column
  (``rela_impr`` = RelaImpr of the mean AUC = mean of the per-seed RelaImpr; ``rela_impr_std`` its std),
  and training examples/s (``history.json``: steps x batch / wall time of ``fit``, validation included).
  Also, without training: ``popularity`` (each item's smoothed positive rate in train, by its raw value:
  items a vocabulary's ``min_count`` sends to the OOV id keep their own rate,
  ``(positives + m * p) / (rows + m)`` with ``p`` the train positive rate and ``m = --pop-smoothing``,
  unseen items score ``p``), the floor every model must clear (``results.json`` ``under_popularity`` and a
  line of ``results.md`` name each model row whose mean AUC or GAUC is under it, within or beyond one std
  of its seeds); and ``oracle`` (AUC of the true click
  probability) when the schema has an oracle. A second table gives every model's RelaImpr per scenario
  (its AUC in a scenario against the base's in that scenario, as Table 2 of the FIMN paper reads per
  scenario). On planted data a third table closes the file: the generator's premise headroom
  (``stats.json`` ``generator.premise_headroom``, test split), the oracle's AUC per scenario and overall
  with each planted effect taken out, the most a module built for that premise can win over its ablation.
* Writes ``OUT/results.json`` (budget, every per-seed number, the aggregates) and ``OUT/results.md`` (the
  Markdown table) atomically after every run. ``--keep-going`` records a run that raises under
  ``rows[spec].failed`` (and leaves it out of the table) instead of stopping.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

import tfmsr  # noqa: F401  (pins Keras 2 before TensorFlow loads)

from tfmsr.core.checks import with_added_keys  # noqa: E402
from tfmsr.core.config import PACKAGED as CONFIGS  # noqa: E402  (the configs shipped in the package)

POPULARITY, ORACLE = "popularity", "oracle"
INDIVIDUAL = "@individual"  # a spec mark: one model per scenario on that scenario's rows (SAML's BST-Individual)
NO_EFFECT = {"train.log_every", "train.checkpoint_every"}  # config keys that do not change a run's result


# ---------------------------------------------------------------------------------------- specs
def _split_top(text: str) -> List[str]:
    """Split on commas outside brackets: ``"x=1,y=[1,2]"`` -> ``["x=1", "y=[1,2]"]``."""
    pieces, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch in "[{") - (ch in "]}")
        if ch == "," and depth == 0:
            pieces.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return [p for p in pieces + [cur.strip()] if p]


def split_specs(text: str) -> List[str]:
    """``"a,b:x=1,y=[1,2],c"`` -> ``["a", "b:x=1,y=[1,2]", "c"]``: a ``key=value`` piece without a ``:``
    before its ``=`` continues the previous spec's parameters."""
    specs: List[str] = []
    for piece in _split_top(text):
        if "=" in piece and ":" not in piece.split("=", 1)[0]:
            if not specs or ":" not in specs[-1]:
                raise ValueError(f"--models: parameter {piece!r} does not follow a 'name:key=value' spec")
            specs[-1] += "," + piece
        else:
            specs.append(piece)
    return specs


def parse_spec(spec: str) -> Tuple[str, List[str]]:
    """``"saml:mutual_gate=false,k=2"`` -> ``("saml", ["mutual_gate=false", "k=2"])``; the model name
    without the ``@individual`` mark (:func:`is_individual`)."""
    name, _, rest = spec.partition(":")
    params = _split_top(rest)
    for p in params:
        if "=" not in p:
            raise ValueError(f"--models: {spec!r}: expected name:key=value,..., got {p!r}")
    name = name.strip()
    return (name[:-len(INDIVIDUAL)] if name.endswith(INDIVIDUAL) else name), params


def is_individual(spec: str) -> bool:
    """``bst@individual[:params]``: one model per scenario, each trained on its scenario's rows alone."""
    return spec.partition(":")[0].strip().endswith(INDIVIDUAL)


def spec_params(spec: str) -> dict:
    """The spec's model params with their YAML values: ``"dnn:hidden=[8]"`` -> ``{"hidden": [8]}``."""
    from tfmsr.core.config import parse_overrides

    return parse_overrides(parse_spec(spec)[1])


def run_slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,+-]+", "_", spec)


def run_dir(out: str, spec: str, seed: int) -> str:
    return os.path.join(out, "runs", run_slug(spec), f"seed{seed}")


def spec_config(spec: str, seed: int, args) -> dict:
    """The config of one row and seed: configs/<name>.yaml (or defaults) + shared budget + spec params;
    with ``--batch`` the forced batch and the learning rate rescaled by :func:`scaled_learning_rate`."""
    from tfmsr.ranking.config import load_config

    name, params = parse_spec(spec)
    budget = [f"train.epochs={args.epochs}", "train.steps_per_epoch=null",
              f"train.early_stopping_patience={args.patience}", f"train.seed={seed}"]
    overrides = budget + list(args.set) + [f"model.params.{p}" for p in params]
    path = os.path.join(args.configs, f"{name}.yaml")
    load = (lambda extra: load_config(path, overrides + extra)) if os.path.exists(path) else (
        lambda extra: load_config(raw={"model": {"name": name}}, overrides=overrides + extra))
    cfg = load([])
    if cfg["model"]["name"] != name:
        raise ValueError(f"{path}: model.name is '{cfg['model']['name']}', expected '{name}'")
    if args.batch is None:
        return cfg
    lr = scaled_learning_rate(cfg["train"]["learning_rate"], cfg["data"]["batch_size"], args.batch, args.lr_scaling)
    return load([f"data.batch_size={args.batch}", f"train.learning_rate={lr!r}"])


def scaled_learning_rate(lr: float, batch: int, new_batch: int, rule: str) -> float:
    """The learning rate at ``new_batch`` of a config tuned at ``batch``: ``linear`` = Goyal et al. 2017's
    linear scaling rule ``lr * new_batch / batch`` (same step size per example); ``none`` = unchanged."""
    if rule == "none":
        return float(lr)
    if rule != "linear":
        raise ValueError(f"--lr-scaling must be linear or none, got {rule!r}")
    return float(lr) * new_batch / batch


def train_rows(data_dir: str) -> int:
    """Rows of the training split (stats.json, else counted)."""
    from tfmsr.ranking.train import split_rows

    return split_rows(data_dir, "train", _read_json(os.path.join(data_dir, "stats.json")) or {})


def budget_of(args, train_rows: int) -> dict:
    """The budget every row shares, as results.json records it."""
    return {"epochs": args.epochs, "train_rows": train_rows, "examples": args.epochs * train_rows,
            "patience": args.patience, "early_stopping": "validation AUC, best epoch's weights evaluated",
            "batch_size": args.batch if args.batch is not None else "per config",
            "lr_scaling": (args.lr_scaling if args.batch is not None else "per config"), "set": args.set}


# ---------------------------------------------------------------------------------------- one run
def _read_json(path: str) -> Optional[dict]:
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def _columns_of(res: dict, scenarios: List[str]) -> Dict[str, float]:
    out = {f"auc/{s}": res["scenarios"][s]["auc"] for s in scenarios}
    out.update({"auc": res["auc"], "gauc": res.get("gauc", math.nan), "logloss": res["logloss"]})
    return out


def _flat(d: dict, prefix: str = "") -> Dict[str, object]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_reusable(model_dir: str, cfg: dict, data_dir: str) -> None:
    """An existing run dir must hold a run of this very config and dataset (else it cannot be reused)."""
    import yaml

    path = os.path.join(model_dir, "run.yaml")
    if not os.path.exists(path):
        return
    with open(path) as fh:
        old = yaml.safe_load(fh) or {}
    want, have = _flat(cfg), _flat(with_added_keys(old.get("config") or {}, cfg))
    diff = [f"{k}: {have.get(k)!r} there, {want.get(k)!r} now" for k in sorted(set(want) | set(have))
            if want.get(k) != have.get(k) and k not in NO_EFFECT]
    if old.get("data") != os.path.abspath(data_dir):
        diff.append(f"data: {old.get('data')} there, {os.path.abspath(data_dir)} now")
    if diff:
        raise ValueError(f"{model_dir}: holds a run of another config or dataset ({'; '.join(diff[:4])}); "
                         "use another --out, or --overwrite to retrain")


def run_one(spec: str, seed: int, args, scenarios: List[str]) -> dict:
    """Train (or reuse) and evaluate one spec x seed; returns its per-seed record."""
    from tfmsr.ranking.evaluate import evaluate

    if is_individual(spec):
        return run_individual(spec, seed, args, scenarios)
    cfg = spec_config(spec, seed, args)
    model_dir = run_dir(args.out, spec, seed)
    metrics_path = os.path.join(model_dir, "metrics.json")
    status = "reused"
    if _read_json(metrics_path) is None:
        status = _train_once(cfg, args.data, model_dir)
        evaluate(model_dir, args.data, args.split, out=metrics_path)
    hist = _read_json(os.path.join(model_dir, "history.json")) or {}
    return _record(seed, status, model_dir, _read_json(metrics_path), [hist], cfg, scenarios)


def _train_once(cfg: dict, data_dir: str, model_dir: str) -> str:
    """Train ``model_dir`` unless it holds a finished run: "trained" or "evaluated" (only evaluated)."""
    from tfmsr.ranking.train import train

    check_reusable(model_dir, cfg, data_dir)
    if os.path.exists(os.path.join(model_dir, "final")):
        return "evaluated"
    import tf_keras as keras

    keras.backend.clear_session()
    train(cfg, data_dir, model_dir)
    return "trained"


def _record(seed, status, model_dir, res, hists: List[dict], cfg, scenarios) -> dict:
    """The per-seed record of a row from its metrics and the history of each model trained (one, or one per
    scenario for ``@individual``: examples/s over all of them, best epochs joined by ``+``)."""
    batch = cfg["data"]["batch_size"]
    steps = [h.get("steps") for h in hists]
    secs = [h.get("seconds") for h in hists]
    vals = [h.get("history", {}).get("val_auc") or [] for h in hists]
    best = [int(np.argmax(v)) + 1 if v else None for v in vals]
    one = len(hists) == 1
    known = None not in steps and None not in secs
    return {"seed": seed, "status": status, "model_dir": model_dir, "metrics": _columns_of(res, scenarios),
            "examples_per_sec": (hists[0].get("examples_per_sec") if one else
                                 sum(steps) * batch / sum(secs) if known and sum(secs) else None),
            "seconds": sum(secs) if known else None, "steps": sum(steps) if None not in steps else None,
            "epochs": sum(len(h.get("history", {}).get("loss", [])) for h in hists),
            "best_val_auc": hists[0].get("best_val_auc") if one else None,
            "best_epoch": best[0] if one else "+".join("-" if b is None else str(b) for b in best),
            "batch_size": batch, "learning_rate": cfg["train"]["learning_rate"],
            "examples_seen": sum(steps) * batch if None not in steps else None}


def scenario_data(args, scenario: str) -> str:
    """``OUT/subsets/<scenario>``: the dataset cut to one scenario's rows (``tfmsr data subset``), made once."""
    from tfmsr.data.subset import subset

    path = os.path.join(args.out, "subsets", run_slug(scenario))
    if not os.path.exists(os.path.join(path, "schema.yaml")):
        subset(args.data, path, [scenario], overwrite=os.path.exists(path))
    return path


def run_individual(spec: str, seed: int, args, scenarios: List[str]) -> dict:
    """``name@individual``: per scenario s, the spec's config trained on s's rows alone
    (``RUN/<s>``, same budget in passes over its own rows) and scored on s's rows of the split; the row's
    metrics are those of the pooled predictions, as every other row's."""
    from tfmsr.data.pipeline import split_files
    from tfmsr.features import Schema
    from tfmsr.ranking.evaluate import Predictor, load_trained, summarize

    cfg = spec_config(spec, seed, args)
    model_dir = run_dir(args.out, spec, seed)
    metrics_path = os.path.join(model_dir, "metrics.json")
    statuses, parts, hists = [], [], []
    for s in scenarios:
        data, sub = scenario_data(args, s), os.path.join(model_dir, run_slug(s))
        if _read_json(metrics_path) is None:
            statuses.append(_train_once(cfg, data, sub))
            schema = Schema.load(os.path.join(data, "schema.yaml"))
            parts.append(Predictor(split_files(data, args.split), schema, non_finite=cfg["data"]["non_finite"])
                         .run(load_trained(sub, schema)[0]))
        hists.append(_read_json(os.path.join(sub, "history.json")) or {})
    if parts:
        from tfmsr.core.io import write_json

        pooled = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        write_json(metrics_path, summarize(pooled, Schema.load(os.path.join(args.data, "schema.yaml"))))
    status = "reused" if not statuses else "trained" if "trained" in statuses else "evaluated"
    return _record(seed, status, model_dir, _read_json(metrics_path), hists, cfg, scenarios)


# ---------------------------------------------------------------------------------------- floor / ceiling
def item_feature(schema) -> str:
    """The item id feature: the item categorical whose table a behaviour sequence shares, else the first."""
    from tfmsr.data.stats import repeat_pair

    pair = repeat_pair(schema)
    if pair:
        return pair[0]
    items = schema.group("item", "categorical")
    if not items:
        raise ValueError(f"{schema.source}: no categorical item feature, so no item-popularity row")
    return items[0].name


def read_columns(data_dir: str, split: str, schema, names, raw: bool = False) -> Dict[str, np.ndarray]:
    """``names`` (plus the label) of every row of a split, in file order; ``raw``: vocabulary features as
    their raw values in the shards, not ids (two raw values of one OOV id stay two)."""
    from tfmsr.data.pipeline import make_dataset, make_parser, read_errors, split_files

    files = split_files(data_dir, split)
    out = {n: [] for n in (*names, "label")}
    parser = make_parser(schema, raw=True) if raw else None
    with read_errors(files, schema):
        for x, y in make_dataset(files, schema, 8192, training=False, parser=parser):
            for n in names:
                out[n].append(x[n].numpy())
            out["label"].append(y.numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def popularity_scores(train_items, train_labels, items, smoothing: float) -> np.ndarray:
    """Smoothed positive rate of each of ``items`` in train: ``(pos + m p) / (n + m)``; unseen -> ``p``."""
    import pandas as pd

    y = (np.asarray(train_labels) > 0.5).astype(np.float64)
    prior = float(y.mean())
    g = pd.Series(y).groupby(np.asarray(train_items)).agg(["sum", "count"])
    rate = (g["sum"].to_numpy() + smoothing * prior) / (g["count"].to_numpy() + smoothing)
    at = g.index.get_indexer(np.asarray(items))
    return np.where(at >= 0, rate[np.maximum(at, 0)], prior)


def reference_rows(args, schema, scenarios: List[str]) -> Dict[str, dict]:
    """The ``popularity`` row (and ``oracle`` when the schema has one), evaluated on the test split."""
    from tfmsr.core import metrics

    item = item_feature(schema)
    train = read_columns(args.data, "train", schema, [item], raw=True)
    keep = [schema.scenario.name] + [k for k in (schema.user_key, schema.oracle) if k]
    test = read_columns(args.data, args.split, schema, keep)
    test_items = read_columns(args.data, args.split, schema, [item], raw=True)[item]
    scores = popularity_scores(train[item], train["label"], test_items, args.pop_smoothing)
    users = test.get(schema.user_key) if schema.user_key else None
    summ = lambda p: metrics.summarize(test["label"], p, test[schema.scenario.name], schema.num_scenarios,
                                       users=users, scenario_names=scenarios)
    rows = {POPULARITY: {"kind": POPULARITY, "item_feature": item, "smoothing": args.pop_smoothing,
                         "runs": [{"seed": None, "metrics": _columns_of(summ(scores), scenarios)}]}}
    if schema.oracle:
        rows[ORACLE] = {"kind": ORACLE, "runs": [{"seed": None,
                                                  "metrics": _columns_of(summ(test[schema.oracle]), scenarios)}]}
    return rows


def premise_headroom(data_dir: str, split: str) -> Optional[dict]:
    """``generator.premise_headroom`` of a planted dataset (computed on its test split), else None."""
    path = os.path.join(data_dir, "stats.json")
    if split != "test" or not os.path.isfile(path):
        return None
    with open(path) as fh:
        return json.load(fh).get("generator", {}).get("premise_headroom") or None


# ---------------------------------------------------------------------------------------- aggregate
def _std(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def aggregate(rows: Dict[str, dict], columns: List[str], base: str) -> None:
    """Adds mean / std / rela_impr / rela_impr_std (per column) and examples_per_sec to every row."""
    from tfmsr.core.metrics import rela_impr

    for row in rows.values():
        vals = {c: np.array([r["metrics"][c] for r in row["runs"]], np.float64) for c in columns}
        row["mean"] = {c: float(v.mean()) if len(v) else math.nan for c, v in vals.items()}
        row["std"] = {c: _std(v) for c, v in vals.items()}
        eps = [r["examples_per_sec"] for r in row["runs"] if r.get("examples_per_sec") is not None]
        row["examples_per_sec"] = {"mean": float(np.mean(eps)), "std": _std(np.array(eps))} if eps else None
    ref = rows.get(base)
    for row in rows.values():
        row["rela_impr"], row["rela_impr_std"] = {}, {}
        for c in columns:
            if c == "logloss" or ref is None or not ref["runs"]:
                continue
            b = ref["mean"][c]
            per_seed = np.array([rela_impr(r["metrics"][c], b) for r in row["runs"]], np.float64)
            row["rela_impr"][c] = rela_impr(row["mean"][c], b)
            row["rela_impr_std"][c] = _std(per_seed)


def under_floor(rows: Dict[str, dict], columns=("auc", "gauc"), floor: str = POPULARITY) -> Dict[str, dict]:
    """Model rows whose mean ``columns`` fall under the ``floor`` row's (issue 32: no model under item
    popularity): ``{spec: {column: {"gap": mean - floor, "std": std over seeds, "beyond_std": gap < -std}}}``.
    Rows without a finished run, and columns the floor lacks (NaN), are not judged."""
    ref = rows.get(floor)
    if not ref or not ref.get("runs"):
        return {}
    out: Dict[str, dict] = {}
    for name, row in rows.items():
        if row["kind"] != "model" or not row["runs"]:
            continue
        for c in columns:
            gap = row["mean"][c] - ref["mean"][c]
            if gap < 0:  # NaN compares False: an absent column is not judged
                out.setdefault(name, {})[c] = {"gap": gap, "std": row["std"][c], "beyond_std": gap < -row["std"][c]}
    return out


def _floor_lines(result: dict) -> List[str]:
    """The popularity-floor sentence of results.md (see :func:`under_floor`)."""
    if POPULARITY not in result["rows"]:
        return []
    under = result.get("under_popularity") or {}
    if not under:
        return ["", f"No model row is under the `{POPULARITY}` row's AUC or GAUC."]
    cells = [f"`{name}` {c.upper()} {v['gap']:+.4f} ({'beyond' if v['beyond_std'] else 'within'} one std "
             f"{v['std']:.4f})" for name, cols in under.items() for c, v in cols.items()]
    return ["", f"Under the `{POPULARITY}` row (mean minus popularity): " + "; ".join(cells) + "."]


def _num(x, digits=4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _label(name: str, row: dict, result: dict) -> str:
    """A model row with fewer finished seeds than asked for says so."""
    partial = row["kind"] == "model" and len(row["runs"]) != len(result["seeds"])
    return f"{name} (n={len(row['runs'])} of {len(result['seeds'])} seeds)" if partial else name


def _rela_impr_table(result: dict) -> List[str]:
    """Table 2's RelaImpr per scenario: each model's AUC in a scenario against the base's in that scenario."""
    rows, scen = result["rows"], result["scenarios"]
    models = [(n, r) for n, r in rows.items() if r["kind"] == "model" and r["runs"] and r["rela_impr"]]
    if not models:
        return []
    cols = [f"auc/{s}" for s in scen] + ["auc"]
    lines = ["", f"RelaImpr of the AUC per scenario vs `{result['base']}` in that scenario (mean ± std over seeds):",
             "", "| model | " + " | ".join(scen) + " | all |", "|---|" + "---:|" * len(cols)]
    for name, row in models:
        single = len(row["runs"]) == 1
        cell = lambda c: f"{row['rela_impr'][c]:+.2f}%" + ("" if single else f" ± {row['rela_impr_std'][c]:.2f}")
        lines.append(f"| {_label(name, row, result)} | " + " | ".join(cell(c) for c in cols) + " |")
    return lines


def _head(result: dict) -> str:
    """The first line of results.md: data, seeds and the budget."""
    b = result["budget"]
    batch = ("each config's own batch and learning rate" if b["batch_size"] == "per config" else
             f"batch {b['batch_size']} for every row, learning rate scaling {b['lr_scaling']}")
    examples = f" ({b['examples']:,} examples)" if b.get("examples") else ""
    return (f"Split `{result['split']}` of `{result['data']}`; seeds {','.join(map(str, result['seeds']))}; budget: "
            f"{b['epochs']} epochs{examples}, {batch}, early stopping on validation AUC with patience "
            f"{b['patience']} (best epoch evaluated)" + (f", {' '.join(b['set'])}" if b["set"] else "")
            + f". Mean ± std over seeds; RelaImpr vs `{result['base']}` (SAML eq. 10); train ex/s = examples / "
            "wall time of fit (validation included); best epoch per seed; `popularity` = item's smoothed positive "
            "rate in train.")


def _run_cells(row: dict) -> List[str]:
    """batch, learning rate (the first seed's; every seed shares them) and best epoch of each seed."""
    runs = [r for r in row["runs"] if r.get("batch_size") is not None]
    if not runs:
        return ["-", "-", "-"]
    best = "/".join("-" if r.get("best_epoch") is None else str(r["best_epoch"]) for r in runs)
    return [str(runs[0]["batch_size"]), f"{runs[0]['learning_rate']:.3g}", best]


def markdown(result: dict) -> str:
    rows, scen = result["rows"], result["scenarios"]
    head = _head(result)
    cols = [f"AUC {s}" for s in scen] + ["AUC", "RelaImpr", "GAUC", "RelaImpr (GAUC)", "logloss", "train ex/s",
                                         "batch", "lr", "best epoch"]
    lines = [head, "", "| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, row in rows.items():
        if not row["runs"]:
            continue
        single = len(row["runs"]) == 1  # one seed (or no training): no spread to show
        cell = lambda c: _num(row["mean"][c]) + ("" if single else f" ± {_num(row['std'][c])}")
        ri = lambda c: "-" if c not in row["rela_impr"] or math.isnan(row["rela_impr"][c]) \
            else f"{row['rela_impr'][c]:+.2f}%"
        eps = row.get("examples_per_sec")
        cells = [cell(f"auc/{s}") for s in scen] + [cell("auc"), ri("auc"), cell("gauc"), ri("gauc"),
                                                    cell("logloss"), f"{eps['mean']:,.0f}" if eps else "-"]
        cells += _run_cells(row)
        lines.append(f"| {_label(name, row, result)} | " + " | ".join(cells) + " |")
    lines += _floor_lines(result)
    lines += _rela_impr_table(result)
    failed = [f"`{name}` seed {f['seed']} ({f['error'].splitlines()[0][:200]})"
              for name, row in rows.items() for f in row.get("failed", [])]
    if failed:
        lines += ["", "Failed runs (not in the table): " + "; ".join(failed) + "."]
    head = result.get("premise_headroom")
    if head and "oracle" in head:
        lines += ["", "Premise headroom (`stats.json` generator.premise_headroom, test split): the oracle's AUC "
                      "with one planted effect taken out (difference to the oracle), the most a module built for "
                      "that premise can win over its ablation.", "",
                  "| logit | " + " | ".join(f"AUC {s}" for s in result["scenarios"]) + " | AUC |",
                  "|---|" + "---:|" * (len(result["scenarios"]) + 1)]
        top = head["oracle"]
        for name, v in head.items():
            pairs = list(zip(v.get("scenario_auc", []), top.get("scenario_auc", []))) + [(v["auc"], top["auc"])]
            cells = [f"{a:.4f}" if name == "oracle" else f"{a:.4f} ({a - b:+.4f})" for a, b in pairs]
            lines.append(f"| {name if name == 'oracle' else 'w/o ' + name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _clean(x):
    """NaN -> None so results.json stays strict JSON."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_results(result: dict, out: str) -> None:
    aggregate(result["rows"], result["columns"], result["base"])
    result["under_popularity"] = under_floor(result["rows"])
    _write(os.path.join(out, "results.json"), json.dumps(_clean(result), indent=2))
    _write(os.path.join(out, "results.md"), markdown(result))


# ---------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m pipelines.benchmark", description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset folder (schema.yaml, train/valid/test shards)")
    ap.add_argument("--models", required=True, help="comma-separated specs name[:key=value,...], or 'all'")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    ap.add_argument("--base", default="dnn", help="spec (or 'popularity') RelaImpr is measured against (default dnn)")
    ap.add_argument("--out", required=True, help="output folder (runs/, results.json, results.md)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=None,
                    help="force this batch size on every row (default: each config's own batch and learning rate)")
    ap.add_argument("--lr-scaling", choices=("linear", "none"), default="linear",
                    help="with --batch: rescale each config's learning rate by batch / config batch (linear, "
                         "Goyal et al. 2017; default) or keep it (none)")
    ap.add_argument("--patience", type=int, default=2, help="early stopping patience in epochs (0: off)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every run, e.g. train.learning_rate=0.002")
    ap.add_argument("--split", default="test", help="split the table is computed on (default test)")
    ap.add_argument("--pop-smoothing", type=float, default=10.0, help="m of the popularity row (default 10)")
    ap.add_argument("--configs", default=CONFIGS, help="folder of <model>.yaml configs")
    ap.add_argument("--overwrite", action="store_true", help="retrain every run instead of reusing finished ones")
    ap.add_argument("--only-existing", action="store_true",
                    help="train nothing; tabulate the runs already finished under --out (rows with fewer seeds "
                         "are marked n=k)")
    ap.add_argument("--keep-going", action="store_true",
                    help="record a run that raises (rows[spec].failed) and go on with the next one")
    return ap.parse_args(argv)


def _specs_and_seeds(args) -> tuple:
    """The model specs (the base added when missing) and seeds of the flags; ValueError on a bad one."""
    from tfmsr.ranking.models import available

    specs = list(available()) if args.models.strip() == "all" else split_specs(args.models)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not specs or not seeds:
        raise ValueError("--models and --seeds must name at least one model and one seed")
    if args.base not in specs and args.base not in (POPULARITY, ORACLE):
        print(f"base '{args.base}' is not among --models; adding it")
        specs.insert(0, args.base)
    if len(set(specs)) != len(specs) or len(set(map(run_slug, specs))) != len(specs):
        raise ValueError(f"--models: duplicate spec in {specs}")
    if args.only_existing and args.overwrite:
        raise ValueError("--only-existing and --overwrite contradict each other: one trains nothing, "
                         "the other retrains every run")
    return specs, seeds


def _prepare_runs(args, specs, seeds) -> None:
    """Fail on a bad spec or a foreign run dir before hours of training; --overwrite removes the old runs."""
    for spec in specs:
        for seed in seeds:
            cfg = spec_config(spec, seed, args)
            if not args.overwrite:
                check_reusable(run_dir(args.out, spec, seed), cfg, args.data)
    os.makedirs(args.out, exist_ok=True)
    if args.overwrite:
        import shutil

        for spec in specs:
            for seed in seeds:
                shutil.rmtree(run_dir(args.out, spec, seed), ignore_errors=True)


def _run_jobs(args, result: dict, specs, seeds, scenarios) -> None:
    """Train (or reuse) every spec x seed, rewriting the results after each; --keep-going records failures."""
    jobs = [(spec, seed) for spec in specs for seed in seeds]
    trained_secs, trained = 0.0, 0
    for i, (spec, seed) in enumerate(jobs, 1):
        if args.only_existing and not os.path.exists(os.path.join(run_dir(args.out, spec, seed), "metrics.json")):
            print(f"== [{i}/{len(jobs)}] {spec} seed {seed}: not finished, left out (--only-existing)", flush=True)
            continue
        print(f"== [{i}/{len(jobs)}] {spec} seed {seed}", flush=True)
        t0 = time.time()
        try:
            rec = run_one(spec, seed, args, scenarios)
        except Exception as e:  # noqa: BLE001  (--keep-going: one broken model must not stop the table)
            if not args.keep_going:
                raise
            msg = f"{type(e).__name__}: {str(e).strip()}"[:2000]
            result["rows"][spec].setdefault("failed", []).append({"seed": seed, "error": msg})
            msg = msg.splitlines()[0][:200]
            write_results(result, args.out)
            print(f"== [{i}/{len(jobs)}] {spec} seed {seed}: FAILED ({msg}); continuing (--keep-going)", flush=True)
            continue
        result["rows"][spec]["runs"].append(rec)
        write_results(result, args.out)
        took = time.time() - t0
        if rec["status"] != "reused":
            trained_secs, trained = trained_secs + took, trained + 1
        left = len(jobs) - i
        eta = f"  ETA {trained_secs / trained * left / 60:.1f} min" if trained and left else ""
        m = rec["metrics"]
        print(f"== [{i}/{len(jobs)}] {spec} seed {seed}: {rec['status']} in {took:.0f}s  test auc "
              f"{_num(m['auc'])} gauc {_num(m['gauc'])} logloss {_num(m['logloss'])}{eta}", flush=True)


def main(argv=None) -> dict:
    from tfmsr.features import Schema

    args = parse_args(argv)
    schema = Schema.load(os.path.join(args.data, "schema.yaml"))
    scenarios = list(schema.scenario.values)
    specs, seeds = _specs_and_seeds(args)
    _prepare_runs(args, specs, seeds)
    result = {
        "data": os.path.abspath(args.data), "split": args.split, "scenarios": scenarios, "base": args.base,
        "seeds": seeds, "models": specs,
        "budget": budget_of(args, train_rows(args.data)),
        "columns": [f"auc/{s}" for s in scenarios] + ["auc", "gauc", "logloss"],
        "rows": {spec: {"kind": "model", "model": parse_spec(spec)[0], "params": spec_params(spec), "runs": []}
                 for spec in specs},
        "premise_headroom": premise_headroom(args.data, args.split),
    }
    print(f"== {POPULARITY} row (item popularity from train)")
    result["rows"].update(reference_rows(args, schema, scenarios))
    write_results(result, args.out)
    start = time.time()
    _run_jobs(args, result, specs, seeds, scenarios)
    failed = [f"{spec} seed {f['seed']}" for spec, row in result["rows"].items() for f in row.get("failed", [])]
    if failed:
        print(f"== FAILED runs (not in the table): {', '.join(failed)}")
    print(f"\n{markdown(result)}\n== done in {(time.time() - start) / 60:.1f} min; "
          f"{os.path.join(args.out, 'results.json')}, {os.path.join(args.out, 'results.md')}")
    return result


if __name__ == "__main__":
    from tfmsr.core.errors import ConfigError
    from tfmsr.data.pipeline import DataError
    from tfmsr.features import SchemaError

    try:
        res = main()
    except (ConfigError, SchemaError, DataError, ValueError, FileNotFoundError) as e:
        print(f"benchmark: error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(1 if any(row.get("failed") for row in res["rows"].values()) else 0)  # --keep-going failures
