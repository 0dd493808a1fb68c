"""MuSeNet's learned scenarios: per-example assignment, agreement with a known truth, and the Fig. 5 analogue.

    python -m pipelines.musenet_figure --model-dir RUN --data DATA --out fig.png \\
        [--split test] [--assignments assign.parquet] [--features price,user_activity,hour] [--truth latent_scenario]

* Streams ``DATA/<split>`` through a finished ``musenet`` run (``tfmsr train`` output) and writes one row per
  example (``--assignments``, Parquet or CSV by extension; default ``<out>.assignments.parquet``): the soft
  probabilities ``pi_0..pi_{K-1}`` (eq. 3), the learned scenario ``learned`` (``argmax pi``, the hard
  assignment of eq. 4), the label, the explicit scenario, the user, the repeat indicator ("target item in
  the behaviour sequence"), the inferred repeat propensity ``p_r`` (eq. 10's ``sum_k p_r^k a_k``), the raw
  values of ``--features`` and every extra of the schema (e.g. the planted ``latent_scenario``).
* Draws the Fig. 5(b) analogue to ``--out`` (PNG): per learned scenario, the mean raw value of each feature,
  the repeat rate (share of repeat rows, and the mean inferred ``p_r``), click rate and share of rows; with a
  truth column also the learned x truth contingency (row-normalised).
* Agreement (when ``--truth`` names a column, default ``latent_scenario`` if the schema has it): adjusted Rand
  index (Hubert & Arabie 1985) and purity of ``learned`` against the truth and against the explicit
  scenario field, with the purity a constant assignment reaches. Written to ``<out>.json`` and printed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

import tfmsr  # noqa: F401  (pins Keras 2 before TensorFlow loads)
from tfmsr.core.io import write_atomic, write_json  # noqa: E402


# ---------------------------------------------------------------------------------------- agreement
def contingency(pred, truth) -> np.ndarray:
    """``[n_pred_classes, n_truth_classes]`` counts (classes = the distinct values present)."""
    _, p = np.unique(np.asarray(pred), return_inverse=True)
    _, t = np.unique(np.asarray(truth), return_inverse=True)
    table = np.zeros((p.max() + 1 if p.size else 0, t.max() + 1 if t.size else 0), np.int64)
    np.add.at(table, (p.ravel(), t.ravel()), 1)
    return table


def adjusted_rand_index(pred, truth) -> float:
    """ARI = (index - expected) / (max - expected) over pairs, from the contingency table ``n_ij`` with
    row sums ``a_i`` and column sums ``b_j``: index = sum C(n_ij, 2), expected = sum C(a_i, 2) sum C(b_j, 2)
    / C(n, 2), max = (sum C(a_i, 2) + sum C(b_j, 2)) / 2. 1 for identical partitions, ~0 for random ones;
    1.0 when both partitions are trivial (one class each, or one example per class)."""
    table = contingency(pred, truth).astype(np.float64)
    n = table.sum()
    comb = lambda v: v * (v - 1) / 2.0
    index = comb(table).sum()
    sa, sb = comb(table.sum(1)).sum(), comb(table.sum(0)).sum()
    expected = sa * sb / comb(n) if n > 1 else 0.0
    top = (sa + sb) / 2.0
    if top == expected:
        return 1.0
    return float((index - expected) / (top - expected))


def purity(pred, truth) -> float:
    """Share of examples whose learned cluster's majority truth class is their own: ``sum_i max_j n_ij / n``."""
    table = contingency(pred, truth)
    return float(table.max(axis=1).sum() / max(table.sum(), 1))


def agreement(pred, truth) -> dict:
    table = contingency(pred, truth)
    return {"ari": adjusted_rand_index(pred, truth), "purity": purity(pred, truth),
            "purity_of_one_cluster": float(table.sum(0).max() / max(table.sum(), 1)),
            "contingency": table.tolist()}


# ---------------------------------------------------------------------------------------- streaming
def default_features(schema) -> List[str]:
    """Numeric features and the categorical ``context`` features (e.g. an hour id)."""
    return [f.name for f in schema.features if f.kind == "numeric"] + \
        [f.name for f in schema.group("context", "categorical")]


