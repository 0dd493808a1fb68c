"""Cost against the number of scenarios (issue 31): ``python -m pipelines.scenario_scaling``.

For every multi-scenario model and S in ``--scenarios`` (default 5, 20, 100, 300): planted data
(``tfmsr.data.synth.generate``, ``--rows`` rows, cached under ``--work``), then in a fresh process per
(model, S) the training throughput of ``tfmsr.ranking.bench.bench_train`` (``--steps`` timed steps of
``--batch`` rows after ``--warmup``): examples per CPU-second (process CPU time of the timed steps: the
machine is shared) and trainable parameters; at S in ``--latency-scenarios`` (default 5, 300) also the
latency of one ``--request``-row request (256) through the concrete serving functions the export writes
(``ServingFunctions``: a scenario servable's ``serving_default`` and the ``all`` servable's ``all_scenarios``),
median wall and CPU milliseconds over ``--calls``, and the scenario servable's graph size (ops) and the
parameters it holds (its row slices of the stacked weights, ``tfmsr.serving.signatures``). Writes ``OUT/scenario_scaling.json`` and
``OUT/scenario_scaling.md`` (the table, with each model's kept share of its S = 5 rate), atomically.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODELS = ["mmoe", "ple", "star", "hinet", "pepnet", "sarnet", "shared_bottom", "saml", "sainet", "musenet", "fimn"]


def synth_dir(work: str, scenarios: int, rows: int) -> str:
    """Planted data with ``scenarios`` scenarios (generated once per (S, rows))."""
    from tfmsr.data.synth import generate

    out = os.path.join(work, f"synth_s{scenarios}_r{rows}")
    if not os.path.exists(os.path.join(out, "stats.json")):
        generate(out, rows=rows, scenarios=scenarios, seed=0, progress=False)
    return out


def _latency(fn, inputs, calls: int) -> dict:
    """Median wall and CPU milliseconds of ``fn(**inputs)`` (after one warm-up call)."""
    fn(**inputs)
    wall, cpu = [], []
    for _ in range(calls):
        w, c = time.perf_counter(), time.process_time()
        fn(**inputs)
        wall.append(1000 * (time.perf_counter() - w))
        cpu.append(1000 * (time.process_time() - c))
    return {"wall_ms": round(statistics.median(wall), 2), "cpu_ms": round(statistics.median(cpu), 2)}


def serving_latency(cfg: dict, data: str, rows: int, calls: int) -> dict:
    """Latency of one ``rows``-row request through a scenario servable and the ``all_scenarios`` signature."""
    import tensorflow as tf

    from tfmsr.core.rundir import read_stats
    from tfmsr.features import Schema
    from tfmsr.ranking.models import build
    from tfmsr.serving.signatures import ServingFunctions, sample_batch
    from tfmsr.serving.writer import build_model

    schema = Schema.load(os.path.join(data, "schema.yaml"))
    model = build(cfg["model"]["name"], schema, cfg["model"]["params"], read_stats(data))
    build_model(model, schema)
    fns = ServingFunctions(model, schema)
    batch = sample_batch(schema, rows, raw=True)
    every = {k: tf.constant(v) for k, v in batch.items()}
    one = {k: v for k, v in every.items() if k != schema.scenario.name}
    start = time.perf_counter()
    scenario_fn, all_fn = fns.scenario(0), fns.all_scenarios()
    return {"trace_seconds": round(time.perf_counter() - start, 2), "request_rows": rows,
            "scenario_servable_ops": _ops(scenario_fn),
            "scenario_servable_parameters": sum(int(v.shape.num_elements()) for v in scenario_fn.variables),
            "scenario_servable": _latency(scenario_fn, one, calls), "all_scenarios": _latency(all_fn, every, calls)}


def _ops(fn) -> int:
    """Nodes of a concrete function's graph and of the functions it calls (what a servable traces)."""
    g = fn.graph.as_graph_def()
    return len(g.node) + sum(len(f.node_def) for f in g.library.function)


