"""FIMN Fig. 4 / Fig. 5 analogues: interest intensities and contributions per scenario, mutual weights.

    python -m pipelines.fimn_figure --model-dir RUN --data DATA --out-dir DIR [--config FILE] [--set KEY=VALUE ...]
        [--split test] [--batch 4096] [--max-examples N]

Trains or loads: when ``RUN`` holds no finished run (``final/``) it first trains one on ``DATA`` with
``--config`` (default: the ``fimn`` defaults) and the ``--set`` overrides, as ``tfmsr train`` does; a finished
run is only loaded (``--config`` / ``--set`` are then ignored). The run must be a ``fimn`` run with SIF and
SMM on (the quantities drawn come from those modules).

Streams ``DATA/<split>`` through ``FIMN.explain`` and writes, atomically, into ``DIR``:

* ``fimn_interests.png`` (Fig. 4): top row, one panel per interest (item field): the distribution (Gaussian
  kernel density) over the examples of each scenario of the interest's intensity, the row mean of the
  reshaped intra-gate ``E_Ia`` (section 5.4: ``v^_Ia``); bottom row, one panel per scenario: the
  distribution of each interest's contribution (inter-gate ``v_Ie``, eq. 11).
* ``fimn_mutual.png`` (Fig. 5): the heat map of mean mutual weights ``alpha_ij`` (eq. 16), row ``i`` averaged
  over the examples of scenario ``i`` (what scenario ``i``'s prediction uses), next to the true scenario
  similarity when ``DATA/stats.json`` records it (the planted generator).
* ``fimn_figure.json``: per scenario the SEM weight (mean of ``v_se``) with the traffic share it comes from,
  mean intensities / contributions, mean ``theta`` (eq. 18), the mean ``alpha`` matrix and, with a known
  similarity, the Spearman correlation of mean ``alpha_ij`` with it over ``i != j``, and (MIE on) each
  interest's FTA focus: the mean normalised entropy ``H(w) / log n`` of its attention weights over the ``n >= 2``
  real behaviours of an example (eq. 7; 1 = uniform, i.e. FTA no better than mean pooling). Also printed.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Dict, List, Optional

import numpy as np

import tfmsr  # noqa: F401  (pins Keras 2 before TensorFlow loads)
from tfmsr.core.io import write_json  # noqa: E402
from pipelines.plots import figure_parser, heatmap, save_png  # noqa: E402

NEEDED = ("intensity", "contribution", "mutual", "theta")


def train_or_load(model_dir: str, data_dir: str, config: Optional[str] = None, overrides=(), log=print):
    """The finished run in ``model_dir``, training it first on ``data_dir`` when there is none."""
    from tfmsr.features import Schema
    from tfmsr.ranking.config import load_config
    from tfmsr.ranking.evaluate import load_trained
    from tfmsr.ranking.train import train

    if not os.path.exists(os.path.join(model_dir, "final")):
        cfg = load_config(config, overrides) if config else load_config(raw={"model": {"name": "fimn"}},
                                                                         overrides=overrides)
        train(cfg, data_dir, model_dir, log=log)
    model, _, run = load_trained(model_dir, Schema.load(os.path.join(data_dir, "schema.yaml")))
    name = run["config"]["model"]["name"]
    if name != "fimn":
        raise ValueError(f"{model_dir}: a '{name}' run; the figure needs a fimn run")
    params = run["config"]["model"]["params"]
    if not (params.get("sif", True) and params.get("smm", True)):
        raise ValueError(f"{model_dir}: the figure needs SIF and SMM (model params sif and smm true)")
    return model


def collect(model, files, schema, batch_size: int = 4096, max_examples: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Per example: ``scenario`` [N], ``intensity`` / ``contribution`` [N, A], ``alpha`` [N, S] (own row
    ``alpha[n, j] = alpha_{s_n j}``), ``theta`` [N] (own scenario)."""
    import tensorflow as tf

    from tfmsr.data.pipeline import make_dataset, read_errors
    from tfmsr.layers import embed_behavior

    key = schema.scenario.name

    @tf.function(reduce_retracing=True)
    def step(x):
        e = model.explain(x)
        s = tf.cast(x[key], tf.int32)
        out = (s, e["intensity"], e["contribution"], tf.gather(e["mutual"], s, batch_dims=1),
               tf.gather(e["theta"], s, batch_dims=1))
        return out + ((attention_entropy(e["attention"], embed_behavior(model.embedding, x, schema).mask),)
                      if "attention" in e else ())

    names = ("scenario", "intensity", "contribution", "alpha", "theta", "attention_entropy")
    out: Dict[str, List[np.ndarray]] = {k: [] for k in names}
    seen = 0
    with read_errors(files, schema):
        for x, _ in make_dataset(files, schema, batch_size, training=False):
            for k, v in zip(names, step(x)):
                out[k].append(v.numpy())
            seen += int(x[key].shape[0])
            if max_examples and seen >= max_examples:
                break
    if not seen:
        raise ValueError(f"{files[0]}: the split holds no examples")
    return {k: np.concatenate(v)[:max_examples or None] for k, v in out.items() if v}


