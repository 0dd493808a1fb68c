"""Ali-CCP (Taobao click + conversion): 3 scenarios from context field 301 (SAINet, SASS, FIMN).

Two input layouts (``--layout auto`` detects them; files plain or ``.gz``):

* **preprocessed** (public multi-scenario benchmarks, e.g. ``../shared/datasets/ali-ccp-sample``): CSVs
  whose names contain ``train``, ``val`` (optional) and ``test``, columns ``click,purchase``, the
  categorical fields ``101 121 122 124 125 126 127 128 129 205 206 207 210 216 508 509 702 853 301
  109_14 110_14 127_14 150_14`` (ids already remapped to 1..V-1, 0 = unknown) and the dense fields
  ``D109_14 D110_14 D127_14 D150_14 D508 D509 D702 D853``. Vocabulary sizes = largest id + 1.
* **raw** (Tianchi release, ESMM paper): ``sample_skeleton_{train,test}.csv`` rows
  ``sample_id,click,purchase,common_feature_index,feature_num,feature_list`` and
  ``common_features_{train,test}.csv`` rows ``common_feature_index,feature_num,feature_list``; a feature
  list is ``field\\x02feature_id\\x03value`` entries joined by ``\\x01``. A skeleton row gets the fields of
  its common-features row (user fields). Of a field with several entries the last one is kept, its
  feature id for the categorical field and its value for the dense ``D`` field (as the public
  preprocessing does). Ids: per field, feature ids seen at least ``--min-count`` (10) times in the train
  skeleton are remapped to 1..V-1 in sorted order of the raw ids; others map to 0. Rows with purchase
  but no click (inconsistent with the click -> purchase funnel) are dropped and counted, like the public
  preprocessing. Memory: the common-features table (one row of ~31 numbers per common feature index,
  ~0.73M rows for train), the vocabularies and one chunk; two passes over the train skeleton.

Schema: features ``f<field>`` (categorical) and ``d<field>`` (numeric, standardised with the train
split's mean/std) in groups user (101, 121-129, 109_14, 110_14, 127_14, 150_14 and their dense values),
item (205 item, 206 category, 207 shop, 210 intention node, 216 brand) and context (the user x item
crosses 508, 509, 702, 853 and their dense values). Field 301 is the scenario (``301_<value>``, sorted;
an empty / 0 value is counted and goes to scenario ``unknown``, or is dropped with
``--missing-scenario drop``). Label ``click``; ``purchase`` is kept as an extra (float32).

Splits: train file -> train; val file -> valid; test file -> test. Without a val file (always in the raw
layout) the test file is split deterministically by row number (``--valid-fraction``, default 0.5, of its
rows to valid), as the public preprocessing splits the official test set into validation and test.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
import time
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from tfmsr.data.convert._common import (MISSING, ConvertOptions, CsvStream, DataError, Moments, SplitWriter, Vocab,
                                        add_common_arguments, csv_header, floats, hash_unit, ints,
                                        peak_rss_mb, require_columns, print_summary)
from tfmsr.data.tfrecord import DatasetWriter
from tfmsr.features import Feature, Scenario, Schema

NAME = "ali-ccp"

USER_FIELDS = ["101", "121", "122", "124", "125", "126", "127", "128", "129", "109_14", "110_14", "127_14", "150_14"]
ITEM_FIELDS = ["205", "206", "207", "210", "216"]
CROSS_FIELDS = ["508", "509", "702", "853"]
SCENARIO_FIELD = "301"
SPARSE = ["101", "121", "122", "124", "125", "126", "127", "128", "129", "205", "206", "207", "210", "216",
          "508", "509", "702", "853", "301", "109_14", "110_14", "127_14", "150_14"]
DENSE_FIELDS = ["109_14", "110_14", "127_14", "150_14", "508", "509", "702", "853"]
DENSE = ["D" + f for f in DENSE_FIELDS]
LAYOUT = ["click", "purchase"] + SPARSE + DENSE
SKELETON = ["sample_id", "click", "purchase", "common_feature_index", "feature_num", "feature_list"]
COMMON = ["common_feature_index", "feature_num", "feature_list"]


def add_arguments(p) -> None:
    p.add_argument("--layout", choices=["auto", "preprocessed", "raw"], default="auto")
    p.add_argument("--missing-scenario", choices=["unknown", "drop"], default="unknown",
                   help="rows without a field-301 value: an extra 'unknown' scenario (default) or drop")
    p.add_argument("--valid-fraction", type=float, default=0.5,
                   help="share of the test file used as validation when there is no val file")
    p.add_argument("--min-count", type=int, default=10, help="raw layout: keep feature ids seen this often")
    add_common_arguments(p)


def run(args) -> dict:
    return print_summary(args.out, convert(args.src, args.out, Options.from_args(args)))


# ---------------------------------------------------------------------------------------------- inputs
def _csvs(src: str) -> List[str]:
    if not os.path.isdir(src):
        raise DataError(f"{src}: not a directory (expected the folder holding the Ali-CCP files)")
    return sorted(p for p in glob.glob(os.path.join(src, "*")) if re.search(r"\.csv(\.gz)?$", p))


def _raw_files(src: str) -> Optional[Dict[str, str]]:
    """{'skeleton_train', 'common_train', 'skeleton_test', 'common_test'} paths, or None if not raw."""
    found = {}
    for part in ("train", "test"):
        for kind, stem in (("skeleton", "sample_skeleton"), ("common", "common_features")):
            for name in (f"{stem}_{part}.csv", f"{stem}_{part}.csv.gz"):
                if os.path.isfile(os.path.join(src, name)):
                    found[f"{kind}_{part}"] = os.path.join(src, name)
    if not found:
        return None
    need = ["skeleton_train", "common_train", "skeleton_test", "common_test"]
    missing = [k for k in need if k not in found]
    if missing:
        names = {k: ("sample_skeleton_" if k.startswith("skeleton") else "common_features_") + k.split("_")[1] + ".csv"
                 for k in missing}
        raise DataError(f"{src}: raw Ali-CCP layout is incomplete: missing {', '.join(names.values())}")
    return found


def _preprocessed_files(src: str) -> Dict[str, str]:
    files = {}
    for path in _csvs(src):
        base = os.path.basename(path).lower()
        for split, key in (("train", "train"), ("valid", "val"), ("test", "test")):
            if re.search(rf"(^|[^a-z]){key}", base):
                if split in files:
                    raise DataError(f"{src}: two {split} files ({os.path.basename(files[split])}, "
                                    f"{os.path.basename(path)}); keep one per split in --src")
                files[split] = path
    for split in ("train", "test"):
        if split not in files:
            raise DataError(f"{src}: no Ali-CCP {split} file (expected a CSV whose name contains '{split}' "
                            "with columns click,purchase,101,...,D853, or the raw sample_skeleton_*/common_features_* files)")
    return files


# ---------------------------------------------------------------------------------------------- schema
def _schema(scenarios: List[str], sizes: Dict[str, int], dim: int) -> Schema:
    feats = []
    for group, fields in (("user", USER_FIELDS), ("item", ITEM_FIELDS), ("context", CROSS_FIELDS)):
        feats += [Feature(f"f{f}", "categorical", group, vocab_size=max(2, sizes[f]), dim=dim) for f in fields]
        feats += [Feature(f"d{f}", "numeric", group) for f in fields if f in DENSE_FIELDS]
    schema = Schema(scenario=Scenario("scenario", scenarios), labels=["click"], features=feats,
                    extras={"purchase": "float32"}, user_key="f101", source="ali-ccp")
    schema.validate()
    return schema


def _scenario_names(values: np.ndarray, missing_rows: int, policy: str) -> List[str]:
    names = [f"{SCENARIO_FIELD}_{int(v)}" for v in values]
    if missing_rows and policy == "unknown":
        names.append("unknown")
    if not names:
        raise DataError(f"no row has a value in the scenario field {SCENARIO_FIELD}")
    return names


def _scenario_index(raw: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Scenario index of raw field-301 values (sorted ``values``); missing/unknown -> len(values)."""
    idx = np.searchsorted(values, raw)
    ok = (raw != MISSING) & (idx < len(values))
    ok[ok] = values[idx[ok]] == raw[ok]
    return np.where(ok, idx, len(values))


