"""Write the export layout of DESIGN section 6 for one trained run::

    OUT/                                  (its basename NAME names the TF Serving models)
      all/<version>/                      serving_default routes by the scenario input; one signature
                                          per scenario; ``examples``; ``all_scenarios`` (probs [B, S])
      <scenario>/<version>/               one servable per scenario (inputs without the scenario)
      models.config                       model_config_list: NAME_all, NAME_<scenario>, ...

Every version directory is a SavedModel of a ``tf.Module`` that holds only the model's variables and
the traced signatures (stock TensorFlow ops; loads without tfmsr), with ``assets/schema.yaml``,
``assets/export.json`` (servable, scenario, signatures, model and params) and
``assets.extra/tf_serving_warmup_requests``. Versions are integers; the default is one more than the
highest existing version, and an existing version is never overwritten. Everything is written under
``OUT/.tmp-export-*`` and each version directory is renamed into place at the end.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf

from tfmsr.export.serving_config import write_model_config
from tfmsr.export.signatures import ServingFunctions, input_signature, sample_batch, to_examples
from tfmsr.export.warmup import write_warmup
from tfmsr.features import Schema

ALL = "all"


class _Servable(tf.Module):
    """What a SavedModel holds: the variables the signatures read, and the asset files."""

    def __init__(self, variables, asset_paths):
        super().__init__(name="servable")
        self.model_variables = list(variables)
        self.assets = [tf.saved_model.Asset(p) for p in asset_paths]


def existing_versions(out: str) -> Dict[str, List[int]]:
    """Servable directory -> its integer version directories (sorted)."""
    found = {}
    if os.path.isdir(out):
        for servable in sorted(os.listdir(out)):
            d = os.path.join(out, servable)
            if os.path.isdir(d) and not servable.startswith("."):
                found[servable] = sorted(int(v) for v in os.listdir(d) if v.isdigit())
    return found


def build_model(model, schema: Schema) -> None:
    """Create the (lazily built) Keras variables with one eager call, so the restored checkpoint
    values land in them before tracing."""
    batch = sample_batch(schema, n=2)
    model({k: tf.constant(v) for k, v in batch.items()}, training=False)


def _describe(sigs) -> dict:
    out = {}
    for name, fn in sigs.items():
        inputs = fn.structured_input_signature[0][0]
        inputs = {inputs.name: inputs} if isinstance(inputs, tf.TensorSpec) else inputs
        out[name] = {"inputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in inputs.items()},
                     "outputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in fn.structured_outputs.items()}}
    return out


def _meta(schema: Schema, run: dict, servable: str, s: Optional[int], version: int, sigs) -> dict:
    """``assets/export.json``: what a serving client (and ``tfmsr score``) needs to know."""
    return {"servable": servable, "scenario": None if s is None else schema.scenario.values[s],
            "scenario_index": s, "version": version, "model": run["config"]["model"]["name"],
            "params": run["config"]["model"]["params"], "trained_on": run.get("data"),
            "scenario_input": schema.scenario.name, "scenarios": schema.scenario.values,
            "inputs": {k: [v.dtype.name, v.shape.as_list()]
                       for k, v in input_signature(schema, with_scenario=s is None).items()},
            "sequences": "int64 (hashed: string) [None, None], most recent first, right-padded with 0 (''); "
                         "truncated / padded to the schema length in the graph",
            "signatures": _describe(sigs)}


def _warmup_requests(schema: Schema, sigs) -> list:
    with_sc, without_sc = sample_batch(schema, 4, seed=1), sample_batch(schema, 4, seed=1, with_scenario=False)
    requests = []
    for name, fn in sigs.items():
        inputs = fn.structured_input_signature[0][0]
        if isinstance(inputs, tf.TensorSpec):  # the serialized tf.Example signature
            requests.append((name, {"examples": np.array(to_examples(with_sc, schema), dtype=object)}))
        else:
            requests.append((name, with_sc if schema.scenario.name in inputs else without_sc))
    return requests


def export(model_dir: str, out: str, version: Optional[int] = None, base_path: Optional[str] = None,
           log: Callable[[str], None] = print) -> dict:
    """Export the finished run in ``model_dir`` to ``out`` (layout in the module docstring).

    ``base_path``: where TF Serving will see ``out`` (e.g. ``/models/NAME`` in a container); default
    the absolute local path. Returns a summary (version, servable paths, signatures)."""
    from tfmsr.models.base import ConfigError
    from tfmsr.training.evaluation import load_trained

    start = time.time()
    out = os.path.normpath(out)
    name = os.path.basename(os.path.abspath(out))
    have = existing_versions(out)
    if version is None:
        version = 1 + max((v for vs in have.values() for v in vs), default=0)
    if not isinstance(version, int) or version < 1:
        raise ConfigError(f"{out}: --version must be a positive integer, got {version!r}")
    taken = [f"{s}/{version}" for s, vs in have.items() if version in vs]
    if taken:
        raise FileExistsError(f"{out}: version {version} already exists ({', '.join(taken)}); exports never "
                              "overwrite a version (omit --version to write the next one)")
    model, schema, run = load_trained(model_dir)
    build_model(model, schema)
    fns = ServingFunctions(model, schema)
    servables = {ALL: None, **{n: s for s, n in enumerate(fns.names)}}

    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, f".tmp-export-{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        staging = os.path.join(tmp, "_assets")
        os.makedirs(staging)
        schema.save(os.path.join(staging, "schema.yaml"))
        summary = {"name": name, "version": version, "model": run["config"]["model"]["name"],
                   "model_dir": os.path.abspath(model_dir), "servables": {}, "signatures": {}}
        for servable, s in servables.items():
            sigs = fns.signatures(s)
            meta_path = os.path.join(staging, servable, "export.json")
            os.makedirs(os.path.dirname(meta_path))
            with open(meta_path, "w") as fh:
                json.dump(_meta(schema, run, servable, s, version, sigs), fh, indent=2, default=str)
            target = os.path.join(tmp, servable, str(version))
            module = _Servable(model.variables, [os.path.join(staging, "schema.yaml"), meta_path])
            tf.saved_model.save(module, target, signatures=sigs)
            write_warmup(target, f"{name}_{servable}", _warmup_requests(schema, sigs))
            summary["signatures"][servable] = sorted(sigs)
            log(f"[export] {servable}/{version}: signatures {', '.join(sorted(sigs))}")
        for servable in servables:
            os.makedirs(os.path.join(out, servable), exist_ok=True)
            final = os.path.join(out, servable, str(version))
            try:
                os.rename(os.path.join(tmp, servable, str(version)), final)
            except OSError as e:  # a concurrent export wrote this version first
                raise FileExistsError(f"{final}: exists ({e.strerror}); exports never overwrite a version") from None
            summary["servables"][servable] = final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    root = base_path or os.path.abspath(out)
    summary["models_config"] = os.path.join(out, "models.config")
    write_model_config(summary["models_config"], [(f"{name}_{s}", f"{root.rstrip('/')}/{s}") for s in servables])
    summary["seconds"] = round(time.time() - start, 1)
    return summary


def resolve_servable(path: str) -> str:
    """A SavedModel directory from: a version dir, a servable dir (its latest version), or an export
    root (``all``, latest version)."""
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    versions = sorted(int(v) for v in os.listdir(path) if v.isdigit()) if os.path.isdir(path) else []
    if versions:
        return os.path.join(path, str(versions[-1]))
    if os.path.isdir(os.path.join(path, ALL)):
        return resolve_servable(os.path.join(path, ALL))
    raise FileNotFoundError(f"{path}: not a SavedModel (no saved_model.pb), a servable dir with integer "
                            f"versions, or an export root with '{ALL}/'")
