"""Export of a trained ranking run for TF Serving: ``all/`` (routes by the scenario input; one signature
per scenario up to ``NAMED_SIGNATURES_MAX`` scenarios) and one servable per scenario tower holding the
variables its signatures read (its row slices of the stacked weights: ``tfmsr.serving.signatures``), written
by ``tfmsr.serving.writer.write_export``."""
from __future__ import annotations

import os
import tempfile
import time
from typing import Callable, Optional, Sequence

from tfmsr.core.errors import ConfigError
from tfmsr.ranking.evaluate import load_trained
from tfmsr.serving.rates import from_dataset
from tfmsr.serving.signatures import ServingFunctions
from tfmsr.serving.writer import (ALL, ServableSpec, build_model, chosen_scenarios, new_version, servable_meta,
                                 write_export)


def export(model_dir: str, out: str, version: Optional[int] = None, base_path: Optional[str] = None,
           log: Callable[[str], None] = print, k: Optional[int] = None,
           scenarios: Optional[Sequence[str]] = None) -> dict:
    """Export the finished ranking run in ``model_dir`` to ``out`` (layout in ``tfmsr.serving.writer``).

    ``base_path``: where TF Serving will see ``out`` (e.g. ``/models/NAME`` in a container); default
    the absolute local path. ``scenarios``: the scenarios that get a servable of their own beside ``all``
    (default every one; ``[]``: only ``all``; a model whose scenario head reads every scenario's weights, as
    SAML's mutual unit, holds them all in each). Features ingest derives from a key's train labels
    (``item_rate``, ``item_train_n``) are computed in the graph from the key's raw value when the run's
    dataset has their table (``tfmsr.serving.rates``). Returns a summary (version, servable paths, signatures)."""
    if k is not None:
        raise ConfigError(f"{model_dir}: --k applies to retrieval runs only (this is a ranking run)")
    start = time.time()
    version = new_version(os.path.normpath(out), version)
    model, schema, run = load_trained(model_dir)
    build_model(model, schema)
    with tempfile.TemporaryDirectory(prefix="tfmsr-rates-") as work:   # the TSV tables, copied into assets/
        rates = from_dataset(schema, run.get("data"), work, log)
        fns = ServingFunctions(model, schema, rates)
        chosen = chosen_scenarios(schema, scenarios)
        computed = rates.meta if rates else {}

        def servables():
            for servable, s in {ALL: None, **{fns.names[s]: s for s in chosen}}.items():
                sigs = fns.signatures(s)
                meta = servable_meta(schema, run, s, fns.inputs(with_scenario=s is None), **computed)
                scoring = {"scoring": fns.scoring()} if s is None else {}   # tfmsr score's, beside all's signatures
                yield ServableSpec(servable, sigs, meta, fns.variables(sigs),
                                   tracked={"vocab": fns.lookups, "rates": rates, **scoring})

        summary = write_export(out, version, schema, servables(), base_path, log,
                               model=run["config"]["model"]["name"], model_dir=os.path.abspath(model_dir),
                               computed_inputs=sorted(rates.features) if rates else [])
    summary["seconds"] = round(time.time() - start, 1)
    return summary
