"""The ingestion spec: YAML -> validated dataclasses (every key is documented in ``tfmsr/data/ingest``).

``load_spec(path)`` reads and checks the whole spec before any data is read: unknown keys, missing keys,
names that refer to nothing, type mismatches (a rule comparing a string column with a number, bucketising
a string) all raise one ``SpecError`` naming the spec file, the place in it (``features.item_id.min_count``)
and what was expected. It also types every value (input columns, joined columns, derived values) and
marks which are **per-key** values (computed after the whole log is read: ``count_per``,
``position_in_file``, ``rate_per``, ``train_count_per`` and what is derived from them) and which of those
come from train labels (``from_labels``: computed once the split is known).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from tfmsr.core.io import read_yaml
from tfmsr.data.ingest.expr import Rule, RuleError, parse_rule
from tfmsr.data.layout import DEFAULT_LAYOUT, LAYOUTS
from tfmsr.data.pipeline import DataError


class SpecError(DataError):
    """A mistake in the ingestion spec, naming the spec file and the key."""


VALUE_TYPES = ("string", "int64", "float64")
FORMATS = ("csv", "tsv", "parquet", "jsonl")
GROUPS = ("user", "item", "context", "query", "behavior")
EXTRA_DTYPES = ("int64", "float32", "string")
SPLITS = ("train", "valid", "test")
NUMERIC = ("int64", "float64")
TRANSFORMS = ("log1p", "clip", "standardize")
TIME_PARTS = ("year", "month", "day", "weekday", "hour")
# op -> (input types, output type); "names" ops take a list of values
OPS = {
    "concat": (("string", "int64"), "string"),
    "first_token": (("string",), "string"),
    "slice": (("string",), "string"),
    "first_flag": (NUMERIC, "string"),
    "bucketize": (NUMERIC, "int64"),
    "time_part": (NUMERIC, "int64"),
    "count_per": (("string", "int64"), "int64"),
    "position_in_file": (("string", "int64"), "float64"),
    "rate_per": (("string", "int64"), "float64"),
    "train_count_per": (("string", "int64"), "int64"),
}
OP_OPTIONS = {
    "concat": {"sep": ""}, "first_token": {"sep": None}, "slice": {"start": 0, "stop": None, "case": None,
                                                                      "strip": False},
    "first_flag": {"values": None, "default": None}, "bucketize": {"boundaries": None},
    "time_part": {"part": None, "unit": "s"}, "count_per": {}, "position_in_file": {},
    "rate_per": {"m": 10.0, "reading": "out_of_fold", "folds": 5},
    "train_count_per": {"reading": "out_of_fold", "folds": 5},
}
KEY_OPS = ("count_per", "position_in_file", "rate_per", "train_count_per")  # known after the whole log is read
LABEL_OPS = ("rate_per", "train_count_per")  # per-key values of the train split's labels (``rates``)


@dataclass
class InputSpec:
    where: str
    paths: List[str]
    format: str
    sep: Optional[str]
    header: bool
    names: Optional[List[str]]
    columns: Dict[str, str]
    encoding: str = "utf-8"
    quote: Optional[str] = '"'
    null_values: List[str] = field(default_factory=lambda: list(NULLS))
    constants: Dict[str, object] = field(default_factory=dict)


NULLS = ("", "NULL", "null", "NaN", "nan", "\\N")


@dataclass
class TableSpec:
    name: str
    input: InputSpec
    key: str
    on: str
    required: bool = False


@dataclass
class DeriveSpec:
    name: str
    op: str
    inputs: List[str]
    options: dict


@dataclass
class FeatureSpec:
    name: str
    kind: str                       # categorical | numeric | sequence
    group: str
    source: Optional[str]           # the value it reads (None: a behaviour sequence)
    policy: str                     # vocab | hash | share | boundaries | ids | numeric | behaviour
    dim: int = 16
    min_count: int = 1
    max_size: Optional[int] = None
    hash_buckets: Optional[int] = None
    table: Optional[str] = None     # the feature owning the table (share / behaviour)
    boundaries: Optional[List[float]] = None
    ids: Optional[int] = None
    transform: List[tuple] = field(default_factory=list)
    fill: float = 0.0
    sep: Optional[str] = None
    length: Optional[int] = None
    order: str = "newest_first"


@dataclass
class LabelSpec:
    name: str
    rule: Optional[Rule]
    source: Optional[str]


@dataclass
class ScenarioSpec:
    name: str
    source: Optional[str]
    values: Optional[List[str]] = None
    names: Optional[List[str]] = None
    max_scenarios: Optional[int] = None
    other: Optional[str] = None


@dataclass
class BehaviourSpec:
    length: int
    where: Optional[Rule]
    features: Dict[str, str]        # sequence feature -> source feature (or "scenario")


@dataclass
class SplitSpec:
    by: str
    valid: float = 0.1
    test: float = 0.1
    key: Optional[str] = None
    seed: int = 0
    valid_from: Optional[float] = None
    test_from: Optional[float] = None
    source: Optional[str] = None
    values: Dict[str, List[str]] = field(default_factory=dict)


@dataclass
class Spec:
    path: str
    root: str
    inputs: List[InputSpec]
    tables: List[TableSpec]
    derive: List[DeriveSpec]
    filters: List[Rule]
    label: LabelSpec
    scenario: ScenarioSpec
    user: Optional[str]
    time: Optional[str]
    features: Dict[str, FeatureSpec]
    behaviour: Optional[BehaviourSpec]
    split: SplitSpec
    extras: Dict[str, tuple]        # extra name -> (value, dtype)
    output: dict
    dim: int = 16
    types: Dict[str, str] = field(default_factory=dict)   # value -> string | int64 | float64
    per_key: set = field(default_factory=set)             # values known only after the whole log is read
    from_labels: set = field(default_factory=set)         # values from train labels (LABEL_OPS and derived)

    def fail(self, where: str, msg: str):
        raise SpecError(f"{self.path}: {where}: {msg}")

    def owner(self, f: FeatureSpec) -> FeatureSpec:
        """The feature whose table ``f`` uses (itself, or the one it shares)."""
        return self.features[f.table] if f.table else f

    def code_spaces(self) -> Dict[str, List[str]]:
        """Values mapped to dense codes while reading -> their code spaces (the tables they feed, or
        ``value:NAME`` for a value only used as a key, scenario, split or string extra); the first is the
        value's primary space."""
        out: Dict[str, List[str]] = {}
        for f in self.features.values():
            if f.policy in ("vocab", "hash", "share") and f.kind != "sequence":  # sequences code their tokens
                spaces = out.setdefault(f.source, [])
                if self.owner(f).name not in spaces:
                    spaces.append(self.owner(f).name)
        for name in self._keyed_values():
            out.setdefault(name, [f"value:{name}"])
        return out

    def _keyed_values(self) -> List[str]:
        names = [d.inputs[0] for d in self.derive if d.op in KEY_OPS]
        if self.scenario.source and self.scenario.source not in self.per_key and not self.scenario.names:
            names.append(self.scenario.source)
        if self.split.by == "column":
            names.append(self.split.source)
        if self.split.by == "hash":
            names.append(self.split.key)
        names += [v for v, dt in self.extras.values() if dt == "string"]
        return names


