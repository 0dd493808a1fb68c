"""tf.data input pipeline from TFRecord shards, parsed after batching.

    shard list -> [shard by worker] -> [epoch e: files permuted by (seed, e) -> interleave blocks of records
      -> rows permuted within windows of shuffle_buffer rows] -> batch -> [repeat, skip k batches on resume]
      -> parse_example (one call per batch) -> prefetch

Records travel in blocks (``READ_BLOCK``) and the shuffle is one permutation per window, so tf.data's
per-element cost is paid per block and per window, not per record; every permutation is stateless (a seed
and the epoch), so each process and each restart rebuilds the same stream.

The model sees a dict of dense tensors (DESIGN section 3): categorical int64 ``[B]`` (hashed features:
string ``[B]``), numeric float32 ``[B]``, sequences int64 ``[B, L]`` padded with 0 (most recent first,
truncated to L), the scenario int64 ``[B]``, extras as declared; the label is float32 ``[B]``.

Record layouts (``tfmsr.data.layout``): shards hold one feature per column or, ``layout: packed`` in the
schema, a row's scalar columns packed in one list per dtype; ``parse_records`` gives the same dict for both, and
``make_dataset`` parses the layout the shards are written in (``as_written``: the first record tells).

Raw values: a table with a vocabulary file (``vocab``/``raw`` in the schema) is stored as raw values
(string or int64, ``Schema.raw_dtype``) and the parser maps them to ids with ``tfmsr.features.lookup``
(missing -> 0, unknown -> -1, which the model clamps to 0 and counts as OOV; sequences are mapped on
their ragged values, then padded with 0), so every consumer of the parser sees ids as before. Tables
without a vocabulary are stored as ids and parsed unchanged.

Bad data stops the run with the file and the field: ``read_errors`` wraps any loop over a dataset and,
when TensorFlow reports a parse or read error (which never names the file), re-reads the shards one by
one to find the file, the record and the field, and raises one ``DataError``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import gzip
import os
import re
import struct
from typing import Dict, List, Optional, Sequence

import tensorflow as tf
from google.protobuf import message

from tfmsr.data.guards import SHARD_KEY, first_bad_value, guard_batch
from tfmsr.data.layout import FEATURES, PACKED, describe, layout_of_keys, packed_columns
from tfmsr.features import Schema
from tfmsr.features.lookup import VocabLookups, shared_lookups


class DataError(ValueError):
    """Unreadable shard, missing field or wrong dtype, naming the file and the field."""


_TF_DTYPES = {"int64": tf.int64, "float32": tf.float32, "string": tf.string}
_LIST_OF = {tf.int64: "int64_list", tf.float32: "float_list", tf.string: "bytes_list"}


def split_files(data_dir: str, split: str) -> List[str]:
    """Sorted shard paths of one split: ``DIR/<split>/*.tfrecord[.gz]``."""
    pattern = os.path.join(data_dir, split, "*.tfrecord*")
    files = sorted(glob.glob(pattern))
    if not files:
        raise DataError(f"{os.path.join(data_dir, split)}: no shards for split '{split}' "
                        "(expected part-*.tfrecord or part-*.tfrecord.gz)")
    return files


def compression_of(files: Sequence[str]) -> str:
    kinds = {f.endswith(".gz") for f in files}
    if len(kinds) > 1:
        raise DataError(f"{os.path.dirname(files[0])}: mixes GZIP (.gz) and uncompressed shards")
    return "GZIP" if kinds.pop() else ""


def parse_spec(schema: Schema, inputs_only: bool = False, with_scenario: bool = True) -> Dict[str, object]:
    """``tf.io.parse_example`` spec of every column in the schema (all required but sequences).
    ``inputs_only``: only what the model reads (features and scenario; no labels, no extras), as in
    serving; ``with_scenario=False`` also drops the scenario (a servable of one fixed scenario)."""
    spec = {schema.scenario.name: tf.io.FixedLenFeature([], tf.int64)} if with_scenario else {}
    for label in () if inputs_only else schema.labels:
        spec[label] = tf.io.FixedLenFeature([], tf.float32)
    for f in schema.features:
        if f.kind == "numeric":
            spec[f.name] = tf.io.FixedLenFeature([], tf.float32)
            continue
        dtype = _TF_DTYPES[schema.raw_dtype(f)]
        if f.kind == "categorical":
            spec[f.name] = tf.io.FixedLenFeature([], dtype)
        else:  # an absent or empty sequence is a user without behaviour
            spec[f.name] = tf.io.RaggedFeature(dtype, row_splits_dtype=tf.int64)
    for name, dtype in {} if inputs_only else schema.extras.items():
        spec[name] = tf.io.FixedLenFeature([], _TF_DTYPES[dtype])
    return spec


def parse_records(serialized, spec: Dict[str, object], schema: Schema, layout: Optional[str] = None):
    """``tf.io.parse_example(serialized, spec)`` of records in ``layout`` (default the schema's; see
    ``tfmsr.data.layout``): the same dict in both layouts. In the packed layout a packed field is parsed
    whole when ``spec`` asks for any of its columns (``_packed_spec``) and split into them (``_unpacked``)."""
    if (layout or schema.layout) == FEATURES:
        return tf.io.parse_example(serialized, spec)
    record_spec, packed = _record_spec(spec, schema)
    parsed = tf.io.parse_example(serialized, record_spec)
    for key, names in packed.items():
        parsed.update(_unpacked(parsed.pop(key), names, spec))
    return parsed


def _record_spec(spec: Dict[str, object], schema: Schema):
    """The packed layout's parse spec of ``spec`` (its sequences, and each packed field holding a column of
    ``spec``) and those fields' columns."""
    packed = {key: names for key, names in packed_columns(schema).items() if any(n in spec for n in names)}
    inside = {n for names in packed_columns(schema).values() for n in names}
    record_spec = {n: s for n, s in spec.items() if n not in inside}
    record_spec.update({key: _packed_spec(key, names, spec) for key, names in packed.items()})
    return record_spec, packed


def _packed_spec(key: str, names: List[str], spec: Dict[str, object]):
    """The spec of a packed field whose columns ``spec`` asks for: fixed length ``len(names)`` (the defaults of
    the columns that have one, else 0 / "") when they are all ``FixedLenFeature`` ``[]``, ragged when all ragged."""
    asked = [spec[n] for n in names if n in spec]
    dtype = asked[0].dtype
    if all(isinstance(s, tf.io.RaggedFeature) for s in asked):
        return tf.io.RaggedFeature(dtype, row_splits_dtype=tf.int64)
    if not all(isinstance(s, tf.io.FixedLenFeature) and not s.shape for s in asked):
        raise ValueError(f"packed field '{key}': its columns {names} are parsed either all as scalars or all ragged")
    if all(s.default_value is None for s in asked):
        return tf.io.FixedLenFeature([len(names)], dtype)
    zero = "" if dtype == tf.string else 0
    defaults = [spec[n].default_value if n in spec and spec[n].default_value is not None else zero for n in names]
    return tf.io.FixedLenFeature([len(names)], dtype, default_value=defaults)


def _unpacked(values, names: List[str], spec: Dict[str, object]) -> Dict[str, object]:
    """A parsed packed field -> its columns in ``spec``: ``[B]`` each from ``[B, K]``; from a ragged field, a
    ragged column of one value in the rows holding exactly K values and none in the others."""
    if isinstance(values, tf.RaggedTensor):
        whole = tf.equal(values.row_lengths(), len(names))
        dense = values.to_tensor(shape=[None, len(names)])
        cols = tf.unstack(dense, num=len(names), axis=1)
        return {n: tf.RaggedTensor.from_row_lengths(tf.boolean_mask(c, whole), tf.cast(whole, tf.int64))
                for n, c in zip(names, cols) if n in spec}
    cols = tf.unstack(values, num=len(names), axis=1)
    return {n: c for n, c in zip(names, cols) if n in spec}


def make_parser(schema: Schema, with_labels: bool = True, inputs_only: bool = False,
                with_scenario: bool = True, spec: Optional[Dict[str, object]] = None,
                lookups: Optional[VocabLookups] = None, raw: bool = False, non_finite: Optional[str] = "error"):
    """Batched serialized examples ``[B]`` -> (features dict, label ``[B]``); with ``inputs_only``
    (serving: no labels or extras required) or ``with_labels=False`` -> the features dict only.
    ``spec`` replaces ``parse_spec`` (sequences are still padded to their length). Raw values of the
    vocabulary tables are mapped to ids by ``lookups`` (default: ``shared_lookups(schema)``, created
    now, outside the parse function); ``raw=True`` keeps them raw (a SavedModel maps them itself).
    Guards (``tfmsr.data.guards``): numeric values by the ``non_finite`` policy (None: unchecked), and with
    labels also the labels and the scenario. Records in the schema's layout (``parse_records``; ``make_dataset``
    sets its shards' layout); with ``inputs_only`` one feature per column (a serving request: ``tfmsr.data.layout``)."""
    layout = FEATURES if inputs_only else schema.layout
    with_labels = with_labels and not inputs_only
    spec = spec or parse_spec(schema, inputs_only=inputs_only, with_scenario=with_scenario)
    seqs = {f.name: f for f in schema.of_kind("sequence") if f.name in spec}
    if raw:
        lookups = None
    elif lookups is None and schema.vocab_files():
        lookups = shared_lookups(schema)
    mapped = {name: lookups.of(name) for name in spec} if lookups else {}
    mapped = {name: lookup for name, lookup in mapped.items() if lookup is not None}

    def parse(serialized):
        parsed = guard_batch(parse_records(serialized, spec, schema, parse.layout), schema, non_finite,
                             labels=with_labels, scenario=with_labels)
        for name, lookup in mapped.items():  # raw values -> ids (sequences: the ragged values)
            parsed[name] = lookup(parsed[name])
        for name, f in seqs.items():
            rag = parsed[name]
            pad = "" if rag.dtype == tf.string else 0
            parsed[name] = rag.to_tensor(default_value=pad, shape=[None, f.length])
        if not with_labels:
            return parsed
        label = parsed.pop(schema.label) if len(schema.labels) == 1 else {
            name: parsed.pop(name) for name in schema.labels}
        return parsed, label

    parse.layout = layout  # ``make_dataset`` sets the layout its shards are written in
    return parse


CACHE_CHOICES = (True, False, "auto")
CACHE_BUDGET = 0.25  # data.cache auto: the parsed rows may take this share of the memory available now


def make_dataset(
    files: Sequence[str],
    schema: Schema,
    batch_size: int,
    *,
    training: bool,
    seed: int = 0,
    shuffle_buffer: int = 20_000,
    skip_batches: int = 0,
    input_context: Optional[tf.distribute.InputContext] = None,
    cycle_length: int = 4,
    parser=None,
    non_finite: str = "error",
    tag_shards: bool = False,
    service=None,
    cache=False,
) -> tf.data.Dataset:
    """Training: files and rows shuffled (deterministically by ``seed``: ``_epoch_stream``), repeated forever,
    ``skip_batches`` batches skipped (resume) before parsing. Evaluation: one pass, rows in file order
    (files read one after another; parsing stays parallel). ``non_finite``: the parser's policy for
    non-finite numeric values (``tfmsr.data.guards``) when no ``parser`` is given. ``tag_shards``: the
    features also hold ``SHARD_KEY``, each row's index in ``files`` (rows read per shard, counted by the
    model). ``service``: applied to the serialized batches before they are parsed (the shared tf.data
    service job of ``tfmsr.distribute.shared_input``); those batches are parsed one at a time, when a step asks.
    ``cache`` (training only; ``data.cache``): True / "auto" (when the parsed rows fit in memory, see
    ``cache_fits``) parse every row once now and serve the epochs from memory (``cached_dataset``). The records
    are parsed in the layout the shards are written in (``as_written``; a ``make_parser`` parser follows it)."""
    files = list(files)
    schema = as_written(schema, files)
    parse = _following(parser, schema.layout) or make_parser(schema, non_finite=non_finite)
    if training and use_cache(cache, files, non_finite, parser, service):
        return cached_dataset(load_parsed(files, schema, parse, tag_shards, input_context), batch_size,
                              seed=seed, skip_batches=skip_batches)
    ds = _serialized_batches(files, batch_size, training, seed, shuffle_buffer, skip_batches, input_context,
                             cycle_length, tag_shards)
    if service is not None:
        ds = service(ds)
    return _parsed(ds, _with_shards(parse) if tag_shards else parse, ahead=service is None,
                   distributed=input_context is not None)


def _following(parser, layout: str):
    """A ``make_parser`` parser set to parse ``layout`` (it reads the layout when traced); other parsers as given."""
    if parser is not None and hasattr(parser, "layout"):
        parser.layout = layout
    return parser


READ_BLOCK = 64  # records a shard reader hands on at once: tf.data's per-element cost is paid per block


def _my_files(files: List[str], input_context) -> tf.Tensor:
    """Indices (int64, into ``files``) of this input pipeline's shards: every n-th from its id under
    ``input_context`` (the id may be a tensor: ParameterServerStrategy traces the ``dataset_fn``)."""
    n = input_context.num_input_pipelines if input_context is not None else 1
    if n > 1 and len(files) < n:
        raise DataError(f"{os.path.dirname(files[0])}: {len(files)} shard(s) cannot be split across "
                        f"{n} input pipelines; write more shards")
    first = tf.cast(input_context.input_pipeline_id, tf.int64) if n > 1 else tf.constant(0, tf.int64)
    return tf.range(first, len(files), n, dtype=tf.int64)


def _file_list(files: List[str], mine: tf.Tensor, tag_shards: bool) -> tf.data.Dataset:
    """The shard paths of the indices ``mine``, in that order (with their index when tagged)."""
    paths = tf.gather(tf.constant(files), mine)
    return tf.data.Dataset.from_tensor_slices((paths, mine) if tag_shards else paths)


def _blocks(compression: str):
    """A shard path (and its index) -> its records in blocks of ``READ_BLOCK`` (with the index per record)."""
    def read(f, *shard):
        blocks = tf.data.TFRecordDataset(f, compression_type=compression, buffer_size=1 << 20).batch(READ_BLOCK)
        return blocks.map(lambda r: (r, tf.fill(tf.shape(r), shard[0]))) if shard else blocks

    return read


def _records(files: List[str], mine: tf.Tensor, tag_shards: bool, rows: int) -> tf.data.Dataset:
    """One pass over the shards ``mine`` in file order, in batches of ``rows`` serialized records."""
    return _file_list(files, mine, tag_shards).flat_map(_blocks(compression_of(files))).rebatch(rows)


def _epoch_stream(files, mine, tag_shards, batch_size, seed, window, cycle_length, input_context):
    """Epoch e's batches: the shards in a permutation of seed (``seed``, e), ``cycle_length`` read at once
    (blocks alternating), rows permuted within consecutive windows of ``window`` rows (window i: that seed
    folded with i), then cut into batches (the epoch's last one short). Stateless: the same stream in every
    process and after every restart."""
    pipelines = input_context.num_input_pipelines if input_context is not None else 1
    read, cycle = _blocks(compression_of(files)), max(1, min(cycle_length, -(-len(files) // pipelines)))

    def epoch(e):
        key = tf.stack([tf.constant(seed, tf.int64), e])

        def shuffled(w, rows):
            n = tf.shape(tf.nest.flatten(rows)[0])[0]
            perm = tf.random.experimental.stateless_shuffle(
                tf.range(n), seed=tf.random.experimental.stateless_fold_in(key, w))
            return tf.nest.map_structure(lambda v: tf.gather(v, perm), rows)

        ds = _file_list(files, tf.random.experimental.stateless_shuffle(mine, seed=key), tag_shards).interleave(
            read, cycle_length=cycle, block_length=1, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.rebatch(window).enumerate().map(lambda w, rows: shuffled(w, rows),
                                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.rebatch(batch_size)

    return tf.data.Dataset.counter().flat_map(epoch)


def _serialized_batches(files, batch_size, training, seed, shuffle_buffer, skip_batches, input_context,
                        cycle_length, tag_shards) -> tf.data.Dataset:
    """Batches of serialized records: training shuffled (``_epoch_stream``: ``shuffle_buffer`` rows a window),
    repeated and past ``skip_batches``; else one pass (files one after another, rows in file order)."""
    mine = _my_files(files, input_context)
    if not training:
        return _records(files, mine, tag_shards, batch_size)
    ds = _epoch_stream(files, mine, tag_shards, batch_size, seed, shuffle_buffer, cycle_length, input_context)
    return ds.skip(skip_batches) if skip_batches else ds


def _parsed(ds: tf.data.Dataset, parse, ahead: bool, distributed: bool) -> tf.data.Dataset:
    """``parse`` mapped over the serialized batches: in parallel and prefetched when ``ahead``, else one at a
    time as each step asks (a shared stream: a worker holds no batch it does not train)."""
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE if ahead else None, deterministic=True)
    return _ahead(ds, distributed) if ahead else ds.with_options(_options(False, distributed))


def _options(ahead: bool, distributed: bool) -> tf.data.Options:
    """Map parallelisation and an injected prefetch when ``ahead``; no auto-sharding when ``distributed``
    (each input pipeline already reads its own shards: ``_my_files``)."""
    options = tf.data.Options()
    options.experimental_optimization.map_parallelization = ahead
    options.experimental_optimization.inject_prefetch = ahead
    if distributed:
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def _ahead(ds: tf.data.Dataset, distributed: bool) -> tf.data.Dataset:
    """``ds`` with the prefetching options and a prefetch at its end."""
    return ds.with_options(_options(True, distributed)).prefetch(tf.data.AUTOTUNE)


def stage_streams(files: Sequence[str], schema: Schema, batch_size: int, seed: int = 0,
                  shuffle_buffer: int = 20_000) -> Dict[str, tf.data.Dataset]:
    """The streaming training pipeline (no ``data.cache``) cut after each stage, each repeated and
    prefetched, for ``tfmsr bench input --stages``: ``read`` batches of serialized records in file order
    (TFRecord read and batching), ``shuffled`` the serialized training batches (+ shard interleave and the
    window permutation), ``parsed`` the whole stream of ``make_dataset`` (+ ``parse_example``, the guards,
    vocabulary lookups and padding). A stage's cost per row is its difference from the stage before."""
    files = list(files)
    read = _records(files, _my_files(files, None), False, batch_size).repeat()
    shuffled = _serialized_batches(files, batch_size, True, seed, shuffle_buffer, 0, None, 4, False)
    parsed = make_dataset(files, schema, batch_size, training=True, seed=seed, shuffle_buffer=shuffle_buffer)
    return {"read": _ahead(read, False), "shuffled": _ahead(shuffled, False), "parsed": parsed}


# ---------------------------------------------------------------------------------------- data.cache
def use_cache(cache, files: Sequence[str], non_finite: str, parser=None, service=None) -> bool:
    """Whether ``make_dataset`` serves training from memory: ``cache`` True, False or "auto" (when
    ``cache_fits``). Only where the parsed rows can be kept whole: an eagerly built local or per-worker
    stream (not a shared tf.data service stream, not inside a ``dataset_fn`` traced for ParameterServerStrategy),
    with the ``error`` policy for non-finite values (``zero`` / ``count`` count them per epoch, as they are read)."""
    if cache not in CACHE_CHOICES:
        raise ValueError(f"data.cache {cache!r} (expected true, false or auto)")
    if cache is False:
        return False
    why = ("the training stream is shared through the tf.data service" if service is not None else
           "the dataset is built inside a traced dataset_fn" if not tf.executing_eagerly() else
           f"data.non_finite is '{non_finite}' (counted per epoch as rows are read; cache with 'error')"
           if parser is None and non_finite != "error" else None)
    if why is not None:
        if cache is True:
            raise ValueError(f"data.cache true: cannot cache the training rows: {why}; set data.cache: auto or false")
        return False
    return cache is True or cache_fits(files)


def _available_bytes() -> int:
    """Memory available now (Linux ``/proc/meminfo`` MemAvailable), else 0 (nothing is cached by "auto")."""
    try:
        with open("/proc/meminfo") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return 0


def cache_fits(files: Sequence[str], available: Optional[int] = None) -> bool:
    """data.cache auto: the parsed rows, estimated as 4x the shards' bytes (GZIP shards 4x more: padded
    sequences and 8-byte ids take more than their varints), fit in ``CACHE_BUDGET`` of the memory available."""
    size = sum(os.path.getsize(f) * (16 if f.endswith(".gz") else 4) for f in files)
    return size <= CACHE_BUDGET * (_available_bytes() if available is None else available)


def load_parsed(files: Sequence[str], schema: Schema, parse, tag_shards: bool = False,
                input_context: Optional[tf.distribute.InputContext] = None, chunk: int = 8192):
    """Every row of ``files`` (this input pipeline's share under ``input_context``), parsed by ``parse``
    (guards and vocabulary lookups included) in file order, as one structure of tensors (rows on axis 0).
    A bad record stops here with its file and field (``read_errors``)."""
    files = list(files)
    ds = _records(files, _my_files(files, input_context), tag_shards, chunk)
    ds = _parsed(ds, _with_shards(parse) if tag_shards else parse, ahead=True, distributed=False)
    with read_errors(files, schema):
        parts = list(ds)
    if not parts:
        raise DataError(f"{os.path.dirname(files[0])}: no rows to train on in {len(files)} shard(s)")
    return tf.nest.map_structure(lambda *x: tf.concat(x, axis=0), *parts)


def cached_dataset(rows, batch_size: int, seed: int = 0, skip_batches: int = 0) -> tf.data.Dataset:
    """Training batches from parsed ``rows`` held in memory (``load_parsed``): epoch e visits every row once
    in the order of a permutation of seed (``seed``, e), in ``ceil(rows / batch_size)`` batches (the last one
    short), repeated forever; ``skip_batches`` of that deterministic stream skipped (resume). A batch costs one
    gather per feature, no TFRecord read or parse."""
    n = int(tf.nest.flatten(rows)[0].shape[0])
    per_epoch = -(-n // batch_size)

    def epoch(e):
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64),
                                                         seed=tf.stack([tf.constant(seed, tf.int64), e]))
        return tf.data.Dataset.range(per_epoch).map(
            lambda i: order[i * batch_size:tf.minimum((i + 1) * batch_size, n)])

    ds = tf.data.Dataset.counter().flat_map(epoch).skip(skip_batches)
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.from_tensors(rows).repeat()))
    ds = ds.map(lambda idx, held: tf.nest.map_structure(lambda v: tf.gather(v, idx), held),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_as_built())


def _as_built() -> tf.data.Options:
    """No default tf.data rewrites for a stream already parallel and prefetched (``cached_dataset``): they gain
    nothing there and cost 15-65 CPU ms per iterator (each ``fit``), more with more rows held."""
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    return options


def _with_shards(parse):
    """``parse`` of (serialized, shard index) batches: the indices go into the features as ``SHARD_KEY``."""
    def parse_tagged(serialized, shard):
        out = parse(serialized)
        (out[0] if isinstance(out, tuple) else out)[SHARD_KEY] = shard
        return out

    return parse_tagged


# ---------------------------------------------------------------------------------------- bad data
_FIELD_RES = (re.compile(r"Key: ([^\s,]+?)[.,]?\s"), re.compile(r"Feature: ([^\s,]+?)[.,]?\s"))


def check_first_record(path: str, schema: Schema, non_finite: str = "error") -> None:
    """Cheap pre-flight on one shard: readable, its first record in the schema's layout and holding every
    column (packed field) of the schema, each stored as the schema's dtype (e.g. raw strings, not ids, for a
    string vocabulary); then the first 1,024 records parse and pass the value guards (so a bad label or value
    stops the run before its first step)."""
    compression = compression_of([path])
    try:
        first = next(iter(tf.data.TFRecordDataset(path, compression_type=compression).take(1)), None)
    except (tf.errors.DataLossError, tf.errors.OpError) as e:
        raise DataError(f"{path}: not a readable TFRecord file ({e.message.splitlines()[0]})") from None
    if first is None:
        return
    have = tf.train.Example.FromString(first.numpy()).features.feature
    found = layout_of_keys(have)
    if found != schema.layout:
        key = f"layout: {schema.layout}" if schema.layout == PACKED else "no layout key"
        raise DataError(f"{path}: record 0 is in the {found} layout, but {schema.source} declares the "
                        f"{schema.layout} layout ({key})")
    spec, columns = parse_spec(schema), packed_columns(schema) if schema.layout == PACKED else {}
    for name, want in (_record_spec(spec, schema)[0] if columns else spec).items():
        _check_field(path, name, want, have, schema, columns)
    found = diagnose([path], schema, non_finite=non_finite, limit=1024)
    if found is not None:
        raise found


def _check_field(path: str, name: str, want, have, schema: Schema, columns: Dict[str, List[str]]) -> None:
    """Record 0 of ``path`` (features ``have``) holds field ``name`` as ``want``'s dtype (a packed field: with
    one value per column)."""
    what = describe(name, columns) if name in columns else f"feature '{name}'"
    if name not in have:
        raise DataError(f"{path}: record 0 has no {what} required by {schema.source}")
    kind = have[name].WhichOneof("kind")
    values = getattr(have[name], kind).value if kind is not None else ()
    if kind is not None and kind != _LIST_OF[want.dtype] and len(values):
        vocab = [schema.table_owner(f).vocab for f in schema.features if f.name == name and schema.vocab_path(f)]
        held = f"raw values of the vocabulary {vocab[0]}" if vocab else "values"
        raise DataError(f"{path}: record 0 has {what} as {kind}, but {schema.source} declares "
                        f"{want.dtype.name} {held} ({_LIST_OF[want.dtype]})")
    if name in columns and len(values) != len(columns[name]):
        raise DataError(f"{path}: record 0 has {len(values)} values in the {what}, expected {len(columns[name])}")


def diagnose(files: Sequence[str], schema: Schema, spec=None, non_finite: str = "error",
             limit: Optional[int] = None) -> Optional[DataError]:
    """Find the first shard / record / field TensorFlow cannot read or parse (with ``spec``, default
    ``parse_spec(schema)``), or, with the default spec, whose values fail the guards (``tfmsr.data.guards``);
    None if all are fine. ``limit``: look at the first records of each file only."""
    values = spec is None
    spec = spec or parse_spec(schema)
    for path in files:
        compression, schema = compression_of([path]), as_written(schema, [path])
        row = 0
        try:
            for batch in tf.data.TFRecordDataset(path, compression_type=compression).take(limit or -1).batch(4096):
                try:
                    parsed = parse_records(batch, spec, schema)  # parse errors first, with any spec
                    bad = first_bad_value(parsed, schema, non_finite) if values else None
                    if bad is not None:
                        return DataError(f"{path}: record {row + bad[0]} {bad[1]}")
                except tf.errors.InvalidArgumentError:
                    for j in range(int(batch.shape[0])):
                        try:
                            parse_records(batch[j:j + 1], spec, schema)
                        except tf.errors.InvalidArgumentError as e:
                            return _parse_error(path, row + j, e, schema)
                row += int(batch.shape[0])
        except (tf.errors.DataLossError, tf.errors.OutOfRangeError, tf.errors.InvalidArgumentError) as e:
            return DataError(f"{path}: not a readable TFRecord file (failed after {readable_records(path)} "
                             f"readable records: {e.message.splitlines()[0]})")
    return None


def readable_records(path: str) -> int:
    """How many records of ``path`` can be read before the first read error (a truncated shard)."""
    n = 0
    try:
        for _ in tf.data.TFRecordDataset(path, compression_type=compression_of([path])):
            n += 1
    except (tf.errors.DataLossError, tf.errors.OutOfRangeError, tf.errors.InvalidArgumentError):
        pass
    return n


def _parse_error(path: str, row: int, err, schema: Schema) -> DataError:
    msg = err.message.splitlines()[0]
    found = [m.group(1) for m in (r.search(msg + " ") for r in _FIELD_RES) if m]
    field = found[0] if found else "?"
    columns = packed_columns(schema) if schema.layout == PACKED else {}
    name = describe(field, columns) if field in columns else f"feature '{field}'"
    if "could not be found" in msg or "is required" in msg:
        what = f"is missing required {name}"
    else:
        detail = msg.split("}}")[-1].split("[Op:")[0].strip()
        what = f"has {name} of the wrong type or shape (expected {_expected(field, schema, columns)}; {detail})"
    return DataError(f"{path}: record {row} {what}")


def _expected(field: str, schema: Schema, columns: Dict[str, List[str]]) -> str:
    """What a record's ``field`` should hold, for an error message."""
    spec = parse_spec(schema)
    if field in columns:
        return f"{len(columns[field])} {spec[columns[field][0]].dtype.name} values"
    expected = getattr(getattr(spec.get(field), "dtype", None), "name", "?")
    if any(f.name == field and schema.vocab_path(f) for f in schema.features):
        expected += f": raw values of the vocabulary {schema.table_owner(schema.feature(field)).vocab}"
    return expected


MAX_FIRST_RECORD = 1 << 26  # bytes: a longer first "record" is not a record of a shard


def first_record(path: str) -> Optional[bytes]:
    """The first record of a TFRecord shard read in Python (a few bytes, no tf.data: works inside a traced
    ``dataset_fn`` too); None when the shard holds no record or cannot be read."""
    try:
        with tf.io.gfile.GFile(path, "rb") as raw:
            fh = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
            head = fh.read(12)  # uint64 length, uint32 masked crc of the length
            if len(head) < 12:
                return None
            n = struct.unpack("<Q", head[:8])[0]
            if n > MAX_FIRST_RECORD or (fh is raw and n > raw.size()):  # not a TFRecord length
                return None
            data = fh.read(n)
            return data if len(data) == n else None
    except (OSError, EOFError, tf.errors.OpError):
        return None


def layout_of_files(files: Sequence[str], every: bool = False) -> str:
    """The record layout of shards (``tfmsr.data.layout``) from the first readable record (with ``every``: of
    each shard, all in one layout, else a DataError naming a shard of each); none readable: the features layout
    (an unreadable shard is named by the read that follows)."""
    seen: Dict[str, str] = {}
    for path in files:
        try:
            keys = tf.train.Example.FromString(first_record(path) or b"").features.feature
        except message.DecodeError:
            continue
        if keys:
            seen.setdefault(layout_of_keys(keys), path)
            if not every:
                break
    if len(seen) > 1:
        raise DataError(f"{seen[FEATURES]} is in the features layout but {seen[PACKED]} in the packed layout "
                        "(one input, one layout)")
    return next(iter(seen), FEATURES)


def as_written(schema: Schema, files: Sequence[str]) -> Schema:
    """``schema`` in the layout the shards ``files`` are written in: the shards decide (a schema built in memory or
    carried by a model does not know how the dataset it reads was written)."""
    found = layout_of_files(files)
    return schema if found == schema.layout else dataclasses.replace(schema, layout=found)


@contextlib.contextmanager
def read_errors(files: Sequence[str], schema: Schema, spec=None, non_finite: str = "error"):
    """Turn TensorFlow's file-less read/parse/guard errors raised inside the block into one DataError."""
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        found = diagnose(files, schema, spec, non_finite)
        if found is None:
            raise
        raise found from e