def _labels(df, path, start):
    click = ints(df["click"], path, "click", allow_missing=False, start=start)
    purchase = ints(df["purchase"], path, "purchase", allow_missing=False, start=start)
    for name, col in (("click", click), ("purchase", purchase)):
        bad = (col != 0) & (col != 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{os.path.basename(path)}: column '{name}' row {start + i:,} has value {col[i]} "
                            "(expected 0 or 1)")
    return click, purchase


def _split_names(part: str, rows: np.ndarray, has_valid: bool, valid_fraction: float) -> np.ndarray:
    if part == "test" and not has_valid:
        return np.where(hash_unit(rows, seed=301) < valid_fraction, "valid", "test")
    return np.full(len(rows), part)


class _Writer:
    """Routes rows to splits, drops/keeps missing scenarios, accumulates dense moments on train."""

    def __init__(self, writer, num_values: int, policy: str):
        self.sw = SplitWriter(writer)
        self.num_values, self.policy = num_values, policy
        self.moments = {f: Moments() for f in DENSE_FIELDS}
        self.dropped_missing_scenario = 0

    def add(self, splits: np.ndarray, cols: Dict[str, np.ndarray]) -> None:
        missing = cols["scenario"] == self.num_values
        if self.policy == "drop" and missing.any():
            self.dropped_missing_scenario += int(missing.sum())
            keep = ~missing
            splits, cols = splits[keep], {k: v[keep] for k, v in cols.items()}
        train = splits == "train"
        for f in DENSE_FIELDS:
            self.moments[f].add(cols[f"d{f}"][train])
        self.sw.add_split(splits, cols)


