"""SASS paper tables on local data: HR@K / NDCG@K per scenario, mean ± std over seeds.

    python -m pipelines.retrieval_benchmark --data planted=runs/retrieval/data/planted150k \\
        --data movielens=runs/retrieval/data/ml100k --seeds 0,1,2 --out runs/retrieval/bench \\
        [--variants SASS,SASS-Base,...] [--set train.epochs=2 ...] [--overwrite]

* **Rows** (``VARIANTS``; names as the paper's tables): SASS and SASS-Base (Table 2), the gate variants of
  Table 3 on SASS-Base (SASS* = no gate, + Production / Simnet / Sigmoid gate), Single Item Embedding
  (Table 5), No Scenario Bias Fusion and No Global Auxiliary Task (Table 6), SASS-Base with 2 and 4 ML-SAT
  layers (Figure 6; 3 is SASS-Base), the baselines DSSM and YoutubeDNN trained single-scenario (one
  model per scenario) and mix-scenario (Table 2's columns), ``extra`` rows that isolate this code's
  readings of the paper (SASS-Base with eq. 11 exactly as printed and random gate init; with random
  gate init only; the ``SAMPLED`` rows: SASS and SASS-Base with eq. 11 on 4 uniform sampled negatives per
  positive instead of the configs' logQ-corrected in-batch negatives, with 16, with 256 per batch and scenario
  (shared), and with word2vec's unigram^0.75 negatives, also for DSSM mix) and rows *not in the paper* (SASS
  and SASS-Base fine-tuned with a softmax instead of the eq. 11 pairwise loss; see ``tfmsr/retrieval/sass.py``;
  and the small-data rows ``SMALL_DATA``: 2 ML-SAT layers, a 64-wide first global layer, L2-SP of the scenario
  weights; and the ``IN_BATCH`` rows, whose negatives are the batch's other positives as YoutubeDNN's, with
  DSSM mix trained the same way as their control), and ``popularity`` (train positives of the item in the
  scenario; no training), the floor.
* **Config** of a row: ``configs/<sass|sass_base|dssm|youtubednn>.yaml`` + the row's switches + ``--set``
  (shared by every row) + ``train.seed``. Pre-training rows share one pair directory per dataset
  (``OUT/pairs/<dataset>``, derived from its train split).
* **Order**: seed-major (every dataset and row for the first seed, then the next seed), so a partial
  table is complete for the seeds done.
* **Runs** go to ``OUT/runs/<dataset>/<row>/seed<k>``; a run whose ``metrics.json`` exists with the same
  config is reused, so an interrupted table resumes by re-running the command (a different config is an
  error unless ``--overwrite``).
* ``--only-existing`` trains nothing: it tabulates the rows/seeds already finished under ``OUT`` (e.g. the
  main rows with 3 seeds and the ablations with 1, run as two invocations).
* **Gain table**: each row's relative gain in HR@K and NDCG@K over ``--base`` in every scenario,
  ``metric / base's metric - 1`` paired by seed (the seeds both rows have), mean ± std, and the scenario of
  the largest mean gain; the base is by default the best of the paper's baselines (the DSSM / YoutubeDNN
  Table 2 rows run, by overall HR@K), ``--base ROW`` picks another (e.g. the loss-matched control).
* Writes ``OUT/results.json`` (every per-seed number, the aggregates, the gains, per-scenario data sizes and
  pair counts) and ``OUT/results.md`` atomically after every run. Std is the sample std (ddof 1).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time
from typing import List, Optional

import numpy as np

import tfmsr  # noqa: F401  (pins Keras 2 before TensorFlow loads)

from tfmsr.core.config import PACKAGED as CONFIGS  # noqa: E402  (the configs shipped in the package)
from tfmsr.core.io import write_text  # noqa: E402

POPULARITY = "popularity"
SOFTMAX = "model.params.finetune_loss=softmax"
# engineering for small data (not in the paper; see tfmsr/retrieval/sass.py): 2 ML-SAT layers with a 64-wide first
# global layer, and the scenario units held near their pass-through start by L2-SP (W_0 and the auxiliary output
# start at zero, so the start is the global network's pass-through)
SMALL_DATA = ["model.params.layers=2", "model.params.global_hidden=[64]", "model.params.scenario_l2=1.0",
              "model.params.s0_init=zeros", "model.params.aux_init=zeros"]
IN_BATCH = "model.params.negatives_from=batch"   # the batch's other positives are the negatives (YoutubeDNN's)
# sampled negatives ~ train exposures^0.75 over the scenario corpus (word2vec's noise; the configs draw uniformly)
UNIGRAM = "model.params.negative_sampler=unigram"
# eq. 11 on sampled negatives (4 uniform per positive: the configs' recipe before session 21), not the configs'
# logQ-corrected in-batch negatives
SAMPLED = ["model.params.negatives_from=sampled", "model.params.pairwise_logq=false"]
SHARED = ["model.params.negatives_from=shared", "model.params.negatives=256", "model.params.pairwise_logq=false"]
PRINTED = SAMPLED + ["model.params.pairwise_form=printed", "model.params.pairwise_scale=1",
                     "model.params.gate_init=glorot"]
NO_LOGQ = [IN_BATCH, "model.params.pairwise_logq=false"]   # in-batch negatives, eq. 11 on the raw cosines

# (row name, config, overrides, where the row comes from)
VARIANTS = [
    ("SASS", "sass", [], "Table 2"),
    ("SASS-Base", "sass_base", [], "Table 2"),
    ("SASS*", "sass_base", ["model.params.gate=none"], "Table 3"),
    ("SASS*+Production Gate", "sass_base", ["model.params.gate=product"], "Table 3"),
    ("SASS*+Simnet Gate", "sass_base", ["model.params.gate=simnet"], "Table 3"),
    ("SASS*+Sigmoid Gate", "sass_base", ["model.params.gate=sigmoid"], "Table 3"),
    ("Single Item Embedding", "sass", ["model.params.item_per_scenario=false"], "Table 5"),
    ("No Scenario Bias Fusion", "sass", ["model.params.bias_fusion=false"], "Table 6"),
    ("No Global Auxiliary Task", "sass", ["model.params.beta=0.0"], "Table 6"),
    ("SASS-Base 2 layers", "sass_base", ["model.params.layers=2"], "Figure 6"),
    ("SASS-Base 4 layers", "sass_base", ["model.params.layers=4"], "Figure 6"),
    ("SASS 4 sampled negatives", "sass", SAMPLED, "extra"),
    ("SASS-Base 4 sampled negatives", "sass_base", SAMPLED, "extra"),
    ("SASS unigram^0.75 negatives", "sass", SAMPLED + [UNIGRAM], "extra"),
    ("SASS-Base unigram^0.75 negatives", "sass_base", SAMPLED + [UNIGRAM], "extra"),
    ("SASS 16 negatives", "sass", SAMPLED + ["model.params.negatives=16"], "extra"),
    ("SASS 256 shared negatives", "sass", SHARED, "extra"),
    ("SASS-Base 256 shared negatives", "sass_base", SHARED, "extra"),
    ("SASS-Base in-batch negatives without logQ", "sass_base", NO_LOGQ, "extra"),
    ("SASS-Base eq. 11 as printed + glorot init", "sass_base", PRINTED, "extra"),
    ("SASS-Base glorot init", "sass_base", ["model.params.gate_init=glorot"], "extra"),
    ("SASS-Base softmax-loss (not in paper)", "sass_base", SAMPLED + [SOFTMAX], "extra"),
    ("SASS softmax-loss (not in paper)", "sass", SAMPLED + [SOFTMAX], "extra"),
    ("SASS + L2-SP 2 layers 64-wide global (not in paper)", "sass", SAMPLED + SMALL_DATA, "extra"),
    ("SASS-Base + L2-SP 2 layers 64-wide global (not in paper)", "sass_base", SAMPLED + SMALL_DATA, "extra"),
    ("SASS-Base + L2-SP 2 layers 64-wide global softmax-loss (not in paper)", "sass_base",
     SAMPLED + SMALL_DATA + [SOFTMAX], "extra"),
    ("SASS in-batch softmax (not in paper)", "sass", [SOFTMAX, IN_BATCH], "extra"),
    ("SASS-Base in-batch softmax (not in paper)", "sass_base", [SOFTMAX, IN_BATCH], "extra"),
    ("SASS-Base + L2-SP 2 layers 64-wide global in-batch negatives (not in paper)", "sass_base",
     SMALL_DATA + NO_LOGQ, "extra"),
    ("SASS-Base + L2-SP 2 layers 64-wide global in-batch softmax (not in paper)", "sass_base",
     SMALL_DATA + [SOFTMAX, IN_BATCH], "extra"),
    ("SASS + L2-SP 2 layers 64-wide global in-batch softmax (not in paper)", "sass_small_data", [], "extra"),
    ("DSSM single", "dssm", ["train.mode=single"], "Table 2"),
    ("DSSM mix", "dssm", ["train.mode=mix"], "Table 2"),
    ("DSSM mix unigram^0.75 negatives", "dssm", ["train.mode=mix", UNIGRAM], "extra"),
    ("DSSM mix in-batch softmax (not in DSSM)", "dssm", ["train.mode=mix", IN_BATCH], "extra"),
    ("YoutubeDNN single", "youtubednn", ["train.mode=single"], "Table 2"),
    ("YoutubeDNN mix", "youtubednn", ["train.mode=mix"], "Table 2"),
]
NO_EFFECT = {"data.eval_batch_size"}
SAMPLER = ("negative_sampler", "sampler_power")   # no effect when the negatives are the batch's positives


def slug(name: str) -> str:
    """Run directory name of a row: ``SASS*+Sigmoid Gate`` -> ``sass-star-sigmoid-gate``."""
    return re.sub(r"[^0-9a-z]+", "-", name.lower().replace("*", " star ")).strip("-")


def row_config(config: str, overrides: List[str], shared: List[str], seed: int, pairs_dir: Optional[str],
               configs_dir: str = CONFIGS) -> dict:
    from tfmsr.retrieval.config import load_config

    sets = list(overrides) + list(shared) + [f"train.seed={seed}"]
    cfg = load_config(os.path.join(configs_dir, f"{config}.yaml"), sets)
    if cfg["pretrain"]["enabled"] and pairs_dir:
        cfg = load_config(raw=cfg, overrides=[f"pretrain.pairs={pairs_dir}"])
    return cfg


def _comparable(cfg: dict) -> dict:
    """The config without the keys that do not change a run's numbers (the negative sampler of in-batch
    negatives); model params completed with the model's current defaults, so a run from before a new switch
    (whose default is the old behaviour) is reused."""
    from tfmsr.retrieval.models.base import get_class

    c = json.loads(json.dumps(cfg))
    params = c["model"]["params"] = get_class(c["model"]["name"]).resolve(c["model"].get("params") or {})
    if params.get("negatives_from") == "batch":
        for key in SAMPLER:
            params.pop(key, None)
    for key in NO_EFFECT:
        section, name = key.split(".")
        c.get(section, {}).pop(name, None)
    return c


def not_applicable(cfg: dict, pairs: Optional[dict], schema=None) -> Optional[str]:
    """Why a row cannot run on a dataset, else None: the model refuses its config (a ``ConfigError`` when it
    is built for ``schema``, e.g. the product gate with ``--set model.params.s0_init=zeros``), or its
    pre-training has no pairs for the tasks it trains.

    E.g. on MovieLens (scenario = the user's age group) no user is in two scenarios, so "Single Item
    Embedding", which has no item-side task, has nothing to pre-train on."""
    from tfmsr.core.errors import ConfigError
    from tfmsr.retrieval.models.base import build
    from tfmsr.retrieval.train import pretrain_sides

    if schema is not None:
        try:
            build(cfg["model"]["name"], schema, cfg["model"]["params"])
        except ConfigError as e:
            return f"config refused ({e})"
    if not cfg["pretrain"]["enabled"]:
        return None
    sides = pretrain_sides(cfg)
    if pairs is None or any(pairs[side]["pairs"] for side in sides):
        return None
    counts = ", ".join(f"{side} pairs {pairs[side]['pairs']}" for side in sides)
    return f"no pre-training pairs for its tasks ({counts})"


def run_one(cfg: dict, data, data_dir: str, run_dir: str, overwrite: bool, log) -> dict:
    """Train + evaluate one row/seed (or reuse its metrics); returns the metrics with ``seconds``."""
    import yaml

    from tfmsr.retrieval.train import train

    metrics_path = os.path.join(run_dir, "metrics.json")
    if os.path.exists(metrics_path) and not overwrite:
        with open(os.path.join(run_dir, "run.yaml")) as fh:
            old = yaml.safe_load(fh)["config"]
        if _comparable(old) != _comparable(cfg):
            raise SystemExit(f"{run_dir}: trained with a different config; pass --overwrite to retrain")
        with open(os.path.join(run_dir, "history.json")) as fh:
            hist = json.load(fh)
        return dict(json.load(open(metrics_path)), seconds=hist.get("seconds"))
    import tf_keras as keras

    keras.backend.clear_session()
    summary = train(cfg, data_dir, run_dir, overwrite=True, log=log, data=data)
    return dict(summary["metrics"], seconds=summary["seconds"])


def _mean_std(values):
    v = np.asarray([x for x in values if x == x], np.float64)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def aggregate(per_seed: List[dict], scenarios: List[str], k: int) -> dict:
    out = {"scenarios": {}}
    for key in (f"hr@{k}", f"ndcg@{k}", f"hr@{k}_macro", f"ndcg@{k}_macro"):
        out[key], out[key + "_std"] = _mean_std([r[key] for r in per_seed])
    for s in scenarios:
        cell = {}
        for key in (f"hr@{k}", f"ndcg@{k}"):
            cell[key], cell[key + "_std"] = _mean_std([r["scenarios"][s][key] for r in per_seed])
        out["scenarios"][s] = cell
    secs = [r.get("seconds") for r in per_seed if r.get("seconds") is not None]
    out["seconds"] = float(np.mean(secs)) if secs else None
    out["seeds"] = len(per_seed)
    return out


BEST_BASELINE = "best-baseline"


def base_row(d: dict, base: str, k: int) -> Optional[str]:
    """The row the gains are against: ``base``, or (``best-baseline``) the paper's DSSM / YoutubeDNN Table 2
    row with the highest overall HR@K among those run; None when it has no finished seed."""
    rows = d["rows"]
    if base != BEST_BASELINE:
        return base if rows.get(base, {}).get("aggregate") else None
    run = [n for n, r in rows.items() if r.get("config") in ("dssm", "youtubednn") and r.get("source") == "Table 2"
           and r.get("aggregate")]
    return max(run, key=lambda n: rows[n]["aggregate"][f"hr@{k}"], default=None)


def _value(run: dict, metric: str, scenario: str) -> float:
    """A run's ``metric`` over all queries (``scenario`` "all") or in one scenario."""
    return run[metric] if scenario == "all" else run["scenarios"][scenario][metric]


def relative_gains(d: dict, base: str, k: int) -> dict:
    """``{row: {metric: {scenario | "all": (mean, std, n)}}}``: each row's ``metric / base - 1`` in %, paired by
    seed over the seeds both rows finished (``n``); the base itself and rows sharing no seed are left out."""
    by_seed = {r["seed"]: r for r in d["rows"][base]["per_seed"]}
    out = {}
    for name, row in d["rows"].items():
        if name in (base, POPULARITY) or not row.get("aggregate"):
            continue
        pairs = [(r, by_seed[r["seed"]]) for r in row["per_seed"] if r.get("seed") in by_seed]
        if not pairs:
            continue
        out[name] = {}
        for metric in (f"hr@{k}", f"ndcg@{k}"):
            cells = {}
            for s in d["scenarios"] + ["all"]:
                value = [(_value(m, metric, s), _value(b, metric, s)) for m, b in pairs]
                gains = [100.0 * (m / b - 1.0) if b > 0 else float("nan") for m, b in value]
                cells[s] = (*_mean_std(gains), len(pairs))
            out[name][metric] = cells
    return out


def _gain_table(d: dict, k: int) -> List[str]:
    base, gains = d.get("base"), d.get("gains") or {}
    if not base or not gains:
        return []
    scen, lines = d["scenarios"], []
    for metric in (f"hr@{k}", f"ndcg@{k}"):
        lines += [f"Relative gain in {metric.upper()} over `{base}` in each scenario, % (paired by seed: mean ± std; "
                  "n = seeds both rows have):", "",
                  "| row | " + " | ".join(scen) + " | all | largest gain in | n |", "|---|" + "---|" * (len(scen) + 3)]
        for name, g in gains.items():
            cells = g[metric]
            fmt = [f"{m:+.1f}" + (f" ± {sd:.1f}" if sd == sd else "") if m == m else "-"
                   for m, sd, _ in (cells[s] for s in scen + ["all"])]
            top = max(scen, key=lambda s: cells[s][0] if cells[s][0] == cells[s][0] else -np.inf)
            lines.append(f"| {name} | " + " | ".join(fmt) + f" | {top} | {cells['all'][2]} |")
        lines.append("")
    return lines


def _cell(m, s, k=None):
    return "-" if m != m else (f"{m:.4f} ± {s:.4f}" if s == s else f"{m:.4f}")


def markdown(results: dict) -> str:
    k = results["k"]
    lines = [f"# SASS retrieval benchmark: HR@{k} / NDCG@{k} per scenario (mean ± std over seeds "
             f"{results['seeds']}; the last column n = seeds done)", "",
             "Ranking over each scenario's full item corpus (items exposed in the scenario in train); the "
             "user's other train positives are excluded from the ranking; a test positive outside the "
             "corpus counts as a miss. `all` = over all test queries.", ""]
    for ds, d in results["datasets"].items():
        scen = d["scenarios"]
        lines += [f"## {ds}", "", f"data: `{d['data']}`", ""]
        lines.append("| scenario | " + " | ".join(scen) + " |")
        lines.append("|---|" + "---|" * len(scen))
        for key, label in (("train_positives", "train positives"), ("test_queries", "test queries"),
                           ("corpus", "corpus items"), ("coverage", "test positive in corpus")):
            vals = [d["scenario_info"][s][key] for s in scen]
            lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v)
                                                      for v in vals) + " |")
        if d.get("pairs"):
            p = d["pairs"]
            lines += ["", f"pre-training pairs: user {p['user']['pairs']} (users in >= 2 scenarios: "
                      f"{p['user']['keys_in_2plus_scenarios']}), item {p['item']['pairs']} (items in >= 2 "
                      f"scenarios: {p['item']['keys_in_2plus_scenarios']})"]
        sparsest = min(scen, key=lambda s: d["scenario_info"][s]["train_positives"])
        lines += ["", f"sparsest scenario: **{sparsest}**", ""]
        for metric in (f"hr@{k}", f"ndcg@{k}"):
            lines.append(f"| {metric.upper()} | source | " + " | ".join(scen) + " | all | s/run | n |")
            lines.append("|---|---|" + "---|" * (len(scen) + 3))
            for name, r in d["rows"].items():
                a = r["aggregate"]
                if r.get("not_applicable"):
                    lines.append(f"| {name} | {r['source']} | n/a: {r['not_applicable']} |" + " |" * (len(scen) + 2))
                if a is None:
                    continue
                cells = [_cell(a["scenarios"][s][metric], a["scenarios"][s][metric + "_std"]) for s in scen]
                cells.append(_cell(a[metric], a[metric + "_std"]))
                secs = "-" if a.get("seconds") is None else f"{a['seconds']:.0f}"
                lines.append(f"| {name} | {r['source']} | " + " | ".join(cells) + f" | {secs} | {a['seeds']} |")
            lines.append("")
        lines += _gain_table(d, k)
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", action="append", required=True, metavar="NAME=DIR", help="a dataset (repeatable)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", required=True)
    ap.add_argument("--variants", default="all", help=f"comma-separated row names, or all: {[v[0] for v in VARIANTS]}")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every row")
    ap.add_argument("--configs", default=CONFIGS)
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--only-existing", action="store_true",
                    help="train nothing; tabulate the rows/seeds already finished under --out")
    ap.add_argument("--base", default=BEST_BASELINE,
                    help="row the relative gains are against (default: the best DSSM / YoutubeDNN Table 2 row run)")
    return ap