# ---------------------------------------------------------------------------------------------- helpers
class _Node:
    """One mapping of the spec with its location, for messages naming the key."""

    def __init__(self, spec_path: str, where: str, data, allowed, required=()):
        self.path, self.where = spec_path, where
        if not isinstance(data, dict):
            self.fail(f"expected a mapping, got {type(data).__name__} {data!r}")
        self.data = data
        unknown = [k for k in data if k not in allowed]
        if unknown:
            self.fail(f"unknown key '{unknown[0]}' (allowed: {', '.join(sorted(allowed))})")
        for k in required:
            if k not in data:
                self.fail(f"missing key '{k}'")

    def fail(self, msg: str, key: Optional[str] = None):
        where = f"{self.where}.{key}" if key and self.where else (key or self.where or "top level")
        raise SpecError(f"{self.path}: {where}: {msg}")

    def get(self, key, default=None, kind=None, choices=None):
        v = self.data.get(key, default)
        if v is None or kind is None:
            return v
        if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
            self.fail(f"expected an integer, got {v!r}", key)
        if kind is float and (isinstance(v, bool) or not isinstance(v, (int, float))):
            self.fail(f"expected a number, got {v!r}", key)
        if kind is str and not isinstance(v, str):
            self.fail(f"expected a string, got {v!r}", key)
        if kind is bool and not isinstance(v, bool):
            self.fail(f"expected true or false, got {v!r}", key)
        if kind is list and not isinstance(v, list):
            self.fail(f"expected a list, got {v!r}", key)
        if kind is dict and not isinstance(v, dict):
            self.fail(f"expected a mapping, got {v!r}", key)
        if choices and v not in choices:
            self.fail(f"expected one of {', '.join(map(str, choices))}, got {v!r}", key)
        return float(v) if kind is float else v

    def positive(self, key, default=None):
        v = self.get(key, default, int)
        if v is not None and v < 1:
            self.fail(f"expected a positive integer, got {v}", key)
        return v

    def rule(self, key) -> Optional[Rule]:
        text = self.get(key, None, str)
        if text is None:
            return None
        try:
            return parse_rule(text)
        except RuleError as e:
            self.fail(str(e), key)


