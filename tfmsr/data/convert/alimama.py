"""Alimama Taobao display ads (Tianchi "Ad Display/Click Data on Taobao.com"): join + behaviour sequences.

Input (``--src``, each file plain or ``.gz``)::

    raw_sample.csv    user,time_stamp,adgroup_id,pid,nonclk,clk          one impression per row (26M)
    ad_feature.csv    adgroup_id,cate_id,campaign_id,customer,brand,price  brand may be NULL
    user_profile.csv  userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,
                      shopping_level,occupation,new_user_class_level        (trailing space in the header,
                                                                            empty cells for missing values)
    behavior_log.csv  user,time_stamp,btag,cate,brand                      btag in pv/cart/fav/buy (700M)

Scenario (``--scenario``): ``city_level`` = ``new_user_class_level`` (SAML, SASS: 5 scenarios on the full
data), ``pvalue_level`` (FIMN: 3), ``shopping_level`` (MuSeNet: 3) or ``pid`` (the ad position).
Scenario names are ``<scenario>_<value>`` for the observed values in sorted order. Impressions whose
scenario value is missing (user without a profile, or an empty cell) are counted and, by default, go to
an extra last scenario ``unknown``; ``--missing-scenario drop`` drops them (SAML filters users without a
profile). The counts are in ``stats.json["conversion"]`` either way.

Features (schema groups): user ``user_id`` + the profile columns (``final_gender_code`` -> ``gender``,
``new_user_class_level`` -> ``city_level``; the column used as scenario is left out) | item ``item_id``
(adgroup_id), ``cate_id``, ``campaign_id``, ``customer_id``, ``brand_id``, ``price`` (numeric,
log1p(price), standardised with the train split's mean/std) | context ``pid`` (unless it is the scenario),
``hour`` (hour of day in UTC+8, 1..24) | behavior ``hist_cate_id`` (shares ``cate_id``), ``hist_brand_id``
(shares ``brand_id``), ``hist_btag`` (1 pv, 2 cart, 3 fav, 4 buy): the user's last ``--seq-len`` (15 in
SAML, 30 by default) behaviours strictly before the impression's time_stamp, most recent first.
Label ``click`` (= clk); extra ``time_stamp``.

Ids: every categorical column is remapped to 1..V-1 in sorted order of its raw values (0 = padding /
missing / unknown): users and ads from the impressions, categories and brands from ad_feature.csv and
the behaviour log together, campaigns/customers from ad_feature.csv, profile values from user_profile.csv.

Splits (``--split``): ``days`` (SAML, FIMN, SASS; default): calendar days in UTC+8, the last
``--test-periods`` day(s) test, the ``--valid-periods`` day(s) before valid, the rest train (on the real
8 days: days 1-6 train, day 7 valid, day 8 test; ``--valid-periods 0`` trains on the first 7 days).
``sevenths`` (MuSeNet): impressions ordered by time cut into 7 parts of equal row counts (whole seconds
stay together); part 7 test, part 6 valid (``--valid-periods 0``: train), parts 1-5 train.

Algorithm (streaming; memory bounded, see below):

1. ad_feature.csv and user_profile.csv are read in chunks into key-sorted NumPy tables.
2. raw_sample.csv is streamed in chunks; each impression (time, row number, user, ad, pid code, click,
   scenario value) is appended to the binary spill file of its time bucket (``time // --bucket-seconds``,
   an hour by default): an external distribution sort. Vocabularies and scenario counts accumulate.
3. behavior_log.csv is streamed the same way; behaviours of users without impressions, and behaviours
   at or after the last impression, can precede no impression and are dropped (counted).
4. Buckets are visited in time order, one in memory at a time. ``HistoryBuffer`` (``_common``) keeps
   per-user ring buffers of the last L behaviours; each impression gets the last L behaviours strictly
   before its time_stamp from the buffers (earlier buckets) and from the bucket's own earlier behaviours;
   then the bucket's behaviours enter the buffers. Rows are written in time order.

Memory bound: ad and profile tables (~ ads x 48 B + users x 72 B) + vocabularies (distinct values)
+ ring buffers ``users x L x 9 B`` (cate, brand int32, btag int8) + the largest bucket (behaviours x 29 B
+ impressions x 45 B; sequences are gathered for 20,000 impressions at a time, O(20,000 x L) temporaries)
+ one CSV chunk (``--chunk-rows``) + one write buffer (10,000 rows). On the full dataset (1.14M users,
L = 30) the ring buffers take ~310 MB and an hour of behaviour log ~1.5M rows (~45 MB); the number of
rows never enters. Disk: spill files of 29 B per kept behaviour and 45 B per impression in a subfolder of
``--tmp-dir`` (default ``OUT.spill-<pid>``), removed at the end.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Dict, Optional

import numpy as np

from tfmsr.data.convert._common import (MISSING, Conversion, ConvertOptions, CsvStream, DataError, HistoryBuffer,
                                        Moments, Progress, SpillDir, SplitWriter, StringCodes, TimeBuckets, Vocab,
                                        add_common_arguments, find_input, floats, ints, peak_rss_mb, print_summary)
from tfmsr.data.tfrecord import DatasetWriter
from tfmsr.features import Feature, Scenario, Schema

NAME = "alimama"

RAW_SAMPLE = ["user", "time_stamp", "adgroup_id", "pid", "nonclk", "clk"]
AD_FEATURE = ["adgroup_id", "cate_id", "campaign_id", "customer", "brand", "price"]
USER_PROFILE = ["userid", "cms_segid", "cms_group_id", "final_gender_code", "age_level", "pvalue_level",
                "shopping_level", "occupation", "new_user_class_level"]
BEHAVIOR_LOG = ["user", "time_stamp", "btag", "cate", "brand"]
PROFILE_FEATURES = {"cms_segid": "cms_segid", "cms_group_id": "cms_group_id", "final_gender_code": "gender",
                    "age_level": "age_level", "pvalue_level": "pvalue_level", "shopping_level": "shopping_level",
                    "occupation": "occupation", "new_user_class_level": "city_level"}
SCENARIO_COLUMNS = {"city_level": "new_user_class_level", "pvalue_level": "pvalue_level",
                    "shopping_level": "shopping_level", "pid": "pid"}
BTAGS = {"pv": 1, "cart": 2, "fav": 3, "buy": 4}
DAY = 86_400

IMP_DTYPE = np.dtype([("t", "<i8"), ("row", "<i8"), ("user", "<i8"), ("ad", "<i8"), ("sv", "<i8"),
                      ("pid", "<i4"), ("click", "i1")])
BEH_DTYPE = np.dtype([("t", "<i8"), ("user", "<i4"), ("cate", "<i8"), ("brand", "<i8"), ("btag", "i1")])


def add_arguments(p) -> None:
    p.add_argument("--scenario", choices=sorted(SCENARIO_COLUMNS), default="city_level",
                   help="scenario column: city_level (SAML, SASS), pvalue_level (FIMN), shopping_level "
                        "(MuSeNet) or pid")
    p.add_argument("--missing-scenario", choices=["unknown", "drop"], default="unknown",
                   help="impressions without a scenario value: an extra 'unknown' scenario (default) or drop")
    p.add_argument("--seq-len", type=int, default=30, help="behaviour sequence length (SAML: 15)")
    p.add_argument("--split", choices=["days", "sevenths"], default="days",
                   help="days: last day test (SAML/FIMN/SASS); sevenths: 7 equal parts by time (MuSeNet)")
    p.add_argument("--test-periods", type=int, default=1, help="days (or sevenths) in the test split")
    p.add_argument("--valid-periods", type=int, default=1, help="days (or sevenths) before test used as valid")
    p.add_argument("--tz-offset-hours", type=float, default=8.0, help="time zone of days and hours (UTC+8)")
    p.add_argument("--bucket-seconds", type=int, default=3600, help="time bucket of the external sort")
    p.add_argument("--tmp-dir", help="folder for the spill files (a subfolder is created and removed; "
                                     "default OUT.spill-<pid>)")
    add_common_arguments(p)


@dataclasses.dataclass
class Options(ConvertOptions):
    """The options of ``convert`` (the flags of ``add_arguments``, same names and defaults)."""

    scenario: str = "city_level"
    missing_scenario: str = "unknown"
    seq_len: int = 30
    split: str = "days"
    test_periods: int = 1
    valid_periods: int = 1
    tz_offset_hours: float = 8.0
    bucket_seconds: int = 3600
    tmp_dir: Optional[str] = None

    def check(self) -> None:
        if self.scenario not in SCENARIO_COLUMNS:
            raise ValueError(f"--scenario must be one of {sorted(SCENARIO_COLUMNS)}, got {self.scenario!r}")
        if self.missing_scenario not in ("unknown", "drop"):
            raise ValueError(f"--missing-scenario must be unknown or drop, got {self.missing_scenario!r}")
        if self.seq_len < 1 or self.test_periods < 1 or self.valid_periods < 0:
            raise ValueError("--seq-len and --test-periods must be >= 1 and --valid-periods >= 0")
        if self.split not in ("days", "sevenths"):
            raise ValueError(f"--split must be days or sevenths, got {self.split!r}")
        if self.split == "sevenths" and self.test_periods + self.valid_periods >= 7:
            raise ValueError("--split sevenths: --test-periods + --valid-periods must be < 7")


def run(args) -> dict:
    return print_summary(args.out, convert(args.src, args.out, Options.from_args(args)))


class _Table:
    """A CSV keyed by an integer column, as key-sorted NumPy columns (first row wins on duplicate keys)."""

    def __init__(self, path, columns, key, float_columns=(), chunk_rows=200_000, quiet=False):
        stream = CsvStream(path, columns, chunk_rows, quiet=quiet)
        keys, cols = [], {c: [] for c in columns if c != key}
        for df in stream:
            keys.append(ints(df[key], path, key, allow_missing=False, start=stream.start))
            for c in cols:
                conv = floats if c in float_columns else ints
                cols[c].append(conv(df[c], path, c, start=stream.start))
        keys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        first = np.r_[True, keys[1:] != keys[:-1]] if len(keys) else np.zeros(0, bool)
        self.duplicates = int((~first).sum())
        self.keys = keys[first]
        self.cols = {c: (np.concatenate(v) if v else np.zeros(0))[order][first] for c, v in cols.items()}

    def find(self, raw_keys):
        """(row index, found) for each raw key."""
        idx = np.searchsorted(self.keys, raw_keys)
        idx = np.minimum(idx, max(len(self.keys) - 1, 0))
        found = (self.keys[idx] == raw_keys) if len(self.keys) else np.zeros(len(raw_keys), bool)
        return idx, found


def convert(src: str, out: str, options: Optional[Options] = None, **values) -> dict:
    """Convert the four Alimama CSVs in ``src`` into a dataset at ``out``; returns its stats. ``options`` is an
    ``Options``, or its fields are given as keywords (``convert(src, out, seq_len=15)``)."""
    return _Conversion(src, out, options, **values).run()


class _Conversion(Conversion):
    """One conversion: the steps of the module docstring's algorithm, sharing tables, vocabularies and counts."""

    options_class = Options

    def __init__(self, src: str, out: str, options: Optional[Options] = None, **values):
        super().__init__(src, out, options, **values)
        self.tz = int(round(self.o.tz_offset_hours * 3600))
        self.paths = {stem: find_input(src, [f"{stem}.csv"], f"Alimama {stem}")
                      for stem in ("raw_sample", "ad_feature", "user_profile", "behavior_log")}
        self.counts: Dict[str, int] = {}
        self.sc_col = SCENARIO_COLUMNS[self.o.scenario]
        self.missing_no_profile = self.missing_value = 0

    def run(self) -> dict:
        o = self.o
        self._read_tables()
        spill_dir = (os.path.join(o.tmp_dir, f"tfmsr-alimama-spill-{os.getpid()}") if o.tmp_dir
                     else f"{os.path.abspath(self.out)}.spill-{os.getpid()}")
        with SpillDir(spill_dir) as spill:
            imp = TimeBuckets(spill, "imp", IMP_DTYPE, o.bucket_seconds)
            beh = TimeBuckets(spill, "beh", BEH_DTYPE, o.bucket_seconds)
            self._spill_impressions(imp)
            self._spill_behaviours(beh)
            self._scenarios()
            return self._merge(imp, beh)

    # 1. item and user tables ----------------------------------------------------------------------------
    def _read_tables(self) -> None:
        o = self.o
        ads = self.ads = _Table(self.paths["ad_feature"], AD_FEATURE, "adgroup_id", ("price",), o.chunk_rows, o.quiet)
        prof = self.prof = _Table(self.paths["user_profile"], USER_PROFILE, "userid", (), o.chunk_rows, o.quiet)
        self.counts.update(ad_feature_rows=len(ads.keys), ad_feature_duplicate_keys=ads.duplicates,
                           user_profile_rows=len(prof.keys), user_profile_duplicate_keys=prof.duplicates)
        self.vocabs = {c: Vocab(c).add(prof.cols[c]).freeze() for c in PROFILE_FEATURES}
        for c in ("campaign_id", "customer"):
            self.vocabs[c] = Vocab(c).add(ads.cols[c]).freeze()
        self.cate_vocab = Vocab("cate_id").add(ads.cols["cate_id"])
        self.brand_vocab = Vocab("brand_id").add(ads.cols["brand"])
        self.user_vocab, self.item_vocab = Vocab("user"), Vocab("adgroup_id")
        self.time_vocab, self.sv_vocab = Vocab("time"), Vocab("sv")
        self.pid_codes = StringCodes("pid")

    # 2. impressions -> time buckets ---------------------------------------------------------------------
    def _spill_impressions(self, imp: TimeBuckets) -> None:
        o, path = self.o, self.paths["raw_sample"]
        stream = CsvStream(path, ["user", "time_stamp", "adgroup_id", "pid", "clk"], o.chunk_rows,
                           dtype={"pid": str}, layout=RAW_SAMPLE, quiet=o.quiet)
        vocabs = {"user": self.user_vocab, "ad": self.item_vocab, "t": self.time_vocab, "sv": self.sv_vocab}
        for df in stream:
            rec = self._impressions(df, path, stream.start)
            imp.add(rec["t"], rec)
            for field, v in vocabs.items():
                v.add(rec[field])
        self.counts["impressions_read"] = stream.rows_read
        self.counts["impressions_kept"] = imp.rows
        if not imp.rows:
            raise DataError(f"{os.path.basename(path)}: no impressions to convert ({stream.rows_read} rows read, "
                            f"{self.missing_no_profile + self.missing_value} without scenario)")
        for v in vocabs.values():
            v.freeze()

    def _impressions(self, df, path: str, s0: int) -> np.ndarray:
        """One raw_sample chunk as ``IMP_DTYPE`` records (without a scenario value: kept, or dropped by
        --missing-scenario drop; counted either way)."""
        t = ints(df["time_stamp"], path, "time_stamp", allow_missing=False, start=s0)
        user = ints(df["user"], path, "user", allow_missing=False, start=s0)
        ad = ints(df["adgroup_id"], path, "adgroup_id", allow_missing=False, start=s0)
        clk = ints(df["clk"], path, "clk", allow_missing=False, start=s0)
        bad = (clk != 0) & (clk != 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{os.path.basename(path)}: column 'clk' row {s0 + i:,} has value {clk[i]} "
                            "(expected 0 or 1)")
        pid = self.pid_codes.codes(df["pid"])
        if self.o.scenario == "pid":
            sv = pid
            self.missing_value += int((sv == MISSING).sum())
        else:
            idx, found = self.prof.find(user)
            sv = np.where(found, self.prof.cols[self.sc_col][idx], MISSING)
            self.missing_no_profile += int((~found).sum())
            self.missing_value += int((found & (sv == MISSING)).sum())
        keep = (sv != MISSING) if self.o.missing_scenario == "drop" else np.ones(len(sv), bool)
        rec = np.empty(int(keep.sum()), IMP_DTYPE)
        rec["t"], rec["row"], rec["user"], rec["ad"] = t[keep], s0 + np.flatnonzero(keep), user[keep], ad[keep]
        rec["sv"], rec["pid"], rec["click"] = sv[keep], np.where(pid[keep] == MISSING, -1, pid[keep]), clk[keep]
        return rec

    # 3. behaviours -> time buckets ----------------------------------------------------------------------
    def _spill_behaviours(self, beh: TimeBuckets) -> None:
        o, path = self.o, self.paths["behavior_log"]
        t_last = int(self.time_vocab.keys[-1])
        stream = CsvStream(path, BEHAVIOR_LOG, o.chunk_rows, dtype={"btag": "category"}, quiet=o.quiet)
        dropped_user = dropped_late = 0
        for df in stream:
            s0 = stream.start
            t = ints(df["time_stamp"], path, "time_stamp", allow_missing=False, start=s0)
            uid = self.user_vocab.lookup(ints(df["user"], path, "user", allow_missing=False, start=s0))
            btag = _btags(df["btag"], path, s0)
            keep = (uid > 0) & (t < t_last)
            dropped_user += int((uid == 0).sum())
            dropped_late += int(((uid > 0) & (t >= t_last)).sum())
            cate = ints(df["cate"], path, "cate", start=s0)[keep]
            brand = ints(df["brand"], path, "brand", start=s0)[keep]
            rec = np.empty(len(cate), BEH_DTYPE)
            rec["t"], rec["user"], rec["cate"], rec["brand"], rec["btag"] = t[keep], uid[keep], cate, brand, btag[keep]
            beh.add(rec["t"], rec)
            self.cate_vocab.add(cate)
            self.brand_vocab.add(brand)
        self.counts.update(behaviours_read=stream.rows_read, behaviours_kept=beh.rows,
                           behaviours_dropped_user_without_impressions=dropped_user,
                           behaviours_dropped_not_before_last_impression=dropped_late)
        self.cate_vocab.freeze()
        self.brand_vocab.freeze()

    # scenarios, schema, splits --------------------------------------------------------------------------
    def _scenarios(self) -> None:
        """Scenario names (``<scenario>_<value>`` sorted, then ``unknown``) and the index of each raw value."""
        scenario = self.o.scenario
        sv_keys = self.sv_keys = self.sv_vocab.keys  # raw scenario values (pid: codes) that occur, sorted
        labels = ([self.pid_codes.values[int(k)] for k in sv_keys] if scenario == "pid"
                  else [str(int(k)) for k in sv_keys])
        order = np.argsort(np.array(labels, dtype=str), kind="stable") if scenario == "pid" else np.arange(len(labels))
        self.names = [f"{scenario}_{labels[i]}" for i in order]
        self.sv_index = np.empty(len(sv_keys), np.int64)
        self.sv_index[order] = np.arange(len(order))
        if self.o.missing_scenario == "unknown" and self.missing_no_profile + self.missing_value:
            self.names.append("unknown")
        if not self.names:
            raise DataError(f"{os.path.basename(self.paths['raw_sample'])}: no impression has a {scenario} value")

    def _joined_ids(self) -> None:
        """The ids each impression takes from its ad, its user's profile and its pid."""
        ads, prof, vocabs = self.ads, self.prof, self.vocabs
        self.pid_ids = self.pid_codes.ids_of_codes(self.pid_codes.vocab())
        self.ad_ids = {"cate_id": self.cate_vocab.lookup(ads.cols["cate_id"]),
                       "brand_id": self.brand_vocab.lookup(ads.cols["brand"]),
                       "campaign_id": vocabs["campaign_id"].lookup(ads.cols["campaign_id"]),
                       "customer_id": vocabs["customer"].lookup(ads.cols["customer"])}
        self.ad_price = np.log1p(np.maximum(np.nan_to_num(ads.cols["price"], nan=0.0), 0.0))
        self.prof_ids = {PROFILE_FEATURES[c]: vocabs[c].lookup(prof.cols[c])
                         for c in PROFILE_FEATURES if c != self.sc_col}

    def _conversion_record(self) -> dict:
        o = self.o
        return {"source": os.path.abspath(self.src),
                "layout": "alimama raw (raw_sample, ad_feature, user_profile, behavior_log)",
                "scenario_column": o.scenario, "missing_scenario": o.missing_scenario,
                "missing_scenario_rows": {
                    "user_without_profile": self.missing_no_profile, "empty_value": self.missing_value,
                    "action": "dropped" if o.missing_scenario == "drop" else "scenario 'unknown'"},
                "ids": "remapped to 1..V-1 in sorted order of raw values (0 = padding/missing/unknown)",
                "split": o.split, "seq_len": o.seq_len, "bucket_seconds": o.bucket_seconds}

    # 4. merge behaviours and impressions in time order -----------------------------------------------
    def _merge(self, imp: TimeBuckets, beh: TimeBuckets) -> dict:
        o = self.o
        schema = _schema(o.scenario, self.names, self.vocabs, self.cate_vocab, self.brand_vocab, self.user_vocab,
                         self.item_vocab, self.pid_codes.vocab(), o.seq_len, o.dim)
        self.split_of = _splitter(o.split, self.time_vocab, self.tz, o.test_periods, o.valid_periods,
                                  self.paths["raw_sample"])
        self._joined_ids()
        conv = self._conversion_record()
        hist = HistoryBuffer(self.user_vocab.size, o.seq_len, {"hist_cate_id": np.int32, "hist_brand_id": np.int32,
                                                               "hist_btag": np.int8})
        self.price_moments, self.no_ad = Moments(), 0
        buckets = sorted(set(imp.buckets()) | set(beh.buckets()))
        with DatasetWriter(self.out, schema, **o.writer_kwargs(), extra_stats={"conversion": conv}) as writer:
            sw = SplitWriter(writer)
            prog = Progress("alimama: merge + write", o.quiet)
            done = 0
            for b in buckets:
                ev, qb = beh.load(b), imp.load(b)
                hist.begin(ev["user"], ev["t"], {"hist_cate_id": self.cate_vocab.lookup(ev["cate"]),
                                                 "hist_brand_id": self.brand_vocab.lookup(ev["brand"]),
                                                 "hist_btag": ev["btag"]})
                del ev
                qb = qb[np.lexsort((qb["row"], qb["t"]))]
                for lo in range(0, len(qb), hist.batch):  # impressions in batches: memory O(batch x L)
                    q = qb[lo:lo + hist.batch]
                    self._write_rows(q, hist, sw)
                    done += len(q)
                    prog.update(done, done / imp.rows)
                hist.commit()
            sw.flush()
            prog.close()
            f = schema.feature("price")
            f.mean, f.std = self.price_moments.mean, self.price_moments.std
            self._finish(conv, schema, hist, sw, imp, beh, len(buckets))
        return writer.stats.result() | {"conversion": conv}

    def _write_rows(self, q: np.ndarray, hist: HistoryBuffer, sw: SplitWriter) -> None:
        """A batch of one bucket's impressions joined with its ad, profile and history -> rows of its split."""
        uq = self.user_vocab.lookup(q["user"])
        arow, afound = self.ads.find(q["ad"])
        self.no_ad += int((~afound).sum())
        prow, pfound = self.prof.find(q["user"])
        sv_keys = self.sv_keys
        si = np.searchsorted(sv_keys, q["sv"])
        si_c = np.minimum(si, len(sv_keys) - 1)
        known = (q["sv"] != MISSING) & (si < len(sv_keys))
        cols = {"scenario": np.where(known, self.sv_index[si_c] if len(sv_keys) else 0, len(self.names) - 1),
                "click": q["click"].astype(np.float32), "user_id": uq,
                "item_id": self.item_vocab.lookup(q["ad"]),
                "price": np.where(afound, self.ad_price[arow], 0.0).astype(np.float32),
                "hour": ((q["t"] + self.tz) // 3600) % 24 + 1, "time_stamp": q["t"]}
        for name, ids in self.prof_ids.items():
            cols[name] = np.where(pfound, ids[prow], 0)
        for name, ids in self.ad_ids.items():
            cols[name] = np.where(afound, ids[arow], 0)
        if self.o.scenario != "pid":
            pid_ids = self.pid_ids
            cols["pid"] = np.where(q["pid"] >= 0, pid_ids[np.maximum(q["pid"], 0)] if len(pid_ids) else 0, 0)
        cols.update(hist.query(uq, q["t"]))
        splits = self.split_of(q["t"])
        self.price_moments.add(cols["price"][splits == "train"])
        sw.add_split(splits, cols)

    def _finish(self, conv: dict, schema: Schema, hist: HistoryBuffer, sw: SplitWriter, imp: TimeBuckets,
                beh: TimeBuckets, buckets: int) -> None:
        """The counts and resource figures of ``stats.json["conversion"]``."""
        counts = self.counts
        sec = time.time() - self.t0
        counts.update(impressions_without_ad_feature=self.no_ad, impressions_written=sum(sw.counts.values()),
                      spill_buckets=buckets, max_bucket_impressions=imp.max_bucket_rows,
                      max_bucket_behaviours=beh.max_bucket_rows)
        conv.update(counts=counts, vocab_sizes={f.name: f.vocab_size for f in schema.features if f.vocab_size},
                    history_buffer_mb=round(hist.nbytes / 2 ** 20, 1), seconds=round(sec, 2),
                    rows_per_sec=round(counts["impressions_read"] / max(sec, 1e-9), 1),
                    peak_rss_mb=round(peak_rss_mb(), 1))


def _btags(col, path, start) -> np.ndarray:
    """btag strings -> 1..4; a missing or unknown tag is a DataError naming the row and the value."""
    cat = col.astype("category")
    names = [str(c).strip() for c in cat.cat.categories]
    lut = np.array([BTAGS.get(n, -1) for n in names] + [-1], np.int64)
    codes = cat.cat.codes.to_numpy()
    out = lut[codes]  # code -1 (missing) -> last entry
    bad = out < 0
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{os.path.basename(path)}: column 'btag' row {start + i:,} has value "
                        f"{col.iloc[i]!r} (expected one of {', '.join(BTAGS)})")
    return out.astype(np.int8)


def _splitter(split, time_vocab: Vocab, tz: int, test_periods: int, valid_periods: int, path: str):
    """Function time_stamps -> split names, from the distinct impression seconds and their counts."""
    secs, counts = time_vocab.keys, time_vocab.counts
    name = os.path.basename(path)
    if split == "days":
        days = np.unique((secs + tz) // DAY)
        if len(days) <= test_periods + valid_periods:
            raise DataError(f"{name}: impressions span {len(days)} day(s); --split days needs more than "
                            f"--test-periods {test_periods} + --valid-periods {valid_periods}")
        test_from, valid_from = days[-test_periods], days[-test_periods - valid_periods]

        def split_of(t):
            d = (np.asarray(t) + tz) // DAY
            return np.where(d >= test_from, "test", np.where(d >= valid_from, "valid", "train"))
        return split_of
    # sevenths: part of a second = 7 x (share of impressions before it), so parts have equal row counts
    before = np.cumsum(counts) - counts
    part = np.minimum(6, (7 * before) // max(int(counts.sum()), 1))
    if len(np.unique(part)) < 7:
        raise DataError(f"{name}: too few distinct time_stamps to cut the impressions into 7 equal parts")
    name_of_part = np.array(["train"] * (7 - test_periods - valid_periods) + ["valid"] * valid_periods
                            + ["test"] * test_periods)

    def split_of(t):
        return name_of_part[part[np.searchsorted(secs, t)]]
    return split_of


def _schema(scenario, names, vocabs, cate_vocab, brand_vocab, user_vocab, item_vocab, pid_vocab, seq_len, dim):
    cat = lambda n, g, v: Feature(n, "categorical", g, vocab_size=v, dim=dim)  # noqa: E731
    sc_col = SCENARIO_COLUMNS[scenario]
    feats = [cat("user_id", "user", user_vocab.size)]
    feats += [cat(PROFILE_FEATURES[c], "user", vocabs[c].size) for c in PROFILE_FEATURES if c != sc_col]
    feats += [cat("item_id", "item", item_vocab.size), cat("cate_id", "item", cate_vocab.size),
              cat("campaign_id", "item", vocabs["campaign_id"].size),
              cat("customer_id", "item", vocabs["customer"].size), cat("brand_id", "item", brand_vocab.size),
              Feature("price", "numeric", "item")]
    if scenario != "pid":
        feats.append(cat("pid", "context", pid_vocab.size))
    feats += [cat("hour", "context", 25),
              Feature("hist_cate_id", "sequence", "behavior", share="cate_id", length=seq_len),
              Feature("hist_brand_id", "sequence", "behavior", share="brand_id", length=seq_len),
              Feature("hist_btag", "sequence", "behavior", vocab_size=len(BTAGS) + 1, dim=dim, length=seq_len)]
    schema = Schema(scenario=Scenario("scenario", names), labels=["click"], features=feats,
                    extras={"time_stamp": "int64"}, user_key="user_id", source="alimama")
    schema.validate()
    return schema
