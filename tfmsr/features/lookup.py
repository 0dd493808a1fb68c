"""Raw values -> ids (and back) from the vocabulary files of a dataset, with stock lookup ops only.

The contract (``tfmsr.features.schema``): a table whose owner feature has ``vocab: vocab/<table>.txt`` and
``raw: string|int64`` stores **raw values** in the shards (a categorical feature one value, a sequence a
list of values, most recent first). Line n (1-based) of the vocabulary file holds the raw value of id n,
so ``vocab_size`` = lines + 1. The mapping, applied to ``[B]``, ``[B, L]`` or ragged inputs:

    the missing value ("" for strings, 0 for int64)  -> 0   (padding, not out-of-vocabulary)
    the raw value on line n                          -> n
    any other raw value                              -> -1  (out-of-vocabulary)

-1 is what the model already treats as an out-of-range id: ``FeatureEmbedding.ids`` clamps it to row 0 and
``FeatureEmbedding.oov_count`` counts it, so an unknown raw value is counted exactly like an unknown id.
Tables without ``vocab`` store ids and are not touched (both kinds may mix in one schema).

It lives beside the schema (not under ``layers/``) because the input pipeline (``data``), the models'
layers and the servables (``serving``) all map with it, and ``data`` and ``layers`` may not import each other.

Each file becomes one ``tf.lookup.StaticHashTable`` initialised by a ``tf.lookup.TextFileInitializer``
(key: the whole line, as string or int64; value: the line number), created eagerly and once; the
reverse table (id -> raw value, for top-K servables that return raw item ids) is built from the same
file. A ``tf.Module`` holding a ``VocabLookup`` records the file as a SavedModel asset, so an exported graph
reads ``assets/<file>`` and loads in a process that never imports tfmsr.

Tables are created eagerly (``tf.init_scope``), outside every dataset / map function, and
``shared_lookups`` caches them per (file, strategy), so every parser of a process shares one set.

ParameterServerStrategy: the input pipeline runs on the workers, from a ``dataset_fn`` traced on the
coordinator. A ``StaticHashTable`` created eagerly under ``strategy.scope()`` becomes a ``DistributedTable``:
one copy per worker, initialised there from the same path (the file must be readable by the workers, like
the shards), each worker's input pipeline reading its own copy. A table first created while the
``dataset_fn`` is traced is not intercepted (the scope's creator stack belongs to the outer graph) and would
live on the coordinator, every worker calling it remotely for every batch; so the trainer calls
``shared_lookups(schema)`` under ``strategy.scope()`` before ``fit`` (the ``dataset_fn`` then finds them),
and ``shared_lookups`` refuses to create them inside a ``dataset_fn`` under that strategy.
"""
from __future__ import annotations

import os
import re
import threading
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from tfmsr.features import Schema, SchemaError

_DTYPES = {"string": tf.string, "int64": tf.int64}
MISSING = {"string": "", "int64": 0}


class VocabError(SchemaError):
    """A vocabulary file that cannot be read, has a bad or duplicate line, or disagrees with the schema."""


def _vocab_error(path: str, err: tf.errors.OpError) -> VocabError:
    """TensorFlow's initialiser errors (which never name the file), as one message with 1-based lines."""
    msg = err.message.split("}}")[-1].split("[Op:")[0].strip()
    bad = re.search(r"Field (.*) in line (\d+) is not a valid (\w+)", msg)
    dup = re.search(r"Key (.*) has (\d+) and trying to add value (\d+)", msg)
    if bad:
        what = f"line {int(bad.group(2)) + 1} ({bad.group(1)!r}) is not a valid {bad.group(3)}"
    elif dup:
        what = (f"lines {int(dup.group(2)) + 1} and {int(dup.group(3)) + 1} hold the same raw value "
                f"{dup.group(1)!r} (each value must appear once: line n is id n)")
    elif re.search(r"empty line found at position (\d+)", msg):
        offset = int(re.search(r"empty line found at position (\d+)", msg).group(1)) - 1  # 1-based byte
        with tf.io.gfile.GFile(path, "rb") as fh:
            line = fh.read(offset).count(b"\n") + 1
        what = (f"line {line} is empty (the empty string is the missing value, always id 0: leave it out of "
                "the vocabulary)")
    elif isinstance(err, tf.errors.NotFoundError):
        what = "no such file"
    else:
        what = msg
    return VocabError(f"{path}: vocabulary file: {what}")