def attention_entropy(w, mask):
    """``H(w) / log n`` per example and interest (``w [B, A, L]``, ``mask [B, L]``, ``n`` real behaviours);
    NaN when ``n < 2``."""
    import tensorflow as tf

    n = tf.reduce_sum(tf.cast(mask, w.dtype), axis=-1)[:, None]                  # [B, 1]
    h = -tf.reduce_sum(tf.math.multiply_no_nan(tf.math.log(w), w), axis=-1)     # [B, A]; 0 log 0 = 0
    return tf.where(n >= 2, h / tf.math.log(tf.maximum(n, 2.0)), float("nan"))


def summarize(coef: Dict[str, np.ndarray], names, interests, sem: Optional[dict] = None,
              truth: Optional[dict] = None) -> dict:
    from pipelines.saml_figure import spearman

    s_count = len(names)
    mean_alpha = np.full((s_count, s_count), np.nan)
    per = {}
    for i, name in enumerate(names):
        sel = coef["scenario"] == i
        entry = {"n": int(sel.sum())}
        if sel.any():
            mean_alpha[i] = coef["alpha"][sel].mean(axis=0)
            entry.update({
                "intensity": {f: float(v) for f, v in zip(interests, coef["intensity"][sel].mean(0))},
                "contribution": {f: float(v) for f, v in zip(interests, coef["contribution"][sel].mean(0))},
                "theta": float(coef["theta"][sel].mean())})
            if "attention_entropy" in coef:
                entry["fta_entropy"] = {f: float(v) for f, v in
                                        zip(interests, np.nanmean(coef["attention_entropy"][sel], axis=0))}
        if sem:
            entry.update(sem[name])
        per[name] = entry
    out = {"scenarios": list(names), "interests": list(interests), "examples": int(len(coef["scenario"])),
           "per_scenario": per, "mean_alpha": np.round(mean_alpha, 5).tolist()}
    if truth and truth.get("scenario_similarity") is not None:
        sim = np.asarray(truth["scenario_similarity"], dtype=float)
        off = ~np.eye(s_count, dtype=bool) & ~np.isnan(mean_alpha)
        out["spearman_alpha_vs_similarity"] = spearman(mean_alpha[off], sim[off])
    return out


