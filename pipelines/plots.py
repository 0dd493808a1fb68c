"""What the paper-figure scripts share (``saml_figure``, ``fimn_figure``): their common switches and
matplotlib helpers."""
from __future__ import annotations

import argparse

import numpy as np

from tfmsr.core.io import write_atomic


def heatmap(fig, ax, m: np.ndarray, names, title: str, fmt: str = ".3f") -> None:
    """A scenario x scenario matrix with its values written in the cells (NaN cells blank)."""
    im = ax.imshow(m, cmap="viridis")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    for (r, c), v in np.ndenumerate(m):
        if not np.isnan(v):
            ax.text(c, r, f"{v:{fmt}}", ha="center", va="center", fontsize=7, color="w")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)


def save_png(fig, path: str) -> None:
    """Write ``fig`` to ``path`` as a PNG (temp file, then rename) and close it."""
    import matplotlib.pyplot as plt

    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def figure_parser(doc: str, run_help: str, out: str, out_help: str) -> argparse.ArgumentParser:
    """A figure script's parser with the switches they all take: --model-dir, --data, the output, --split, --batch."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--model-dir", required=True, help=run_help)
    ap.add_argument("--data", required=True, help="dataset dir (schema.yaml, stats.json, split shards)")
    ap.add_argument(out, required=True, help=out_help)
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch", type=int, default=4096)
    return ap
