"""Feature schema: the scenario field, the labels and every feature, as dataclasses <-> YAML.

A dataset directory carries ``schema.yaml``::

    scenario: {name: scenario, values: [home, search, cart]}   # int64 in [0, S) in every record
    labels: [click]                                             # float 0/1
    features:
      - {name: user_id, kind: categorical, group: user, vocab_size: 20001, dim: 16}
      - {name: query, kind: categorical, group: query, hash_buckets: 100000}   # raw strings, hashed
      - {name: price, kind: numeric, group: item, mean: 3.1, std: 1.2}
      - {name: hist_item_id, kind: sequence, group: behavior, share: item_id, length: 30}
      - {name: shop, kind: categorical, group: item, vocab_size: 501, vocab: vocab/shop.txt, raw: string}
    extras: {oracle_p: float32, latent_scenario: int64}        # carried through, never model inputs
    oracle: oracle_p                                            # extra holding the true click probability

Ids: ``vocab_size`` is the number of rows of the embedding table; id 0 is padding / out-of-vocabulary and
real ids are 1 .. vocab_size-1 (ids outside map to 0 and are counted). A hashed feature stores raw strings
and hashes them into 1 .. hash_buckets-1. A sequence shares the table of the feature named by ``share``
(behaviour item ids share ``item_id``) and is stored most recent first, truncated/padded to ``length``.
A sequence of behaviour scenarios stores scenario index + 1 (0 is padding) with vocab_size S + 1.
Models ask for groups, never for names.

Raw values (``tfmsr data ingest``): a table with ``vocab`` (a file of the dataset, relative to the schema's
folder; line n holds the raw value of id n) stores **raw values** of dtype ``raw`` (``string`` or ``int64``)
in the shards, and the graph maps them to ids with a lookup built from that file (``vocab_size`` = lines + 1).
Tables without ``vocab`` store ids, as every dataset written before ingestion does; both kinds may mix in
one schema. In an int64 vocabulary the raw value 0 (like the empty string) means missing: id 0.

Record layout (``layout: packed``, ``tfmsr/data/layout.py``): the scalar columns of a row packed into one list
per dtype; absent (every dataset written before the key): one ``tf.train.Example`` feature per column.

"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import yaml

from tfmsr.core.io import read_yaml

KINDS = ("categorical", "numeric", "sequence")
RAW_DTYPES = ("string", "int64")
GROUPS = ("user", "item", "behavior", "context", "query", "scenario")
EXTRA_DTYPES = ("int64", "float32", "string")
LAYOUTS = ("features", "packed")  # record layouts of the shards: tfmsr/data/layout.py


class SchemaError(ValueError):
    """A schema mistake, naming the file and the field."""


@dataclass
class Feature:
    name: str
    kind: str
    group: str
    vocab_size: Optional[int] = None
    hash_buckets: Optional[int] = None
    dim: int = 16
    share: Optional[str] = None
    length: Optional[int] = None
    mean: float = 0.0
    std: float = 1.0
    vocab: Optional[str] = None
    raw: Optional[str] = None

    @property
    def hashed(self) -> bool:
        return self.hash_buckets is not None

    @property
    def table(self) -> str:
        """Name of the embedding table this feature looks up (its own, or the shared one)."""
        return self.share or self.name


@dataclass
class Scenario:
    name: str
    values: List[str]


@dataclass
class Schema:
    scenario: Scenario
    labels: List[str]
    features: List[Feature]
    extras: Dict[str, str] = field(default_factory=dict)
    oracle: Optional[str] = None
    user_key: str = "user_id"
    layout: str = dataclasses.field(default="features", compare=False)  # how the shards store a row (below)
    source: str = dataclasses.field(default="<schema>", compare=False, repr=False)

    # ------------------------------------------------------------------ queries
    @property
    def num_scenarios(self) -> int:
        return len(self.scenario.values)

    @property
    def label(self) -> str:
        return self.labels[0]

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"{self.source}: no feature named '{name}'")

    def group(self, group: str, kind: Optional[str] = None) -> List[Feature]:
        return [f for f in self.features if f.group == group and (kind is None or f.kind == kind)]

    def of_kind(self, kind: str) -> List[Feature]:
        return [f for f in self.features if f.kind == kind]

    def table_owner(self, f: Feature) -> Feature:
        """The feature whose vocabulary/dim define ``f``'s embedding table."""
        return self.feature(f.share) if f.share else f

    def vocab_path(self, f: Feature) -> Optional[str]:
        """The vocabulary file of ``f``'s table (resolved against the schema's folder), or None."""
        owner = self.table_owner(f)
        if not owner.vocab:
            return None
        return os.path.join(os.path.dirname(os.path.abspath(self.source)), owner.vocab)

    def raw_dtype(self, f: Feature) -> str:
        """How ``f`` is stored in the shards and taken by servables: 'float32' (numeric), 'string'
        (hashed, or a string vocabulary), 'int64' (ids, or an int64 vocabulary)."""
        if f.kind == "numeric":
            return "float32"
        owner = self.table_owner(f)
        if owner.hashed:
            return "string"
        return owner.raw if owner.vocab else "int64"

    def vocab_files(self) -> Dict[str, str]:
        """Table name -> resolved vocabulary file, for the tables that map raw values."""
        return {name: self.vocab_path(f) for name, f in self.tables().items() if f.vocab}

    def tables(self) -> Dict[str, Feature]:
        """Embedding tables by name -> the feature that owns each (categorical and sequence only)."""
        return {f.name: f for f in self.features if f.kind != "numeric" and not f.share}

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        feats = []
        for f in self.features:
            d = {"name": f.name, "kind": f.kind, "group": f.group}
            for key in ("vocab_size", "hash_buckets", "share", "length", "vocab", "raw"):
                if getattr(f, key) is not None:
                    d[key] = getattr(f, key)
            if f.kind != "numeric" and not f.share:
                d["dim"] = f.dim
            if f.kind == "numeric":
                d["mean"], d["std"] = float(f.mean), float(f.std)
            feats.append(d)
        out = {
            "scenario": {"name": self.scenario.name, "values": list(self.scenario.values)},
            "labels": list(self.labels),
            "user_key": self.user_key,
            "features": feats,
        }
        if self.extras:
            out["extras"] = dict(self.extras)
        if self.oracle:
            out["oracle"] = self.oracle
        if self.layout != "features":  # a schema without the key: every dataset written before the layouts
            out["layout"] = self.layout
        return out

    def save(self, path: str) -> None:
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as fh:
            yaml.safe_dump(self.to_dict(), fh, sort_keys=False)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "Schema":
        return cls.from_dict(read_yaml(path, "schema", SchemaError), source=path)

    @classmethod
    def from_dict(cls, raw, source: str = "<schema>") -> "Schema":
        def fail(msg):
            raise SchemaError(f"{source}: {msg}")

        if not isinstance(raw, dict):
            fail("expected a mapping with keys scenario, labels, features")
        unknown = set(raw) - {"scenario", "labels", "features", "extras", "oracle", "user_key", "layout"}
        if unknown:
            fail(f"unknown top-level key(s) {sorted(unknown)}")
        sc = raw.get("scenario")
        if not isinstance(sc, dict) or not sc.get("name"):
            fail("no scenario: expected 'scenario: {name: FIELD, values: [NAME, ...]}'")
        values = sc.get("values")
        if not isinstance(values, list) or not values:
            fail(f"scenario '{sc['name']}': 'values' must be a non-empty list of scenario names")
        if len(set(map(str, values))) != len(values):
            fail(f"scenario '{sc['name']}': duplicate scenario names in {values}")
        labels = raw.get("labels")
        if isinstance(labels, str):
            labels = [labels]
        if not isinstance(labels, list) or not labels:
            fail("no labels: expected 'labels: [NAME, ...]'")
        feats_raw = raw.get("features")
        if not isinstance(feats_raw, list) or not feats_raw:
            fail("no features: expected 'features: [{name, kind, group, ...}, ...]'")
        allowed = {f.name for f in dataclasses.fields(Feature)}
        features = []
        for i, fr in enumerate(feats_raw):
            if not isinstance(fr, dict) or "name" not in fr:
                fail(f"features[{i}]: expected a mapping with a 'name'")
            bad = set(fr) - allowed
            if bad:
                fail(f"feature '{fr['name']}': unknown key(s) {sorted(bad)} (allowed: {sorted(allowed)})")
            for req in ("kind", "group"):
                if req not in fr:
                    fail(f"feature '{fr['name']}': missing '{req}'")
            features.append(Feature(**fr))
        extras = raw.get("extras") or {}
        if not isinstance(extras, dict):
            fail("'extras' must map column name -> dtype")
        schema = cls(
            scenario=Scenario(name=str(sc["name"]), values=[str(v) for v in values]),
            labels=[str(l) for l in labels],
            features=features,
            extras={str(k): str(v) for k, v in extras.items()},
            oracle=raw.get("oracle"),
            user_key=raw.get("user_key", "user_id"),
            layout=raw.get("layout", "features"),
            source=source,
        )
        schema.validate()
        return schema

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise one SchemaError for the first mistake found, naming the file and the field."""
        self._check_names()
        if self.layout not in LAYOUTS:
            self._fail(f"layout '{self.layout}': expected one of {', '.join(LAYOUTS)}")
        by_name = {f.name: f for f in self.features}
        for f in self.features:
            self._check_feature(f, by_name)
        for name, dtype in self.extras.items():
            if dtype not in EXTRA_DTYPES:
                self._fail(f"extra '{name}': unknown dtype '{dtype}' (expected one of {', '.join(EXTRA_DTYPES)})")
        if self.oracle and self.oracle not in self.extras:
            self._fail(f"oracle '{self.oracle}' must name one of the extras {sorted(self.extras)}")
        if self.user_key not in by_name and self.user_key not in self.extras:
            # GAUC needs a user column; a schema without one simply has no GAUC.
            self.user_key = ""

    def _fail(self, msg: str):
        raise SchemaError(f"{self.source}: {msg}")

    def _check_names(self) -> None:
        names = [self.scenario.name] + list(self.labels) + [f.name for f in self.features] + list(self.extras)
        seen = set()
        for n in names:
            if n in seen:
                self._fail(f"duplicate name '{n}' (scenario, labels, features and extras share one namespace)")
            seen.add(n)

    def _check_feature(self, f: Feature, by_name: Dict[str, Feature]) -> None:
        where = f"feature '{f.name}'"
        if f.kind not in KINDS:
            self._fail(f"{where}: unknown kind '{f.kind}' (expected one of {', '.join(KINDS)})")
        if f.group not in GROUPS:
            self._fail(f"{where}: unknown group '{f.group}' (expected one of {', '.join(GROUPS)})")
        if f.kind == "numeric":
            self._check_numeric(f, where)
            return
        if f.share:
            self._check_share(f, where, by_name)
        else:
            self._check_table(f, where)
        if f.vocab is not None or f.raw is not None:
            if f.share or f.hash_buckets is not None or not isinstance(f.vocab, str) or not f.vocab:
                self._fail(f"{where}: 'vocab' (a file of raw values) goes on a table with vocab_size, "
                           "not on a shared or hashed one")
            if f.raw not in RAW_DTYPES:
                self._fail(f"{where}: a vocabulary table needs 'raw' (the raw values' dtype: "
                           f"{' or '.join(RAW_DTYPES)}), got {f.raw!r}")
        if f.kind == "sequence":
            if not isinstance(f.length, int) or f.length < 1:
                self._fail(f"{where}: a sequence needs 'length' (a positive integer), got {f.length!r}")
        elif f.length is not None:
            self._fail(f"{where}: only sequences have a length")

    def _check_numeric(self, f: Feature, where: str) -> None:
        if f.vocab_size or f.hash_buckets or f.share:
            self._fail(f"{where}: a numeric feature has no vocabulary, hash_buckets or share")
        for key in ("mean", "std"):  # numbers, or the model's standardisation is NaN / a TypeError
            v = getattr(f, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or abs(v) == float("inf"):
                self._fail(f"{where}: {key} must be a finite number, got {v!r}")
        if f.std <= 0:
            self._fail(f"{where}: std must be > 0, got {f.std}")

    def _check_share(self, f: Feature, where: str, by_name: Dict[str, Feature]) -> None:
        owner = by_name.get(f.share)
        if owner is None:
            self._fail(f"{where}: shares the table of '{f.share}', which does not exist")
        if owner.kind == "numeric" or owner.share:
            self._fail(f"{where}: shares '{f.share}', which owns no embedding table "
                       "(share a categorical or sequence feature that has its own vocabulary)")
        if f.vocab_size is not None or f.hash_buckets is not None:
            self._fail(f"{where}: takes its vocabulary from '{f.share}'; do not set vocab_size/hash_buckets")

    def _check_table(self, f: Feature, where: str) -> None:
        if f.vocab_size is None and f.hash_buckets is None:
            self._fail(f"{where}: missing vocabulary: set vocab_size (ids 1..vocab_size-1) or hash_buckets")
        if f.vocab_size is not None and f.hash_buckets is not None:
            self._fail(f"{where}: set either vocab_size or hash_buckets, not both")
        size = f.vocab_size if f.vocab_size is not None else f.hash_buckets
        if not isinstance(size, int) or size < 2:
            self._fail(f"{where}: vocabulary size must be an integer >= 2 (id 0 is padding/OOV), got {size!r}")
        if not isinstance(f.dim, int) or f.dim < 1:
            self._fail(f"{where}: dim must be a positive integer, got {f.dim!r}")