class VocabLookup(tf.Module):
    """One vocabulary file: ``self(raw) -> ids`` and ``self.raw_values(ids) -> raw`` (module docstring)."""

    def __init__(self, path: str, raw_dtype: str, name: Optional[str] = None):
        super().__init__(name=name)
        if raw_dtype not in _DTYPES:
            raise VocabError(f"{path}: raw dtype must be one of {sorted(_DTYPES)}, got {raw_dtype!r}")
        self.path, self.raw_dtype = path, raw_dtype
        self.dtype = _DTYPES[raw_dtype]
        self.missing = MISSING[raw_dtype]
        L = tf.lookup
        with tf.init_scope():
            try:
                self.table = L.StaticHashTable(L.TextFileInitializer(
                    path, self.dtype, L.TextFileIndex.WHOLE_LINE, tf.int64, L.TextFileIndex.LINE_NUMBER),
                    default_value=-2)
            except tf.errors.OpError as e:
                raise _vocab_error(path, e) from None
            self.size = int(self.table.size())
            line = int(self.table.lookup(tf.constant([self.missing], self.dtype))[0])
        if line >= 0:
            raise VocabError(f"{path}: line {line + 1} holds the missing value {self.missing!r}, which always "
                             "maps to id 0 (padding); leave it out of the vocabulary")
        self.reverse = None

    def __call__(self, raw):
        """Raw values (Tensor of any shape, or RaggedTensor) -> int64 ids: 0 missing, -1 unknown."""
        if isinstance(raw, tf.RaggedTensor):
            return raw.with_flat_values(self(raw.flat_values))
        raw = tf.convert_to_tensor(raw)
        if raw.dtype != self.dtype:
            raise VocabError(f"{self.path}: takes {self.raw_dtype} raw values, got {raw.dtype.name}")
        ids = self.table.lookup(raw) + 1  # line number (0-based) + 1; unknown: -2 + 1
        return tf.where(tf.equal(raw, self.missing), tf.zeros_like(ids), ids)

    def build_reverse(self) -> None:
        """Create the id -> raw value table (eagerly, once)."""
        if self.reverse is None:
            L = tf.lookup
            with tf.init_scope():
                self.reverse = L.StaticHashTable(L.TextFileInitializer(
                    self.path, tf.int64, L.TextFileIndex.LINE_NUMBER, self.dtype, L.TextFileIndex.WHOLE_LINE),
                    default_value=tf.constant(self.missing, self.dtype))

    def raw_values(self, ids):
        """int ids -> raw values; id 0 and ids outside ``[1, size]`` give the missing value."""
        self.build_reverse()
        return self.reverse.lookup(tf.cast(ids, tf.int64) - 1)


class VocabLookups(tf.Module):
    """One ``VocabLookup`` per vocabulary table of ``schema`` (``tables``: a subset of table names; ``made``:
    existing lookups by table, e.g. the shared ones). ``self(x)`` maps every feature of the dict ``x`` whose
    table has a vocabulary; other entries pass unchanged."""

    def __init__(self, schema: Schema, tables=None, made: Optional[Dict[str, VocabLookup]] = None):
        super().__init__(name="vocab_lookups")
        self.schema = schema
        self.by_table: Dict[str, VocabLookup] = {}
        for table, path in schema.vocab_files().items():
            if tables is not None and table not in tables:
                continue
            owner = schema.table_owner(schema.feature(table))
            lookup = (made or {}).get(table) or VocabLookup(path, owner.raw, name=f"vocab_{table}")
            if lookup.size != owner.vocab_size - 1:
                raise VocabError(f"{path}: {lookup.size} values, but {schema.source} gives table '{table}' "
                                 f"vocab_size {owner.vocab_size} (expected {owner.vocab_size - 1} lines: "
                                 "vocab_size = lines + 1)")
            self.by_table[table] = lookup

    def __bool__(self) -> bool:
        return bool(self.by_table)

    def of(self, name: str) -> Optional[VocabLookup]:
        """The lookup of feature ``name``'s table, or None (a table of ids, hashed, numeric, scenario)."""
        f = next((f for f in self.schema.features if f.name == name), None)
        return None if f is None or f.kind == "numeric" else self.by_table.get(f.table)

    def __call__(self, x: Dict[str, object]) -> Dict[str, object]:
        out = dict(x)
        for name, value in x.items():
            lookup = self.of(name)
            if lookup is not None:
                out[name] = lookup(value)
        return out


def oov_features(schema: Schema) -> list:
    """The features whose ids can fall outside their vocabulary: every categorical and sequence feature of a
    table that is not hashed (in schema order)."""
    return [f for f in schema.features if f.kind != "numeric" and not schema.table_owner(f).hashed]


