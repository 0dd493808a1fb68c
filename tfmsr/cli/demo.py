"""``tfmsr demo``: the main job on planted data (``tfmsr.ranking.demo``)."""
from __future__ import annotations


def _demo(args):
    from tfmsr.ranking.demo import main as demo

    demo(args.out, rows=args.rows, epochs=args.epochs)


def add_parser(sub) -> None:
    d = sub.add_parser("demo", help="the main job on planted data: generate, train, evaluate per scenario")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--rows", type=int, default=400_000)
    d.add_argument("--epochs", type=int, default=3)
    d.set_defaults(fn=_demo)
