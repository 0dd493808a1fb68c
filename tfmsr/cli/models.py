"""``tfmsr models``: the registered ranking models."""
from __future__ import annotations


def _models(args):
    from tfmsr.ranking.models import available

    for name, doc in available().items():
        print(f"{name:16s} {doc}")


def add_parser(sub) -> None:
    sub.add_parser("models", help="list registered models").set_defaults(fn=_models)