def oov_per_row(schema: Schema, ids: Dict[str, tf.Tensor]) -> tf.Tensor:
    """``[B, T]`` int64: per row, how many ids of each of the ``T`` :func:`oov_features` (a sequence: every
    entry of its ``[B, L]``) fall outside ``[0, vocab_size)`` (after the lookups: -1 for a raw value not in the
    vocabulary). One comparison of all the id columns side by side, one segment sum per feature."""
    feats = oov_features(schema)
    if not feats:
        return tf.zeros([tf.shape(next(iter(ids.values())))[0], 0], tf.int64)
    widths = [f.length if f.kind == "sequence" else 1 for f in feats]
    x = tf.concat([tf.reshape(tf.cast(ids[f.name], tf.int64), [-1, w]) for f, w in zip(feats, widths)], axis=1)
    limit = np.repeat([schema.table_owner(f).vocab_size for f in feats], widths)
    bad = tf.cast((x < 0) | (x >= limit), tf.int64)                                  # [B, K]
    owner = np.repeat(np.arange(len(feats)), widths)
    return tf.transpose(tf.math.unsorted_segment_sum(tf.transpose(bad), owner, len(feats)))


_SHARED: Dict[tuple, tuple] = {}
_PS = tf.distribute.experimental.ParameterServerStrategy
_LOCK = threading.Lock()


def shared_lookups(schema: Schema) -> VocabLookups:
    """``VocabLookups`` of ``schema`` for input pipelines, whose tables are shared process-wide: one per
    (file as it is on disk, raw dtype, distribution strategy), created eagerly outside any dataset or map
    function (see the module docstring for ParameterServerStrategy)."""
    made, traced = {}, not tf.executing_eagerly()
    with tf.init_scope():
        strategy = tf.distribute.get_strategy()
        for table, path in schema.vocab_files().items():
            try:
                st = os.stat(path)
            except OSError as e:
                raise VocabError(f"{path}: vocabulary file of table '{table}' ({schema.source}): "
                                 f"{e.strerror}") from None
            raw = schema.table_owner(schema.feature(table)).raw
            key = (os.path.abspath(path), raw, st.st_mtime_ns, st.st_size, id(strategy))
            with _LOCK:
                if key not in _SHARED and traced and isinstance(strategy, _PS):
                    raise RuntimeError(
                        f"{path}: the vocabulary table of '{table}' would be created inside a dataset_fn under "
                        "ParameterServerStrategy (on the coordinator, called remotely by every worker); call "
                        "tfmsr.features.lookup.shared_lookups(schema) eagerly under strategy.scope() first")
                if key not in _SHARED:  # the strategy is kept alive with it, so its id stays unique
                    _SHARED[key] = (VocabLookup(path, raw, name=f"vocab_{table}"), strategy)
                made[table] = _SHARED[key][0]
    return VocabLookups(schema, made=made)


def read_vocabulary(path: str, raw_dtype: str, limit: Optional[int] = None) -> np.ndarray:
    """The raw values of ids 1, 2, ... (the first ``limit`` lines) as NumPy (object bytes or int64)."""
    values = []
    with tf.io.gfile.GFile(path, "rb") as fh:
        for line in fh:
            if limit is not None and len(values) >= limit:
                break
            values.append(line.rstrip(b"\n"))
    if raw_dtype == "int64":
        return np.array([int(v) for v in values], np.int64)
    return np.array(values, dtype=object)


def copy_vocabularies(schema: Schema, directory: str) -> List[str]:
    """Copy the vocabulary files of ``schema`` to the same relative paths under ``directory`` (a run dir
    beside its ``schema.yaml``, so a model restored from it finds them), each atomically; returns the copies.
    A vocabulary given by an absolute path stays where it is."""
    copies = []
    for table, src in schema.vocab_files().items():
        rel = schema.feature(table).vocab
        if os.path.isabs(rel):
            continue
        dst = os.path.join(directory, rel)
        if os.path.abspath(dst) == os.path.abspath(src):
            continue
        tf.io.gfile.makedirs(os.path.dirname(dst))
        tmp = f"{dst}.tmp-{os.getpid()}"
        try:
            tf.io.gfile.copy(src, tmp, overwrite=True)
        except tf.errors.OpError as e:
            raise _vocab_error(src, e) from None
        tf.io.gfile.rename(tmp, dst, overwrite=True)
        copies.append(dst)
    return copies


def asset_schema(schema: Schema) -> Schema:
    """A copy of ``schema`` whose vocabularies are the file names a SavedModel stores them under (its
    ``assets/`` folder is flat), so ``Schema.load(<export>/assets/schema.yaml)`` finds them."""
    out = Schema.from_dict(schema.to_dict(), source=schema.source)
    names = {}
    for table, path in schema.vocab_files().items():
        base = os.path.basename(path)
        if base in names or base in ("schema.yaml", "export.json"):
            raise VocabError(f"{path}: vocabulary file name '{base}' is not unique among the assets of an export "
                             f"(tables '{names.get(base, base)}' and '{table}'); name each file after its table")
        names[base] = table
        out.feature(table).vocab = base
    return out