def _format_of(paths: List[str]) -> Optional[str]:
    name = re.sub(r"\.gz$", "", paths[0].lower())
    for ext, fmt in ((".csv", "csv"), (".tsv", "tsv"), (".parquet", "parquet"), (".pq", "parquet"),
                     (".jsonl", "jsonl"), (".json", "jsonl"), (".ndjson", "jsonl")):
        if name.endswith(ext):
            return fmt
    return None


READER_KEYS = ("path", "format", "sep", "header", "names", "columns", "encoding", "quote", "null_values")


def parse_input(spec_path: str, where: str, raw, extra=()) -> (InputSpec, _Node):
    n = _Node(spec_path, where, raw, READER_KEYS + tuple(extra), required=("path", "columns"))
    paths = n.get("path")
    paths = [paths] if isinstance(paths, str) else paths
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
        n.fail("expected a file, a glob or a list of them", "path")
    fmt = n.get("format", _format_of(paths), str, FORMATS)
    if fmt is None:
        n.fail(f"cannot tell the format from {paths[0]!r}: set format ({', '.join(FORMATS)})")
    sep = n.get("sep", {"csv": ",", "tsv": "\t"}.get(fmt), str)
    if fmt in ("csv", "tsv") and (not sep or len(sep) != 1):
        n.fail(f"expected one separator character, got {sep!r}", "sep")
    header = n.get("header", True, bool)
    names = n.get("names", None, list)
    if fmt in ("csv", "tsv") and not header and not names:
        n.fail("a file without header needs 'names' (its columns in order)")
    columns = n.get("columns", None, dict)
    if not columns:
        n.fail("expected a mapping column -> type (string, int64 or float64)", "columns")
    for c, t in columns.items():
        if t not in VALUE_TYPES:
            n.fail(f"expected a type in {', '.join(VALUE_TYPES)}, got {t!r}", f"columns.{c}")
        if names and c not in names:
            n.fail(f"column '{c}' is not among names {names}", "columns")
    quote = n.get("quote", '"', str)
    nulls = n.get("null_values", list(NULLS), list)
    inp = InputSpec(where=where, paths=paths, format=fmt, sep=sep, header=header, names=names,
                    columns={str(c): t for c, t in columns.items()}, encoding=n.get("encoding", "utf-8", str),
                    quote=None if quote == "none" else quote, null_values=[str(v) for v in nulls])
    return inp, n


# ---------------------------------------------------------------------------------------------- top level
TOP_KEYS = ("root", "inputs", "tables", "derive", "filter", "label", "scenario", "user", "time", "features",
            "behaviour", "split", "extras", "dim", "output")


def load_spec(path: str, root: Optional[str] = None) -> Spec:
    """Read and validate a spec file; ``root`` (a folder) overrides the spec's ``root``."""
    return parse_spec(read_yaml(path, "spec", SpecError), path, root)


def parse_spec(raw, path: str = "<spec>", root: Optional[str] = None) -> Spec:
    top = _Node(path, "", raw, TOP_KEYS, required=("inputs", "label", "features"))
    spec_root = root or top.get("root", None, str) or os.path.dirname(os.path.abspath(path))
    inputs = _inputs(top)
    spec = Spec(path=path, root=os.path.expanduser(os.path.expandvars(spec_root)), inputs=inputs,
                tables=_tables(top), derive=_derive(top), filters=_filters(top), label=_label(top),
                scenario=_scenario(top), user=top.get("user", None, str), time=top.get("time", None, str),
                features={}, behaviour=None, split=_split(top), extras={}, output=_output(top))
    _type_values(spec)
    dim = spec.dim = top.positive("dim", 16)
    spec.features = _features(top, spec, dim)
    spec.behaviour = _behaviour(top, spec, dim)
    spec.extras = _extras(top, spec)
    _check_references(spec)
    return spec