def run_one(args) -> dict:
    """One (model, S): ``bench_train`` and, when asked, the serving latency (the child process's job)."""
    from tfmsr.ranking.bench import bench_train
    from tfmsr.ranking.config import load_config

    cfg = load_config(args.model)
    data = synth_dir(args.work, args.one, args.rows)
    res = bench_train(cfg, data, args.batch, args.steps, args.warmup)
    out = {"model": args.model, "scenarios": args.one, "rows": args.rows,
           **{k: res[k] for k in ("batch", "steps", "warmup", "cpu_seconds", "examples_per_cpu_sec",
                                  "examples_per_sec", "trainable_parameters")}}
    if args.latency:
        out["latency"] = serving_latency(cfg, data, args.request, args.calls)
    return out


def _child(args, model: str, s: int) -> dict:
    """``run_one`` in a fresh process (its CPU time and graphs are its own); an error is recorded, not raised."""
    cmd = [sys.executable, "-m", "pipelines.scenario_scaling", "--one", str(s), "--model", model,
           "--rows", str(args.rows), "--batch", str(args.batch), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--work", args.work, "--request", str(args.request),
           "--calls", str(args.calls)] + (["--latency"] if s in args.latency_scenarios else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"model": model, "scenarios": s, "error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def _ms(latency: dict) -> str:
    """``wall (cpu)`` milliseconds of one request."""
    return f"{latency['wall_ms']} ({latency['cpu_ms']} cpu)" if "cpu_ms" in latency else f"{latency['wall_ms']}"


def table(results: list, scenarios: list) -> str:
    """Markdown: examples per CPU-second and parameters per S, the S=max/S=min kept share, latencies."""
    by = {(r["model"], r["scenarios"]): r for r in results}
    models = list(dict.fromkeys(r["model"] for r in results))
    lo, hi = min(scenarios), max(scenarios)
    head = " | ".join(f"S = {s}" for s in scenarios)
    lines = [f"| model | {head} | kept {hi}/{lo} | parameters {' / '.join(str(s) for s in scenarios)} | "
             f"latency ms wall (cpu): scenario servable / all_scenarios |", "|---|" + "---:|" * (len(scenarios) + 3)]
    for m in models:
        rate = [by.get((m, s), {}).get("examples_per_cpu_sec") for s in scenarios]
        cells = [f"{v:,.0f}" if v else by.get((m, s), {}).get("error", "-")[:40] for v, s in zip(rate, scenarios)]
        kept = f"{rate[-1] / rate[0]:.0%}" if rate[0] and rate[-1] else "-"
        params = " / ".join(f"{by[(m, s)]['trainable_parameters']:,}" if "trainable_parameters" in by.get((m, s), {})
                            else "-" for s in scenarios)
        lat = "; ".join(f"S={s}: {_ms(r['latency']['scenario_servable'])} / {_ms(r['latency']['all_scenarios'])}"
                        for s in scenarios for r in [by.get((m, s), {})] if "latency" in r)
        lines.append(f"| {m} | {' | '.join(cells)} | {kept} | {params} | {lat or '-'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--scenarios", default="5,20,100,300")
    p.add_argument("--latency-scenarios", default="5,300")
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--request", type=int, default=256)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--work", default=os.path.join("runs", "scenario_scaling", "data"))
    p.add_argument("--out", default=os.path.join("runs", "scenario_scaling"))
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)       # child: one (model, S)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--latency", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_one(args)), flush=True)
        return
    from tfmsr.core.io import write_json, write_text

    scenarios = [int(s) for s in args.scenarios.split(",")]
    args.latency_scenarios = [int(s) for s in args.latency_scenarios.split(",")]
    for s in scenarios:                                              # data first: the children only read it
        synth_dir(args.work, s, args.rows)
    results = []
    os.makedirs(args.out, exist_ok=True)
    for model in args.models.split(","):
        for s in scenarios:
            results.append(_child(args, model, s))
            print(json.dumps(results[-1]), flush=True)
            # rewritten after every run: a long sweep cut short keeps what it measured
            write_json(os.path.join(args.out, "scenario_scaling.json"), {"args": vars(args), "results": results})
            write_text(os.path.join(args.out, "scenario_scaling.md"), table(results, scenarios))
    print(table(results, scenarios))


if __name__ == "__main__":
    main()
