"""``tfmsr score``: batch-score TFRecords through an exported SavedModel."""
from __future__ import annotations

import json


def _score(args):
    from tfmsr.serving.scoring import score

    keep = [k.strip() for k in (args.keep or "").split(",") if k.strip()]
    print(json.dumps(score(args.saved_model, args.input, args.output, keep=keep, batch_size=args.batch,
                           overwrite=args.overwrite)))


def add_parser(sub) -> None:
    sc = sub.add_parser("score", help="batch-score TFRecords through an exported SavedModel")
    sc.add_argument("--saved-model", required=True, help="export root (uses all/, latest), servable dir or version dir")
    sc.add_argument("--input", required=True, help="glob of TFRecord shards (comma-separated globs allowed)")
    sc.add_argument("--output", required=True, help="FILE.parquet, FILE.csv or FILE.tfrecord")
    sc.add_argument("--keep", default="", help="comma-separated columns copied to the output next to prob")
    sc.add_argument("--batch", type=int, default=4096, help="rows per SavedModel call (default 4096)")
    sc.add_argument("--overwrite", action="store_true")
    sc.set_defaults(fn=_score)
