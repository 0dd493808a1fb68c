"""``tfmsr serving pin``: the version TF Serving answers with (a rollback, or back to the latest)."""
from __future__ import annotations

import json


def _pin(args):
    from tfmsr.serving.rollback import pin

    print(json.dumps(pin(args.out, None if args.latest else args.version)))


def add_parser(sub) -> None:
    s = sub.add_parser("serving", help="TF Serving's models.config of an export: pin a version (rollback)")
    verbs = s.add_subparsers(dest="serving_verb", required=True)
    p = verbs.add_parser("pin", help="rewrite OUT/models.config to serve version N of every servable "
                                     "(model_version_policy specific), or the latest again")
    p.add_argument("--out", required=True, help="export root, e.g. saved_models/NAME")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", type=int, help="the version to serve, e.g. the previous one for a rollback")
    which.add_argument("--latest", action="store_true", help="serve the latest version (TF Serving's default)")
    p.set_defaults(fn=_pin)