def kde(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Gaussian kernel density of ``values`` on ``grid`` (Silverman's bandwidth, floored for constant data)."""
    v = np.asarray(values, dtype=float)
    h = max(1.06 * v.std() * len(v) ** -0.2, 1e-3 * max(1.0, float(np.abs(v).max())))
    z = (grid[:, None] - v[None, :]) / h
    return np.exp(-0.5 * z ** 2).sum(axis=1) / (len(v) * h * np.sqrt(2 * np.pi))


def draw_interests(coef: Dict[str, np.ndarray], names, interests, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(interests), len(names))
    fig, axes = plt.subplots(2, cols, figsize=(3.6 * cols, 6.4), squeeze=False)

    def curves(ax, series, labels):
        present = [v for v in series if len(v)]
        lo = min(float(v.min()) for v in present)
        hi = max(float(v.max()) for v in present)
        pad = 0.05 * (hi - lo) + 1e-3
        grid = np.linspace(lo - pad, hi + pad, 200)
        for v, label in zip(series, labels):
            if len(v):
                ax.plot(grid, kde(v, grid), label=label)
        ax.set_ylabel("density")
        ax.legend(fontsize=7)

    for j, field in enumerate(interests):
        ax = axes[0, j]
        curves(ax, [coef["intensity"][coef["scenario"] == i, j] for i in range(len(names))], names)
        ax.set_title(f"intensity of the {field} interest", fontsize=9)
        ax.set_xlabel("row mean of E_Ia (eq. 12)")
    for i, name in enumerate(names):
        ax = axes[1, i]
        sel = coef["scenario"] == i
        if not sel.any():
            ax.set_title(f"scenario {name}: no examples", fontsize=9)
            continue
        curves(ax, [coef["contribution"][sel, j] for j in range(len(interests))], interests)
        ax.set_title(f"interest contributions in {name} (n={int(sel.sum())})", fontsize=9)
        ax.set_xlabel("inter-gate v_Ie (eq. 11)")
    for ax in list(axes[0, len(interests):]) + list(axes[1, len(names):]):
        ax.axis("off")
    fig.suptitle("FIMN SIF: interest intensities (intra-gate) and contributions (inter-gate) per scenario")
    fig.tight_layout()
    save_png(fig, path)


def draw_mutual(summary: dict, path: str, truth: Optional[dict] = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = summary["scenarios"]
    panels = [(np.array(summary["mean_alpha"], dtype=float), "mean mutual weight alpha_ij (eq. 16)\n"
               "row i = target scenario")]
    if truth and truth.get("scenario_similarity") is not None:
        rho = summary.get("spearman_alpha_vs_similarity")
        panels.append((np.array(truth["scenario_similarity"], dtype=float),
                       f"true scenario similarity (generator)\nSpearman vs alpha {rho:.2f}"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4.2), squeeze=False)
    for ax, (m, title) in zip(axes[0], panels):
        m = m.copy()
        np.fill_diagonal(m, np.nan)
        heatmap(fig, ax, m, names, title, fmt=".2f")
    fig.tight_layout()
    save_png(fig, path)


def sem_summary(model, names) -> Optional[dict]:
    """Per scenario: the SEM inputs (share, log count) and the mean of ``v_se`` over its dimensions."""
    if model.sem is None:
        return None
    freq, w = model.sem.frequency.numpy(), model.sem.scenario_weights().numpy()
    return {n: {"traffic_share": float(freq[i, 0]), "log_rows_normalised": float(freq[i, 1]),
                "sem_weight_mean": float(w[i].mean())} for i, n in enumerate(names)}


def run(model_dir: str, data_dir: str, out_dir: str, split: str = "test", batch: int = 4096,
        max_examples: Optional[int] = None, config: Optional[str] = None, overrides=(), log=print) -> dict:
    from tfmsr.data.pipeline import split_files

    model = train_or_load(model_dir, data_dir, config, overrides, log)
    schema = model.schema
    names = list(schema.scenario.values)
    coef = collect(model, split_files(data_dir, split), schema, batch, max_examples)
    truth = None
    stats_path = os.path.join(data_dir, "stats.json")
    if os.path.exists(stats_path):
        with open(stats_path) as fh:
            truth = json.load(fh).get("generator")
    summary = summarize(coef, names, model.interest_names, sem_summary(model, names), truth)
    os.makedirs(out_dir, exist_ok=True)
    figures = {"interests": os.path.join(out_dir, "fimn_interests.png"),
               "mutual": os.path.join(out_dir, "fimn_mutual.png")}
    draw_interests(coef, names, model.interest_names, figures["interests"])
    draw_mutual(summary, figures["mutual"], truth)
    summary.update({"model_dir": os.path.abspath(model_dir), "split": split,
                    "figures": {k: os.path.abspath(v) for k, v in figures.items()}})
    write_json(os.path.join(out_dir, "fimn_figure.json"), summary)
    return summary


def main(argv=None) -> dict:
    ap = figure_parser(__doc__, "a fimn run (trained here first if it has no final/)", "--out-dir",
                       "where the two PNGs and fimn_figure.json go")
    ap.add_argument("--config", help="training config when the run must be trained (default: fimn defaults)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides for training")
    ap.add_argument("--max-examples", type=int, help="use the first N examples of the split (default: all)")
    args = ap.parse_args(argv)
    summary = run(args.model_dir, args.data, args.out_dir, args.split, args.batch, args.max_examples, args.config,
                  args.set, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    from tfmsr.core.errors import ConfigError
    from tfmsr.features import SchemaError

    try:
        main()
    except (FileNotFoundError, ValueError, ConfigError, SchemaError) as e:
        sys.exit(f"fimn_figure: {e}")
