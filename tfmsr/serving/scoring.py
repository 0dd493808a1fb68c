"""Batch scoring: stream TFRecord shards through an exported SavedModel (DESIGN section 6).

    tfmsr score --saved-model saved_models/NAME --input 'data/test/*.tfrecord*' --output scores.parquet \\
                --keep user_id,scenario,click

The records go through the SavedModel's ``serving_default`` signature (the loaded graph, never the
Python model code), or through the ``scoring`` function ``all`` holds beside it (the same head; it also
returns the out-of-vocabulary counts from the graph's own lookups): ``all`` routes each row by its scenario;
a scenario servable scores every row as its scenario. Shards are read in parallel and in file order (row i of the output is row i of the input,
shards sorted by name), parsed in parallel in batches, and written as Parquet, CSV or TFRecord
(a ``tf.train.Example`` per row holding the kept columns and ``prob``) to a temp file renamed at the end.

Rows the model cannot score are counted and written with a null ``prob`` (an empty ``prob`` list in
TFRecord), never scored silently: a scenario outside [0, S) (``unknown_scenario``, routed servable
only) and a record missing a required feature (``missing_features``: a scalar feature or the scenario
absent, or present with a number of values other than one; an absent sequence is an empty history and
is fine), and a NaN or infinite numeric value (``non_finite``). A kept column absent from a record is
written as null and counted in ``missing_keep``.

The records are in either record layout (``tfmsr.data.layout``: one feature per column, or packed; read from
the shards' first records, whatever the layout the model was trained on; in the packed layout a packed field
that is absent or holds the wrong number of values counts all its columns missing). They hold what the
dataset's shards hold: raw values (string or int64) for the tables with a
vocabulary (the ingested format; the SavedModel maps them with its own ``assets/`` vocabularies) and ids
for the others. Out-of-vocabulary values of the scored rows (a raw value not in the vocabulary, an id
outside ``[0, vocab_size)``) are scored like id 0, as in training, and counted: ``oov_values`` and
``oov_by_feature`` (sequence entries included; by ``all``'s ``scoring`` function, else by the parser with the
SavedModel's vocabularies).

The summary's speed figures, per CPU-second of all the process's threads: ``load_cpu_seconds`` (the
SavedModel load), ``cpu_seconds`` / ``examples_per_cpu_sec`` (the scoring loop), ``first_batch_cpu_seconds``
(tracing the parser, the iterator and the signature's first call, with the parse already running ahead) and
``steady_examples_per_cpu_sec`` (the rows between a quarter and three quarters of the way through, where the
parse runs equally far ahead at both ends; null with too few batches). ``python -m pipelines.bench_score``
sets them beside ``tfmsr bench train``'s.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfmsr.core.tempfiles import sweep_beside
from tfmsr.data.pipeline import DataError, compression_of, layout_of_files, make_parser, parse_spec, read_errors
from tfmsr.features import Schema
from tfmsr.features.lookup import VocabLookups, oov_features, oov_per_row

FORMATS = {".parquet": "parquet", ".csv": "csv", ".tfrecord": "tfrecord"}
_DEFAULTS = {tf.int64: 0, tf.float32: 0.0, tf.string: b""}


def input_files(pattern: str) -> List[str]:
    """Sorted files matching a glob (or a comma-separated list of globs); a directory means its shards."""
    files = set()
    for part in filter(None, (p.strip() for p in pattern.split(","))):
        if os.path.isdir(part):
            part = os.path.join(part, "*.tfrecord*")
        files.update(f for f in glob.glob(part) if os.path.isfile(f))
    if not files:
        raise DataError(f"{pattern}: no input files match")
    return sorted(files)


def column_dtypes(schema: Schema) -> Dict[str, tf.DType]:
    """Every scalar column a record can carry (scenario, labels, non-sequence features, extras)."""
    spec = parse_spec(schema)
    return {k: v.dtype for k, v in spec.items() if isinstance(v, tf.io.FixedLenFeature)}


def _reader(files: Sequence[str], batch_size: int) -> tf.data.Dataset:
    """Batches of serialized records. Up to 4 shards are read ahead in parallel, but each shard is
    emitted whole and in file order (a shard's last batch may be short)."""
    compression = compression_of(files)
    shard = tf.autograph.experimental.do_not_convert(  # no Python control flow: skip autograph's source rewrite
        lambda f: tf.data.TFRecordDataset(f, compression_type=compression, buffer_size=1 << 20).batch(batch_size))
    return tf.data.Dataset.from_tensor_slices(list(files)).interleave(
        shard, cycle_length=max(1, min(4, len(files))), block_length=1 << 30,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


class _Writer:
    """Streams column batches to Parquet / CSV / TFRecord at ``path + .tmp``; ``close`` renames."""

    def __init__(self, path: str, fmt: str, columns: Dict[str, tf.DType]):
        self.path, self.fmt, self.columns = path, fmt, columns
        self.tmp = f"{path}.tmp-{os.getpid()}"
        self._out = None
        if fmt == "tfrecord":
            self._out = tf.io.TFRecordWriter(self.tmp)

    def _arrow(self, cols):
        import pyarrow as pa

        arrays = {}
        for name, (values, present) in cols.items():
            dtype = self.columns[name]
            if dtype == tf.string:
                arr = pa.array(list(values), type=pa.binary(), mask=~present)
                try:
                    arr = arr.cast(pa.string())
                except pa.ArrowInvalid:
                    pass  # not UTF-8: keep the bytes
            else:
                arr = pa.array(values, mask=~present)
            arrays[name] = arr
        return pa.table(arrays)

    def write(self, cols: Dict[str, tuple]) -> None:
        if self.fmt == "tfrecord":
            from tfmsr.data import wire

            feats = []
            for name, (values, present) in cols.items():
                dtype = self.columns[name]
                lengths = present.astype(np.int64)
                if dtype == tf.float32:
                    feats.append((name, _float_ragged(values[present], lengths)))
                elif dtype == tf.int64:
                    feats.append((name, wire.int64_feature(values[present], lengths)))
                else:
                    feats.append((name, wire.bytes_feature([[v] if p else [] for v, p in zip(values, present)])))
            for rec in wire.split_rows(wire.examples(feats)):
                self._out.write(rec)
            return
        table = self._arrow(cols)
        if self._out is None:
            if self.fmt == "parquet":
                import pyarrow.parquet as pq

                self._out = pq.ParquetWriter(self.tmp, table.schema)
            else:
                import pyarrow.csv as pcsv

                self._out = pcsv.CSVWriter(self.tmp, table.schema)
        self._out.write_table(table)

    def close(self, empty_cols: Optional[Dict[str, tuple]] = None) -> None:
        if self._out is None and empty_cols is not None:  # no rows: still write the header / schema
            self.write(empty_cols)
        self._out.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            if self._out is not None:
                self._out.close()
        finally:
            if os.path.exists(self.tmp):
                os.remove(self.tmp)


def _float_ragged(flat: np.ndarray, lengths: np.ndarray):
    """FloatList feature with 0 or 1 values per row (the wire module packs one value per row)."""
    from tfmsr.data import wire

    v = np.ascontiguousarray(np.asarray(flat, "<f4"))
    off = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths * 4, out=off[1:])
    return wire.tagged(wire.FLOAT_LIST, wire.tagged(0x0A, (v.view(np.uint8), off)))


# Fast-path stand-ins for an absent scalar: values no real record carries (the most negative int64 and
# float32, a NUL-framed marker string). A record that happens to hold exactly one of them is counted as
# missing that feature.
_ABSENT = {tf.int64: np.iinfo(np.int64).min, tf.float32: float(np.finfo(np.float32).min),
           tf.string: b"\x00tfmsr:absent\x00"}


class _RowParser:
    """Batch parsers returning the model inputs, the kept columns as (values, present), ``ok`` (the row
    can be scored), ``unknown`` (scenario outside [0, S)) and ``missing`` [B, len(required)]; rows
    that will not be scored get scenario 0 so the batch still runs.

    ``fast`` parses scalars dense, an absent one as its ``_ABSENT`` stand-in: as cheap as the training
    parser. A record with a scalar present with zero or several values fails that parse for its whole
    batch; ``exact`` parses such a batch again with scalars as ragged (present = exactly one value)."""

    def __init__(self, schema: Schema, dtypes, required: List[str], keep: List[str], routed: bool,
                 count_oov: bool = True):
        self.schema, self.required, self.keep, self.routed = schema, required, keep, routed
        self.scalars = list(dict.fromkeys(required + keep))
        full = parse_spec(schema)
        seqs = {f.name: full[f.name] for f in schema.of_kind("sequence")}
        self.dtypes = {n: dtypes[n] for n in self.scalars}
        self.spec = {**{n: tf.io.RaggedFeature(t, row_splits_dtype=tf.int64) for n, t in self.dtypes.items()},
                     **seqs}
        dense = {**{n: tf.io.FixedLenFeature([], t, default_value=_ABSENT[t]) for n, t in self.dtypes.items()},
                 **seqs}
        self._parse_exact = make_parser(schema, with_labels=False, spec=self.spec, raw=True, non_finite=None)
        self._parse_fast = make_parser(schema, with_labels=False, spec=dense, raw=True, non_finite=None)
        self.tables = oov_features(schema)
        # the SavedModel's own vocabularies (assets/), to count what its graph maps to OOV; not needed when
        # the servable counts them itself (its ``scoring`` function)
        self.lookups = VocabLookups(schema) if count_oov else None

    @tf.autograph.experimental.do_not_convert  # no Python control flow on tensors
    def fast(self, serialized):
        raw = self._parse_fast(serialized)
        present = {n: tf.not_equal(raw[n], _ABSENT[t]) for n, t in self.dtypes.items()}
        values = {n: tf.where(present[n], raw[n], _DEFAULTS[t]) for n, t in self.dtypes.items()}
        return self._rows(raw, values, present)

    @tf.autograph.experimental.do_not_convert
    def exact(self, serialized):
        raw = self._parse_exact(serialized)
        present = {n: tf.equal(raw[n].row_lengths(), 1) for n in self.scalars}
        values = {n: raw[n].to_tensor(_DEFAULTS[t], shape=[None, 1])[:, 0] for n, t in self.dtypes.items()}
        return self._rows(raw, values, present)

    def _rows(self, raw, values, present):
        key, S = self.schema.scenario.name, self.schema.num_scenarios
        missing = tf.stack([~present[n] for n in self.required], axis=1)
        ok = ~tf.reduce_any(missing, axis=1)
        unknown = tf.zeros_like(ok)
        if self.routed:
            unknown = present[key] & ((values[key] < 0) | (values[key] >= S))
            ok &= ~unknown
        model_in = {f.name: (raw[f.name] if f.kind == "sequence" else values[f.name]) for f in self.schema.features}
        if self.routed:
            model_in[key] = tf.where(ok, values[key], tf.zeros_like(values[key]))
        non_finite = tf.zeros_like(ok)  # a NaN / inf numeric value: counted, not scored
        for f in self.schema.of_kind("numeric"):
            finite = tf.math.is_finite(model_in[f.name])
            non_finite |= ~finite
            model_in[f.name] = tf.where(finite, model_in[f.name], tf.zeros_like(model_in[f.name]))
        ok &= ~non_finite
        return (model_in, {n: (values[n], present[n]) for n in self.keep}, ok, unknown, missing,
                self._oov(model_in, ok), non_finite)

    def _oov(self, model_in, ok):
        """``[len(tables)]`` out-of-vocabulary values per id feature in the rows that are scored: raw values
        not in the vocabulary, or ids outside ``[0, vocab_size)`` (what the model counts as OOV); ``[0]`` when
        the servable counts them (``count_oov`` False)."""
        if self.lookups is None or not self.tables:
            return tf.zeros([0], tf.int64)
        ids = self.lookups({f.name: model_in[f.name] for f in self.tables})
        return tf.reduce_sum(oov_per_row(self.schema, ids) * tf.cast(ok, tf.int64)[:, None], axis=0)


class _Reread:
    """Batches the fast parse rejects, parsed exactly: a second reader of the same shards only moves forward
    to each, so every record is read at most twice however many batches are rejected."""

    def __init__(self, files: Sequence[str], batch_size: int, parser: _RowParser):
        self.files, self.batch_size, self.it, self.next_index = files, batch_size, None, 0
        self.exact = tf.function(parser.exact, input_signature=[tf.TensorSpec([None], tf.string)])

    def __call__(self, index: int):
        """The exactly parsed batch ``index`` (indices increase from call to call)."""
        if self.it is None:
            self.it = iter(_reader(self.files, self.batch_size))
        for _ in range(index - self.next_index):
            next(self.it)
        self.next_index = index + 1
        return self.exact(next(self.it))


def _parsed_batches(files: Sequence[str], batch_size: int, parser: _RowParser):
    """Parsed batches in input order: the fast parse in parallel; a batch it rejects is parsed exactly by
    ``_Reread`` (a batch neither parser reads raises from ``exact``)."""
    ds = _reader(files, batch_size).map(parser.fast, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()  # the pipeline is explicit; the default rewrites only cost time at iter()
    options.experimental_optimization.apply_default_optimizations = False
    it = iter(ds.prefetch(tf.data.AUTOTUNE).with_options(options))
    reread = _Reread(files, batch_size, parser)
    index = 0
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except tf.errors.InvalidArgumentError:
            batch = reread(index)
        index += 1
        yield batch


def score(saved_model: str, inputs: str, output: str, keep: Sequence[str] = (), batch_size: int = 4096,
          overwrite: bool = False, progress: Callable[[str], None] = None) -> dict:
    """Score every record of ``inputs`` with the SavedModel at ``saved_model``; returns the summary."""
    from tfmsr.serving.writer import resolve_servable

    path = resolve_servable(saved_model)
    schema = Schema.load(os.path.join(path, "assets", "schema.yaml"))
    with open(os.path.join(path, "assets", "export.json")) as fh:
        meta = json.load(fh)
    files = input_files(inputs)
    schema = dataclasses.replace(schema, layout=layout_of_files(files, every=True))  # the input's layout
    fmt = _output_format(output, overwrite)
    dtypes = column_dtypes(schema)
    keep = _checked_keep(keep, dtypes, schema, path)
    routed = meta["scenario_index"] is None
    required = ([schema.scenario.name] if routed else []) + [f.name for f in schema.features if f.kind != "sequence"]
    cpu_load = time.process_time()
    loaded = tf.saved_model.load(path)  # kept alive while its signature runs
    fn, counts_oov = _scoring_function(loaded, set(meta.get("computed_inputs") or ()))
    load_cpu = time.process_time() - cpu_load
    parser = _RowParser(schema, dtypes, required, keep, routed, count_oov=not counts_oov)
    columns = {**{k: dtypes[k] for k in keep}, "prob": tf.float32}
    progress = progress or _stderr_progress
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)  # score into a new folder
    sweep_beside(output, progress)  # the temp file of a killed score of the same output
    tally = _Tally(required, keep, parser.tables)
    start, cpu0 = time.time(), time.process_time()
    marks = _write_scores(fn, files, batch_size, parser, _Writer(output, fmt, columns), tally, progress, start)
    seconds = time.time() - start
    summary = {
        "saved_model": path, "servable": meta["servable"], "input_files": len(files), "output": output,
        **tally.summary(),
        "seconds": round(seconds, 3), "examples_per_sec": round(tally.counts["rows"] / max(seconds, 1e-9), 1),
        **_cpu_figures(load_cpu, time.process_time() - cpu0, marks),
    }
    _report(summary, progress)
    return summary


def _scoring_function(loaded, computed: set):
    """``(fn, counts_oov)``: ``fn`` maps named raw inputs to ``{"prob"}`` through the SavedModel's
    ``serving_default``, or to ``{"prob", "oov" [B, T]}`` through its ``scoring`` function where it has one
    (the ``all`` servable of newer exports: the same head, the out-of-vocabulary ids counted from the graph's
    own lookups, so the parser does not look every id up a second time). ``computed``: inputs the graph
    derives from their key (``serving.rates``): the shards still carry them (and are checked), ``fn`` drops them."""
    scoring = getattr(loaded, "scoring", None)
    signature = loaded.signatures["serving_default"]

    def fn(**x):
        x = {k: v for k, v in x.items() if k not in computed}
        return scoring(x) if scoring is not None else signature(**x)
    return fn, scoring is not None


def _cpu_figures(load_cpu: float, cpu: float, marks: List[tuple]) -> dict:
    """CPU-seconds of all threads (robust to a busy machine): loading the SavedModel, the scoring loop, its
    first batch and the steady rate: from the first batch ending past a quarter of the rows to the last one
    ending before three quarters (``marks``: (rows, CPU-seconds) at the end of each batch)."""
    rows = marks[-1][0] if marks else 0
    a = next((m for m in marks if 4 * m[0] >= rows), None)
    b = next((m for m in reversed(marks) if 4 * m[0] <= 3 * rows), None)
    steady = round((b[0] - a[0]) / max(b[1] - a[1], 1e-9), 1) if a and b and b[0] > a[0] else None
    return {"load_cpu_seconds": round(load_cpu, 3), "cpu_seconds": round(cpu, 3),
            "examples_per_cpu_sec": round(rows / max(cpu, 1e-9), 1),
            "first_batch_cpu_seconds": round(marks[0][1], 3) if marks else None,
            "steady_examples_per_cpu_sec": steady}


def _output_format(output: str, overwrite: bool) -> str:
    """The output's format from its extension; an existing output needs ``overwrite``."""
    fmt = FORMATS.get(os.path.splitext(output)[1].lower())
    if fmt is None:
        raise DataError(f"{output}: unknown output format (expected a file ending in {', '.join(FORMATS)})")
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"{output}: exists; pass --overwrite to replace it")
    return fmt


