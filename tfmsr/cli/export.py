"""``tfmsr export``: SavedModels for TF Serving of a finished run, ranking or retrieval by its ``run.yaml`` kind."""
from __future__ import annotations

import argparse
import json
import sys


def export_run(model_dir: str, out: str, **kwargs) -> dict:
    """Export the run in ``model_dir`` with its family's exporter (``RunDir.kind``: ranking | retrieval)."""
    from tfmsr.core.rundir import RunDir

    if RunDir(model_dir).kind == "retrieval":
        from tfmsr.retrieval.export import export_retrieval

        return export_retrieval(model_dir, out, **kwargs)
    from tfmsr.ranking.export import export

    return export(model_dir, out, **kwargs)


def _export(args):
    scen = None if args.scenarios is None else [x.strip() for x in args.scenarios.split(",")
                                                if x.strip() and x.strip() != "none"]
    res = export_run(args.model_dir, args.out, version=args.version, base_path=args.base_path, k=args.k,
                     scenarios=scen, log=lambda m: print(m, file=sys.stderr, flush=True))  # stdout: the JSON only
    print(json.dumps({k: res[k] for k in ("name", "version", "k", "servables", "models_config", "seconds")
                      if k in res}))


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """The export verb (``tfmsr export``; ``tfmsr retrieval export`` is the same command)."""
    p.add_argument("--model-dir", required=True, help="a finished training run (ranking or retrieval)")
    p.add_argument("--out", required=True, help="export root, e.g. saved_models/NAME (NAME names the TF Serving models)")
    p.add_argument("--version", type=int, help="integer version (default: one more than the highest existing)")
    p.add_argument("--base-path", help="where TF Serving sees --out, written into models.config (default: its absolute path)")
    p.add_argument("--k", type=int, help="retrieval runs: items returned by the top-K servables (default: the run's "
                                         "eval.k; 0: no top-K servables)")
    p.add_argument("--scenarios", help="comma-separated scenario names that get servables of their own (default: "
                                       "every scenario; ranking: 'none' = only the all servable)")
    p.set_defaults(fn=_export)


def add_parser(sub) -> None:
    add_export_arguments(sub.add_parser(
        "export", help="SavedModels for TF Serving: all/ + one servable per scenario + models.config (a retrieval "
                       "run: user/item/top-K servables per scenario)"))
