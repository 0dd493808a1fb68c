"""``tfmsr bench input|train``: input-pipeline and training throughput, JSON output."""
from __future__ import annotations

import json


def _bench(args):
    from tfmsr.ranking import bench

    from tfmsr.ranking.config import load_config

    cfg = load_config(args.config, args.set)
    if args.what == "input":  # the config's data.cache, shuffle_buffer and seed
        res = bench.bench_input(args.data, args.batch, args.steps, args.warmup, cache=cfg["data"]["cache"],
                                seed=cfg["train"]["seed"], shuffle_buffer=cfg["data"]["shuffle_buffer"])
        if args.stages:  # the streaming pipeline's stages, cache or not
            res["stages"] = bench.input_stages(args.data, args.batch, args.steps, args.warmup,
                                               seed=cfg["train"]["seed"], shuffle_buffer=cfg["data"]["shuffle_buffer"])
    else:
        res = bench.bench_train(cfg, args.data, args.batch, args.steps, args.warmup)
    print(json.dumps(res) if args.json else "\n".join(f"{k}: {v}" for k, v in res.items()))


def add_parser(sub) -> None:
    b = sub.add_parser("bench", help="benchmarks with JSON output")
    b.add_argument("what", choices=["input", "train"])
    b.add_argument("--data", required=True)
    b.add_argument("--config")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    b.add_argument("--batch", type=int, default=1024)
    b.add_argument("--steps", type=int, default=200)
    b.add_argument("--warmup", type=int, default=30)
    b.add_argument("--json", action="store_true")
    b.add_argument("--stages", action="store_true",
                   help="input: also time the streaming pipeline's stages (read; + shuffle; + parse), CPU per row")
    b.set_defaults(fn=_bench)
