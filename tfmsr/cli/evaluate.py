"""``tfmsr evaluate``: per-scenario AUC, GAUC, logloss (and oracle AUC) of a ranking run on a split."""
from __future__ import annotations


def _evaluate(args):
    from tfmsr.core import metrics
    from tfmsr.ranking.evaluate import evaluate

    res = evaluate(args.model_dir, args.data, args.split, out=args.out, predictions=args.predictions)
    print(metrics.format_table({res["model"]: res}, list(res["scenarios"])))


def add_parser(sub) -> None:
    e = sub.add_parser("evaluate", help="per-scenario AUC, GAUC, logloss (and oracle AUC) on a split")
    e.add_argument("--model-dir", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="test")
    e.add_argument("--out", help="metrics JSON (default MODEL_DIR/metrics.json)")
    e.add_argument("--predictions", help="also write per-row predictions: FILE.parquet or FILE.csv")
    e.set_defaults(fn=_evaluate)