def _checked_keep(keep: Sequence[str], dtypes: Dict[str, tf.DType], schema: Schema, path: str) -> List[str]:
    """``--keep`` without repeats; each a scalar column of the schema, and not ``prob``."""
    keep = list(dict.fromkeys(keep))
    for k in keep:
        if k not in dtypes:
            seqs = [f.name for f in schema.of_kind("sequence")]
            why = "is a sequence (only scalar columns can be kept)" if k in seqs else "is not a column of the schema"
            raise DataError(f"--keep {k}: {why} ({os.path.join(path, 'assets', 'schema.yaml')}; "
                            f"scalar columns: {', '.join(dtypes)})")
    if "prob" in keep:
        raise DataError("--keep prob: 'prob' is the score column the output adds")
    return keep


class _Tally:
    """What a scoring run counts: rows, scored rows, each reason a row is not scored, absent kept columns, OOV."""

    def __init__(self, required: List[str], keep: List[str], tables: list):
        self.required, self.tables = required, tables
        self.counts = {"rows": 0, "scored": 0, "unknown_scenario": 0, "missing_features": 0, "non_finite": 0}
        self.missing_by, self.oov_by = np.zeros(len(required), np.int64), np.zeros(len(tables), np.int64)
        self.missing_keep = {k: 0 for k in keep}
        self.first_unscored: List[dict] = []

    def add(self, cols: Dict[str, tuple], ok, unknown, missing, oov, non_finite) -> None:
        """Count one batch (NumPy arrays; ``cols`` the kept columns as (values, present))."""
        for k, (_, p) in cols.items():
            self.missing_keep[k] += int((~p).sum())
        c = self.counts
        for i in np.flatnonzero(~ok)[:max(0, 10 - len(self.first_unscored))]:
            why = "unknown_scenario" if unknown[i] else "missing " + ",".join(
                self.required[j] for j in np.flatnonzero(missing[i])) if missing[i].any() else "non_finite"
            self.first_unscored.append({"row": c["rows"] + int(i), "reason": why})
        c["rows"] += len(ok)
        c["scored"] += int(ok.sum())
        c["unknown_scenario"] += int(unknown.sum())
        c["non_finite"] += int((non_finite & ~unknown & ~missing.any(axis=1)).sum())
        c["missing_features"] += int(missing.any(axis=1).sum())
        self.missing_by += missing.sum(axis=0)
        self.oov_by += oov

    def summary(self) -> dict:
        """The counts, the per-feature breakdowns (non-zero only) and the first unscored rows."""
        return {
            **self.counts,
            "missing_by_feature": {n: int(c) for n, c in zip(self.required, self.missing_by) if c},
            "missing_keep": {k: v for k, v in self.missing_keep.items() if v},
            "oov_values": int(self.oov_by.sum()),
            "oov_by_feature": {f.name: int(c) for f, c in zip(self.tables, self.oov_by) if c},
            "first_unscored": self.first_unscored,
        }