def _finish(schema: Schema, w: _Writer) -> None:
    w.sw.flush()
    for f in DENSE_FIELDS:
        feat = schema.feature(f"d{f}")
        feat.mean, feat.std = w.moments[f].mean, w.moments[f].std


# ---------------------------------------------------------------------------------------------- convert
@dataclasses.dataclass
class Options(ConvertOptions):
    """The options of ``convert`` (the flags of ``add_arguments``, same names and defaults)."""

    layout: str = "auto"
    missing_scenario: str = "unknown"
    valid_fraction: float = 0.5
    min_count: int = 10

    def check(self) -> None:
        if self.missing_scenario not in ("unknown", "drop"):
            raise ValueError(f"--missing-scenario must be unknown or drop, got {self.missing_scenario!r}")
        if not 0 <= self.valid_fraction < 1:
            raise ValueError(f"--valid-fraction must be in [0, 1), got {self.valid_fraction}")


def convert(src: str, out: str, options: Optional[Options] = None, **values) -> dict:
    """Convert Ali-CCP files in ``src`` (preprocessed or raw layout) into a dataset at ``out``. ``options`` is an
    ``Options``, or its fields are given as keywords (``convert(src, out, min_count=1)``)."""
    o = Options.of(options, **values)
    o.refuse_existing(out)
    raw = _raw_files(src) if o.layout in ("auto", "raw") and os.path.isdir(src) else None
    if o.layout == "raw" and raw is None:
        raise DataError(f"{src}: no raw Ali-CCP files (expected sample_skeleton_train.csv, common_features_train.csv, "
                        "sample_skeleton_test.csv, common_features_test.csv)")
    t0 = time.time()
    if raw is not None:
        stats = _convert_raw(raw, out, o)
    else:
        stats = _convert_preprocessed(_preprocessed_files(src), out, o)
    conv = stats["conversion"]
    conv.update(source=os.path.abspath(src), seconds=round(time.time() - t0, 2), peak_rss_mb=round(peak_rss_mb(), 1))
    conv["rows_per_sec"] = round(conv["counts"]["rows_read"] / max(conv["seconds"], 1e-9), 1)
    return stats


def _preprocessed_scenarios(files: Dict[str, str], chunk_rows: int) -> tuple:
    """Pass 1 (one column): the sorted field-301 values and the number of rows without one."""
    sv = Vocab(SCENARIO_FIELD)
    missing_rows = 0
    for path in files.values():
        stream = CsvStream(path, [SCENARIO_FIELD], chunk_rows, layout=LAYOUT, quiet=True)
        for df in stream:
            v = ints(df[SCENARIO_FIELD], path, SCENARIO_FIELD, start=stream.start)
            v = np.where(v == 0, MISSING, v)  # 0 = unknown id in this layout
            missing_rows += int((v == MISSING).sum())
            sv.add(v)
    return sv.freeze().keys, missing_rows


