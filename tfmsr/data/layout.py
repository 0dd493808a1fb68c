"""Record layouts of a dataset's shards: how one row is laid out in its ``tf.train.Example`` (schema ``layout``).

    features  one Example feature per column (``scenario``, ``click``, ``user_id``, ...): every dataset written
              before the layouts (a schema without ``layout``), ingested datasets, and every serving request
    packed    the scalar columns of a row in one list per dtype, in the schema's column order (``columns``):
              ``__int64`` (scenario, int features and extras), ``__float32`` (labels, numeric features, float
              extras), ``__string`` (string features and extras); each sequence stays one feature of its own

The packed layout holds fewer keys (a demo row: 435 -> 153 bytes) and ``tf.io.parse_example`` does one
lookup per list instead of one per column. A packed record carries no column names: it is read with the
schema that wrote it (``schema.yaml`` travels with the shards). Parsing either layout gives the same dict of
tensors (``tfmsr.data.pipeline.parse_records``).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

from tfmsr.features.schema import LAYOUTS  # what schema.yaml may declare

FEATURES, PACKED = LAYOUTS
# of newly written datasets: a per-feature record names its columns, so any tf.Example tool reads it and it is a
# valid ``examples`` request to a servable; ``packed`` (~1.6x faster to parse, ~2.5x smaller) is the switch
DEFAULT_LAYOUT = FEATURES
PACKED_KEYS = {"int": "__int64", "float": "__float32", "bytes": "__string"}  # column kind -> packed field
SEQ_KINDS = ("int_seq", "bytes_seq")


def column_kinds(schema) -> Dict[str, str]:
    """Column name -> how it is stored: 'int', 'float', 'bytes', 'int_seq', 'bytes_seq', in the schema's column
    order (scenario, labels, features, extras): the order of the packed lists."""
    kinds = {schema.scenario.name: "int"}
    for label in schema.labels:
        kinds[label] = "float"
    for f in schema.features:
        if f.kind == "numeric":
            kinds[f.name] = "float"
        else:
            base = "bytes" if schema.raw_dtype(f) == "string" else "int"
            kinds[f.name] = base + "_seq" if f.kind == "sequence" else base
    for name, dtype in schema.extras.items():
        kinds[name] = {"int64": "int", "float32": "float", "string": "bytes"}[dtype]
    return kinds


def packed_columns(schema) -> Dict[str, List[str]]:
    """Packed field -> the scalar columns it holds, in order (fields without columns left out)."""
    kinds = column_kinds(schema)
    clash = sorted(set(kinds) & set(PACKED_KEYS.values()))
    if clash:
        raise ValueError(f"{schema.source}: column(s) {clash} use the names of the packed layout's fields")
    out = {key: [n for n, k in kinds.items() if k == kind] for kind, key in PACKED_KEYS.items()}
    return {key: names for key, names in out.items() if names}


def layout_of_keys(keys) -> str:
    """The layout of a record from the names of its features: packed when it holds a packed field."""
    return PACKED if any(k in keys for k in PACKED_KEYS.values()) else FEATURES


def describe(key: str, columns: Mapping[str, List[str]]) -> str:
    """A packed field for an error message: its columns and their number."""
    names = columns.get(key, [])
    return f"packed field '{key}' ({len(names)} values: {', '.join(names)})"


def field_of(schema, name: str) -> Tuple[str, Optional[int]]:
    """Where column ``name`` sits in a record of ``schema.layout``: (the Example feature, the value's index in a
    packed list, or None for a feature of its own), e.g. to read or edit one value of a record."""
    if schema.layout == PACKED:
        for key, names in packed_columns(schema).items():
            if name in names:
                return key, names.index(name)
    if name not in column_kinds(schema):
        raise KeyError(f"{schema.source}: no column named '{name}'")
    return name, None
