"""Warm start: a new run (RUN2, on DAY2's data) starts from a finished run's weights (RUN1), day over day.

    tfmsr train --config C --data DAY2 --model-dir RUN2 --warm-start RUN1
    tfmsr retrieval train --config C --data DAY2 --model-dir RUN2 --warm-start RUN1

What happens, in order (``warm_start``):

1. **Compatibility** (``incompatibilities``): RUN1's ``run.yaml`` and ``schema.yaml`` against RUN2's config
   and schema. One ``WarmStartError`` lists every difference: the run kind, the model name, each model
   param that differs, the scenarios, a feature added or removed, a feature's kind / group / share /
   length / dim / hashing / raw dtype, a vocabulary that is not a superset of RUN1's (naming how many of
   RUN1's raw values are gone and a few of them), an id-only table that shrank. Numeric standardisation
   (``mean`` / ``std``) may differ: it is DAY2's, not a variable.
2. **Row maps** (``row_maps``): for each embedding table, which row of RUN1 goes to which row of RUN2.
   A table with a vocabulary maps **by raw value**: the row of raw value v in RUN2 receives v's row of RUN1
   (both vocabulary files are read; with the append-only vocabularies of ``--vocab-from`` this is a prefix
   copy, but nothing assumes it); row 0 (padding / out-of-vocabulary) keeps RUN1's row 0. An id-only table
   keeps its first ``rows(RUN1)`` rows (it may grow); a hashed table must keep its number of buckets.
3. **Variables by object path** (``object_paths``): every variable of the model is addressed by its path in
   the checkpoint's object graph (``model/embedding/tables/user_id/embeddings``), never by the Keras
   variable name, which is auto-generated and differs between two builds in one process. Each variable of
   RUN2's model is read from RUN1's checkpoint under the same path: copied when the shapes agree, grown with
   its table's row map when it holds rows of a table (``FeatureEmbedding`` tables by name; other
   ``Embedding`` layers and ``WideLinear`` weights by the one table whose growth their shape follows,
   ``k * rows`` for the scenario-crossed wide weights), refused otherwise. Rows no RUN1 row maps to keep
   the fresh initialisation of RUN2's model ("new rows freshly initialised").
4. **Optimizer slots** (ranking runs: RUN1's ``final/`` holds the optimizer): each slot of a variable is
   carried over (grown with its variable, new rows keeping the fresh slot value) when RUN1's optimizer has
   the same slot layout; otherwise every slot starts fresh, and the log says why. The step counter and
   the learning rate are not restored: the schedule, early stopping and the global step start afresh.

Under ParameterServerStrategy a partitioned table is one ``ShardedVariable`` in the object graph (and one
whole tensor in a checkpoint): it is grown as a whole and assigned back across its shards.

The report (what was restored, grown and initialised, per table) is logged and returned; the trainers put
it in ``history.json``. The ranking trainer checks RUN1 before it writes RUN2's directory
(``plan_ranking``), then restores (``start_ranking``) and writes the report to ``RUN2/warm_start.json``;
a RUN2 that resumes from its own backup reads that file and never RUN1.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras as keras
from tensorflow.python.checkpoint import graph_view
from tensorflow.python.trackable import trackable_utils

from tfmsr.core.errors import ConfigError
from tfmsr.core.io import write_json
from tfmsr.core.rundir import RunDir
from tfmsr.features import Feature, Schema
from tfmsr.features.lookup import read_vocabulary
from tfmsr.layers import FeatureEmbedding, WideLinear

REPORT = "warm_start.json"
VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"
SCENARIO = "<scenario>"          # the scenario table's rows: the scenarios, which must not change
_FEATURE_KEYS = ("kind", "group", "share", "length", "hash_buckets", "raw")


class WarmStartError(ConfigError):
    """RUN1 cannot seed RUN2: names the runs and every difference found."""


@dataclass
class RowMap:
    """How the rows of one table move: RUN2 row ``dst[i]`` <- RUN1 row ``src[i]``."""

    table: str
    policy: str                  # vocab (by raw value) | ids (prefix) | hash (identical)
    old_rows: int
    new_rows: int
    src: np.ndarray
    dst: np.ndarray

    @property
    def identity(self) -> bool:
        return self.old_rows == self.new_rows and bool(np.array_equal(self.src, self.dst))

    def same_as(self, other: "RowMap") -> bool:
        return (self.old_rows, self.new_rows) == (other.old_rows, other.new_rows) and \
            np.array_equal(self.src, other.src) and np.array_equal(self.dst, other.dst)

    def describe(self) -> dict:
        return {"policy": self.policy, "rows": [self.old_rows, self.new_rows], "kept": int(len(self.src)),
                "initialised": int(self.new_rows - len(self.src))}


# ------------------------------------------------------------------------------------------ RUN1
@dataclass
class Source:
    """A finished run to start from: its directory, ``run.yaml`` and schema."""

    path: str
    run: dict
    schema: Schema

    @classmethod
    def read(cls, path: str) -> "Source":
        rd = RunDir(path)
        if not rd.exists:
            raise WarmStartError(f"--warm-start {path}: no run.yaml (expected a finished tfmsr run directory)")
        schema_path = rd.file("schema.yaml")
        if not os.path.isfile(schema_path):
            raise WarmStartError(f"--warm-start {path}: no schema.yaml")
        return cls(os.path.abspath(path), rd.read(), Schema.load(schema_path))

    def vocab_file(self, f: Feature) -> str:
        """RUN1's vocabulary of ``f``'s table: the copy in the run dir, else the file of its data dir."""
        path = self.schema.vocab_path(f)
        if os.path.isfile(path):
            return path
        owner = self.schema.table_owner(f)
        fallback = os.path.join(self.run.get("data") or "", owner.vocab)
        if os.path.isfile(fallback):
            return fallback
        raise WarmStartError(f"--warm-start {self.path}: the vocabulary of table '{owner.name}' is neither at "
                             f"{path} nor at {fallback}")


def _normal(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _feature_diffs(old: Schema, new: Schema) -> List[str]:
    out = []
    a, b = {f.name: f for f in old.features}, {f.name: f for f in new.features}
    for name in sorted(set(b) - set(a)):
        out.append(f"feature '{name}' added")
    for name in sorted(set(a) - set(b)):
        out.append(f"feature '{name}' removed")
    for name in sorted(set(a) & set(b)):
        fa, fb = a[name], b[name]
        for key in _FEATURE_KEYS:
            if getattr(fa, key) != getattr(fb, key):
                out.append(f"feature '{name}': {key} {getattr(fa, key)!r} -> {getattr(fb, key)!r}")
        if fa.kind != "numeric" and not fa.share and fa.dim != fb.dim:
            out.append(f"feature '{name}': dim {fa.dim} -> {fb.dim}")
        if bool(fa.vocab) != bool(fb.vocab) and not fa.share:
            out.append(f"table '{name}': " + ("raw values with a vocabulary in RUN1, ids in RUN2" if fa.vocab
                                              else "ids in RUN1, raw values with a vocabulary in RUN2"))
    return out


def incompatibilities(src: Source, kind: str, cfg: dict, schema: Schema) -> List[str]:
    """Every reason RUN1 (``src``) cannot seed a ``kind`` run of ``cfg`` on ``schema`` (row maps aside)."""
    out = []
    old_cfg = src.run.get("config") or {}
    if src.run["kind"] != kind:
        out.append(f"run kind {src.run['kind']} -> {kind}")
        return out
    name_a, name_b = old_cfg.get("model", {}).get("name"), cfg["model"]["name"]
    if name_a != name_b:
        out.append(f"model {name_a!r} -> {name_b!r}")
    else:
        pa, pb = _normal(old_cfg["model"].get("params") or {}), _normal(cfg["model"]["params"])
        for key in sorted(set(pa) | set(pb)):
            if pa.get(key, "<unset>") != pb.get(key, "<unset>"):
                out.append(f"model param '{key}': {pa.get(key, '<unset>')!r} -> {pb.get(key, '<unset>')!r}")
    if kind == "retrieval" and old_cfg.get("train", {}).get("mode") != cfg["train"]["mode"]:
        out.append(f"train.mode {old_cfg.get('train', {}).get('mode')!r} -> {cfg['train']['mode']!r}")
    a, b = src.schema.scenario, schema.scenario
    if (a.name, a.values) != (b.name, b.values):
        out.append(f"scenarios {a.name}={a.values} -> {b.name}={b.values}")
    return out + _feature_diffs(src.schema, schema)


# ------------------------------------------------------------------------------------------ row maps
def _vocab_map(src: Source, schema: Schema, name: str, old: Feature, new: Feature, problems: List[str]):
    before = read_vocabulary(src.vocab_file(old), old.raw)
    after = read_vocabulary(schema.vocab_path(new), new.raw)
    at = pd.Index(after).get_indexer(before)          # RUN2 line of each RUN1 value, -1 when gone
    gone = np.flatnonzero(at < 0)
    if len(gone):
        show = ", ".join(repr(v.decode() if isinstance(v, bytes) else int(v)) for v in before[gone[:3]])
        problems.append(f"table '{name}': DAY2's vocabulary is not a superset of RUN1's: {len(gone):,} of "
                        f"{len(before):,} raw values are gone (e.g. {show}); ingest DAY2 with --vocab-from")
        return None
    src_rows = np.concatenate([[0], np.arange(1, len(before) + 1)])
    return RowMap(name, "vocab", old.vocab_size, new.vocab_size, src_rows, np.concatenate([[0], at + 1]))


def row_maps(src: Source, schema: Schema) -> Tuple[Dict[str, RowMap], List[str]]:
    """Table name -> its row map (plus the scenario table), and the problems found (module docstring)."""
    maps, problems = {}, []
    old_tables = src.schema.tables()
    for name, new in schema.tables().items():
        old = old_tables.get(name)
        if old is None or bool(old.vocab) != bool(new.vocab) or old.hashed != new.hashed:
            continue  # named by incompatibilities()
        if new.hashed:
            if old.hash_buckets == new.hash_buckets:
                rows = np.arange(new.hash_buckets)
                maps[name] = RowMap(name, "hash", old.hash_buckets, new.hash_buckets, rows, rows)
        elif new.vocab:
            m = _vocab_map(src, schema, name, old, new, problems)
            if m is not None:
                maps[name] = m
        elif new.vocab_size < old.vocab_size:
            problems.append(f"table '{name}': id-only table shrank from {old.vocab_size} to {new.vocab_size} rows")
        else:
            rows = np.arange(old.vocab_size)
            maps[name] = RowMap(name, "ids", old.vocab_size, new.vocab_size, rows, rows)
    s = np.arange(schema.num_scenarios)
    maps[SCENARIO] = RowMap(SCENARIO, "ids", len(s), len(s), s, s)
    return maps, problems


# ------------------------------------------------------------------------------------------ variables
def object_paths(root) -> Dict[str, object]:
    """Checkpoint object path -> variable (a ``ShardedVariable`` as one) of everything ``root`` saves."""
    _, paths = graph_view.ObjectGraphView(root).breadth_first_traversal()
    out = {}
    for obj, path in paths.items():
        if isinstance(obj, tf.Variable) or type(obj).__name__ == "ShardedVariable":
            out[trackable_utils.object_path_to_string(path)] = obj
    return out


def _members(paths: Dict[str, object]) -> Dict[int, str]:
    """id of a variable, or of each shard of a ShardedVariable -> its object path."""
    out = {}
    for path, v in paths.items():
        out[id(v)] = path
        for shard in getattr(v, "variables", ()) if type(v).__name__ == "ShardedVariable" else ():
            out[id(shard)] = path
    return out


def table_variables(model, paths: Dict[str, object]) -> Dict[str, Optional[str]]:
    """Object path -> table name of every variable holding rows of a table: ``FeatureEmbedding`` tables
    (named), other ``Embedding`` layers and ``WideLinear`` weights (None: the table is inferred)."""
    where = _members(paths)
    out: Dict[str, Optional[str]] = {}
    named = set()
    for layer in model.submodules:
        if isinstance(layer, FeatureEmbedding):
            for table, emb in [*layer.tables.items(), (SCENARIO, layer.scenario_table)]:
                named.add(id(emb))
                if emb.built:  # a table the model never looks up has no variable
                    out[where[id(emb.embeddings)]] = table
    for layer in model.submodules:
        if isinstance(layer, keras.layers.Embedding) and id(layer) not in named and layer.built:
            out.setdefault(where[id(layer.embeddings)], None)
        elif isinstance(layer, WideLinear):
            for w in layer.tables:
                out.setdefault(where[id(w)], None)
    return out


def infer_table(path: str, old_rows: int, new_rows: int, maps: Dict[str, RowMap]) -> Tuple[RowMap, int]:
    """The table (and the number of row blocks k) whose growth ``old_rows -> new_rows`` follows:
    ``old_rows = k * rows(RUN1)`` and ``new_rows = k * rows(RUN2)``. Several candidates are fine when none
    moves a row (a plain copy) or all move rows alike; otherwise the variable is ambiguous (an error)."""
    found = [(m, old_rows // m.old_rows) for m in maps.values()
             if old_rows % m.old_rows == 0 and new_rows % m.new_rows == 0
             and old_rows // m.old_rows == new_rows // m.new_rows]
    if not found:
        raise WarmStartError(f"variable {path}: {old_rows} -> {new_rows} rows follows the growth of no table")
    moving = [(m, j) for m, j in found if not m.identity]
    if not moving:  # every candidate keeps its rows where they are: a plain copy whichever it is
        return found[0]
    first, k = moving[0]
    if len(moving) < len(found) or any(not m.same_as(first) or j != k for m, j in moving[1:]):
        names = ", ".join(sorted(m.table for m, _ in found))
        raise WarmStartError(f"variable {path}: {old_rows} -> {new_rows} rows could be rows of any of {names}, "
                             "which move differently; cannot tell which table it holds")
    return first, k


def grow(old: np.ndarray, fresh: np.ndarray, m: RowMap, blocks: int = 1) -> np.ndarray:
    """``fresh`` (RUN2's initial value) with the rows RUN1 had put in place by ``m``, per block of rows."""
    rest = old.shape[1:]
    o = old.reshape((blocks, m.old_rows) + rest)
    out = np.array(fresh, copy=True).reshape((blocks, m.new_rows) + rest)
    out[:, m.dst] = o[:, m.src]
    return out.reshape(fresh.shape)


def _value(var) -> np.ndarray:
    return tf.convert_to_tensor(var).numpy()


def _placement(path: str, old_shape, new_shape, table: Optional[str], has_table: bool,
               maps: Dict[str, RowMap]) -> Tuple[Optional[RowMap], int]:
    """(row map, blocks) that moves a variable from RUN1's shape to RUN2's; (None, 1) for a plain copy."""
    old_shape, new_shape = tuple(old_shape), tuple(new_shape)
    if not has_table:
        if old_shape != new_shape:
            raise WarmStartError(f"variable {path}: shape {list(old_shape)} in RUN1, {list(new_shape)} now "
                                 "(it holds no table rows, so it cannot grow)")
        return None, 1
    if old_shape[1:] != new_shape[1:]:
        raise WarmStartError(f"variable {path}: shape {list(old_shape)} in RUN1, {list(new_shape)} now")
    if table is not None:
        m = maps.get(table)
        if m is None or (m.old_rows, m.new_rows) != (old_shape[0], new_shape[0]):
            raise WarmStartError(f"variable {path} (table '{table}'): {old_shape[0]} -> {new_shape[0]} rows, but "
                                 f"the schemas give {m.old_rows if m else '?'} -> {m.new_rows if m else '?'}")
        return m, 1
    return infer_table(path, old_shape[0], new_shape[0], maps)


def _assign(var, path: str, old: np.ndarray, m: Optional[RowMap], blocks: int) -> bool:
    """Put RUN1's value ``old`` into ``var``; returns True when it was grown or moved (not a plain copy)."""
    if m is None or m.identity:
        var.assign(old)
        return False
    var.assign(grow(old, _value(var), m, blocks))
    return True


def weight_paths(model, paths: Dict[str, object]) -> Dict[str, object]:
    """Object path -> variable of the model's weights (no metric, optimizer or step variables)."""
    where = _members(paths)
    metrics = {id(v) for m in model.submodules if isinstance(m, keras.metrics.Metric) for v in m.variables}
    out = {}
    for v in model.weights:
        if id(v) in metrics:
            continue
        path = where.get(id(v))
        if path is None:
            raise WarmStartError(f"variable {v.name}: not reachable in the checkpoint's object graph")
        out[path] = paths[path]
    return out


def restore_weights(model, paths: Dict[str, object], reader, maps: Dict[str, RowMap]) -> dict:
    """Every weight of ``model`` from RUN1's checkpoint ``reader`` by object path (module docstring, 3)."""
    saved = reader.get_variable_to_shape_map()
    weights, tables = weight_paths(model, paths), table_variables(model, paths)
    opt = _optimizer_path(model, paths)
    known = set(paths)
    extra = sorted(k[:-len(VALUE)] for k in saved if k.endswith(VALUE) and k[:-len(VALUE)] not in known
                   and not (opt and k.startswith(opt + "/")) and not k.startswith("save_counter/"))
    missing = sorted(p for p in weights if p + VALUE not in saved)
    if extra or missing:
        raise WarmStartError("the model's variables differ from RUN1's: "
                             + "; ".join([f"RUN1 has no {p}" for p in missing[:5]]
                                         + [f"only RUN1 has {p}" for p in extra[:5]]))
    placed, counts = {}, {"restored": 0, "grown": 0}
    for path, var in weights.items():
        m, blocks = _placement(path, saved[path + VALUE], var.shape, tables.get(path), path in tables, maps)
        placed[path] = (m, blocks)
        counts["grown" if _assign(var, path, reader.get_tensor(path + VALUE), m, blocks) else "restored"] += 1
        if m is not None:
            counts.setdefault("table_variables", {}).setdefault(m.table, []).append(path)
    return {"counts": counts, "placed": placed}


def _optimizer_path(model, paths: Dict[str, object]) -> Optional[str]:
    opt = getattr(model, "optimizer", None)
    it = getattr(opt, "iterations", None)
    path = _members(paths).get(id(it)) if it is not None else None
    return path.rsplit("/", 1)[0] if path else None


def slot_paths(model, paths: Dict[str, object]) -> Dict[str, str]:
    """Object path of each optimizer slot -> object path of the variable it belongs to (the Keras
    optimizer's slot lists, e.g. Adam's ``_momentums`` / ``_velocities``, are indexed like its variables)."""
    opt = getattr(model, "optimizer", None)
    index = getattr(opt, "_index_dict", None)
    if not index:
        return {}
    where, by_index = _members(paths), {}
    for v in model.trainable_variables:
        by_index[index[opt._var_key(v)]] = where[id(v)]
    out = {}
    for name, value in vars(opt).items():
        if name == "_variables" or not isinstance(value, (list, tuple)) and "List" not in type(value).__name__:
            continue
        items = list(value)
        if len(items) != len(index) or not all(isinstance(s, tf.Variable) for s in items):
            continue
        for i, slot in enumerate(items):
            out[where[id(slot)]] = by_index[i]
    return out


def restore_slots(model, paths: Dict[str, object], reader, placed: dict) -> dict:
    """Optimizer slots from RUN1 where its layout matches (module docstring, 4); else all start fresh."""
    slots = slot_paths(model, paths)
    saved = reader.get_variable_to_shape_map()
    opt = _optimizer_path(model, paths)
    if not slots:
        note = "the optimizer has no slots" if getattr(model, "optimizer", None) is not None else \
            "this trainer creates its optimizer when it fits: every slot starts fresh"
        return {"carried": 0, "grown": 0, "fresh": 0, "note": note}
    old_slots = {k for k in saved if opt and k.startswith(opt + "/_variables/")}
    why = None
    if not old_slots:
        why = "RUN1's checkpoint holds no optimizer state"
    elif len(old_slots) != len(slots):
        why = f"RUN1's optimizer has {len(old_slots)} slots, this one {len(slots)} (another optimizer or layout)"
    else:
        bad = [s for s, var in slots.items() if s + VALUE not in saved or saved[s + VALUE] != saved[var + VALUE]]
        if bad:
            why = f"RUN1's slot {bad[0]} does not match its variable's shape (another slot layout)"
    if why:
        return {"carried": 0, "grown": 0, "fresh": len(slots), "note": why}
    counts = {"carried": 0, "grown": 0, "fresh": 0}
    for s, var in slots.items():
        m, blocks = placed[var]
        counts["grown" if _assign(paths[s], s, reader.get_tensor(s + VALUE), m, blocks) else "carried"] += 1
    return counts


# ------------------------------------------------------------------------------------------ entry points
def check(src: Source, kind: str, cfg: dict, schema: Schema) -> Dict[str, RowMap]:
    """The row maps of RUN1 -> RUN2, or one WarmStartError naming every difference."""
    problems = incompatibilities(src, kind, cfg, schema)
    maps, more = row_maps(src, schema)
    problems += more
    if problems:
        raise WarmStartError(f"--warm-start {src.path}: cannot start this run from it:\n  "
                             + "\n  ".join(problems))
    return maps


def warm_start(model, root, src: Source, prefix: str, maps: Dict[str, RowMap],
               log: Callable[[str], None]) -> dict:
    """Restore ``model`` (built; its optimizer built when it has one) from RUN1's checkpoint ``prefix``
    through the object graph of ``root`` (the trainer's checkpoint root); returns the report."""
    if not tf.io.gfile.exists(prefix + ".index"):
        raise WarmStartError(f"--warm-start {src.path}: no finished checkpoint at {prefix} (did RUN1 finish?)")
    paths = object_paths(root)
    reader = tf.train.load_checkpoint(prefix)
    weights = restore_weights(model, paths, reader, maps)
    slots = restore_slots(model, paths, reader, weights["placed"])
    used = {m.table for m, _ in weights["placed"].values() if m is not None}
    tables = {t: {**m.describe(), "variables": len(weights["counts"].get("table_variables", {}).get(t, []))}
              for t, m in maps.items() if t in used and t != SCENARIO}
    report = {"from": src.path, "checkpoint": prefix, "model": src.run["config"]["model"]["name"],
              "variables": {k: v for k, v in weights["counts"].items() if k != "table_variables"},
              "tables": tables, "optimizer_slots": slots,
              "fresh": "step counter, learning-rate schedule, early stopping, metrics"}
    log_report(report, log)
    return report


def log_report(report: dict, log: Callable[[str], None]) -> None:
    v, s = report["variables"], report["optimizer_slots"]
    log(f"[warm start] from {report['from']} ({report['checkpoint']}): {v['restored']} variables restored as "
        f"they were, {v['grown']} grown or moved by row")
    for table, t in report["tables"].items():
        if t["kept"] != t["rows"][1] or t["rows"][0] != t["rows"][1]:
            log(f"[warm start]   table {table} ({t['policy']}): {t['rows'][0]} -> {t['rows'][1]} rows, "
                f"{t['kept']} kept from RUN1, {t['initialised']} initialised ({t['variables']} variable(s))")
    log(f"[warm start] optimizer slots: {s['carried']} carried, {s['grown']} grown, {s['fresh']} fresh"
        + (f" ({s['note']})" if s.get("note") else "") + f"; starting afresh: {report['fresh']}")


def sample_batch(files: Sequence[str], schema: Schema, n: int = 8):
    """A few parsed rows of the first shard: one call on them creates every variable of a model."""
    from tfmsr.data.pipeline import make_dataset

    x, _ = next(iter(make_dataset(list(files)[:1], schema, n, training=False)))
    return x


@dataclass
class Plan:
    """What a ranking run does with ``--warm-start``: resume its own backup (``src`` None), or start from
    RUN1 (``src``, with the checked row maps)."""

    source: str
    src: Optional[Source]
    maps: Dict[str, RowMap]


def plan_ranking(source: Optional[str], cfg: dict, schema: Schema, model_dir: str) -> Optional[Plan]:
    """Checked before the run dir is written, so a refused RUN1 leaves nothing behind. A run with a backup
    of its own resumes from it and never reads RUN1 again (the report it wrote at its start is kept)."""
    if not source:
        return None
    if tf.train.latest_checkpoint(os.path.join(model_dir, "backup", "chief")):
        return Plan(source, None, {})
    src = Source.read(source)
    return Plan(source, src, check(src, "ranking", cfg, schema))


def start_ranking(plan: Optional[Plan], model, schema: Schema, files: Sequence[str], out_dir: str,
                  log: Callable[[str], None]) -> Optional[dict]:
    """The ranking trainer's warm start: RUN1's ``final/`` into ``model`` (compiled; built here when it is
    not yet), the report written to ``out_dir/warm_start.json``; or, resuming, that report read back."""
    if plan is None:
        return None
    path = os.path.join(out_dir, REPORT)
    if plan.src is None:
        if not os.path.isfile(path):
            raise WarmStartError(f"{out_dir}: resumes a run that did not start from --warm-start {plan.source}")
        with open(path) as fh:
            report = json.load(fh)
        if report["from"] != os.path.abspath(plan.source):
            raise WarmStartError(f"{out_dir}: started from --warm-start {report['from']}, not {plan.source}; "
                                 "resume it with the same --warm-start, or pass --overwrite to start afresh")
        log(f"[warm start] resuming from this run's own backup; RUN1 ({report['from']}) is not read again")
        return report
    if not model.built:
        model(sample_batch(files, schema))
    if not getattr(model.optimizer, "_built", False):
        model.optimizer.build(model.trainable_variables)
    final = tf.train.latest_checkpoint(os.path.join(plan.source, "final"))
    report = warm_start(model, tf.train.Checkpoint(model=model), plan.src,
                        final or os.path.join(plan.source, "final", "ckpt"), plan.maps, log)
    write_json(path, report)
    return report


def start_retrieval(source: Optional[str], model, root, cfg: dict, schema: Schema, unit: str,
                    log: Callable[[str], None]) -> Optional[dict]:
    """The retrieval trainer's warm start of one model (``unit``: '' for a mix run, ``scenario-<name>`` for
    one model of a single-scenario run) from RUN1's ``<unit>/final/ckpt``, through ``root`` (the trainer's
    weights checkpoint); ``model`` is built. Returns the report (None without ``source``)."""
    if not source:
        return None
    src = Source.read(source)
    maps = check(src, "retrieval", cfg, schema)
    return warm_start(model, root, src, os.path.normpath(os.path.join(source, unit, "final", "ckpt")), maps, log)