def _preprocessed_columns(df, path: str, s0: int, values: np.ndarray, largest: Dict[str, int],
                          counts: Dict[str, int]) -> Dict[str, np.ndarray]:
    """One chunk of a preprocessed file as columns; ids checked, the largest id per field tracked."""
    click, purchase = _labels(df, path, s0)
    cols = {"click": click.astype(np.float32), "purchase": purchase.astype(np.float32)}
    for f in SPARSE:
        v = ints(df[f], path, f, allow_missing=False, start=s0)
        if v.min(initial=0) < 0:
            i = int(np.flatnonzero(v < 0)[0])
            raise DataError(f"{os.path.basename(path)}: column '{f}' row {s0 + i:,} has id {v[i]} "
                            "(expected ids >= 0)")
        largest[f] = max(largest[f], int(v.max(initial=0)))
        if f == SCENARIO_FIELD:
            cols["scenario"] = _scenario_index(np.where(v == 0, MISSING, v), values)
        else:
            cols[f"f{f}"] = v
    for f, d in zip(DENSE_FIELDS, DENSE):
        x = floats(df[d], path, d, start=s0)
        counts["dense_missing_values"] += int(np.isnan(x).sum())
        cols[f"d{f}"] = np.nan_to_num(x, nan=0.0).astype(np.float32)
    return cols


def _convert_preprocessed(files: Dict[str, str], out: str, o: Options) -> dict:
    for path in files.values():
        require_columns(path, csv_header(path), LAYOUT)
    values, missing_rows = _preprocessed_scenarios(files, o.chunk_rows)
    names = _scenario_names(values, missing_rows, o.missing_scenario)
    # the vocabulary sizes (largest id + 1) are known after the pass; the schema is saved at the end
    schema = _schema(names, {f: 2 for f in SPARSE}, o.dim)
    largest = {f: 0 for f in SPARSE}
    conv = {"layout": "preprocessed", "files": {k: os.path.basename(v) for k, v in files.items()},
            "ids": "as in the files (already 1..V-1, 0 = unknown); vocab_size = largest id + 1",
            "missing_scenario": o.missing_scenario}
    counts = {"rows_read": 0, "missing_scenario_rows": missing_rows, "dense_missing_values": 0}
    with DatasetWriter(out, schema, **o.writer_kwargs(), extra_stats={"conversion": conv}) as writer:
        w = _Writer(writer, len(values), o.missing_scenario)
        for part in ("train", "valid", "test"):
            if part not in files:
                continue
            path = files[part]
            stream = CsvStream(path, LAYOUT, o.chunk_rows, quiet=o.quiet)
            for df in stream:
                cols = _preprocessed_columns(df, path, stream.start, values, largest, counts)
                rows = stream.start + np.arange(len(df))
                w.add(_split_names(part, rows, "valid" in files, o.valid_fraction), cols)
            counts["rows_read"] += stream.rows_read
        _finish(schema, w)
        for f in SPARSE:
            if f != SCENARIO_FIELD:
                schema.feature(f"f{f}").vocab_size = largest[f] + 1 if largest[f] > 0 else 2
        schema.validate()
        counts["dropped_missing_scenario"] = w.dropped_missing_scenario
        conv.update(counts=counts, rows_written=w.sw.counts,
                    vocab_sizes={f.name: f.vocab_size for f in schema.features if f.vocab_size})
    return writer.stats.result() | {"conversion": conv}


# ---------------------------------------------------------------------------------------------- raw layout
_WANTED = set(SPARSE)


