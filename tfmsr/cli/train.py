"""``tfmsr train``: train a ranking model (locally, or as a cluster role under ``TF_CONFIG``)."""
from __future__ import annotations

import argparse
import json


def _train(args):
    from tfmsr.ranking.config import load_config
    from tfmsr.ranking.train import train

    cfg = load_config(args.config, args.set)
    summary = train(cfg, args.data, args.model_dir, overwrite=args.overwrite, warm_start=args.warm_start)
    print(json.dumps({k: summary[k] for k in ("model", "steps", "examples_per_sec", "best_val_auc",
                                              "best_epoch", "resumed_from_step", "examples", "non_finite", "oov_ids",
                                              "lost_rows", "ahead_rows", "replayed_rows", "role", "evaluated")
                      if k in summary}))


def add_train_arguments(p: argparse.ArgumentParser, fn) -> None:
    """``--config --data --model-dir --set --overwrite --warm-start`` of a training verb (ranking and retrieval).
    ``--config`` is a path, or the bare name of a config shipped in the package (``saml``)."""
    p.add_argument("--config", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.epochs=1")
    p.add_argument("--overwrite", action="store_true", help="retrain over a finished run")
    p.add_argument("--warm-start", metavar="RUN1", help="start from this finished run's weights (same model, "
                                                       "params and features; tables grown by raw value)")
    p.set_defaults(fn=fn)


def add_parser(sub) -> None:
    add_train_arguments(sub.add_parser("train", help="train a model (locally, or as a cluster role under TF_CONFIG)"),
                        _train)
