"""``tfmsr <verb>``: data, train, evaluate, export, score, models, bench, demo.

Errors a user can cause (bad config or schema, unreadable data, existing outputs) print one line
``tfmsr: error: ...`` naming the file and field, and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # hide TF's C++ start-up chatter; errors still raise
import tfmsr  # noqa: E402,F401  (pins Keras 2 before TensorFlow loads)


def _int_list(text: str) -> list:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _data_synth(args):
    from tfmsr.data.synth import generate

    stats = generate(args.out, rows=args.rows, scenarios=args.scenarios, seed=args.seed, users=args.users,
                     items=args.items, seq_len=args.seq_len, rows_per_shard=args.rows_per_shard,
                     compression="GZIP" if args.gzip else None, overwrite=args.overwrite,
                     behaviour_scenario=args.behaviour_scenario, aspect_intensity=args.aspect_intensity,
                     local_activation=args.local_activation, interest_weight=args.interest_weight,
                     search_scenarios=args.search_scenarios, clusters=args.scenario_clusters,
                     item_scenario=args.item_scenario)
    print(json.dumps({"out": args.out, "splits": {k: v["rows"] for k, v in stats["splits"].items()},
                      "traffic_share": stats["traffic_share"]}))


def _train(args):
    from tfmsr.config import load_config
    from tfmsr.training.trainer import train

    cfg = load_config(args.config, args.set)
    summary = train(cfg, args.data, args.model_dir, overwrite=args.overwrite)
    print(json.dumps({k: summary[k] for k in ("model", "steps", "examples_per_sec", "best_val_auc",
                                              "resumed_from_step", "role", "evaluated") if k in summary}))


def _evaluate(args):
    from tfmsr import metrics
    from tfmsr.training.evaluation import evaluate

    res = evaluate(args.model_dir, args.data, args.split, out=args.out, predictions=args.predictions)
    print(metrics.format_table({res["model"]: res}, list(res["scenarios"])))


def _models(args):
    from tfmsr.models import available

    for name, doc in available().items():
        print(f"{name:16s} {doc}")


def _bench(args):
    from tfmsr import bench

    if args.what == "input":
        res = bench.bench_input(args.data, args.batch, args.steps, args.warmup)
    else:
        from tfmsr.config import load_config

        cfg = load_config(args.config, args.set)
        res = bench.bench_train(cfg, args.data, args.batch, args.steps, args.warmup)
    print(json.dumps(res) if args.json else "\n".join(f"{k}: {v}" for k, v in res.items()))


def _demo(args):
    from pipelines.demo import main as demo

    demo(args.out, rows=args.rows, epochs=args.epochs)


def _export(args):
    from tfmsr.export import export

    scen = [x.strip() for x in (args.scenarios or "").split(",") if x.strip()] or None
    res = export(args.model_dir, args.out, version=args.version, base_path=args.base_path, k=args.k,
                 scenarios=scen, log=lambda m: print(m, file=sys.stderr, flush=True))  # stdout: the JSON only
    print(json.dumps({k: res[k] for k in ("name", "version", "k", "servables", "models_config", "seconds")
                      if k in res}))


def _score(args):
    from tfmsr.scoring import score

    keep = [k.strip() for k in (args.keep or "").split(",") if k.strip()]
    print(json.dumps(score(args.saved_model, args.input, args.output, keep=keep, batch_size=args.batch,
                           overwrite=args.overwrite)))


def _cluster(args):
    from tfmsr.training.cluster import run

    try:
        code = run(args.command, args.workers, args.ps, evaluator=args.evaluator, restarts=args.restarts,
                   threads=args.threads)
    except ValueError as e:
        print(f"tfmsr: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if code:
        raise SystemExit(code)


def add_train_arguments(p: argparse.ArgumentParser, fn) -> None:
    """``--config --data --model-dir --set --overwrite`` of a training verb (ranking and retrieval)."""
    p.add_argument("--config", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.epochs=1")
    p.add_argument("--overwrite", action="store_true", help="retrain over a finished run")
    p.set_defaults(fn=fn)


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """The export verb (``tfmsr export``; ``tfmsr retrieval export`` is the same command)."""
    p.add_argument("--model-dir", required=True, help="a finished training run (ranking or retrieval)")
    p.add_argument("--out", required=True, help="export root, e.g. saved_models/NAME (NAME names the TF Serving models)")
    p.add_argument("--version", type=int, help="integer version (default: one more than the highest existing)")
    p.add_argument("--base-path", help="where TF Serving sees --out, written into models.config (default: its absolute path)")
    p.add_argument("--k", type=int, help="retrieval runs: items returned by the top-K servables (default: the run's "
                                         "eval.k; 0: no top-K servables)")
    p.add_argument("--scenarios", help="retrieval runs: comma-separated scenario names to export (default: all)")
    p.set_defaults(fn=_export)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tfmsr", description="Multi-scenario recommendation trainer")
    sub = p.add_subparsers(dest="verb", required=True)

    data = sub.add_parser("data", help="create or convert datasets").add_subparsers(dest="data_verb", required=True)
    s = data.add_parser("synth", help="planted multi-scenario data with a known ground truth")
    s.add_argument("--out", required=True)
    s.add_argument("--rows", type=int, default=200_000)
    s.add_argument("--scenarios", type=int, default=5)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--users", type=int)
    s.add_argument("--items", type=int)
    s.add_argument("--seq-len", type=int, default=30)
    s.add_argument("--rows-per-shard", type=int, default=50_000)
    s.add_argument("--gzip", action="store_true", help="GZIP-compressed shards")
    s.add_argument("--behaviour-scenario", type=float, default=0.0, metavar="KAPPA",
                   help="weight of a behaviour's scenario in its interest effect, 0..1 (SAINet's premise; "
                        "see tfmsr/data/synth.py)")
    s.add_argument("--aspect-intensity", type=float, default=0.0, metavar="ETA",
                   help="how differently feed and search scenarios weigh the item and category aspects of "
                        "interest, >= 0 (FIMN's premise; see tfmsr/data/synth.py)")
    s.add_argument("--local-activation", type=float, default=0.0, metavar="TAU",
                   help="temperature of the attention over past clicks by likeness to the candidate in the "
                        "interest terms; 0 = plain mean (DIN's premise; see tfmsr/data/synth.py)")
    s.add_argument("--interest-weight", type=float, default=1.0, metavar="LAMBDA",
                   help="scale of both behaviour-interest terms, >= 0, where the three premises above live "
                        "(default 1; see tfmsr/data/synth.py)")
    s.add_argument("--search-scenarios", type=_int_list, metavar="LIST",
                   help="comma-separated scenario indices that are search entrances and carry a query "
                        "(default: the odd ones, 1,3,...)")
    s.add_argument("--scenario-clusters", type=_int_list, metavar="LIST",
                   help="comma-separated cluster of each scenario; scenarios of one cluster share a taste, odd "
                        "clusters oppose cluster 0 (default: s // 2, i.e. 0,0,1,1,2)")
    s.add_argument("--item-scenario", type=float, default=0.0, metavar="OMEGA",
                   help="weight of each item's own appeal in each scenario, >= 0; 0 = off (SASS's premise: an "
                        "item needs a representation per scenario; see tfmsr/data/synth.py)")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=_data_synth)

    conv = data.add_parser("convert", help="convert a public dataset to shards + schema + stats")
    conv_sub = conv.add_subparsers(dest="converter", required=True)
    from tfmsr.data.convert import converters

    for name, mod in converters().items():
        c = conv_sub.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0])
        c.add_argument("--src", required=True, help="folder with the original files")
        c.add_argument("--out", required=True, help="dataset folder to create")
        c.add_argument("--overwrite", action="store_true")
        mod.add_arguments(c)
        c.set_defaults(fn=mod.run)

    add_train_arguments(sub.add_parser("train", help="train a model (locally, or as a cluster role under TF_CONFIG)"),
                        _train)

    e = sub.add_parser("evaluate", help="per-scenario AUC, GAUC, logloss (and oracle AUC) on a split")
    e.add_argument("--model-dir", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="test")
    e.add_argument("--out", help="metrics JSON (default MODEL_DIR/metrics.json)")
    e.add_argument("--predictions", help="also write per-row predictions (CSV)")
    e.set_defaults(fn=_evaluate)

    m = sub.add_parser("models", help="list registered models")
    m.set_defaults(fn=_models)

    b = sub.add_parser("bench", help="benchmarks with JSON output")
    b.add_argument("what", choices=["input", "train"])
    b.add_argument("--data", required=True)
    b.add_argument("--config")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    b.add_argument("--batch", type=int, default=1024)
    b.add_argument("--steps", type=int, default=200)
    b.add_argument("--warmup", type=int, default=30)
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=_bench)

    add_export_arguments(sub.add_parser(
        "export", help="SavedModels for TF Serving: all/ + one servable per scenario + models.config (a retrieval "
                       "run: user/item/top-K servables per scenario)"))

    sc = sub.add_parser("score", help="batch-score TFRecords through an exported SavedModel")
    sc.add_argument("--saved-model", required=True, help="export root (uses all/, latest), servable dir or version dir")
    sc.add_argument("--input", required=True, help="glob of TFRecord shards (comma-separated globs allowed)")
    sc.add_argument("--output", required=True, help="FILE.parquet, FILE.csv or FILE.tfrecord")
    sc.add_argument("--keep", default="", help="comma-separated columns copied to the output next to prob")
    sc.add_argument("--batch", type=int, default=4096, help="rows per SavedModel call (default 4096)")
    sc.add_argument("--overwrite", action="store_true")
    sc.set_defaults(fn=_score)

    cl = sub.add_parser("cluster", help="run a training command as a local TensorFlow cluster, one process per role")
    cl.add_argument("--workers", type=int, default=2, help="workers (each reads its own shards)")
    cl.add_argument("--ps", type=int, default=0, help="parameter servers (0: MultiWorkerMirroredStrategy)")
    cl.add_argument("--evaluator", action="store_true", help="add an evaluator that scores each checkpoint")
    cl.add_argument("--restarts", type=int, default=0, help="restart a failed worker / the whole cluster up to N times")
    cl.add_argument("--threads", type=int, help="TF intra/inter-op threads per process")
    cl.add_argument("command", nargs=argparse.REMAINDER, help="-- train --config C --data D --model-dir M")
    cl.set_defaults(fn=_cluster)

    from tfmsr.retrieval.cli import add_parser as add_retrieval_parser

    add_retrieval_parser(sub)  # tfmsr retrieval pairs|train|evaluate|export|models

    d = sub.add_parser("demo", help="the main job on planted data: generate, train, evaluate per scenario")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--rows", type=int, default=400_000)
    d.add_argument("--epochs", type=int, default=3)
    d.set_defaults(fn=_demo)
    return p


def main(argv=None) -> int:
    from tfmsr.data.pipeline import DataError
    from tfmsr.features import SchemaError
    from tfmsr.models.base import ConfigError

    args = build_parser().parse_args(argv)
    if getattr(args, "what", None) == "train" and not args.config:
        build_parser().error("bench train needs --config")
    try:
        args.fn(args)
    except (ConfigError, SchemaError, DataError, FileExistsError, FileNotFoundError) as e:
        print(f"tfmsr: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