def _inputs(top: _Node) -> List[InputSpec]:
    raw = top.get("inputs")
    raw = [raw] if isinstance(raw, dict) else raw
    if not isinstance(raw, list) or not raw:
        top.fail("expected a list of inputs (each with path and columns)", "inputs")
    out = []
    for i, r in enumerate(raw):
        inp, n = parse_input(top.path, f"inputs[{i}]", r, extra=("constants",))
        consts = n.get("constants", {}, dict)
        for k, v in consts.items():
            if not isinstance(v, (str, int, float)) or isinstance(v, bool):
                n.fail(f"expected a string or number, got {v!r}", f"constants.{k}")
        inp.constants = {str(k): v for k, v in consts.items()}
        out.append(inp)
    return out


def _tables(top: _Node) -> List[TableSpec]:
    raw = top.get("tables", {}, dict)
    out = []
    for name, r in raw.items():
        inp, n = parse_input(top.path, f"tables.{name}", r, extra=("key", "on", "required"))
        key = n.get("key", None, str)
        if key is None:
            n.fail("missing key 'key' (the table's column holding the join key)")
        if key not in inp.columns:
            n.fail(f"key column '{key}' is not among the table's columns {sorted(inp.columns)}", "key")
        out.append(TableSpec(name=str(name), input=inp, key=key, on=n.get("on", key, str),
                             required=n.get("required", False, bool)))
    return out


def _derive(top: _Node) -> List[DeriveSpec]:
    raw = top.get("derive", {}, dict)
    out = []
    for name, r in raw.items():
        where = f"derive.{name}"
        if not isinstance(r, dict):
            top.fail(f"expected a mapping with one operation ({', '.join(OPS)})", where)
        ops = [k for k in r if k in OPS]
        if len(ops) != 1:
            top.fail(f"expected exactly one operation among {', '.join(OPS)}, got {sorted(r)}", where)
        op = ops[0]
        n = _Node(top.path, where, r, (op,) + tuple(OP_OPTIONS[op]))
        arg = r[op]
        inputs = arg if isinstance(arg, list) else [arg]
        if not inputs or not all(isinstance(a, str) for a in inputs):
            n.fail(f"expected a value name{' or a list of them' if op in ('concat', 'first_flag') else ''}", op)
        if isinstance(arg, list) and op not in ("concat", "first_flag"):
            n.fail("expected one value name", op)
        opts = {k: n.get(k, d) for k, d in OP_OPTIONS[op].items()}
        _check_op_options(n, op, opts, inputs)
        out.append(DeriveSpec(name=str(name), op=op, inputs=inputs, options=opts))
    return out


def _check_op_options(n: _Node, op: str, opts: dict, inputs: List[str]) -> None:
    if op == "first_token" and not opts["sep"]:
        n.fail("first_token needs 'sep' (the delimiter)")
    if op == "bucketize":
        b = opts["boundaries"]
        if not isinstance(b, list) or not b or not all(isinstance(x, (int, float)) for x in b) \
                or any(y <= x for x, y in zip(b, b[1:])):
            n.fail("expected increasing numbers, e.g. [25, 35]", "boundaries")
    if op == "first_flag":
        vals = opts["values"]
        if not isinstance(vals, list) or len(vals) != len(inputs):
            n.fail(f"expected one name per flag column ({len(inputs)})", "values")
    if op == "time_part":
        n.get("part", None, str, TIME_PARTS) or n.fail(f"expected one of {', '.join(TIME_PARTS)}", "part")
        n.get("unit", "s", str, ("s", "ms"))
    if op == "rate_per" and (not isinstance(opts["m"], (int, float)) or isinstance(opts["m"], bool)
                             or not opts["m"] > 0):
        n.fail(f"expected a prior strength > 0 (the smoothing (pos + m p) / (n + m)), got {opts['m']!r}", "m")
    if op in LABEL_OPS:
        n.get("reading", "out_of_fold", str, ("as_of", "out_of_fold"))
        if not isinstance(opts["folds"], int) or isinstance(opts["folds"], bool) or opts["folds"] < 2:
            n.fail(f"expected a number of folds >= 2, got {opts['folds']!r}", "folds")
    if op == "slice":
        n.get("case", None, str, ("upper", "lower"))
        n.get("start", 0, int), n.get("stop", None, int), n.get("strip", False, bool)


def _filters(top: _Node) -> List[Rule]:
    raw = top.get("filter", [], list)
    out = []
    for i, text in enumerate(raw):
        if not isinstance(text, str):
            top.fail(f"expected a rule string, got {text!r}", f"filter[{i}]")
        try:
            out.append(parse_rule(text))
        except RuleError as e:
            top.fail(str(e), f"filter[{i}]")
    return out