def _wanted_rows(args) -> list:
    """The VARIANTS rows of ``--variants``, checked, with ``--base`` one of them (or the default)."""
    wanted = [v for v in VARIANTS if args.variants == "all" or v[0] in args.variants.split(",")]
    unknown = set(args.variants.split(",")) - {v[0] for v in VARIANTS} - {"all", POPULARITY}
    if unknown:
        raise SystemExit(f"--variants: unknown row(s) {sorted(unknown)} (known: {[v[0] for v in VARIANTS]})")
    if args.base != BEST_BASELINE and args.base not in {v[0] for v in wanted}:
        raise SystemExit(f"--base {args.base!r}: not one of the rows of this table ({[v[0] for v in wanted]})")
    return wanted


def _load_dataset(name: str, data_dir: str, args, wanted: list, eval_cfg: dict, log):
    """Load one dataset, write its pairs if a row pre-trains, and start its table (popularity row, rows
    marked not applicable); returns (table, data, pairs_dir)."""
    from tfmsr.retrieval.data import RetrievalData
    from tfmsr.retrieval.evaluate import PopularityScorer, evaluate
    from tfmsr.retrieval.pairs import read_summary, write_pairs
    from tfmsr.retrieval.train import query_splits

    k, split, exclude = eval_cfg["k"], eval_cfg["split"], eval_cfg["exclude_train_positives"]
    t0 = time.time()
    data = RetrievalData.load(data_dir, eval_splits=sorted({s for _, c, o, _ in wanted for s in query_splits(
        row_config(c, o, args.set, 0, None, args.configs))} | {split}))
    log(f"[bench] {name}: loaded {data_dir} in {time.time() - t0:.0f}s")
    scen = data.scenario_names
    info = {}
    for s, sn in enumerate(scen):
        q = data.positives(split, s)
        corpus = data.corpus(s)
        info[sn] = {"train_positives": int((data.train[data.schema.scenario.name] == s).sum()),
                    "test_queries": int(len(q["item"])) if q else 0, "corpus": int(len(corpus)),
                    "coverage": float(np.isin(q["item"], corpus).mean()) if q else float("nan")}
    pairs_dir = os.path.join(args.out, "pairs", name)
    needs_pairs = any(row_config(c, o, args.set, 0, pairs_dir, args.configs)["pretrain"]["enabled"]
                      for _, c, o, _ in wanted)
    if needs_pairs and not os.path.exists(os.path.join(pairs_dir, "pairs.json")):
        write_pairs(data_dir, pairs_dir, overwrite=True)
    d = {"data": os.path.abspath(data_dir), "scenarios": scen, "scenario_info": info,
         "pairs": read_summary(pairs_dir) if needs_pairs else None, "rows": {}}
    pop = evaluate(PopularityScorer(data), data, split, k, exclude)
    d["rows"][POPULARITY] = {"source": "reference", "per_seed": [pop], "aggregate": aggregate([pop], scen, k)}
    for row, config, overrides, source in wanted:
        d["rows"][row] = {"source": source, "config": config, "overrides": overrides, "per_seed": [],
                          "aggregate": None,
                          "not_applicable": not_applicable(row_config(config, overrides, args.set, 0, pairs_dir,
                                                                      args.configs), d["pairs"], data.schema)}
    return d, data, pairs_dir


