"""The servable writer: the export layout of DESIGN section 6 for one trained run::

    OUT/                                  (its basename NAME names the TF Serving models)
      all/<version>/                      serving_default routes by the scenario input; ``examples``;
                                          ``all_scenarios`` (probs [B, S]); one named signature per
                                          scenario up to ``signatures.NAMED_SIGNATURES_MAX`` scenarios
      <scenario>/<version>/               one servable per scenario (inputs without the scenario)
      models.config                       model_config_list: NAME_all, NAME_<scenario>, ...

Every version directory is a SavedModel of a ``tf.Module`` that holds only the variables its signatures
read (``ServableSpec.variables``; a ranking scenario servable: the model's shared variables and its own row
of each stacked ``[S, ...]`` weight, so an export's disk grows as O(S), not O(S^2)) and the traced
signatures (stock TensorFlow ops; loads without tfmsr; TF Serving loads each on its own), with ``assets/schema.yaml``,
``assets/export.json`` (servable, scenario, signatures, model and params, vocabularies), the vocabulary
file of every table that takes raw values (``assets/<file>``, read by the graph's lookup tables; the
exported schema names them there) and ``assets.extra/tf_serving_warmup_requests`` (raw values).
Versions are integers; the default is one more than the highest existing version, and an existing
version is never overwritten. Everything is written under ``OUT/.tmp-export-*`` and each version
directory is renamed into place at the end.

``write_export`` does all of that for any list of servables: a ranking run goes through it from
``tfmsr.ranking.export`` (all/ + one servable per scenario), a retrieval run from
``tfmsr.retrieval.export`` (user / item / top-K servables per scenario).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfmsr.core.errors import ConfigError
from tfmsr.core.tempfiles import sweep
from tfmsr.features import Schema
from tfmsr.features.lookup import asset_schema
from tfmsr.serving.serving_config import write_model_config
from tfmsr.serving.signatures import sample_batch, to_examples
from tfmsr.serving.warmup import write_warmup

ALL = "all"


class _Servable(tf.Module):
    """What a SavedModel holds: the variables the signatures read, the asset files, and ``tracked``:
    other objects the signatures read (lookup tables, a top-K index)."""

    def __init__(self, variables, asset_paths, **tracked):
        super().__init__(name="servable")
        self.model_variables = list(variables)
        self.assets = [tf.saved_model.Asset(p) for p in asset_paths]
        for key, value in tracked.items():
            setattr(self, key, value)


@dataclass
class ServableSpec:
    """One servable of an export: ``OUT/<name>/<version>`` (TF Serving model ``NAME_<name>``)."""

    name: str
    signatures: Dict[str, object]           # signature name -> concrete function
    meta: dict                              # assets/export.json (servable, version, signatures are added)
    variables: Sequence[tf.Variable]        # the model variables the signatures read
    tracked: dict = field(default_factory=dict)   # other objects they read (see ``_Servable``)
    files: Dict[str, str] = field(default_factory=dict)  # more assets: file name -> content writer(path)


def existing_versions(out: str) -> Dict[str, List[int]]:
    """Servable directory -> its integer version directories (sorted)."""
    found = {}
    if os.path.isdir(out):
        for servable in sorted(os.listdir(out)):
            d = os.path.join(out, servable)
            if os.path.isdir(d) and not servable.startswith("."):
                found[servable] = sorted(int(v) for v in os.listdir(d) if v.isdigit())
    return found


def new_version(out: str, version: Optional[int] = None) -> int:
    """``version`` (default: one more than the highest under ``out``), checked to be a positive integer
    that no servable under ``out`` has yet."""
    have = existing_versions(out)
    if version is None:
        version = 1 + max((v for vs in have.values() for v in vs), default=0)
    if not isinstance(version, int) or version < 1:
        raise ConfigError(f"{out}: --version must be a positive integer, got {version!r}")
    taken = [f"{s}/{version}" for s, vs in have.items() if version in vs]
    if taken:
        raise FileExistsError(f"{out}: version {version} already exists ({', '.join(taken)}); exports never "
                              "overwrite a version (omit --version to write the next one)")
    return version


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


def servable_meta(schema: Schema, run: dict, s: Optional[int], inputs: Dict[str, tf.TensorSpec], **extra) -> dict:
    """The run-dependent part of ``assets/export.json``: what a serving client (and ``tfmsr score``)
    needs to know besides the servable name, version and signatures."""
    return {"scenario": None if s is None else schema.scenario.values[s], "scenario_index": s,
            "model": run["config"]["model"]["name"], "params": run["config"]["model"]["params"],
            "trained_on": run.get("data"), "scenario_input": schema.scenario.name,
            "scenarios": schema.scenario.values,
            "inputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in inputs.items()},
            "sequences": "[None, None] in the feature's dtype, most recent first, right-padded with 0 (''); "
                         "truncated / padded to the schema length in the graph",
            "vocabularies": {table: {"asset": os.path.basename(path), "raw": schema.feature(table).raw,
                                     "values": schema.feature(table).vocab_size - 1, "missing_id": 0,
                                     "unknown": "out-of-vocabulary: scored like id 0"}
                             for table, path in schema.vocab_files().items()}, **extra}


def _warmup_requests(schema: Schema, sigs) -> list:
    """One request of 4 valid rows per signature: the named inputs it takes, or their ``tf.Example`` s."""
    batch = sample_batch(schema, 4, seed=1, raw=True)
    requests = []
    for name, fn in sigs.items():
        inputs = fn.structured_input_signature[0][0]
        if isinstance(inputs, tf.TensorSpec):  # the serialized tf.Example signature
            requests.append((name, {"examples": np.array(to_examples(batch, schema), dtype=object)}))
        else:
            requests.append((name, {k: batch[k] for k in inputs}))
    return requests


def _check_vocab_assets(target: str, schema: Schema) -> None:
    """Every vocabulary file is an asset of the SavedModel (its lookups are tracked by the servable)."""
    missing = [p for p in schema.vocab_files().values()
               if not os.path.isfile(os.path.join(target, "assets", os.path.basename(p)))]
    if missing:
        raise RuntimeError(f"{target}: the vocabularies {missing} are not among its assets: the servable must track "
                           "the VocabLookups its signatures read (ServableSpec.tracked)")


def chosen_scenarios(schema: Schema, scenarios: Optional[Sequence[str]]) -> List[int]:
    """The indices of the scenarios named by ``--scenarios`` (every scenario when ``None``; ``[]``: none)."""
    unknown = sorted(set(scenarios or ()) - set(schema.scenario.values))
    if unknown:
        raise ConfigError(f"--scenarios: unknown scenario(s) {unknown} (the run has {schema.scenario.values})")
    return [s for s, v in enumerate(schema.scenario.values) if scenarios is None or v in scenarios]


def write_export(out: str, version: int, schema: Schema, servables: Iterable[ServableSpec],
                 base_path: Optional[str] = None, log: Callable[[str], None] = print, **summary) -> dict:
    """Save ``servables`` (built lazily, one at a time) as ``OUT/<name>/<version>`` SavedModels with
    ``assets/schema.yaml``, ``assets/export.json`` and warm-up requests, all under ``OUT/.tmp-export-*``
    first, each version directory renamed into place at the end; then ``OUT/models.config``. Returns
    ``summary`` with ``name``, ``version``, ``servables`` (final paths), ``signatures``, ``models_config``."""
    out = os.path.normpath(out)
    name = os.path.basename(os.path.abspath(out))
    summary = {"name": name, "version": version, **summary, "servables": {}, "signatures": {}}
    os.makedirs(out, exist_ok=True)
    sweep(out, r"\.tmp-export-\d+-(\d+)", log)  # what a killed export left behind
    tmp = os.path.join(out, f".tmp-export-{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    done = []
    try:
        staging = os.path.join(tmp, "_assets")
        os.makedirs(staging)
        asset_schema(schema).save(os.path.join(staging, "schema.yaml"))  # its vocabularies: assets/<file>
        for spec in servables:
            os.makedirs(os.path.join(staging, spec.name))
            meta_path = os.path.join(staging, spec.name, "export.json")
            with open(meta_path, "w") as fh:
                json.dump({"servable": spec.name, "version": version, **spec.meta,
                           "signatures": _describe(spec.signatures)}, fh, indent=2, default=str)
            assets = [os.path.join(staging, "schema.yaml"), meta_path]
            for file_name, write in spec.files.items():
                assets.append(os.path.join(staging, spec.name, file_name))
                write(assets[-1])
            target = os.path.join(tmp, spec.name, str(version))
            tf.saved_model.save(_Servable(spec.variables, assets, **spec.tracked), target, signatures=spec.signatures)
            _check_vocab_assets(target, schema)
            write_warmup(target, f"{name}_{spec.name}", _warmup_requests(schema, spec.signatures))
            summary["signatures"][spec.name] = sorted(spec.signatures)
            done.append(spec.name)
            log(f"[export] {spec.name}/{version}: signatures {', '.join(sorted(spec.signatures))}")
        for servable in done:
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
    write_model_config(summary["models_config"], [(f"{name}_{s}", f"{root.rstrip('/')}/{s}") for s in done])
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