def _label(top: _Node) -> LabelSpec:
    n = _Node(top.path, "label", top.get("label"), ("name", "rule", "from"))
    rule, source = n.rule("rule"), n.get("from", None, str)
    if (rule is None) == (source is None):
        n.fail("expected either 'rule' (e.g. \"rating >= 4\") or 'from' (a 0/1 column)")
    return LabelSpec(name=n.get("name", "label", str), rule=rule, source=source)


def _scenario(top: _Node) -> ScenarioSpec:
    raw = top.get("scenario")
    if raw is None:
        return ScenarioSpec(name="scenario", source=None, values=["all"])
    n = _Node(top.path, "scenario", raw, ("name", "from", "values", "names", "max_scenarios", "other"),
              required=("from",))
    s = ScenarioSpec(name=n.get("name", "scenario", str), source=n.get("from", None, str),
                     values=n.get("values", None, list), names=n.get("names", None, list),
                     max_scenarios=n.positive("max_scenarios"), other=n.get("other", None, str))
    if s.values is not None and s.names is not None:
        n.fail("set 'values' (the source's values, in order) or 'names' (names of indices 0..S-1), not both")
    for key in ("values", "names"):
        v = getattr(s, key)
        if v is not None:
            if not v or len(set(map(str, v))) != len(v):
                n.fail("expected a non-empty list of distinct entries", key)
            setattr(s, key, [str(x) for x in v])
    if s.max_scenarios is not None and s.max_scenarios < 2 and s.other:
        n.fail("with an 'other' bucket, max_scenarios must be >= 2", "max_scenarios")
    return s


def _split(top: _Node) -> SplitSpec:
    raw = top.get("split", {"by": "user_time"})
    n = _Node(top.path, "split", raw, ("by", "valid", "test", "key", "seed", "valid_from", "test_from",
                                       "from", "values"), required=("by",))
    by = n.get("by", None, str, ("user_time", "global_time", "hash", "column"))
    s = SplitSpec(by=by, valid=n.get("valid", 0.1, float), test=n.get("test", 0.1, float), key=n.get("key", None, str),
                  seed=n.get("seed", 0, int), valid_from=n.get("valid_from", None, float),
                  test_from=n.get("test_from", None, float), source=n.get("from", None, str))
    if not (0 <= s.valid < 1 and 0 <= s.test < 1 and s.valid + s.test < 1):
        n.fail(f"valid {s.valid} / test {s.test}: fractions in [0, 1) with valid + test < 1")
    allowed = {"user_time": ("valid", "test"), "global_time": ("valid_from", "test_from"),
               "hash": ("valid", "test", "key", "seed"), "column": ("from", "values")}[by]
    stray = [k for k in raw if k not in allowed + ("by",)]
    if stray:
        n.fail(f"'{stray[0]}' does not apply to by: {by} (its keys: {', '.join(allowed)})")
    if by == "global_time" and s.test_from is None:
        n.fail("by: global_time needs test_from (and optionally valid_from), in the time value's unit")
    if by == "column":
        if not s.source:
            n.fail("by: column needs 'from' (the column naming each row's split)")
        vals = n.get("values", {sp: [sp] for sp in SPLITS}, dict)
        if set(vals) - set(SPLITS):
            n.fail(f"expected keys among {', '.join(SPLITS)}", "values")
        s.values = {sp: [str(x) for x in (v if isinstance(v, list) else [v])] for sp, v in vals.items()}
    return s


def _output(top: _Node) -> dict:
    n = _Node(top.path, "output", top.get("output", {}),
              ("rows_per_shard", "gzip", "chunk_mb", "group_rows", "layout"))
    return {"rows_per_shard": n.positive("rows_per_shard", 100_000), "gzip": n.get("gzip", False, bool),
            "chunk_mb": n.positive("chunk_mb", 16), "group_rows": n.positive("group_rows", 200_000),
            "layout": n.get("layout", DEFAULT_LAYOUT, str, LAYOUTS)}


