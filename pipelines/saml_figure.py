"""SAML Fig. 3 analogue: the distribution of the mutual unit's ``alpha`` and ``g`` per scenario.

    python -m pipelines.saml_figure --model-dir RUN --data DATA --out fig.png [--split test] [--batch 4096]

Streams ``DATA/<split>`` through a trained ``saml`` run (``mutual`` and ``mutual_gate`` on) and keeps, for
every example of scenario ``i``, the coefficients its own prediction uses: ``alpha_ij`` (eq. 8, ``j != i``)
and ``g_i`` (eq. 7). Draws, like the paper's Fig. 3, the accumulated probability (empirical CDF) of
``alpha_ij`` for each scenario ``i`` (one curve per ``j``) and of ``g_i`` per scenario, plus the matrix of
mean ``alpha_ij``. When ``DATA/stats.json`` knows the true scenario similarity (the planted generator's
``generator.scenario_similarity`` / ``scenario_clusters``) the figure shows it too and the summary reports
whether similar scenarios get larger alpha: the Spearman correlation of mean ``alpha_ij`` with the true
similarity over all ordered pairs ``i != j``, and for each scenario whether its largest mean ``alpha`` goes to
its most similar scenario. Writes the PNG and the numbers (same path, ``.json`` suffix) atomically and
prints them.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Dict, Optional

import numpy as np

import tfmsr  # noqa: F401  (pins Keras 2 before TensorFlow loads)
from tfmsr.core.io import write_json  # noqa: E402
from pipelines.plots import figure_parser, heatmap, save_png  # noqa: E402


def collect(model, files, schema, batch_size: int = 4096) -> Dict[str, np.ndarray]:
    """Per example: ``scenario`` [N], own-row ``alpha`` [N, S] (``alpha[n, j] = alpha_{s_n j}``), ``gate`` [N]."""
    import tensorflow as tf

    from tfmsr.data.pipeline import make_dataset, read_errors

    key = schema.scenario.name

    @tf.function(reduce_retracing=True)
    def step(x):
        c = model.mutual_coefficients(x)
        s = tf.cast(x[key], tf.int32)
        return s, tf.gather(c["alpha"], s, batch_dims=1), tf.gather(c["gate"], s, batch_dims=1)

    out = {"scenario": [], "alpha": [], "gate": []}
    with read_errors(files, schema):
        for x, _ in make_dataset(files, schema, batch_size, training=False):
            for k, v in zip(("scenario", "alpha", "gate"), step(x)):
                out[k].append(v.numpy())
    if not out["scenario"]:
        raise ValueError(f"{files[0]}: the split holds no examples")
    return {k: np.concatenate(v) for k, v in out.items()}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    import pandas as pd

    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    return float(np.corrcoef(ra, rb)[0, 1])


def summarize(coef: Dict[str, np.ndarray], names, truth: Optional[dict] = None) -> dict:
    s_count = len(names)
    mean_alpha = np.full((s_count, s_count), np.nan)
    gate = {}
    for i, name in enumerate(names):
        sel = coef["scenario"] == i
        if sel.any():
            mean_alpha[i] = coef["alpha"][sel].mean(axis=0)
            g = coef["gate"][sel]
            gate[name] = {"n": int(sel.sum()), "mean": float(g.mean()),
                          "quantiles_10_50_90": [float(q) for q in np.quantile(g, [0.1, 0.5, 0.9])]}
    out = {"scenarios": list(names), "examples": int(len(coef["scenario"])),
           "mean_alpha": np.round(mean_alpha, 5).tolist(), "gate": gate}
    if truth and truth.get("scenario_similarity") is not None:
        sim = np.asarray(truth["scenario_similarity"], dtype=float)
        off = ~np.eye(s_count, dtype=bool) & ~np.isnan(mean_alpha)
        out["spearman_alpha_vs_similarity"] = spearman(mean_alpha[off], sim[off])
        top = {}
        for i, name in enumerate(names):
            if np.isnan(mean_alpha[i]).all():
                continue
            a, t = mean_alpha[i].copy(), sim[i].copy()
            a[i] = t[i] = -np.inf
            top[name] = {"largest_alpha": names[int(np.argmax(a))], "most_similar": names[int(np.argmax(t))]}
        out["top_alpha_is_most_similar"] = top
        out["top_match_rate"] = float(np.mean([v["largest_alpha"] == v["most_similar"] for v in top.values()]))
        clusters = truth.get("scenario_clusters")
        if clusters is not None:
            c = np.asarray(clusters)
            same = (c[:, None] == c[None, :]) & off
            diff = (c[:, None] != c[None, :]) & off
            out["mean_alpha_same_cluster"] = float(mean_alpha[same].mean()) if same.any() else None
            out["mean_alpha_other_cluster"] = float(mean_alpha[diff].mean()) if diff.any() else None
    return out


def _cdf(ax, values, label):
    v = np.sort(values)
    ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=label)


def _cdf_panels(axes, coef: Dict[str, np.ndarray], names) -> None:
    """A panel per scenario: the CDF of its alpha to each other scenario; then one of the gate g per scenario."""
    for i, name in enumerate(names):
        ax = axes[i]
        sel = coef["scenario"] == i
        for j, other in enumerate(names):
            if j != i and sel.any():
                _cdf(ax, coef["alpha"][sel, j], f"alpha({name},{other})")
        ax.set_title(f"alpha of scenario {name} (n={int(sel.sum())})", fontsize=9)
        ax.set_xlabel("alpha")
        ax.set_ylabel("accumulated probability")
        ax.legend(fontsize=7)
    ax = axes[len(names)]
    for i, name in enumerate(names):
        sel = coef["scenario"] == i
        if sel.any():
            _cdf(ax, coef["gate"][sel], f"g({name})")
    ax.set_title("gate g per scenario", fontsize=9)
    ax.set_xlabel("g")
    ax.set_ylabel("accumulated probability")
    ax.legend(fontsize=7)


def draw(coef: Dict[str, np.ndarray], summary: dict, out_png: str, truth: Optional[dict] = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = summary["scenarios"]
    s_count = len(names)
    panels = s_count + 2 + (1 if truth and truth.get("scenario_similarity") is not None else 0)
    cols = min(4, panels)
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    axes = axes.ravel()

    _cdf_panels(axes, coef, names)
    ma = np.array(summary["mean_alpha"], dtype=float)
    np.fill_diagonal(ma, np.nan)
    rho = summary.get("spearman_alpha_vs_similarity")
    heatmap(fig, axes[s_count + 1], ma, names, "mean alpha_ij (row i = scenario)"
            + (f"\nSpearman vs truth {rho:.2f}" if rho is not None else ""))
    if panels > s_count + 2:
        sim = np.array(truth["scenario_similarity"], dtype=float)
        np.fill_diagonal(sim, np.nan)
        heatmap(fig, axes[s_count + 2], sim, names, "true scenario similarity (generator)")
    for ax in axes[panels:]:
        ax.axis("off")
    fig.suptitle("SAML mutual unit: similarity alpha (eq. 8) and gate g (eq. 7)")
    fig.tight_layout()
    save_png(fig, out_png)


def main(argv=None) -> dict:
    args = figure_parser(__doc__, "a finished saml run (tfmsr train)", "--out",
                         "PNG path; the numbers go to the same path with .json").parse_args(argv)

    from tfmsr.data.pipeline import split_files
    from tfmsr.features import Schema
    from tfmsr.ranking.evaluate import load_trained

    schema = Schema.load(os.path.join(args.data, "schema.yaml"))
    model, _, run = load_trained(args.model_dir, schema)
    if run["config"]["model"]["name"] != "saml":
        raise SystemExit(f"{args.model_dir}: a '{run['config']['model']['name']}' run; the figure needs a saml run")
    coef = collect(model, split_files(args.data, args.split), schema, args.batch)
    truth = None
    stats_path = os.path.join(args.data, "stats.json")
    if os.path.exists(stats_path):
        with open(stats_path) as fh:
            truth = json.load(fh).get("generator")
    summary = summarize(coef, list(schema.scenario.values), truth)
    summary.update({"model_dir": os.path.abspath(args.model_dir), "split": args.split, "figure": os.path.abspath(args.out)})
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    draw(coef, summary, args.out, truth)
    json_path = os.path.splitext(args.out)[0] + ".json"
    write_json(json_path, summary)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"saml_figure: {e}")
