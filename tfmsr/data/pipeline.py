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
import glob
import os
import re
from typing import Dict, List, Optional, Sequence

import tensorflow as tf

from tfmsr.data.guards import SHARD_KEY, first_bad_value, guard_batch
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


def make_parser(schema: Schema, with_labels: bool = True, inputs_only: bool = False,
                with_scenario: bool = True, spec: Optional[Dict[str, object]] = None,
                lookups: Optional[VocabLookups] = None, raw: bool = False, non_finite: Optional[str] = "error"):
    """Batched serialized examples ``[B]`` -> (features dict, label ``[B]``); with ``inputs_only``
    (serving: no labels or extras required) or ``with_labels=False`` -> the features dict only.
    ``spec`` replaces ``parse_spec`` (sequences are still padded to their length). Raw values of the
    vocabulary tables are mapped to ids by ``lookups`` (default: ``shared_lookups(schema)``, created
    now, outside the parse function); ``raw=True`` keeps them raw (a SavedModel maps them itself).
    Guards (``tfmsr.data.guards``): numeric values by the ``non_finite`` policy (None: unchecked), and with
    labels also the labels and the scenario."""
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
        parsed = guard_batch(tf.io.parse_example(serialized, spec), schema, non_finite, labels=with_labels,
                             scenario=with_labels)
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
    ``cache_fits``) parse every row once now and serve the epochs from memory (``cached_dataset``)."""
    files = list(files)
    if training and use_cache(cache, files, non_finite, parser, service):
        parse = parser or make_parser(schema, non_finite=non_finite)
        return cached_dataset(load_parsed(files, schema, parse, tag_shards, input_context), batch_size,
                              seed=seed, skip_batches=skip_batches)
    ds = _serialized_batches(files, batch_size, training, seed, shuffle_buffer, skip_batches, input_context,
                             cycle_length, tag_shards)
    if service is not None:
        ds = service(ds)
    parse = parser or make_parser(schema, non_finite=non_finite)
    return _parsed(ds, _with_shards(parse) if tag_shards else parse, ahead=service is None,
                   distributed=input_context is not None)


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
    """Cheap pre-flight on one shard: readable, and its first record has every column of the schema, each
    stored as the schema's dtype (e.g. raw strings, not ids, for a string vocabulary); then the first 1,024
    records parse and pass the value guards (so a bad label or value stops the run before its first step)."""
    compression = compression_of([path])
    try:
        first = next(iter(tf.data.TFRecordDataset(path, compression_type=compression).take(1)), None)
    except (tf.errors.DataLossError, tf.errors.OpError) as e:
        raise DataError(f"{path}: not a readable TFRecord file ({e.message.splitlines()[0]})") from None
    if first is None:
        return
    ex = tf.train.Example.FromString(first.numpy())
    have = ex.features.feature
    for name, want in parse_spec(schema).items():
        if name not in have:
            raise DataError(f"{path}: record 0 has no feature '{name}' required by {schema.source}")
        kind = have[name].WhichOneof("kind")
        if kind is not None and kind != _LIST_OF[want.dtype] and len(getattr(have[name], kind).value):
            vocab = [schema.table_owner(f).vocab for f in schema.features if f.name == name and schema.vocab_path(f)]
            what = f"raw values of the vocabulary {vocab[0]}" if vocab else "values"
            raise DataError(f"{path}: record 0 has feature '{name}' as {kind}, but {schema.source} declares "
                            f"{want.dtype.name} {what} ({_LIST_OF[want.dtype]})")
    found = diagnose([path], schema, non_finite=non_finite, limit=1024)
    if found is not None:
        raise found


def diagnose(files: Sequence[str], schema: Schema, spec=None, non_finite: str = "error",
             limit: Optional[int] = None) -> Optional[DataError]:
    """Find the first shard / record / field TensorFlow cannot read or parse (with ``spec``, default
    ``parse_spec(schema)``), or, with the default spec, whose values fail the guards (``tfmsr.data.guards``);
    None if all are fine. ``limit``: look at the first records of each file only."""
    values = spec is None
    spec = spec or parse_spec(schema)
    for path in files:
        compression = compression_of([path])
        row = 0
        try:
            for batch in tf.data.TFRecordDataset(path, compression_type=compression).take(limit or -1).batch(4096):
                try:
                    parsed = tf.io.parse_example(batch, spec)  # parse errors first, with any spec
                    bad = first_bad_value(parsed, schema, non_finite) if values else None
                    if bad is not None:
                        return DataError(f"{path}: record {row + bad[0]} {bad[1]}")
                except tf.errors.InvalidArgumentError:
                    for j in range(int(batch.shape[0])):
                        try:
                            tf.io.parse_example(batch[j:j + 1], spec)
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
    if "could not be found" in msg or "is required" in msg:
        what = f"is missing required feature '{field}'"
    else:
        want = parse_spec(schema).get(field)
        expected = getattr(getattr(want, "dtype", None), "name", "?")
        if any(f.name == field and schema.vocab_path(f) for f in schema.features):
            owner = schema.table_owner(schema.feature(field))
            expected += f": raw values of the vocabulary {owner.vocab}"
        detail = msg.split("}}")[-1].split("[Op:")[0].strip()
        what = f"has feature '{field}' of the wrong type or shape (expected {expected}; {detail})"
    return DataError(f"{path}: record {row} {what}")


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