# ---------------------------------------------------------------------------------------------- typing
def _type_values(spec: Spec) -> None:
    """Types of every input column, joined column and derived value; per-key values; clashes."""
    types: Dict[str, str] = {}
    first = spec.inputs[0]
    first_cols = dict(first.columns, **{k: _const_type(v) for k, v in first.constants.items()})
    for inp in spec.inputs:
        cols = dict(inp.columns, **{k: _const_type(v) for k, v in inp.constants.items()})
        if cols != first_cols:
            diff = sorted(set(cols.items()) ^ set(first_cols.items()))[0][0]
            spec.fail(inp.where, f"value '{diff}' differs from inputs[0] (every input gives the same columns and "
                                 f"constants with the same types: {first_cols})")
    types.update(first_cols)
    for t in spec.tables:
        if t.on not in types:
            spec.fail(f"tables.{t.name}.on", f"no value '{t.on}' to join on (known: {', '.join(types)})")
        if types[t.on] != t.input.columns[t.key]:
            spec.fail(f"tables.{t.name}", f"key '{t.key}' is {t.input.columns[t.key]} but '{t.on}' is {types[t.on]}")
        for c, ty in t.input.columns.items():
            if c == t.key:
                continue
            if c in types:
                spec.fail(f"tables.{t.name}.columns.{c}", f"clashes with a value of the same name (read fewer columns)")
            types[c] = ty
    for d in spec.derive:
        _type_derived(spec, d, types)
    spec.types = types


def _const_type(v) -> str:
    return "int64" if isinstance(v, int) else "float64" if isinstance(v, float) else "string"


def _type_derived(spec: Spec, d: DeriveSpec, types: Dict[str, str]) -> None:
    where = f"derive.{d.name}"
    if d.name in types:
        spec.fail(where, "a value of this name already exists (input or joined column)")
    accepted, out = OPS[d.op]
    for v in d.inputs:
        if v not in types:
            spec.fail(where, f"no value '{v}' (known: {', '.join(types)})")
        if types[v] not in accepted:
            spec.fail(where, f"{d.op} takes {' or '.join(accepted)} values; '{v}' is {types[v]}")
        if v in spec.per_key and not (d.op == "bucketize"):
            spec.fail(where, f"'{v}' is a per-key value (known after the whole log is read); only bucketize "
                             "may use it")
    if d.op in KEY_OPS or any(v in spec.per_key for v in d.inputs):
        spec.per_key.add(d.name)
    if d.op in LABEL_OPS or any(v in spec.from_labels for v in d.inputs):
        spec.from_labels.add(d.name)
    types[d.name] = out


def _check_rule(spec: Spec, where: str, rule: Optional[Rule]) -> None:
    if rule is None:
        return
    try:
        rule.check(spec.types)
    except RuleError as e:
        spec.fail(where, str(e))
    late = [v for v in rule.names if v in spec.per_key]
    if late:
        spec.fail(where, f"'{late[0]}' is a per-key value; rules see the row's own and joined values only")


def _value(spec: Spec, where: str, name: Optional[str], types=None, row_only=False) -> None:
    if name not in spec.types:
        spec.fail(where, f"no value '{name}' (known: {', '.join(spec.types)})")
    if types and spec.types[name] not in types:
        spec.fail(where, f"expected a {' or '.join(types)} value; '{name}' is {spec.types[name]}")
    if row_only and name in spec.per_key:
        spec.fail(where, f"'{name}' is a per-key value; this needs a value of the row itself")


# ---------------------------------------------------------------------------------------------- features
FEATURE_KEYS = ("from", "kind", "group", "dim", "min_count", "max_size", "hash_buckets", "table", "boundaries",
                "ids", "transform", "fill", "sep", "length", "order")


def _features(top: _Node, spec: Spec, dim: int) -> Dict[str, FeatureSpec]:
    raw = top.get("features", None, dict)
    if not raw:
        top.fail("expected a mapping feature name -> {from, group, ...}", "features")
    out: Dict[str, FeatureSpec] = {}
    for name, r in raw.items():
        n = _Node(top.path, f"features.{name}", r, FEATURE_KEYS, required=("group",))
        out[str(name)] = _feature(n, str(name), spec, dim)
    for f in out.values():  # shared tables: the owner must exist and own a table of the same type
        if f.table:
            owner = out.get(f.table)
            where = f"features.{f.name}.table"
            if owner is None or owner.policy not in ("vocab", "hash"):
                spec.fail(where, f"'{f.table}' is not a feature with its own vocabulary or hash_buckets")
            if spec.types[owner.source] != spec.types[f.source] and owner.policy == "vocab":
                spec.fail(where, f"'{f.source}' is {spec.types[f.source]} but the table of '{f.table}' holds "
                                 f"{spec.types[owner.source]} values")
    return out


