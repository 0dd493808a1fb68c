"""``tfmsr data ingest``: the two passes that turn a spec and its files into a dataset.

Pass 1 (read) streams every input file chunk by chunk: joins, row-derived values, filters, the label, the
missing-value and drop counts; each categorical value becomes a dense code (``vocab.Coder``); the rows
are spilled, as fixed-width binary records, into files partitioned by user (``_common.TimeBuckets`` keyed
by the user's code), so that all of a user's rows land in one partition. Pass 2 (write) reads back groups
of partitions (about ``output.group_rows`` rows each): per-key values, the scenario, the split, behaviour
sequences (``sequences.Timeline``), numeric transforms; rows are written in a fixed pseudo-random order
(a permutation seeded per group) as raw values (``encode``) while the train counts of every table and the
train moments of standardised features accumulate. The vocabularies, ``schema.yaml`` and ``stats.json``
follow, all inside ``OUT.tmp-<pid>``, renamed to ``OUT`` only when complete. Memory is bounded by the
distinct values (codes, vocabularies, per-key counts) and one group of rows, never by the input's size;
the one exception is ``rate_per`` with ``reading: as_of`` (O(train rows), ``rates``). Label rates
(``rate_per``, ``train_count_per``) add a pass between the two: the groups are read once more to gather
each key's train labels (the split is known only per group).

A run killed half way leaves ``OUT.tmp-<pid>`` (and its ``-spill`` folder); the next run on the same OUT
removes such folders when their process no longer exists.
"""
from __future__ import annotations

import math
import os
import re
import sys
import threading
import time
from collections import Counter
from typing import Callable, Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tfmsr.core.tempfiles import sweep
from tfmsr.data.convert._common import (MISSING, Moments, Progress, SpillDir, TimeBuckets, add_layout_argument,
                                        peak_rss_mb)
from tfmsr.data.ingest import derive, encode, rates, scenarios, splits
from tfmsr.data.ingest.readers import expand_paths, read_chunks, read_table
from tfmsr.data.ingest.sequences import Timeline, delimited
from tfmsr.data.ingest.spec import KEY_OPS, LABEL_OPS, SPLITS, Spec, load_spec
from tfmsr.data.ingest.vocab import Coder, build_vocab, read_vocab, write_vocab
from tfmsr.data.layout import LAYOUTS, PACKED, packed_columns
from tfmsr.data.pipeline import DataError
from tfmsr.data.stats import repeat_pair
from tfmsr.features import Feature, Scenario, Schema

ENCODE_ROWS = 32_768  # rows serialised per call (bounds the encoder's temporaries)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ingest(spec_path: str, out: str, overwrite: bool = False, vocab_from: Optional[str] = None,
           log: Optional[Callable[[str], None]] = _stderr, root: Optional[str] = None,
           layout: Optional[str] = None) -> dict:
    """Ingest the files a spec names into the dataset folder ``out``; returns a summary (splits, scenarios,
    rows read / written / dropped, vocabulary sizes, seconds, rows/s, peak RSS). ``log=None`` is quiet.
    ``layout``: the shards' record layout (``tfmsr.data.layout``; default the spec's ``output.layout``)."""
    spec = load_spec(spec_path, root=root)
    return Ingest(spec, out, overwrite=overwrite, vocab_from=vocab_from, log=log, layout=layout).run()


def add_ingest_arguments(p) -> None:
    """``tfmsr data ingest`` options (the caller sets the handler)."""
    p.add_argument("--spec", required=True, help="ingestion spec (YAML; see tfmsr/configs/data/ for examples)")
    p.add_argument("--out", required=True, help="dataset folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    p.add_argument("--vocab-from", metavar="PREV_DATASET",
                   help="grow the vocabularies of a previous dataset (append-only: known ids never change)")
    p.add_argument("--root", help="folder the spec's relative input paths start from (default: the spec's root)")
    add_layout_argument(p, "the spec's output.layout, else ")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run_cli(args) -> dict:
    """The ``tfmsr data ingest`` handler: ingest, then print the summary as one JSON line."""
    import json

    summary = ingest(args.spec, args.out, overwrite=args.overwrite, vocab_from=args.vocab_from,
                     log=None if args.quiet else _stderr, root=args.root, layout=args.record_layout)
    print(json.dumps(summary))
    return summary


def clean_stale(out: str, log) -> List[str]:
    """Remove ``OUT.tmp-<pid>`` and ``OUT.tmp-<pid>-spill`` folders whose process is gone (a killed run)."""
    directory, base = os.path.split(os.path.abspath(out))
    return sweep(directory, re.escape(base) + r"\.tmp-(\d+)(?:-spill)?", log)