def stream_assignments(model, schema, files: Sequence[str], features: Sequence[str], batch: int = 4096):
    """One pass over ``files``: a pandas DataFrame with one row per example (see the module docstring)."""
    import pandas as pd
    import tensorflow as tf

    from tfmsr.data.pipeline import make_dataset, read_errors

    for name in features:
        f = schema.feature(name)
        if f.kind == "sequence":
            raise ValueError(f"--features: '{name}' is a sequence; name numeric or categorical features")
    keep = list(dict.fromkeys([schema.scenario.name, *( [schema.user_key] if schema.user_key else []),
                               *features, *schema.extras]))

    @tf.function(reduce_retracing=True)
    def step(x):
        return model.explain(x)

    cols: Dict[str, list] = {}
    with read_errors(files, schema):
        for x, y in make_dataset(files, schema, batch, training=False):
            if not model.built:  # build the layers eagerly, so restored weights land before tracing
                model(x, training=False)
            out = {k: v.numpy() for k, v in step(x).items()}
            for k in range(out["pi"].shape[1]):
                cols.setdefault(f"pi_{k}", []).append(out["pi"][:, k])
            cols.setdefault("learned", []).append(out["pi"].argmax(axis=1))
            cols.setdefault("label", []).append(y.numpy())
            for k in ("repeat", "p_r"):
                if k in out:
                    cols.setdefault(k, []).append(out[k])
            for k in keep:
                v = x[k].numpy()
                cols.setdefault(k, []).append(v.astype(str) if v.dtype == object else v)
    if not cols:
        raise ValueError(f"{os.path.dirname(files[0])}: the split holds no examples")
    return pd.DataFrame({k: np.concatenate(v) for k, v in cols.items()})


def profile(df, features: Sequence[str]):
    """Per learned scenario: share of rows, click rate, repeat rate, mean p_r and mean of each feature."""
    g = df.groupby("learned")
    cols = {"rows": g.size(), "share": g.size() / len(df), "click_rate": g["label"].mean()}
    for k in ("repeat", "p_r"):
        if k in df:
            cols[f"{k}_rate" if k == "repeat" else "p_r"] = g[k].mean()
    for f in features:
        cols[f] = g[f].mean()
    import pandas as pd

    return pd.DataFrame(cols)


