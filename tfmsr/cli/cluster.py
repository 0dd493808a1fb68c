"""``tfmsr cluster``: run a training command as a local TensorFlow cluster, one process per role."""
from __future__ import annotations

import argparse
import sys


def _cluster(args):
    from tfmsr.distribute.cluster import run

    try:
        code = run(args.command, args.workers, args.ps, evaluator=args.evaluator, restarts=args.restarts,
                   threads=args.threads)
    except ValueError as e:
        print(f"tfmsr: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if code:
        raise SystemExit(code)


def add_parser(sub) -> None:
    cl = sub.add_parser("cluster", help="run a training command as a local TensorFlow cluster, one process per role")
    cl.add_argument("--workers", type=int, default=2, help="workers (each reads its own shards)")
    cl.add_argument("--ps", type=int, default=0, help="parameter servers (0: MultiWorkerMirroredStrategy)")
    cl.add_argument("--evaluator", action="store_true", help="add an evaluator that scores each checkpoint")
    cl.add_argument("--restarts", type=int, default=0, help="restart a failed worker / the whole cluster up to N times")
    cl.add_argument("--threads", type=int, help="TF intra/inter-op threads per process")
    cl.add_argument("command", nargs=argparse.REMAINDER, help="-- train --config C --data D --model-dir M")
    cl.set_defaults(fn=_cluster)