class Ingest:
    """One ingestion run (see the module docstring)."""

    def __init__(self, spec: Spec, out: str, overwrite: bool = False, vocab_from: Optional[str] = None,
                 log: Optional[Callable[[str], None]] = _stderr, layout: Optional[str] = None):
        self.spec, self.out, self.overwrite, self.log = spec, os.path.abspath(out), overwrite, log
        self.layout = layout or spec.output["layout"]
        if self.layout not in LAYOUTS:
            raise ValueError(f"ingest: unknown layout '{self.layout}' (expected one of {', '.join(LAYOUTS)})")
        self.prev = _previous(vocab_from, spec) if vocab_from else None
        self.rates = {_rate_id(d): rates.AsOf(d.inputs[0]) if d.options["reading"] == "as_of" else
                      rates.OutOfFold(d.inputs[0], d.options["folds"]) for d in spec.derive if d.op in LABEL_OPS}
        self.rate_rows = {d.name: Counter() for d in spec.derive if d.op in LABEL_OPS}
        self.spaces = spec.code_spaces()  # value -> code spaces (first: primary)
        self.coders: Dict[str, Coder] = {}
        self.keys = derive.KeyStats()
        self.files: List[str] = []
        self.file_rows: Dict[str, int] = {}
        self.file_lines: Dict[str, tuple] = {}
        self.drops: Counter = Counter()
        self.missing: Counter = Counter()
        self.joins: List[derive.Join] = []
        self.join_misses: Counter = Counter()
        self.rows_read = self.rows_kept = self.positives = 0
        self.label_range = {}
        self.spill: Optional[TimeBuckets] = None
        self.lock = threading.Lock()
        self.parts = 1
        self.block = 1
        self.dtype = None

    # ------------------------------------------------------------------------------------------ driver
    def run(self) -> dict:
        t0 = time.time()
        if os.path.exists(self.out) and not self.overwrite:
            raise FileExistsError(f"{self.out} already exists (pass --overwrite to replace it)")
        clean_stale(self.out, self.log)
        inputs = [(inp, p) for inp in self.spec.inputs for p in expand_paths(inp, self.spec.root)]
        self.tables = [(t, expand_paths(t.input, self.spec.root)) for t in self.spec.tables]
        with SpillDir(f"{self.out}.tmp-{os.getpid()}-spill") as spill_dir:
            self._make_coders()
            self._read_tables()
            self._read(inputs, spill_dir)
            self._resolve()
            self._rate_pass()
            stats = self._write()
        sec = time.time() - t0
        summary = {"out": self.out, "splits": {k: v["rows"] for k, v in stats["splits"].items()},
                   "scenarios": stats["scenario_rows"], "rows_read": self.rows_read,
                   "rows_written": self.rows_kept, "dropped": dict(self.drops), "layout": self.layout,
                   "vocab": {t: v["size"] for t, v in stats["ingest"]["tables"].items() if "size" in v},
                   "seconds": round(sec, 2), "rows_per_second": round(self.rows_read / max(sec, 1e-9)),
                   "peak_rss_mb": round(peak_rss_mb(), 1)}
        if self.log:
            self.log(f"ingest: {self.rows_read:,} rows read, {self.rows_kept:,} written to {self.out} in "
                     f"{sec:,.1f}s ({summary['rows_per_second']:,} rows/s)")
        return summary

    def _make_coders(self) -> None:
        s = self.spec
        for value, space in self._pairs():
            if space in self.coders:
                continue
            owner = s.features.get(space)
            zero = owner is not None and owner.policy == "vocab" and s.types[value] == "int64"
            track = value in (s.scenario.source, s.split.source)
            self.coders[space] = Coder(space, s.types[value], zero_missing=zero, track=track)
        for f in s.features.values():  # delimited sequences code their tokens (strings)
            if f.kind == "sequence" and s.owner(f).name not in self.coders:
                self.coders[s.owner(f).name] = Coder(s.owner(f).name, "string")

    def _pairs(self):
        return [(v, sp) for v, sps in self.spaces.items() for sp in sps]

    def _read_tables(self) -> None:
        for t, paths in self.tables:
            if len(paths) != 1:
                cols = [read_table(p, t.input) for p in paths]
                columns = {c: pa.concat_arrays([x[c] for x in cols]) for c in t.input.columns}
            else:
                columns = read_table(paths[0], t.input)
            self.joins.append(derive.Join(t, columns, ", ".join(paths)))

    # ------------------------------------------------------------------------------------------ pass 1
    def _read(self, inputs, spill_dir: str) -> None:
        total = sum(_size(p) for _, p in inputs)
        for inp, path in inputs:
            self.files.append(path)
            fi = len(self.files) - 1
            prog = Progress(f"read {os.path.basename(path)}", quiet=self.log is None, log=self.log)
            rows = 0
            for chunk in read_chunks(path, inp, fi, self.spec.output["chunk_mb"] << 20):
                if self.spill is None:
                    self._plan_spill(spill_dir, chunk, _size(path), total)
                self._chunk(chunk, inp.constants)
                rows += chunk.rows
                prog.update(rows, chunk.fraction)
                self.file_lines[path] = (self.file_lines.get(path, (chunk.line(0),))[0], chunk.line(chunk.rows - 1))
            prog.close()
            self.file_rows[path] = rows
        if self.rows_kept == 0:
            raise DataError(f"{', '.join(self.files)}: every row was dropped ({dict(self.drops)}); nothing to write")

    def _plan_spill(self, spill_dir: str, chunk, size: int, total: int) -> None:
        """Partitions: about four per group of rows, from the first chunk's bytes per row."""
        est = chunk.rows / max(chunk.fraction, 1e-9) * total / size
        group = self.spec.output["group_rows"]
        self.parts = int(min(4096, max(1, math.ceil(4 * est / group))))
        self.block = max(1, int(est / self.parts))
        self.dtype = self._record_dtype()
        self.spill = TimeBuckets(spill_dir, "part", self.dtype, 1)

    def _record_dtype(self) -> np.dtype:
        s = self.spec
        fields = [("row", np.int64), ("line", np.int64), ("file", np.int16), ("label", np.uint8), ("where", np.uint8)]
        fields += [(f"c:{sp}:{v}", np.int32) for v, sp in self._pairs()]
        fields += [(f"n:{v}", np.int64 if s.types[v] == "int64" else np.float64) for v in self.late_numeric()]
        fields += [(f"rank:{d.name}", np.int32) for d in s.derive if d.op == "position_in_file"]
        fields += [(f"s:{f.name}", np.int32, (f.length,)) for f in s.features.values() if f.kind == "sequence"]
        return np.dtype(fields)

    def late_numeric(self) -> List[str]:
        """Numeric values of the row itself read back in pass 2 (features, time, extras, ...)."""
        s = self.spec
        names = [f.source for f in s.features.values() if f.policy in ("numeric", "boundaries", "ids")]
        names += [s.time] if s.time else []
        names += [v for v, dt in s.extras.values() if dt != "string"]
        names += [s.scenario.source] if s.scenario.names else []
        names += [d.inputs[0] for d in s.derive if d.name in s.per_key and d.op == "bucketize"]
        return list(dict.fromkeys(n for n in names if n not in s.per_key))

    def _chunk(self, chunk, constants: dict) -> None:
        s, n = self.spec, chunk.rows
        values = dict(chunk.columns)
        for k, v in constants.items():
            values[k] = pa.repeat(pa.scalar(v), n)
        where = lambda i, col: f"{chunk.file} {chunk.at(i)}: column '{col}'"  # noqa: E731
        drop = np.zeros(n, bool)
        for j in self.joins:
            miss = j.apply(values)
            self.join_misses[j.spec.name] += int(miss.sum())
            if j.spec.required:
                self._drop(drop, miss, f"tables.{j.spec.name}: no row for the key")
        for d in s.derive:
            if d.name not in s.per_key:
                values[d.name] = derive.row_op(d, values, s.types, where)
        for name, arr in values.items():
            self.missing[name] += arr.null_count
        label = self._label(values, drop, where)
        for rule in s.filters:
            keep = pc.fill_null(rule.evaluate(values), False).to_numpy(zero_copy_only=False)
            self._drop(drop, ~keep, f"filter: {rule.text}")
        for name, what in self._required_values():
            miss = values[name].is_null().to_numpy(zero_copy_only=False)
            if what == "user" and self.coders[self.spaces[name][0]].zero_missing:  # int64 0 = missing
                miss |= pc.fill_null(pc.equal(values[name], 0), False).to_numpy(zero_copy_only=False)
            self._drop(drop, miss, f"{what}: missing {name}")
        keep = ~drop
        self.rows_read += n
        rows = np.arange(self.rows_read - n, self.rows_read)[keep]
        if not keep.all():
            mask = pa.array(keep)
            values = {k: pc.filter(v, mask) for k, v in values.items()}
        lines = chunk.line_offset + chunk.first_row + np.flatnonzero(keep)
        self._spill_rows(values, label[keep], rows, lines, chunk)

    def _drop(self, drop: np.ndarray, mask: np.ndarray, reason: str) -> None:
        new = mask & ~drop
        if new.any():
            self.drops[reason] += int(new.sum())
        drop |= mask

    def _required_values(self):
        """(value, what) pairs a row cannot do without: it is dropped (counted) when they are missing."""
        s = self.spec
        out = []
        if s.user:
            out.append((s.features[s.user].source, "user"))
        if s.time and s.time not in s.per_key:
            out.append((s.time, "time"))
        if s.scenario.source and s.scenario.source not in s.per_key:
            out.append((s.scenario.source, "scenario"))
        if s.split.by == "column":
            out.append((s.split.source, "split"))
        if s.split.by == "hash":
            out.append((s.split.key, "split key"))
        return out

    def _label(self, values, drop: np.ndarray, where) -> np.ndarray:
        lab = self.spec.label
        if lab.rule is not None:
            r = lab.rule.evaluate(values)
            self._drop(drop, r.is_null().to_numpy(zero_copy_only=False),
                       f"label: missing {' or '.join(lab.rule.names)}")
            for name in lab.rule.names:
                if self.spec.types[name] != "string" and len(values[name]) > values[name].null_count:
                    lo, hi = pc.min_max(values[name]).values()
                    old = self.label_range.get(name, (lo.as_py(), hi.as_py()))
                    self.label_range[name] = (min(old[0], lo.as_py()), max(old[1], hi.as_py()))
            return pc.fill_null(r, False).to_numpy(zero_copy_only=False).astype(np.uint8)
        x = derive.as_float(derive.to_numpy(values[lab.source], self.spec.types[lab.source]))
        self._drop(drop, np.isnan(x), f"label: missing {lab.source}")
        bad = ~np.isnan(x) & ~np.isin(x, (0.0, 1.0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{where(i, lab.source)} value {x[i]:g} is not a 0/1 label (label.from reads it; "
                            "use label.rule for other values, e.g. \"rating >= 4\")")
        return (x == 1).astype(np.uint8)

    def _spill_rows(self, values, label: np.ndarray, rows: np.ndarray, lines: np.ndarray, chunk) -> None:
        s, n = self.spec, len(rows)
        rec = np.zeros(n, self.dtype)
        rec["row"], rec["line"], rec["file"], rec["label"] = rows, lines, chunk.file_index, label
        self.rows_kept += n
        self.positives += int(label.sum())
        rec["where"] = 1 if s.behaviour is None or s.behaviour.where is None else \
            pc.fill_null(s.behaviour.where.evaluate(values), False).to_numpy(zero_copy_only=False)
        codes = {}
        for value, space in self._pairs():
            rec[f"c:{space}:{value}"] = self.coders[space].encode(values[value], chunk.file_index, lines)
            codes.setdefault(value, rec[f"c:{space}:{value}"])  # the primary space's codes
        for d in s.derive:
            if d.op == "count_per":
                self.keys.count(d.inputs[0], codes[d.inputs[0]])
            elif d.op == "position_in_file":
                rec[f"rank:{d.name}"] = self.keys.rank(d.inputs[0], chunk.file_index, codes[d.inputs[0]])
        if s.scenario.source in codes:
            self.keys.count(s.scenario.source, codes[s.scenario.source])
        for v in self.late_numeric():
            rec[f"n:{v}"] = derive.to_numpy(values[v], s.types[v])
        for f in s.features.values():
            if f.kind == "sequence":
                rec[f"s:{f.name}"] = delimited(values[f.source], f.sep, f.length, f.order == "oldest_first",
                                               self.coders[s.owner(f).name])
        part = codes[s.features[s.user].source] % self.parts if s.user else (rows // self.block) % self.parts
        self.spill.add(part, rec)

    # ------------------------------------------------------------------------------------------ between passes
    def _resolve(self) -> None:
        """Checks and lookup tables that need the whole log: the label, scenarios, split tables, dictionaries."""
        s = self.spec
        if self.positives == 0 and s.label.rule is not None:
            ranges = "; ".join(f"{k} ranges {lo} .. {hi}" for k, (lo, hi) in self.label_range.items())
            where = ", ".join(f"{p} lines {a:,}-{b:,}" for p, (a, b) in self.file_lines.items())
            raise DataError(f"{where}: label rule '{s.label.rule.text}' matches no row ({self.rows_kept:,} rows"
                            f"{'; ' + ranges if ranges else ''}); expected at least one positive row")
        self.scenario_names, self.scenario_of = self._scenarios()
        if s.split.by == "column":
            coder = self.coders[self.spaces[s.split.source][0]]
            self.split_of = splits.column_table(s.split, coder, self.files, s.split.source)
        if s.split.by == "hash":
            self.hash_units = splits.hash_units(self.coders[self.spaces[s.split.key][0]], s.split.seed)
        self.dicts = {space: _dictionary(c, s) for space, c in self.coders.items()}
        self.scenario_dict = encode.Dictionary(np.arange(1, len(self.scenario_names) + 1), "int64")

    def _scenarios(self):
        """(names, code -> scenario index or None) from the spec, the previous dataset and the values seen."""
        sc = self.spec.scenario
        if sc.source is None or sc.names:
            return list(sc.values or sc.names), None
        coder = self.coders[self.spaces[sc.source][0]]
        return scenarios.resolve(sc, coder, self.keys.counts.get(sc.source, np.zeros(0, np.int64)),
                                 self.prev["scenarios"] if self.prev else None, self.files)

    # ------------------------------------------------------------------------------------------ pass 2
    def _write(self) -> dict:
        from tfmsr.data.tfrecord import DatasetWriter

        self.schema = self._schema()
        self.pair = repeat_pair(self.schema)
        self.packed_fields = packed_columns(self.schema) if self.layout == PACKED else None
        self.train_counts = {t: np.zeros(len(c), np.int64) for t, c in self.coders.items()}
        self.use_counts = {t: {sp: np.zeros(len(c), np.int64) for sp in SPLITS} for t, c in self.coders.items()}
        self.moments = {f.name: Moments() for f in self.spec.features.values() if f.policy == "numeric"}
        out = self.spec.output
        writer = DatasetWriter(self.out, self.schema, rows_per_shard=out["rows_per_shard"],
                               compression="GZIP" if out["gzip"] else None, overwrite=self.overwrite)
        prog = Progress("write", quiet=self.log is None, log=self.log)
        with writer:
            with BackgroundWriter(writer) as bg, OrderedPool(bg.write, min(4, os.cpu_count() or 1)) as pool:
                done = 0
                for rec in self._groups():
                    self._group(rec, pool)
                    done += len(rec)
                    prog.update(done, done / self.rows_kept)
            prog.close()
            self._finish(writer)
        return writer.stats.result() | writer.extra_stats

    def _groups(self):
        group, size = [], 0
        for b in self.spill.buckets():
            group.append(self.spill.load(b))
            size += len(group[-1])
            if size >= self.spec.output["group_rows"]:
                yield np.concatenate(group)
                group, size = [], 0
        if group:
            yield np.concatenate(group)

    def _late(self, rec):
        """(codes by value, numbers by value) of a group, per-key values computed but those from train labels
        (``_label_values``, once the split is known)."""
        s = self.spec
        codes = {v: rec[f"c:{sps[0]}:{v}"].astype(np.int64) for v, sps in self.spaces.items()}
        codes.update({(v, sp): rec[f"c:{sp}:{v}"].astype(np.int64) for v, sp in self._pairs()})
        nums = {v: rec[f"n:{v}"] for v in self.late_numeric()}
        for d in s.derive:
            if d.name in s.per_key and d.name not in s.from_labels:
                src = codes if d.op in KEY_OPS else nums
                nums[d.name] = derive.key_op(d, src, self.keys, rec)
        return codes, nums

    def _label_values(self, rec, codes, nums, split) -> None:
        """Adds the values from train labels (``rate_per``, ``train_count_per``, what derives from them) to
        ``nums``, and ``n:<name>``: each row's key's train rows read (-1: no key)."""
        for d in self.spec.derive:
            if d.op in LABEL_OPS:
                nums[d.name], nums[f"n:{d.name}"] = self._rate_value(d, codes, nums, split == 0)
            elif d.name in self.spec.from_labels:
                nums[d.name] = derive.key_op(d, nums, self.keys, rec)

    def _folds(self, codes, k: int) -> np.ndarray:
        """Each row's fold 0..k-1, from the hash of its user's raw value."""
        user = codes[self.spec.features[self.spec.user].source]
        return np.minimum((self.user_units[user] * k).astype(np.int64), k - 1)

    def _rate_value(self, d, codes, nums, train):
        """(value, key's train rows read) of a ``rate_per`` / ``train_count_per`` (missing key: NaN /
        MISSING, rows -1)."""
        key, table = codes[d.inputs[0]], self.rates[_rate_id(d)]
        time = derive.as_float(nums[self.spec.time]) if self.spec.time else None
        fold = self._folds(codes, d.options["folds"]) if d.options["reading"] == "out_of_fold" else None
        n, pos, n_all, pos_all = table.query(key, time, fold, train)
        n = np.where(key >= 0, n, -1)
        if d.op == "train_count_per":
            return np.where(key >= 0, n, MISSING), n
        return np.where(key >= 0, rates.rate(n, pos, n_all, pos_all, d.options["m"]), np.nan), n

    def _rate_pass(self) -> None:
        """Gathers the train rows' labels of each rate_per / train_count_per key, by time (as_of) or by the
        user's fold (out_of_fold), reading the spill once; then adds what --vocab-from carries."""
        if not self.rates:
            return
        s = self.spec
        if s.user:
            self.user_units = splits.hash_units(self.coders[self.spaces[s.features[s.user].source][0]], 7)
        for rec in self._groups():
            rec, codes, nums, tl = self._sorted(rec)
            train = self._split(tl, rec, codes, nums) == 0
            lab = rec["label"][train]
            for (key, reading, k), table in self.rates.items():
                if reading == "as_of":
                    table.add(codes[key][train], derive.as_float(nums[s.time])[train], lab)
                else:
                    table.add(codes[key][train], self._folds(codes, k)[train], lab)
        for (key, _, _), table in self.rates.items():
            coder = self.coders[self.spaces[key][0]]
            if self.prev:
                table.load(self.prev["path"], coder)
            table.freeze(len(coder))

    def _sorted(self, rec: np.ndarray):
        """A group's rows sorted by (user, time) (no user: input order), with their codes, numbers and
        ``Timeline``."""
        s = self.spec
        codes, nums = self._late(rec)
        tl = None
        if s.user:
            time_ = nums[s.time] if s.time else rec["row"]
            tl = Timeline(codes[s.features[s.user].source], derive.as_float(time_))  # spilled in input order
            order = tl.order
        else:
            order = np.argsort(rec["row"], kind="stable")
        codes = {k: v[order] for k, v in codes.items()}
        nums = {k: v[order] for k, v in nums.items()}
        return rec[order], codes, nums, tl

    def _group(self, rec: np.ndarray, pool) -> None:
        """Sort a group's rows by (user, time), then serialise each split's rows in chunks on ``pool``."""
        s = self.spec
        rec, codes, nums, tl = self._sorted(rec)
        if s.behaviour:
            tl.events(rec["where"].astype(bool))
        split = self._split(tl, rec, codes, nums)
        self._label_values(rec, codes, nums, split)
        scen = self._scenario_index(rec, codes, nums)
        for name, counts in self.rate_rows.items():
            n = nums[f"n:{name}"]
            for k, sp in enumerate(SPLITS):
                counts[f"{sp}_rows"] += int((split == k).sum())
                counts[f"{sp}_prior_only"] += int(((split == k) & (n == 0)).sum())
                counts[f"{sp}_missing_key"] += int(((split == k) & (n < 0)).sum())
        shuffle = np.random.default_rng(int(rec["row"][0]) if len(rec) else 0)  # fixed per group
        for k, name in enumerate(SPLITS):
            rows = shuffle.permutation(np.flatnonzero(split == k))
            for lo in range(0, len(rows), ENCODE_ROWS):
                pool.submit(self._encode, name, rows[lo:lo + ENCODE_ROWS], rec, codes, nums, scen, tl)

    def _scenario_index(self, rec, codes, nums) -> np.ndarray:
        sc = self.spec.scenario
        if sc.source is None:
            return np.zeros(len(rec), np.int64)
        if sc.names:
            x = nums[sc.source]
            bad = (x < 0) | (x >= len(sc.names))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DataError(f"{self.files[rec['file'][i]]} line {rec['line'][i]}: scenario value "
                                f"'{sc.source}' = {'missing' if x[i] == MISSING else x[i]} is not an index of "
                                f"scenario.names ({len(sc.names)} names: 0..{len(sc.names) - 1})")
            return x.astype(np.int64)
        return self.scenario_of[codes[sc.source]]

    def _split(self, tl, rec, codes, nums) -> np.ndarray:
        sp = self.spec.split
        if sp.by == "user_time":
            return splits.by_user_time(tl, sp.valid, sp.test)
        if sp.by == "global_time":
            return splits.by_global_time(derive.as_float(nums[self.spec.time]), sp)
        if sp.by == "hash":
            return splits.by_hash(self.hash_units, codes[sp.key], sp)
        return self.split_of[codes[sp.source]]

    def _encode(self, split: str, sub, rec, codes, nums, scen, tl):
        """(split, stats columns, serialised rows) of rows ``sub`` (positions in the sorted group) of one
        split; runs on a worker thread."""
        s = self.spec
        numeric = [(s.label.name, "float", rec["label"][sub].astype(np.float32)),
                   (s.scenario.name, "int", scen[sub])]
        coded, lists = [], []
        stats_cols = {s.scenario.name: scen[sub], s.label.name: rec["label"][sub]}
        for f in s.features.values():
            if f.policy in ("numeric", "boundaries", "ids"):
                numeric.append((f.name, *self._number(f, nums[f.source][sub], split)))
            elif f.kind == "sequence":
                c = rec[f"s:{f.name}"][sub]
                keep = c >= 0
                lists.append((f.name, c[keep], keep.sum(axis=1), self.dicts[s.owner(f).name]))
                self._count(s.owner(f).name, split, c, True)
            else:
                c = codes[(f.source, s.owner(f).name)][sub]
                coded.append((f.name, c, self.dicts[s.owner(f).name]))
                self._count(s.owner(f).name, split, c, True)
                stats_cols[f.name] = c + 1
        if s.behaviour:
            lists += self._behaviour(sub, rec, codes, scen, tl, stats_cols)
        for name, (value, dtype) in s.extras.items():
            if dtype == "string":
                coded.append((name, codes[value][sub], self.dicts[self.spaces[value][0]]))
            else:  # missing -> 0
                x = nums[value][sub]
                x = np.where(x == MISSING, 0, x) if x.dtype.kind == "i" else np.nan_to_num(x)
                numeric.append((name, "int", x.astype(np.int64)) if dtype == "int64" else (name, "float", x))
        if self.layout == PACKED:
            records = encode.packed_examples(len(sub), self.packed_fields, numeric, coded, lists)
        else:
            records = encode.examples(len(sub), numeric, coded, lists)
        return split, stats_cols, encode.split_records(records)

    def _behaviour(self, sub, rec, codes, scen, tl, stats_cols) -> list:
        """(name, flat codes, row lengths, Dictionary) of each behaviour sequence of rows ``sub``; events
        share one history, so only a missing value (dropped) makes a sequence's rows differ."""
        s = self.spec
        flat_pos, lens = tl.history(sub, s.behaviour.length)
        row_of = None
        out = []
        for name, src in s.behaviour.features.items():
            if src == "scenario":
                values, d = scen, self.scenario_dict
            else:
                owner = s.owner(s.features[src])
                values, d = codes[(s.features[src].source, owner.name)], self.dicts[owner.name]
            flat, ln = values[flat_pos], lens
            if self.pair and name == self.pair[1]:
                row_of = np.repeat(np.arange(len(sub)), lens) if row_of is None else row_of
                target = stats_cols[self.pair[0]]
                t = target[row_of]
                repeat = np.bincount(row_of[(flat + 1 == t) & (t != 0)], minlength=len(sub)) > 0
                stats_cols[name] = np.where(repeat, target, 0)[:, None]  # [n, 1]: is_repeat == repeat
            if (flat < 0).any():
                row_of = np.repeat(np.arange(len(sub)), lens) if row_of is None else row_of
                ok = flat >= 0
                flat, ln = flat[ok], np.bincount(row_of[ok], minlength=len(sub))
            out.append((name, flat, ln, d))
        return out

    def _number(self, f, x: np.ndarray, split: str):
        """('float'|'int', column) of a numeric / bucketised / id feature."""
        if f.policy == "boundaries":
            b = derive.bucketize(x, f.boundaries)
            return "int", np.where(b == MISSING, 0, b + 1)
        if f.policy == "ids":
            bad = (x != MISSING) & ((x < 0) | (x >= f.ids))
            if bad.any():
                raise DataError(f"feature '{f.name}': value {x[bad][0]} is not an id in 0..{f.ids - 1} "
                                f"(features.{f.name}.ids)")
            return "int", np.where(x == MISSING, 0, x)
        y = derive.transform(x, f.transform, f.name)
        if split == "train" and any(t[0] == "standardize" for t in f.transform):
            with self.lock:
                self.moments[f.name].add(y)
        return "float", np.where(np.isnan(y), f.fill, y).astype(np.float32)

    def _count(self, table: str, split: str, codes: np.ndarray, for_vocab: bool) -> None:
        c = codes[codes >= 0].astype(np.int64)
        n = len(self.coders[table])
        counts = np.bincount(c, minlength=n)
        with self.lock:  # workers of the pool share these totals
            self.use_counts[table][split] = _grow(self.use_counts[table][split], n) + counts
            self.missing[f"table:{table}"] += int((codes < 0).sum()) if codes.ndim == 1 else 0
            if split == "train" and for_vocab:
                self.train_counts[table] = _grow(self.train_counts[table], n) + counts

    # ------------------------------------------------------------------------------------------ schema, vocab, stats
    def _schema(self) -> Schema:
        s = self.spec
        feats = []
        for f in s.features.values():
            if f.policy == "numeric":
                feats.append(Feature(f.name, "numeric", f.group))
                continue
            kw = {"dim": f.dim, "length": f.length}
            if f.policy == "vocab":
                kw.update(vocab_size=2, vocab=f"vocab/{f.name}.txt", raw=s.types[f.source])
            elif f.policy == "hash":
                kw.update(hash_buckets=f.hash_buckets)
            elif f.policy == "share":
                kw = {"share": f.table, "length": f.length}
            else:
                kw.update(vocab_size=len(f.boundaries) + 2 if f.policy == "boundaries" else f.ids)
            feats.append(Feature(f.name, f.kind, f.group, **kw))
        for name, src in (s.behaviour.features.items() if s.behaviour else ()):
            if src == "scenario":
                feats.append(Feature(name, "sequence", "behavior", vocab_size=len(self.scenario_names) + 1,
                                     dim=s.dim, length=s.behaviour.length))
            else:
                feats.append(Feature(name, "sequence", "behavior", share=s.owner(s.features[src]).name,
                                     length=s.behaviour.length))
        extras = {name: dtype for name, (_, dtype) in s.extras.items()}
        schema = Schema(scenario=Scenario(s.scenario.name, list(self.scenario_names)), labels=[s.label.name],
                        features=feats, extras=extras, user_key=s.user or "", source=self.out + "/schema.yaml",
                        layout=self.layout)
        schema.validate()
        return schema

    def _finish(self, writer) -> None:
        s = self.spec
        tables = {}
        for f in s.features.values():
            if f.policy != "vocab":
                continue
            coder = self.coders[f.name]
            prev = self.prev["vocab"].get(f.name) if self.prev else None
            if prev is not None and prev[0] != coder.dtype:
                raise DataError(f"vocabulary '{f.name}': the previous dataset stores {prev[0]} raw values, this "
                                f"spec gives {coder.dtype}")
            v = build_vocab(f.name, coder, self.train_counts[f.name], f.min_count, f.max_size,
                            prev[1] if prev else None)
            write_vocab(os.path.join(writer.tmp_dir, "vocab", f"{f.name}.txt"), v)
            self.schema.feature(f.name).vocab_size = v.size
            tables[f.name] = self._table_stats(f.name, v)
        for f in s.features.values():
            if f.policy == "hash":
                tables[f.name] = self._table_stats(f.name, None)
            if f.policy == "numeric" and any(t[0] == "standardize" for t in f.transform):
                m = self.moments[f.name]
                self.schema.feature(f.name).mean, self.schema.feature(f.name).std = float(m.mean), float(m.std)
        self.schema.validate()
        saved = set()
        for (key, _, _), table in self.rates.items():
            if key not in saved:  # every reading of a key holds the same totals
                table.save(writer.tmp_dir, self.coders[self.spaces[key][0]])
                saved.add(key)
        writer.extra_stats["ingest"] = self._ingest_stats(tables)

    def _table_stats(self, table: str, v) -> dict:
        out = {"distinct_values": len(self.coders[table])}
        if v is not None:
            out.update(size=v.size, previous_size=v.known + 1 if self.prev else None, values_new=v.size - 1 - v.known,
                       values_below_min_count=v.below_min_count, values_over_max_size=v.truncated)
        per = {}
        for sp, counts in self.use_counts[table].items():
            if v is None:
                per[sp] = {"values": int(counts.sum())}
                continue
            ids = v.id_of_code[:len(counts)]
            per[sp] = {"known": int(counts[(ids >= 1) & (ids <= v.known)].sum()),
                       "new": int(counts[ids > v.known].sum()), "oov": int(counts[ids == 0].sum())}
        out["splits"] = per
        out["missing"] = int(self.missing.get(f"table:{table}", 0))
        return out

    def _ingest_stats(self, tables: dict) -> dict:
        s = self.spec
        return {"spec": os.path.abspath(s.path), "files": {p: {"rows": n} for p, n in self.file_rows.items()},
                "rows_read": self.rows_read, "rows_written": self.rows_kept, "dropped": dict(self.drops),
                "layout": self.layout,
                "joins": {j.spec.name: {"rows": j.rows, "rows_without_match": int(self.join_misses[j.spec.name])}
                          for j in self.joins},
                "missing": {k: int(v) for k, v in self.missing.items() if not k.startswith("table:")},
                "tables": tables, "vocab_from": self.prev["path"] if self.prev else None,
                "scenario": {"names": list(self.scenario_names), "source": s.scenario.source},
                "rates": self._rate_stats()}

    def _rate_stats(self) -> dict:
        """Per rate_per / train_count_per: its key, m, rows per split, rows with no earlier train row of
        their key (prior only), rows without a key; the as-of table's train rows and bytes."""
        out = {}
        for d in self.spec.derive:
            if d.op in LABEL_OPS:
                t = self.rates[_rate_id(d)]
                out[d.name] = {"op": d.op, "key": d.inputs[0], "m": d.options.get("m"),
                               "reading": d.options["reading"], "train_rows_indexed": t.totals[2],
                               "table_bytes": t.table_bytes,
                               "carried_rows": int(t.prev_total[0]), **dict(self.rate_rows[d.name])}
        return out


# ---------------------------------------------------------------------------------------------- helpers
class OrderedPool:
    """Runs jobs on ``workers`` threads (NumPy and pyarrow release the GIL in their kernels) and hands each
    result to ``sink`` in submission order, so the output does not depend on timing; at most
    ``workers + 1`` jobs are in flight (bounded memory). An error in a job is raised by the next call."""

    def __init__(self, sink, workers: int = 2):
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        self.sink, self.limit = sink, workers + 1
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest-encode")
        self.pending = deque()

    def submit(self, fn, *args) -> None:
        self.pending.append(self.pool.submit(fn, *args))
        while len(self.pending) > self.limit:
            self.sink(*self.pending.popleft().result())

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            while exc_type is None and self.pending:
                self.sink(*self.pending.popleft().result())
        finally:
            for f in self.pending:
                f.cancel()
            self.pool.shutdown(wait=True)
        return False


class BackgroundWriter:
    """``write(split, columns, records)`` handed to a thread that calls the ``DatasetWriter`` (whose native
    TFRecord writes release the GIL), so the next rows are serialised while these are written. At most
    ``depth`` chunks wait; an error in the thread is raised by the next ``write`` or on exit."""

    def __init__(self, writer, depth: int = 2):
        import queue
        import threading

        self.writer, self.error = writer, None
        self.queue = queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._run, name="ingest-writer", daemon=True)

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is None:
                try:
                    self.writer.write(*item)
                except BaseException as e:  # re-raised in the caller's thread
                    self.error = e

    def write(self, split: str, columns, records) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((split, columns, records))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.queue.put(None)
        self.thread.join()
        if exc_type is None and self.error is not None:
            raise self.error
        return False


def _rate_id(d) -> tuple:
    """The table a rate_per / train_count_per reads: (key, reading, folds)."""
    return d.inputs[0], d.options["reading"], d.options["folds"] if d.options["reading"] == "out_of_fold" else 0


def _size(path: str) -> int:
    import tensorflow as tf

    return max(1, tf.io.gfile.stat(path).length)


def _grow(a: np.ndarray, n: int) -> np.ndarray:
    return a if len(a) >= n else np.concatenate([a, np.zeros(n - len(a), a.dtype)])


def _dictionary(coder: Coder, spec: Spec) -> encode.Dictionary:
    """Wire elements of a code space's raw values (hashed tables store strings, also of int columns)."""
    owner = spec.features.get(coder.name)
    if coder.dtype == "int64" and not (owner is not None and owner.policy == "hash"):
        return encode.Dictionary(coder.values(), "int64")
    return encode.Dictionary(pc.cast(coder.array, pa.string()), "string")


def _previous(path: str, spec: Spec) -> dict:
    """The previous dataset's vocabularies (table -> (raw dtype, values)) and scenario names."""
    schema_path = os.path.join(path, "schema.yaml")
    if not os.path.isfile(schema_path):
        raise DataError(f"--vocab-from {path}: no schema.yaml (expected a dataset written by tfmsr data ingest)")
    prev = Schema.load(schema_path)
    vocab = {}
    for name, f in prev.tables().items():
        if f.vocab:
            vocab[name] = (f.raw, read_vocab(prev.vocab_path(f), f.raw))
    return {"path": os.path.abspath(path), "vocab": vocab, "scenarios": list(prev.scenario.values)}
