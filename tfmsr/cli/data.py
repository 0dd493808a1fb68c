"""``tfmsr data synth|convert|ingest|subset``: planted data with a known ground truth, a public dataset converted,
your own files ingested by a spec (``tfmsr/data/ingest``), or a dataset cut to some of its scenarios."""
from __future__ import annotations

import argparse
import json


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
                     item_scenario=args.item_scenario, layout=args.record_layout)
    print(json.dumps({"out": args.out, "splits": {k: v["rows"] for k, v in stats["splits"].items()},
                      "traffic_share": stats["traffic_share"]}))


# the switches of the planted premises (see tfmsr/data/synth.py): flag, type, default, metavar, help
_PREMISES = (
    ("--behaviour-scenario", float, 0.0, "KAPPA",
     "weight of a behaviour's scenario in its interest effect, 0..1 (SAINet's premise; see tfmsr/data/synth.py)"),
    ("--aspect-intensity", float, 0.0, "ETA",
     "how differently feed and search scenarios weigh the item and category aspects of interest, >= 0 "
     "(FIMN's premise; see tfmsr/data/synth.py)"),
    ("--local-activation", float, 0.0, "TAU",
     "temperature of the attention over past clicks by likeness to the candidate in the interest terms; "
     "0 = plain mean (DIN's premise; see tfmsr/data/synth.py)"),
    ("--interest-weight", float, 1.0, "LAMBDA",
     "scale of both behaviour-interest terms, >= 0, where the three premises above live "
     "(default 1; see tfmsr/data/synth.py)"),
    ("--search-scenarios", _int_list, None, "LIST",
     "comma-separated scenario indices that are search entrances and carry a query (default: the odd ones, 1,3,...)"),
    ("--scenario-clusters", _int_list, None, "LIST",
     "comma-separated cluster of each scenario; scenarios of one cluster share a taste, odd clusters oppose "
     "cluster 0 (default: s // 2, i.e. 0,0,1,1,2)"),
    ("--item-scenario", float, 0.0, "OMEGA",
     "weight of each item's own appeal in each scenario, >= 0; 0 = off (SASS's premise: an item needs a "
     "representation per scenario; see tfmsr/data/synth.py)"),
)


def _add_premises(s: argparse.ArgumentParser) -> None:
    """The switches of the planted premises (``_PREMISES``)."""
    for flag, kind, default, metavar, text in _PREMISES:
        s.add_argument(flag, type=kind, default=default, metavar=metavar, help=text)


def _add_synth(data) -> None:
    from tfmsr.data.convert._common import add_layout_argument

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
    add_layout_argument(s)
    _add_premises(s)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=_data_synth)


def _add_convert(data) -> None:
    from tfmsr.data.convert import converters

    conv = data.add_parser("convert", help="convert a public dataset to shards + schema + stats")
    conv_sub = conv.add_subparsers(dest="converter", required=True)
    for name, mod in converters().items():
        c = conv_sub.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0])
        c.add_argument("--src", required=True, help="folder with the original files")
        c.add_argument("--out", required=True, help="dataset folder to create")
        c.add_argument("--overwrite", action="store_true")
        mod.add_arguments(c)
        c.set_defaults(fn=mod.run)


def _add_ingest(data) -> None:
    from tfmsr.data.ingest import add_ingest_arguments, run_cli

    i = data.add_parser("ingest", help="your own files (CSV/TSV, Parquet, JSON lines) -> a dataset, by a YAML spec "
                                       "(see tfmsr/data/ingest and tfmsr/configs/data)")
    add_ingest_arguments(i)
    i.set_defaults(fn=run_cli)


def _data_subset(args):
    from tfmsr.data.subset import subset

    stats = subset(args.src, args.out, args.scenarios.split(","), overwrite=args.overwrite)
    print(json.dumps({"out": args.out, **stats["subset"]}))


def _add_subset(data) -> None:
    s = data.add_parser("subset", help="a dataset with only the rows of some scenarios (same records, schema and "
                                       "vocabularies; e.g. to train one scenario alone)")
    s.add_argument("--src", required=True, help="dataset folder to read")
    s.add_argument("--scenarios", required=True, help="comma-separated scenario names (or indices) to keep")
    s.add_argument("--out", required=True, help="dataset folder to create")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=_data_subset)


def add_parser(sub) -> None:
    data = sub.add_parser("data", help="create, convert or ingest datasets").add_subparsers(dest="data_verb",
                                                                                            required=True)
    _add_synth(data)
    _add_convert(data)
    _add_ingest(data)
    _add_subset(data)