def _parse_features(col: pd.Series, path: str, start: int):
    """Feature lists -> {field: (row positions, feature ids, values)} for the fields we keep; of a field
    with several entries in one row the last entry wins."""
    s = col.fillna("").astype(str).str.split("\x01").explode()
    s = s[s != ""]
    if not len(s):
        return {}
    parts = s.str.split(r"[\x02\x03]", regex=True, expand=True)
    if parts.shape[1] != 3 or parts.isna().any().any():
        bad = parts.isna().any(axis=1) if parts.shape[1] == 3 else pd.Series(True, index=parts.index)
        row = int(bad.idxmax()) if bad.any() else 0
        raise DataError(f"{os.path.basename(path)}: row {start + row:,}: malformed feature list (expected "
                        "'field\\x02feature_id\\x03value' entries joined by '\\x01')")
    parts.columns = ["field", "fid", "value"]
    parts["row"] = parts.index.to_numpy()
    parts = parts[parts["field"].isin(_WANTED)]
    parts = parts.drop_duplicates(subset=["row", "field"], keep="last")
    out = {}
    for field, g in parts.groupby("field", sort=False):
        out[field] = (g["row"].to_numpy(np.int64), ints(g["fid"], path, f"feature id of field {field}", False, start),
                      floats(g["value"], path, f"value of field {field}", start))
    return out