def _feature(n: _Node, name: str, spec: Spec, dim: int) -> FeatureSpec:
    transform = _transforms(n)
    kind = n.get("kind", "numeric" if transform else "categorical", str, ("categorical", "numeric", "sequence"))
    f = FeatureSpec(name=name, kind=kind, group=n.get("group", None, str, GROUPS), source=n.get("from", name, str),
                    policy="vocab", dim=n.positive("dim", dim), min_count=n.positive("min_count", 1),
                    max_size=n.positive("max_size"), hash_buckets=n.get("hash_buckets", None, int),
                    table=n.get("table", None, str), boundaries=n.get("boundaries", None, list),
                    ids=n.get("ids", None, int), transform=transform, fill=n.get("fill", 0.0, float),
                    sep=n.get("sep", None, str), length=n.positive("length"),
                    order=n.get("order", "newest_first", str, ("newest_first", "oldest_first")))
    _value(spec, f"features.{name}.from", f.source)
    policies = [k for k in ("hash_buckets", "table", "boundaries", "ids") if k in n.data]
    if len(policies) > 1:
        n.fail(f"choose one id policy: {' or '.join(policies)}")
    if kind == "numeric":
        stray = [k for k in n.data if k not in ("from", "kind", "group", "transform", "fill")]
        if stray:
            n.fail("a numeric feature takes from, group, transform, fill", stray[0])
        _value(spec, n.where, f.source, NUMERIC)
        f.policy = "numeric"
        return f
    f.policy = {"hash_buckets": "hash", "table": "share", "boundaries": "boundaries", "ids": "ids"}.get(
        policies[0], "vocab") if policies else "vocab"
    _check_ids(n, f, spec)
    if kind == "sequence":
        if not f.sep or not f.length:
            n.fail("a sequence read from a column needs 'sep' (its delimiter) and 'length' (sequences built "
                   "from the log go under behaviour.features)")
        if f.policy in ("boundaries", "ids"):
            n.fail("a delimited sequence takes a vocabulary, hash_buckets or a shared table")
    elif f.sep or f.length:
        n.fail("only sequences take 'sep' and 'length'")
    return f


def _check_ids(n: _Node, f: FeatureSpec, spec: Spec) -> None:
    vocab_keys = [k for k in ("min_count", "max_size") if k in n.data]
    if vocab_keys and f.policy != "vocab":
        n.fail(f"'{vocab_keys[0]}' only applies to a vocabulary (not with {f.policy})")
    if f.policy in ("vocab", "hash", "share"):
        _value(spec, n.where, f.source, ("string", "int64"), row_only=True)
    if f.policy == "hash" and (f.hash_buckets is None or f.hash_buckets < 2):
        n.fail("expected an integer >= 2", "hash_buckets")
    if f.policy == "boundaries":
        b = f.boundaries
        if not b or not all(isinstance(x, (int, float)) for x in b) or any(y <= x for x, y in zip(b, b[1:])):
            n.fail("expected increasing numbers", "boundaries")
        _value(spec, n.where, f.source, NUMERIC)
    if f.policy == "ids":
        if f.ids < 2:
            n.fail("expected the table size (an integer >= 2; values are ids in 1..ids-1, 0 = missing)", "ids")
        _value(spec, n.where, f.source, ("int64",))


def _transforms(n: _Node) -> List[tuple]:
    raw = n.get("transform", [], list)
    out = []
    for i, t in enumerate(raw):
        key = f"transform[{i}]"
        if t in ("log1p", "standardize", "standardise"):
            out.append(("standardize" if t.startswith("standard") else t,))
        elif isinstance(t, dict) and list(t) == ["clip"]:
            b = t["clip"]
            if not isinstance(b, list) or len(b) != 2 or not all(isinstance(x, (int, float)) for x in b) \
                    or b[0] >= b[1]:
                n.fail("clip takes [low, high] with low < high", key)
            out.append(("clip", float(b[0]), float(b[1])))
        else:
            n.fail(f"expected log1p, standardize or {{clip: [low, high]}}, got {t!r}", key)
    if any(t[0] == "standardize" for t in out[:-1]):
        n.fail("standardize must be the last step (the graph standardises after the stored transforms)",
               "transform")
    return out


def _behaviour(top: _Node, spec: Spec, dim: int) -> Optional[BehaviourSpec]:
    raw = top.get("behaviour")
    if raw is None:
        return None
    n = _Node(top.path, "behaviour", raw, ("length", "where", "features"), required=("length", "features"))
    feats = n.get("features", None, dict)
    if not feats:
        n.fail("expected a mapping sequence name -> feature (or scenario)", "features")
    for seq, src in feats.items():
        where = f"behaviour.features.{seq}"
        if seq in spec.features:
            spec.fail(where, "clashes with a feature of the same name")
        if src == "scenario":
            continue
        f = spec.features.get(src)
        if f is None or f.kind != "categorical" or f.policy not in ("vocab", "hash", "share"):
            spec.fail(where, f"expected 'scenario' or a categorical feature with a vocabulary, hash_buckets or "
                             f"a shared table, got {src!r}")
    b = BehaviourSpec(length=n.positive("length"), where=n.rule("where"), features={str(k): v for k, v in feats.items()})
    _check_rule(spec, "behaviour.where", b.where)
    return b