def _write_scores(fn, files: Sequence[str], batch_size: int, parser: _RowParser, writer: _Writer, tally: _Tally,
                  progress: Callable[[str], None], start: float) -> List[tuple]:
    """Score every batch into ``writer`` (renamed into place at the end, removed on any error) and ``tally``;
    returns (rows so far, CPU-seconds since the start of the loop) at the end of each batch."""
    last, cpu0, marks = start, time.process_time(), []
    try:
        with read_errors(files, parser.schema, parser.spec):
            for model_in, kept, ok, unknown, missing, oov, non_finite in _parsed_batches(files, batch_size, parser):
                out = fn(**model_in)
                prob, ok = out["prob"].numpy(), ok.numpy()
                oov = (out["oov"].numpy() * ok[:, None]).sum(axis=0) if "oov" in out else oov.numpy()
                cols = {k: (v.numpy(), p.numpy()) for k, (v, p) in kept.items()}
                tally.add(cols, ok, unknown.numpy(), missing.numpy(), oov, non_finite.numpy())
                cols["prob"] = (np.where(ok, prob, np.nan).astype(np.float32), ok)
                writer.write(cols)
                marks.append((tally.counts["rows"], time.process_time() - cpu0))
                if time.time() - last > 2:
                    last = time.time()
                    rows = tally.counts["rows"]
                    progress(f"[score] {rows:,} rows, {rows / (last - start):,.0f} ex/s")
        empty = {k: (np.zeros(0, object if t == tf.string else t.as_numpy_dtype), np.zeros(0, bool))
                 for k, t in writer.columns.items()}
        writer.close(empty)
    except BaseException:
        writer.abort()
        raise
    return marks


def _report(summary: dict, progress: Callable[[str], None]) -> None:
    """The closing progress line, and a warning that counts the rows not scored by reason."""
    progress(f"[score] done: {summary['rows']:,} rows ({summary['scored']:,} scored) in {summary['seconds']:.1f}s, "
             f"{summary['examples_per_sec']:,.0f} ex/s -> {summary['output']}")
    if summary["rows"] != summary["scored"]:
        progress(f"[score] WARNING: {summary['rows'] - summary['scored']:,} row(s) not scored (null prob): "
                 f"{summary['unknown_scenario']:,} unknown scenario, {summary['missing_features']:,} missing "
                 f"features {summary['missing_by_feature']}, {summary['non_finite']:,} non-finite numeric value(s)")


def _stderr_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
