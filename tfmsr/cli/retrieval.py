"""``tfmsr retrieval <verb>``: pairs, train, evaluate, export, models (added to ``tfmsr.cli`` by ``add_parser``).

Handlers import TensorFlow lazily, so building the parser stays cheap.
"""
from __future__ import annotations

import json

from tfmsr.cli.export import add_export_arguments
from tfmsr.cli.train import add_train_arguments


def _pairs(args):
    from tfmsr.retrieval.pairs import write_pairs

    s = write_pairs(args.data, args.out, split=args.split, rows_per_shard=args.rows_per_shard, overwrite=args.overwrite)
    print(json.dumps({"out": args.out, "split": s["split"],
                      **{side: {k: s[side][k] for k in ("keys", "keys_in_2plus_scenarios", "pairs")}
                         for side in ("user", "item")}}))


def _train(args):
    from tfmsr.retrieval.config import load_config
    from tfmsr.retrieval.train import train

    cfg = load_config(args.config, args.set)
    summary = train(cfg, args.data, args.model_dir, overwrite=args.overwrite, warm_start=args.warm_start)
    m, k = summary["metrics"], cfg["eval"]["k"]
    print(json.dumps({"model": summary["model"], "mode": summary["mode"], "seconds": round(summary["seconds"], 1),
                      f"hr@{k}": m[f"hr@{k}"], f"ndcg@{k}": m[f"ndcg@{k}"],
                      "scenarios": {s: {key: v[key] for key in (f"hr@{k}", f"ndcg@{k}")}
                                    for s, v in m["scenarios"].items()}}))


def _evaluate(args):
    from tfmsr.retrieval.evaluate import format_table
    from tfmsr.retrieval.train import evaluate_run

    res = evaluate_run(args.model_dir, args.data, args.split, args.k, out=args.out, popularity=args.popularity)
    first = next(iter(res.values()))
    print(format_table(res, list(first["scenarios"]), first["k"]))


def _models(args):
    from tfmsr.retrieval.models import available

    for name, doc in available().items():
        print(f"{name:16s} {doc}")


def add_parser(sub) -> None:
    """Add the ``retrieval`` verb group to the top-level subparsers ``sub``."""
    r = sub.add_parser("retrieval", help="multi-scenario candidate retrieval: SASS, DSSM, YoutubeDNN, top-K evaluation")
    rs = r.add_subparsers(dest="retrieval_verb", required=True)

    p = rs.add_parser("pairs", help="cross-scenario user/item pairs for SASS pre-training, as shards")
    p.add_argument("--data", required=True, help="a tfmsr dataset directory")
    p.add_argument("--out", required=True, help="pairs directory to create")
    p.add_argument("--split", default="train")
    p.add_argument("--rows-per-shard", type=int, default=50_000)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(fn=_pairs)

    add_train_arguments(rs.add_parser("train", help="pre-train (if enabled), fine-tune and evaluate a retrieval model"),
                        _train)

    e = rs.add_parser("evaluate", help="HR@K / NDCG@K per scenario over each scenario's item corpus")
    e.add_argument("--model-dir", required=True)
    e.add_argument("--data", help="dataset directory (default: the one the run was trained on)")
    e.add_argument("--split", default="test")
    e.add_argument("--k", type=int)
    e.add_argument("--out", help="metrics JSON")
    e.add_argument("--popularity", action="store_true", help="add the item-popularity reference row")
    e.set_defaults(fn=_evaluate)

    add_export_arguments(rs.add_parser("export", help="the same as `tfmsr export`: SavedModels per scenario: user "
                                                      "tower, item tower (+ item-vector corpus), top-K servable"))

    m = rs.add_parser("models", help="list registered retrieval models")
    m.set_defaults(fn=_models)