def _extras(top: _Node, spec: Spec) -> Dict[str, tuple]:
    raw = top.get("extras", {}, dict)
    out = {}
    for name, r in raw.items():
        where = f"extras.{name}"
        if isinstance(r, str):
            value, dtype = str(name), r
        else:
            n = _Node(top.path, where, r, ("from", "dtype"), required=("dtype",))
            value, dtype = n.get("from", str(name), str), n.get("dtype", None, str)
        if dtype not in EXTRA_DTYPES:
            spec.fail(where, f"expected a dtype in {', '.join(EXTRA_DTYPES)}, got {dtype!r}")
        _value(spec, where, value, ("string",) if dtype == "string" else NUMERIC)
        if dtype == "string" and value in spec.per_key:
            spec.fail(where, "a string extra needs a value of the row itself")
        out[str(name)] = (value, dtype)
    return out


def _user_value(spec: Spec) -> Optional[str]:
    f = spec.features.get(spec.user) if spec.user else None
    return f.source if f is not None else None


def _check_references(spec: Spec) -> None:
    for i, r in enumerate(spec.filters):
        _check_rule(spec, f"filter[{i}]", r)
    _check_rule(spec, "label.rule", spec.label.rule)
    if spec.label.source:
        _value(spec, "label.from", spec.label.source, NUMERIC, row_only=True)
    sc = spec.scenario
    if sc.source:
        _value(spec, "scenario.from", sc.source, ("int64",) if sc.names else ("string", "int64"),
               row_only=not sc.names)
    if sc.names and sc.max_scenarios:
        spec.fail("scenario.max_scenarios", "applies to discovered values; with 'names' the scenarios are listed")
    if spec.user is not None:
        f = spec.features.get(spec.user)
        if f is None or f.kind != "categorical" or f.policy not in ("vocab", "hash", "share"):
            spec.fail("user", f"expected a categorical feature with a vocabulary or hash_buckets, got {spec.user!r}")
    needs_user = [w for w, on in (("behaviour", spec.behaviour), ("split.by: user_time", spec.split.by == "user_time"))
                  if on]
    if needs_user and spec.user is None:
        spec.fail(needs_user[0], "needs 'user' (the feature naming the user whose events these are)")
    if spec.time is not None:
        _value(spec, "time", spec.time, NUMERIC)
    if spec.split.by == "global_time" and spec.time is None:
        spec.fail("split", "by: global_time needs 'time' (the value ordering the events)")
    if spec.split.by == "hash":
        spec.split.key = spec.split.key or (spec.features[spec.user].source if spec.user else None)
        if spec.split.key is None:
            spec.fail("split.key", "by: hash needs a key (a value) or a 'user' feature")
        _value(spec, "split.key", spec.split.key, ("string", "int64"), row_only=True)
    if spec.split.by == "column":
        _value(spec, "split.from", spec.split.source, ("string", "int64"), row_only=True)
    for d in spec.derive:
        if d.op in KEY_OPS and d.inputs[0] in spec.per_key:
            spec.fail(f"derive.{d.name}", "the key must be a value of the row itself")
        if d.op in LABEL_OPS and d.options["reading"] == "as_of" and spec.time is None:
            spec.fail(f"derive.{d.name}", f"{d.op} (reading: as_of) needs 'time' (the value ordering the events):"
                                          " a row reads its key's train rows strictly earlier in time")
        if d.op in LABEL_OPS and d.options["reading"] == "out_of_fold" and spec.user is None:
            spec.fail(f"derive.{d.name}", f"{d.op} (reading: out_of_fold) needs 'user' (folds are drawn per user)")
        if d.op in LABEL_OPS and d.options["reading"] == "out_of_fold" and d.inputs[0] == _user_value(spec):
            spec.fail(f"derive.{d.name}", f"out_of_fold draws folds per user, so a train row would never read "
                                          f"its own key '{d.inputs[0]}' (use reading: as_of)")
    if spec.time in spec.from_labels:
        spec.fail("time", f"'{spec.time}' is computed from train labels (rate_per / train_count_per); the "
                          "time must come from the row or its key's counts")
