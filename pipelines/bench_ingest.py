"""Ingestion speed and memory: ``python -m pipelines.bench_ingest [--rows 1000000]`` -> one JSON line.

Generates (once per size, cached under ``--dir``) a click log ``log.csv`` with raw **string** ids
(``user_id``, ``item_id``), a ``page`` column (the scenario, 5 values), ``click`` and a unix ``ts``, plus two
side tables joined on a key: ``items.csv`` (item -> category, brand, price) and ``users.csv`` (user -> age,
gender, city). The spec (written beside them) builds a 30-long behaviour sequence from the log by time
(each behaviour's item, category and page ride along), a per-user time split, vocabularies from train
counts, log1p + standardised price and bucketised age. The ingestion runs in a fresh process so that its
peak RSS is its own; users and items are fixed (``--users``, ``--items``), so comparing ``--rows 1000000``
with ``--rows 3000000`` shows memory bounded by the vocabularies, not the rows.

``--layout {features,packed}``: the shards' record layout (``tfmsr.data.layout``; default the spec's, i.e.
``DEFAULT_LAYOUT``), so the two can be compared on the same log.

JSON: layout, rows, input MB, seconds, rows/s (rows read per wall-clock second, start-up included and excluded),
CPU seconds of the ingestion (both threads) and rows per CPU second, peak RSS MB and the RSS after the
imports (TensorFlow alone is most of it), output MB, vocabulary sizes, the 1-minute load average before
and after (the machine is shared: wall-clock rates fall when other jobs run).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Optional

import numpy as np

PAGES = np.array(["home", "search", "cart", "detail", "feed"])


def _ids(prefix: str, k: np.ndarray):
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.binary_join_element_wise(pa.scalar(prefix), pc.cast(pa.array(k), pa.string()), "")


def generate(folder: str, rows: int, users: int, items: int, seed: int = 0) -> None:
    """log.csv (rows), items.csv, users.csv and spec.yaml in ``folder`` (skipped when already there)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if os.path.isfile(os.path.join(folder, "spec.yaml")):
        return
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, items + 1) ** 0.8  # long-tailed item popularity
    pacsv.write_csv(pa.table({"item_id": _ids("item", np.arange(items)),
                              "category": _ids("cat", rng.integers(0, 800, items)),
                              "brand": _ids("brand", rng.integers(0, 3000, items)),
                              "price": np.round(rng.lognormal(3, 1, items), 2)}), os.path.join(tmp, "items.csv"))
    pacsv.write_csv(pa.table({"user_id": _ids("user", np.arange(users)), "age": rng.integers(16, 70, users),
                              "gender": rng.choice(["f", "m"], users), "city": _ids("city", rng.integers(0, 300, users))}),
                    os.path.join(tmp, "users.csv"))
    with open(os.path.join(tmp, "log.csv"), "wb") as fh:
        for lo in range(0, rows, 1_000_000):
            n = min(1_000_000, rows - lo)
            t = pa.table({"user_id": _ids("user", rng.integers(0, users, n)),
                          "item_id": _ids("item", rng.choice(items, n, p=pop / pop.sum())),
                          "page": PAGES[rng.integers(0, len(PAGES), n)], "click": rng.integers(0, 2, n),
                          "ts": rng.integers(1_700_000_000, 1_700_000_000 + 30 * 86400, n)})
            pacsv.write_csv(t, fh, write_options=pacsv.WriteOptions(include_header=lo == 0))
    with open(os.path.join(tmp, "spec.yaml"), "w") as fh:
        fh.write(SPEC)
    os.rename(tmp, folder)


SPEC = """# pipelines/bench_ingest.py: a click log with string ids, two side tables, a 30-long behaviour sequence
inputs:
  - path: log.csv
    columns: {user_id: string, item_id: string, page: string, click: int64, ts: int64}
tables:
  items: {path: items.csv, key: item_id, columns: {item_id: string, category: string, brand: string, price: float64}}
  users: {path: users.csv, key: user_id, columns: {user_id: string, age: int64, gender: string, city: string}}
label: {name: click, from: click}
scenario: {from: page}
user: user
time: ts
features:
  user: {from: user_id, group: user}
  gender: {group: user}
  city: {group: user}
  age_band: {from: age, group: user, boundaries: [18, 25, 35, 45, 55]}
  item: {from: item_id, group: item, min_count: 2}
  category: {group: item}
  brand: {group: item}
  price: {group: item, transform: [log1p, standardize]}
behaviour:
  length: 30
  features: {hist_item: item, hist_category: category, hist_scenario: scenario}
split: {by: user_time, valid: 0.1, test: 0.1}
extras: {ts: int64}
"""


def _dir_mb(path: str) -> float:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / 2 ** 20


def run_ingest(folder: str, out: str, layout: Optional[str] = None) -> dict:
    """Ingest in this process (the child of ``main``); the JSON summary plus start-up time."""
    import resource

    t0 = time.time()
    from tfmsr.data.ingest import ingest
    import tensorflow  # noqa: F401  (imported by the first read anyway: its memory is the baseline)

    startup = time.time() - t0
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu0 = time.process_time()
    summary = ingest(os.path.join(folder, "spec.yaml"), out, log=None, layout=layout)
    summary.update(startup_seconds=round(startup, 2), baseline_rss_mb=round(base, 1),
                   ingest_cpu_seconds=round(time.process_time() - cpu0, 2))
    return summary


def main(argv=None) -> dict:
    from tfmsr.data.convert._common import add_layout_argument

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--items", type=int, default=50_000)
    p.add_argument("--dir", default="/tmp/tfmsr_bench_ingest")
    add_layout_argument(p, "the spec's, ")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(run_ingest(args.child, os.path.join(args.dir, "out"), args.record_layout)))
        return {}
    folder = os.path.join(args.dir, f"in-{args.rows}-{args.users}-{args.items}")
    t0 = time.time()
    generate(folder, args.rows, args.users, args.items)
    gen = time.time() - t0
    shutil.rmtree(os.path.join(args.dir, "out"), ignore_errors=True)  # not part of the measured run
    cmd = [sys.executable, "-m", "pipelines.bench_ingest", "--child", folder, "--dir", args.dir]
    cmd += ["--layout", args.record_layout] if args.record_layout else []
    load = os.getloadavg()[0]
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if res.returncode:
        sys.exit(f"bench_ingest: the ingestion failed:\n{res.stderr[-3000:]}")
    s = json.loads(res.stdout.strip().splitlines()[-1])
    out = {"layout": s["layout"], "rows": s["rows_read"], "input_mb": round(_dir_mb(folder), 1),
           "generate_seconds": round(gen, 1),
           "ingest_seconds": s["seconds"], "rows_per_second": s["rows_per_second"],
           "process_seconds": round(wall, 2), "rows_per_second_with_startup": round(s["rows_read"] / wall),
           "ingest_cpu_seconds": s["ingest_cpu_seconds"],
           "rows_per_cpu_second": round(s["rows_read"] / max(s["ingest_cpu_seconds"], 1e-9)),
           "peak_rss_mb": s["peak_rss_mb"], "rss_after_imports_mb": s["baseline_rss_mb"],
           "output_mb": round(_dir_mb(os.path.join(args.dir, "out")), 1), "splits": s["splits"],
           "vocab": s["vocab"], "cpus": os.cpu_count(), "load_average": [round(load, 2), round(os.getloadavg()[0], 2)]}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
