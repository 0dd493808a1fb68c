"""KuaiRand (Kuaishou short videos): scenario = ``tab`` (the app page where the video was shown).

Two input layouts (``--layout auto`` detects them; files plain or ``.gz``):

* **joined** (public multi-scenario benchmarks, e.g. ``../shared/datasets/kuairand-sample``): one or
  more CSVs (read in name order) with ``user_id, video_id, is_click, tab`` and any of the user / video
  feature columns listed below, already joined per impression. No time column: the split is a fixed
  pseudo-random draw per row number (``--valid-fraction`` / ``--test-fraction``, default 0.1 / 0.1,
  the 80/10/10 split of the public benchmark scripts).
* **raw** (the KuaiRand release): ``log_standard_*.csv`` (impressions with ``date``, ``hourmin``,
  ``time_ms``, ``tab``, ``is_click`` and outcome columns), ``user_features*.csv`` and
  ``video_features_basic*.csv``, joined on ``user_id`` / ``video_id`` chunk by chunk (memory: the two
  feature tables). Split by ``date``: the last ``--test-days`` date(s) test, the ``--valid-days``
  before them valid, the rest train. ``hour`` (from ``hourmin``) is a context feature, ``date`` an extra.

Features: user ``user_id``, ``user_active_degree``, ``is_lowactive_period``, ``is_live_streamer``,
``is_video_author``, the four ``*_range`` buckets, ``onehot_feat0..17`` (categorical) and
``follow_user_num``, ``fans_user_num``, ``friend_user_num``, ``register_days`` (numeric, log1p) | item
``video_id``, ``video_type``, ``visible_status``, ``server_width``, ``server_height`` (+ raw layout:
``author_id``, ``upload_type``, ``music_id``, ``music_type``) (categorical) and ``duration_ms`` /
``video_duration`` (numeric, log1p) | context ``hour`` (raw layout). Numeric features are standardised
with the train split's mean/std. Columns that are outcomes of the impression (``play_time_ms``,
``profile_stay_time``, ``comment_stay_time``, ``is_like``, ``is_follow``, ...) are never features; other
unknown columns are ignored and listed in ``stats.json["conversion"]``. Label ``click`` (= is_click).

Ids: every categorical column is remapped to 1..V-1 in sorted order of its raw values (numbers
numerically, the string columns of the raw release lexicographically); empty cells -> 0. Two passes
(vocabularies, then writing); memory = vocabularies + feature tables + one chunk.

Scenarios: ``tab_<value>`` for the tabs present, sorted; ``--tabs 0,1,2,4,6`` keeps only those tabs
(the five-scenario setting of public benchmarks), the other rows are dropped and counted. Rows with an
empty tab are counted and go to ``unknown`` (or ``--missing-scenario drop``).
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
import time
from typing import Iterator, List, Optional

import numpy as np
import pandas as pd

from tfmsr.data.convert._common import (MISSING, Conversion, ConvertOptions, CsvStream, DataError, Moments,
                                        SplitWriter, Vocab, add_common_arguments, csv_header, floats, hash_split,
                                        ints, peak_rss_mb, require_columns, print_summary)
from tfmsr.data.tfrecord import DatasetWriter
from tfmsr.features import Feature, Scenario, Schema

NAME = "kuairand"

REQUIRED = ["user_id", "video_id", "is_click", "tab"]
USER_CATEGORICAL = ["user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
                    "follow_user_num_range", "fans_user_num_range", "friend_user_num_range",
                    "register_days_range"] + [f"onehot_feat{i}" for i in range(18)]
USER_NUMERIC = ["follow_user_num", "fans_user_num", "friend_user_num", "register_days"]
ITEM_CATEGORICAL = ["video_type", "visible_status", "server_width", "server_height", "author_id", "upload_type",
                    "music_id", "music_type"]
ITEM_NUMERIC = ["duration_ms", "video_duration"]
STRING_COLUMNS = {"user_active_degree", "follow_user_num_range", "fans_user_num_range", "friend_user_num_range",
                  "register_days_range", "video_type", "upload_type"}
OUTCOMES = {"play_time_ms", "profile_stay_time", "comment_stay_time", "is_like", "is_follow", "is_comment",
            "is_forward", "is_hate", "long_view", "is_profile_enter"}
RAW_LOG = ["user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "tab"]
FEATURE_COLUMNS = set(USER_CATEGORICAL + USER_NUMERIC + ITEM_CATEGORICAL + ITEM_NUMERIC)
KNOWN = set(REQUIRED) | set(USER_CATEGORICAL) | set(USER_NUMERIC) | set(ITEM_CATEGORICAL) | set(ITEM_NUMERIC) \
    | OUTCOMES | {"date", "hourmin", "time_ms", "is_rand", "upload_dt", "tag"}


def add_arguments(p) -> None:
    p.add_argument("--layout", choices=["auto", "joined", "raw"], default="auto")
    p.add_argument("--tabs", help="comma-separated tab values to keep, e.g. 0,1,2,4,6 (default: all)")
    p.add_argument("--missing-scenario", choices=["unknown", "drop"], default="unknown")
    p.add_argument("--valid-fraction", type=float, default=0.1, help="joined layout: share of rows to valid")
    p.add_argument("--test-fraction", type=float, default=0.1, help="joined layout: share of rows to test")
    p.add_argument("--valid-days", type=int, default=1, help="raw layout: dates before the test dates -> valid")
    p.add_argument("--test-days", type=int, default=1, help="raw layout: last dates -> test")
    add_common_arguments(p)


@dataclasses.dataclass
class Options(ConvertOptions):
    """The options of ``convert`` (the flags of ``add_arguments``, same names and defaults; ``tabs`` parsed)."""

    layout: str = "auto"
    tabs: Optional[List[int]] = None
    missing_scenario: str = "unknown"
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    valid_days: int = 1
    test_days: int = 1

    def check(self) -> None:
        if self.missing_scenario not in ("unknown", "drop"):
            raise ValueError(f"--missing-scenario must be unknown or drop, got {self.missing_scenario!r}")
        if not (0 <= self.valid_fraction and 0 <= self.test_fraction and self.valid_fraction + self.test_fraction < 1):
            raise ValueError("--valid-fraction and --test-fraction must be >= 0 with a sum < 1")
        if self.test_days < 1 or self.valid_days < 0:
            raise ValueError("--test-days must be >= 1 and --valid-days >= 0")


def run(args) -> dict:
    tabs = [int(t) for t in args.tabs.split(",")] if args.tabs else None
    return print_summary(args.out, convert(args.src, args.out, Options.from_args(args, tabs=tabs)))


# ---------------------------------------------------------------------------------------------- sources
def _csvs(src: str, pattern: str) -> List[str]:
    return sorted(p for p in glob.glob(os.path.join(src, pattern)) if re.search(r"\.csv(\.gz)?$", p))


class _Source:
    """Joined impression chunks (DataFrames) from either layout; ``columns`` = columns the chunks carry."""

    def __init__(self, src: str, layout: str, chunk_rows: int, quiet: bool):
        if not os.path.isdir(src):
            raise DataError(f"{src}: not a directory (expected the folder holding the KuaiRand files)")
        self.chunk_rows, self.quiet = chunk_rows, quiet
        logs = _csvs(src, "log_standard*")
        if layout == "raw" or (layout == "auto" and logs):
            self._init_raw(src, logs)
        else:
            self._init_joined(src)

    def _init_joined(self, src):
        self.layout = "joined"
        self.files = _csvs(src, "*")
        if not self.files:
            raise DataError(f"{src}: no CSV file (expected a joined KuaiRand CSV with {','.join(REQUIRED)}, "
                            "or the raw log_standard_*.csv + user_features*.csv + video_features_basic*.csv)")
        headers = [csv_header(p) for p in self.files]
        for path, h in zip(self.files, headers):
            require_columns(path, h, REQUIRED)
            if h != headers[0]:
                raise DataError(f"{os.path.basename(path)}: columns differ from {os.path.basename(self.files[0])} "
                                "(every joined CSV in --src must have the same header)")
        self.columns = headers[0]
        self.user_table = self.video_table = None

    def _init_raw(self, src, logs):
        self.layout = "raw"
        if not logs:
            raise DataError(f"{src}: no log_standard_*.csv (the raw KuaiRand impression logs)")
        self.files = logs
        for path in logs:
            require_columns(path, csv_header(path), RAW_LOG)
        cols = csv_header(logs[0])
        self.user_table = self._table(src, "user_features*", "user_id")
        self.video_table = self._table(src, "video_features_basic*", "video_id")
        self.columns = list(dict.fromkeys(cols + ["hour"] + list(self.user_table.columns)
                                          + list(self.video_table.columns)))
        self.log_columns = cols

    def _table(self, src, pattern, key) -> pd.DataFrame:
        files = _csvs(src, pattern)
        if len(files) != 1:
            raise DataError(f"{src}: expected exactly one {pattern.rstrip('*')}*.csv for the raw KuaiRand layout, "
                            f"found {len(files)}")
        path = files[0]
        header = csv_header(path)
        require_columns(path, header, [key])
        keep = [key] + [c for c in header if c in FEATURE_COLUMNS and c != key]
        parts = list(CsvStream(path, keep, self.chunk_rows, quiet=self.quiet,
                               dtype={c: str for c in keep if c in STRING_COLUMNS}))
        table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=keep)
        table[key] = ints(table[key], path, key, allow_missing=False)
        dup = table[key].duplicated()
        if dup.any():
            raise DataError(f"{os.path.basename(path)}: duplicate {key} {table[key][dup].iloc[0]}")
        table.attrs["file"] = os.path.basename(path)
        return table.set_index(key)

    def chunks(self, quiet: bool, label: str) -> Iterator[tuple]:
        """(file path, first row number over all files, DataFrame) per chunk."""
        offset = 0
        for path in self.files:
            cols = self.log_columns if self.layout == "raw" else self.columns
            stream = CsvStream(path, cols, self.chunk_rows, quiet=quiet, label=f"{os.path.basename(path)} ({label})",
                               dtype={c: str for c in cols if c in STRING_COLUMNS})
            for df in stream:
                df = df.reset_index(drop=True)
                if self.layout == "raw":
                    df["user_id"] = ints(df["user_id"], path, "user_id", False, stream.start)
                    df["video_id"] = ints(df["video_id"], path, "video_id", False, stream.start)
                    hm = ints(df["hourmin"], path, "hourmin", True, stream.start)
                    df["hour"] = np.where(hm == MISSING, MISSING, hm // 100)
                    df["_no_user"] = ~df["user_id"].isin(self.user_table.index)
                    df["_no_video"] = ~df["video_id"].isin(self.video_table.index)
                    df = df.join(self.user_table, on="user_id").join(self.video_table, on="video_id")
                yield path, offset + stream.start, df
            offset += stream.rows_read


# ---------------------------------------------------------------------------------------------- convert
def _categorical(df, col, path, start) -> np.ndarray:
    if col in STRING_COLUMNS:
        s = df[col]
        return np.where(s.isna(), None, s.astype(str).str.strip()).astype(object)
    return ints(df[col], path, col, True, start)


def convert(src: str, out: str, options: Optional[Options] = None, **values) -> dict:
    """Convert KuaiRand (joined or raw layout) in ``src`` into a dataset at ``out``; returns its stats.
    ``options`` is an ``Options``, or its fields are given as keywords (``convert(src, out, tabs=[0, 1])``)."""
    return _Conversion(src, out, options, **values).run()


class _Conversion(Conversion):
    """One conversion: the columns present, pass 1 (vocabularies, tabs, dates) and pass 2 (write)."""

    options_class = Options

    def __init__(self, src: str, out: str, options: Optional[Options] = None, **values):
        super().__init__(src, out, options, **values)
        o = self.o
        source = self.source = _Source(src, o.layout, o.chunk_rows, o.quiet)
        present = set(source.columns)
        self.cats_user = ["user_id"] + [c for c in USER_CATEGORICAL if c in present]
        self.cats_item = ["video_id"] + [c for c in ITEM_CATEGORICAL if c in present]
        self.cats_ctx = ["hour"] if source.layout == "raw" else []
        self.nums_user = [c for c in USER_NUMERIC if c in present]
        self.nums_item = [c for c in ITEM_NUMERIC if c in present]
        self.cats = self.cats_user + self.cats_item + self.cats_ctx
        self.ignored = sorted(c for c in present if c not in KNOWN and c != "hour")
        self.keep_tabs = None if o.tabs is None else np.array(sorted(set(o.tabs)), np.int64)
        self.raw = source.layout == "raw"

    def run(self) -> dict:
        self._vocabularies()
        return self._write(self._schema())

    # pass 1: vocabularies, tabs, dates ---------------------------------------------------------------------
    def _vocabularies(self) -> None:
        o = self.o
        vocabs = self.vocabs = {c: Vocab(c) for c in self.cats}
        tab_vocab, date_vocab = Vocab("tab"), Vocab("date")
        for path, start, df in self.source.chunks(o.quiet, "pass 1: vocabularies"):
            tab = ints(df["tab"], path, "tab", True, start)
            keep = _tab_keep(tab, self.keep_tabs, o.missing_scenario)
            tab_vocab.add(tab[keep])
            for c in self.cats:
                vocabs[c].add(_categorical(df, c, path, start)[keep])
            if self.raw:
                date_vocab.add(ints(df["date"], path, "date", False, start)[keep])
        for v in (*vocabs.values(), tab_vocab, date_vocab):
            v.freeze()
        self.tab_values = tab_vocab.keys
        self.names = [f"tab_{int(v)}" for v in self.tab_values]
        if o.missing_scenario == "unknown":
            self.names.append("unknown")  # removed before the schema is saved if no row needed it
        if not len(self.tab_values):
            tabs = "" if o.tabs is None else " in --tabs " + ",".join(map(str, o.tabs))
            raise DataError(f"{self.src}: no row with a tab{tabs}")
        self.split_dates = _date_split(date_vocab.keys, o.valid_days, o.test_days, self.src) if self.raw else None

    def _schema(self) -> Schema:
        dim, vocabs = self.o.dim, self.vocabs
        feats = [Feature(c, "categorical", g, vocab_size=vocabs[c].size, dim=dim)
                 for g, cs in (("user", self.cats_user), ("item", self.cats_item), ("context", self.cats_ctx))
                 for c in cs]
        feats += [Feature(c, "numeric", g)
                  for g, cs in (("user", self.nums_user), ("item", self.nums_item)) for c in cs]
        feats.sort(key=lambda f: ("user", "item", "context").index(f.group))
        extras = {"date": "int64"} if self.raw else {}
        schema = Schema(scenario=Scenario("scenario", self.names), labels=["click"], features=feats, extras=extras,
                        user_key="user_id", source="kuairand")
        schema.validate()
        return schema

    def _conversion_record(self) -> dict:
        o = self.o
        return {"layout": self.source.layout, "files": [os.path.basename(f) for f in self.source.files],
                "ids": "remapped to 1..V-1 in sorted order of raw values (0 = missing)",
                "tabs_kept": "all" if o.tabs is None else [int(t) for t in self.keep_tabs],
                "missing_scenario": o.missing_scenario, "ignored_columns": self.ignored,
                "numeric": "log1p(max(x, 0)), standardised with the train split's mean/std",
                "split": "by date" if self.raw else
                f"row-number hash: valid {o.valid_fraction}, test {o.test_fraction}"}

    # pass 2: write ------------------------------------------------------------------------------------------
    def _write(self, schema: Schema) -> dict:
        o = self.o
        conv = self._conversion_record()
        self.counts = {"rows_read": 0, "dropped_other_tabs": 0, "missing_tab_rows": 0}
        if self.raw:
            self.counts.update(rows_without_user_features=0, rows_without_video_features=0)
        self.moments = {c: Moments() for c in self.nums_user + self.nums_item}
        self.numeric_missing = 0
        with DatasetWriter(self.out, schema, **o.writer_kwargs(), extra_stats={"conversion": conv}) as writer:
            sw = SplitWriter(writer)
            for path, start, df in self.source.chunks(o.quiet, "pass 2: write"):
                splits, cols = self._rows(path, start, df)
                for c in self.moments:
                    self.moments[c].add(cols[c][splits == "train"])
                sw.add_split(splits, cols)
            sw.flush()
            self._finish(schema, conv, sw)
        return writer.stats.result() | {"conversion": conv}

    def _rows(self, path: str, start: int, df) -> tuple:
        """(split of each kept row, columns of the kept rows) of one chunk; the drops and gaps counted."""
        counts, o = self.counts, self.o
        counts["rows_read"] += len(df)
        tab = ints(df["tab"], path, "tab", True, start)
        missing = tab == MISSING
        counts["missing_tab_rows"] += int(missing.sum())
        if self.keep_tabs is not None:
            counts["dropped_other_tabs"] += int((~missing & ~np.isin(tab, self.keep_tabs)).sum())
        keep = _tab_keep(tab, self.keep_tabs, o.missing_scenario)
        click = ints(df["is_click"], path, "is_click", False, start)
        bad = (click != 0) & (click != 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{os.path.basename(path)}: column 'is_click' row {start + i:,} has value "
                            f"{click[i]} (expected 0 or 1)")
        idx = np.searchsorted(self.tab_values, tab)
        known = ~missing & (idx < len(self.tab_values))
        known[known] = self.tab_values[idx[known]] == tab[known]
        cols = {"scenario": np.where(known, idx, len(self.tab_values)), "click": click.astype(np.float32)}
        for c in self.cats:
            cols[c] = self.vocabs[c].lookup(_categorical(df, c, path, start))
        for c in self.nums_user + self.nums_item:
            x = floats(df[c], path, c, start)
            self.numeric_missing += int(np.isnan(x).sum())
            cols[c] = np.log1p(np.maximum(np.nan_to_num(x, nan=0.0), 0.0)).astype(np.float32)
        if self.raw:
            date = ints(df["date"], path, "date", False, start)
            cols["date"] = date
            first_valid, first_test = self.split_dates
            splits = np.where(date >= first_test, "test", np.where(date >= first_valid, "valid", "train"))
            counts["rows_without_user_features"] += int(df["_no_user"].to_numpy()[keep].sum())
            counts["rows_without_video_features"] += int(df["_no_video"].to_numpy()[keep].sum())
        else:
            splits = hash_split(start + np.arange(len(df)), o.valid_fraction, o.test_fraction)
        return splits[keep], {k: v[keep] for k, v in cols.items()}

    def _finish(self, schema: Schema, conv: dict, sw: SplitWriter) -> None:
        """Numeric mean/std, the 'unknown' scenario only if a row needed it, and the counts."""
        o, counts = self.o, self.counts
        for c, m in self.moments.items():
            f = schema.feature(c)
            f.mean, f.std = m.mean, m.std
        unknown_rows = counts["missing_tab_rows"] if o.missing_scenario == "unknown" else 0
        if o.missing_scenario == "unknown" and not unknown_rows:
            schema.scenario.values.pop()
        sec = time.time() - self.t0
        counts.update(rows_written=sum(sw.counts.values()), numeric_missing_values=self.numeric_missing,
                      dropped_missing_tab=counts["missing_tab_rows"] if o.missing_scenario == "drop" else 0)
        conv.update(counts=counts, vocab_sizes={f.name: f.vocab_size for f in schema.features if f.vocab_size},
                    seconds=round(sec, 2), rows_per_sec=round(counts["rows_read"] / max(sec, 1e-9), 1),
                    peak_rss_mb=round(peak_rss_mb(), 1), source=os.path.abspath(self.src))


def _tab_keep(tab: np.ndarray, keep_tabs: Optional[np.ndarray], missing_scenario: str) -> np.ndarray:
    missing = tab == MISSING
    keep = np.ones(len(tab), bool) if keep_tabs is None else (missing | np.isin(tab, keep_tabs))
    if missing_scenario == "drop":
        keep &= ~missing
    return keep


def _date_split(dates: np.ndarray, valid_days: int, test_days: int, src: str):
    """(first valid date, first test date) from the sorted distinct dates."""
    if len(dates) <= valid_days + test_days:
        raise DataError(f"{src}: the logs span {len(dates)} date(s); the date split needs more than "
                        f"--test-days {test_days} + --valid-days {valid_days}")
    return int(dates[-test_days - valid_days]), int(dates[-test_days])
