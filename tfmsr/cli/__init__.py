"""``tfmsr <verb>``: data, train, evaluate, export, serving, score, models, bench, cluster, retrieval, demo.

One module per verb, each with its parser beside its handler (``add_parser(sub)``); this is the only
package that sees both the ranking and the retrieval family. Errors a user can cause (bad config or
schema, unreadable data, existing outputs) print one line ``tfmsr: error: ...`` naming the file and
field, and exit with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # hide TF's C++ start-up chatter; errors still raise
import tfmsr  # noqa: E402,F401  (pins Keras 2 before TensorFlow loads)
from tfmsr.cli import (bench, cluster, data, demo, evaluate, export, models, retrieval, score, serving,  # noqa: E402
                       train)

VERBS = (data, train, evaluate, models, bench, export, serving, score, cluster, retrieval, demo)  # the order of --help


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tfmsr", description="Multi-scenario recommendation trainer")
    sub = p.add_subparsers(dest="verb", required=True)
    for verb in VERBS:
        verb.add_parser(sub)
    return p


def main(argv=None) -> int:
    from tfmsr.core.errors import ConfigError
    from tfmsr.data.pipeline import DataError
    from tfmsr.distribute.accounting import NonFiniteLoss
    from tfmsr.features import SchemaError

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "what", None) == "train" and not args.config:
        parser.error("bench train needs --config")
    try:
        args.fn(args)
    except (ConfigError, SchemaError, DataError, FileExistsError, FileNotFoundError, NonFiniteLoss) as e:
        print(f"tfmsr: error: {e}", file=sys.stderr)
        return 2
    return 0