class _CommonTable:
    """common_features_*.csv as a table: sorted index strings -> last id / value of every kept field."""

    def __init__(self, path: str, chunk_rows: int, quiet: bool):
        keys, ids, vals = [], {f: [] for f in SPARSE}, {f: [] for f in DENSE_FIELDS}
        stream = CsvStream(path, COMMON, max(1_000, chunk_rows // 100), names=COMMON,
                           dtype={"common_feature_index": str, "feature_num": str, "feature_list": str}, quiet=quiet)
        for df in stream:
            n = len(df)
            keys.append(df["common_feature_index"].astype(str).to_numpy().astype("S"))  # bytes: 1 B/char
            feats = _parse_features(df["feature_list"].reset_index(drop=True), path, stream.start)
            for f in SPARSE:
                col = np.full(n, MISSING, np.int64)
                if f in feats:
                    col[feats[f][0]] = feats[f][1]
                ids[f].append(col)
            for f in DENSE_FIELDS:
                col = np.full(n, np.nan)
                if f in feats:
                    col[feats[f][0]] = feats[f][2]
                vals[f].append(col)
        keys = np.concatenate(keys) if keys else np.zeros(0, "S1")
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.ids = {f: np.concatenate(v)[order] if v else np.zeros(0, np.int64) for f, v in ids.items()}
        self.vals = {f: np.concatenate(v)[order] if v else np.zeros(0) for f, v in vals.items()}
        self.rows = len(self.keys)

    def find(self, index: np.ndarray):
        index = np.asarray(index).astype("S")
        if not self.rows:
            return np.zeros(len(index), np.int64), np.zeros(len(index), bool)
        pos = np.minimum(np.searchsorted(self.keys, index), self.rows - 1)
        return pos, self.keys[pos] == index


def _skeleton_chunks(path: str, common: _CommonTable, chunk_rows: int, quiet: bool, counts: dict, label: str):
    """Joined rows of a skeleton file: (start row, click, purchase, {field: raw id}, {field: value})."""
    stream = CsvStream(path, SKELETON, chunk_rows, names=SKELETON, quiet=quiet,
                       label=f"{os.path.basename(path)} ({label})",
                       dtype={"common_feature_index": str, "feature_list": str, "sample_id": str, "feature_num": str})
    for df in stream:
        df = df.reset_index(drop=True)
        s0, n = stream.start, len(df)
        click, purchase = _labels(df, path, s0)
        feats = _parse_features(df["feature_list"], path, s0)
        pos, found = common.find(df["common_feature_index"].astype(str).to_numpy())
        counts["rows_without_common_features"] = counts.get("rows_without_common_features", 0) + int((~found).sum())
        ids, vals = {}, {}
        for f in SPARSE:
            col = np.where(found, common.ids[f][pos], MISSING) if common.rows else np.full(n, MISSING, np.int64)
            if f in feats:
                col[feats[f][0]] = feats[f][1]
            ids[f] = col
        for f in DENSE_FIELDS:
            col = np.where(found, common.vals[f][pos], np.nan) if common.rows else np.full(n, np.nan)
            if f in feats:
                col[feats[f][0]] = feats[f][2]
            vals[f] = np.nan_to_num(col, nan=0.0)
        bad = (click == 0) & (purchase == 1)
        counts["dropped_purchase_without_click"] = counts.get("dropped_purchase_without_click", 0) + int(bad.sum())
        keep = ~bad
        rows = s0 + np.flatnonzero(keep)
        yield rows, click[keep], purchase[keep], {f: v[keep] for f, v in ids.items()}, {f: v[keep] for f, v in vals.items()}
    counts["rows_read"] = counts.get("rows_read", 0) + stream.rows_read


def _convert_raw(files: Dict[str, str], out: str, o: Options) -> dict:
    for key in ("skeleton_train", "skeleton_test"):
        _check_skeleton(files[key])
    counts: Dict[str, int] = {}
    common = _CommonTable(files["common_train"], o.chunk_rows, o.quiet)
    # pass 1: vocabularies from the train skeleton (joined with its common features)
    vocabs = {f: Vocab(f) for f in SPARSE}
    for _, _, _, ids, _ in _skeleton_chunks(files["skeleton_train"], common, o.chunk_rows, o.quiet, {},
                                              "pass 1: vocabularies"):
        for f in SPARSE:
            vocabs[f].add(ids[f])
    for f in SPARSE:
        vocabs[f].freeze(o.min_count)
    values = vocabs[SCENARIO_FIELD].keys
    # rows without a (frequent) 301 value are only all counted after writing the test file: in unknown
    # mode 'unknown' is declared while writing and removed before the schema is saved if no row needed it
    schema_names = [f"{SCENARIO_FIELD}_{int(v)}" for v in values]
    if not schema_names:
        raise DataError(f"{os.path.basename(files['skeleton_train'])}: no field-{SCENARIO_FIELD} value seen "
                        f"{o.min_count}+ times (the scenario field)")
    if o.missing_scenario == "unknown":
        schema_names.append("unknown")
    schema = _schema(schema_names, {f: vocabs[f].size for f in SPARSE}, o.dim)
    conv = {"layout": "raw (sample_skeleton + common_features)", "files": {k: os.path.basename(v) for k, v in files.items()},
            "ids": f"feature ids seen >= {o.min_count} times in train, remapped to 1..V-1 in sorted order (0 = rare/unknown)",
            "min_count": o.min_count, "missing_scenario": o.missing_scenario}
    with DatasetWriter(out, schema, **o.writer_kwargs(), extra_stats={"conversion": conv}) as writer:
        w = _Writer(writer, len(values), o.missing_scenario)
        missing_rows = 0
        for part in ("train", "test"):
            if part == "test":
                common = _CommonTable(files["common_test"], o.chunk_rows, o.quiet)
            for rows, click, purchase, ids, vals in _skeleton_chunks(files[f"skeleton_{part}"], common,
                                                                     o.chunk_rows, o.quiet, counts, "write"):
                cols = {"click": click.astype(np.float32), "purchase": purchase.astype(np.float32),
                        "scenario": _scenario_index(ids[SCENARIO_FIELD], values)}
                missing_rows += int((cols["scenario"] == len(values)).sum())
                for f in SPARSE:
                    if f != SCENARIO_FIELD:
                        cols[f"f{f}"] = vocabs[f].lookup(ids[f])
                for f in DENSE_FIELDS:
                    cols[f"d{f}"] = vals[f].astype(np.float32)
                w.add(_split_names(part, rows, False, o.valid_fraction), cols)
        _finish(schema, w)
        if o.missing_scenario == "unknown" and not missing_rows:
            schema.scenario.values.pop()
        counts.update(missing_scenario_rows=missing_rows, dropped_missing_scenario=w.dropped_missing_scenario,
                      common_feature_rows_test=common.rows)
        conv.update(counts=counts, rows_written=w.sw.counts,
                    vocab_sizes={f.name: f.vocab_size for f in schema.features if f.vocab_size},
                    rare_ids_dropped={f"f{f}": vocabs[f].dropped for f in SPARSE})
    return writer.stats.result() | {"conversion": conv}


def _check_skeleton(path: str) -> None:
    """The raw files have no header: check the first line has the 6 skeleton fields."""
    import gzip

    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", errors="replace") as fh:
        first = fh.readline().rstrip("\n")
    if not first:
        raise DataError(f"{os.path.basename(path)}: empty file (expected rows {','.join(SKELETON)})")
    n = len(first.split(","))
    if n != len(SKELETON):
        raise DataError(f"{os.path.basename(path)}: line 1 has {n} comma-separated fields "
                        f"(expected {len(SKELETON)}: {','.join(SKELETON)})")