def draw(prof, out: str, features: Sequence[str], truth_table: Optional[np.ndarray] = None,
         truth_name: Optional[str] = None, title: str = "") -> None:
    """The Fig. 5(b) analogue: one bar panel per quantity, learned scenarios on the x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(f, [f]) for f in features] + [("repeat", [c for c in ("repeat_rate", "p_r") if c in prof])] + \
        [("click rate", ["click_rate"]), ("share of rows", ["share"])]
    panels = [(t, c) for t, c in panels if c]
    n = len(panels) + (truth_table is not None)
    ncol = min(4, n)
    nrow = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.8 * nrow), squeeze=False)
    names = [f"s{k + 1}" for k in prof.index]
    x = np.arange(len(names))
    for ax, (t, cs) in zip(axes.flat, panels):
        w = 0.8 / len(cs)
        for j, c in enumerate(cs):
            ax.bar(x + (j - (len(cs) - 1) / 2) * w, prof[c].to_numpy(), w, label=c)
        ax.set_xticks(x, names)
        ax.set_title(t)
        if len(cs) > 1:
            ax.legend(fontsize=7)
    if truth_table is not None:
        ax = axes.flat[len(panels)]
        rows = truth_table / np.maximum(truth_table.sum(1, keepdims=True), 1)
        ax.imshow(rows, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_yticks(np.arange(rows.shape[0]), [f"s{k + 1}" for k in range(rows.shape[0])])
        ax.set_xlabel(truth_name or "truth")
        ax.set_title("learned x truth (row share)")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title or "MuSeNet learned scenarios")
    fig.tight_layout()
    write_atomic(out, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def _write_table(df, path: str) -> None:
    if path.endswith(".parquet"):
        write_atomic(path, lambda tmp: df.to_parquet(tmp, index=False))
    elif path.endswith(".csv"):
        write_atomic(path, lambda tmp: df.to_csv(tmp, index=False))
    else:
        raise ValueError(f"--assignments {path}: expected a .parquet or .csv file name")


def run(model_dir: str, data_dir: str, out: str, split: str = "test", assignments: Optional[str] = None,
        features: Optional[Sequence[str]] = None, truth: Optional[str] = None, batch: int = 4096) -> dict:
    from tfmsr.data.pipeline import split_files
    from tfmsr.features import Schema
    from tfmsr.ranking.evaluate import load_trained

    schema = Schema.load(os.path.join(data_dir, "schema.yaml"))
    model, _, run_cfg = load_trained(model_dir, schema)
    name = run_cfg["config"]["model"]["name"]
    if not hasattr(model, "explain"):
        raise ValueError(f"{model_dir}: a '{name}' run; the learned-scenario figure needs a musenet run")
    features = list(features) if features else default_features(schema)
    for f in features:
        schema.feature(f)  # SchemaError naming the schema and the feature
    if truth is None and "latent_scenario" in schema.extras:
        truth = "latent_scenario"
    if truth is not None and truth not in schema.extras and truth not in [f.name for f in schema.features]:
        raise ValueError(f"--truth '{truth}': not a feature or extra of {schema.source}")
    df = stream_assignments(model, schema, split_files(data_dir, split), features, batch)
    assignments = assignments or os.path.splitext(out)[0] + ".assignments.parquet"
    _write_table(df, assignments)
    prof = profile(df, features)
    params = run_cfg["config"]["model"]["params"]
    summary = {"model_dir": os.path.abspath(model_dir), "data": os.path.abspath(data_dir), "split": split,
               "rows": int(len(df)), "assignment": params.get("assignment"),
               "learned_scenarios": int(sum(c.startswith("pi_") for c in df.columns)),
               "used_scenarios": int(df["learned"].nunique()), "mean_max_pi": float(df.filter(like="pi_").max(axis=1).mean()),
               "profile": json.loads(prof.to_json(orient="index")),
               "vs_explicit_scenario": agreement(df["learned"], df[schema.scenario.name]),
               "assignments": os.path.abspath(assignments), "figure": os.path.abspath(out)}
    table = None
    if truth is not None:
        summary["truth"] = truth
        summary["vs_truth"] = agreement(df["learned"], df[truth])
        table = np.array(summary["vs_truth"]["contingency"])
    title = f"MuSeNet ({params.get('assignment')}) learned scenarios on {split}"
    if truth is not None:
        title += f": ARI {summary['vs_truth']['ari']:.3f}, purity {summary['vs_truth']['purity']:.3f} vs {truth}"
    draw(prof, out, features, table, truth, title)
    write_json(os.path.splitext(out)[0] + ".json", summary)
    return summary


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m pipelines.musenet_figure", description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True, help="a finished musenet run (tfmsr train output)")
    ap.add_argument("--data", required=True, help="dataset folder (schema.yaml + shards)")
    ap.add_argument("--out", required=True, help="figure PNG; <out>.json gets the summary")
    ap.add_argument("--split", default="test")
    ap.add_argument("--assignments", help="per-example assignment file (.parquet or .csv)")
    ap.add_argument("--features", help="comma-separated raw features to profile (default: numeric + context)")
    ap.add_argument("--truth", help="column holding a known scenario (default latent_scenario if present)")
    ap.add_argument("--batch", type=int, default=4096)
    args = ap.parse_args(argv)
    feats = [f.strip() for f in args.features.split(",") if f.strip()] if args.features else None
    summary = run(args.model_dir, args.data, args.out, args.split, args.assignments, feats, args.truth, args.batch)
    brief = {k: summary[k] for k in ("rows", "assignment", "learned_scenarios", "used_scenarios", "mean_max_pi",
                                     "figure", "assignments")}
    for key in ("vs_truth", "vs_explicit_scenario"):
        if key in summary:
            brief[key] = {k: v for k, v in summary[key].items() if k != "contingency"}
    print(json.dumps(brief, indent=2))
    return summary


if __name__ == "__main__":
    from tfmsr.core.errors import ConfigError
    from tfmsr.data.pipeline import DataError
    from tfmsr.features import SchemaError

    try:
        main()
    except (ConfigError, SchemaError, DataError, ValueError, FileNotFoundError) as e:
        print(f"musenet_figure: error: {e}", file=sys.stderr)
        sys.exit(2)