def main(argv=None) -> dict:
    args = _parser().parse_args(argv)
    from tfmsr.core.progress import log

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    wanted = _wanted_rows(args)
    os.makedirs(args.out, exist_ok=True)
    eval_cfg = row_config("sass_base", [], args.set, 0, None, args.configs)["eval"]
    k = eval_cfg["k"]
    results = {"k": k, "seeds": seeds, "set": args.set, "datasets": {}}
    loaded = {}
    for spec in args.data:
        name, _, data_dir = spec.partition("=")
        if not data_dir:
            raise SystemExit(f"--data {spec!r}: expected NAME=DIR")
        results["datasets"][name], data, pairs_dir = _load_dataset(name, data_dir, args, wanted, eval_cfg, log)
        loaded[name] = (data, data_dir, pairs_dir)
    # seed-major: a complete one-seed table first, then the other seeds
    for seed in seeds:
        for name, (data, data_dir, pairs_dir) in loaded.items():
            d = results["datasets"][name]
            for row, config, overrides, source in wanted:
                if d["rows"][row]["not_applicable"]:
                    continue
                cfg = row_config(config, overrides, args.set, seed, pairs_dir, args.configs)
                run_dir = os.path.join(args.out, "runs", name, slug(row), f"seed{seed}")
                if args.only_existing and not os.path.exists(os.path.join(run_dir, "metrics.json")):
                    continue
                log(f"[bench] {name} / {row} / seed {seed}")
                r = d["rows"][row]
                r["per_seed"].append(dict(run_one(cfg, data, data_dir, run_dir, args.overwrite, log), seed=seed))
                r["aggregate"] = aggregate(r["per_seed"], d["scenarios"], k)
                d["base"] = base_row(d, args.base, k)
                d["gains"] = relative_gains(d, d["base"], k) if d["base"] else {}
                write_text(os.path.join(args.out, "results.json"), json.dumps(results, indent=2))
                write_text(os.path.join(args.out, "results.md"), markdown(results))
    return results

if __name__ == "__main__":
    main()
