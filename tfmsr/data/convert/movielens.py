"""MovieLens-100K / -1M ratings -> multi-scenario click data (scenario from a user attribute).

Reads MovieLens-100K (``u.data``, ``u.user``, ``u.item``; ``|``/tab separated) or MovieLens-1M
(``ratings.dat``, ``users.dat``, ``movies.dat``; ``::`` separated, latin-1), whichever ``--src`` holds,
and writes TFRecord shards + ``schema.yaml`` + ``stats.json`` with the protocol of
``../shared/datasets/README.md``:

* **label** ``label = rating >= 4`` (``--threshold``); the raw ``rating`` and ``timestamp`` are extras.
* **scenario** from a user attribute, chosen by ``--scenario`` (a rule in ``SCENARIO_RULES``):
  ``age`` (default; bins ``--age-bins 25,35`` -> ``<25, 25-34, >=35``), ``gender`` (female, male) or
  ``occupation`` (one scenario per occupation present). Every rule is per user, so the scenario of each
  behaviour is the user's; ``hist_scenario`` stores it as scenario + 1 (0 = padding), vocab S + 1.
* **features**: ``user_id gender occupation zip3`` (zip prefix, 3 characters, upper-cased) and, when the
  scenario is not the age rule, ``age_band`` (the 7 ML-1M bands <18, 18-24, 25-34, 35-44, 45-49, 50-55,
  56+) | ``item_id genre`` (the movie's first genre: lowest genre flag in 100K, first listed in 1M) |
  ``hist_item_id hist_genre hist_scenario`` (behaviour, ``--seq-len`` 30).
* **behaviour**: the user's earlier ratings (any rating, not only positives) whose timestamp is strictly
  before the target's, most recent first (ties by file order), at most ``--seq-len``.
* **split by time within each user**: a user's ratings sorted by (timestamp, file order); the last
  ``floor(n * test)`` go to test, the ``floor(n * valid)`` before them to valid, the rest to train; a
  user always keeps >= 1 train row (valid, then test, give rows back). Each split is written in global
  (timestamp, file order) order.

Ids: every categorical value is remapped to ``1 .. V-1`` (0 = padding/OOV) by its rank among the sorted
distinct values of the metadata file (``u.user``/``users.dat`` for users, ``u.item``/``movies.dat`` for
items, so an id is stable whatever the ratings file holds). Genres use the fixed 100K genre list
(``unknown`` = 1, ``Action`` = 2, ...). ``stats.json["id_maps"][feature]`` lists the original value of
every new id (entry ``k - 1`` is the value of id ``k``). No oracle: the true click probability is unknown.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from typing import Callable, Dict, Iterator, List, NamedTuple, Sequence, Tuple

import numpy as np
import pandas as pd

from tfmsr.data.convert._common import add_layout_argument
from tfmsr.data.pipeline import DataError
from tfmsr.features import Feature, Scenario, Schema

NAME = "movielens"

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western"]
# ML-1M users.dat: age is the lower bound of its band; occupation is a code (ML-1M README).
ML1M_AGE_BANDS = [1, 18, 25, 35, 45, 50, 56]
ML1M_OCCUPATIONS = ["other", "academic/educator", "artist", "clerical/admin", "college/grad student",
                    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
                    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
                    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer"]
LAYOUTS = {
    "ml-100k": {"ratings": "u.data", "users": "u.user", "items": "u.item"},
    "ml-1m": {"ratings": "ratings.dat", "users": "users.dat", "items": "movies.dat"},
}


# ---------------------------------------------------------------------------------------- reading
def _read(path: str, sep: str, names: Sequence[str], ints: Sequence[str] = ()) -> pd.DataFrame:
    """A separated text file as strings (latin-1, no quoting); ``ints`` columns checked and converted.
    Adds ``line`` (1-based line number = file order). Any malformed line -> one DataError naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (expected a MovieLens file with fields {', '.join(names)})")
    with open(path, encoding="latin-1") as fh:
        text = fh.read().replace("\r\n", "\n").rstrip("\n")
    if sep == "::":
        text, sep = text.replace("::", "\x1f"), "\x1f"
    if not text:
        raise DataError(f"{path}: empty (expected lines with fields {', '.join(names)})")
    fields = pd.Series(text.split("\n")).str.count(re.escape(sep)).to_numpy() + 1
    bad = np.flatnonzero(fields != len(names))
    if len(bad):
        raise DataError(f"{path}: line {bad[0] + 1}: {fields[bad[0]]} field(s), expected {len(names)}: "
                        f"{', '.join(names)}")
    df = pd.read_csv(io.StringIO(text), sep=sep, header=None, names=list(names), dtype=str,
                     keep_default_na=False, na_values=[], quoting=csv.QUOTE_NONE, skip_blank_lines=False)
    df["line"] = np.arange(1, len(df) + 1)
    for col in ints:
        vals = pd.to_numeric(df[col].str.strip(), errors="coerce")
        bad = vals.isna().to_numpy() | (vals.to_numpy() != np.floor(vals.to_numpy()))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: line {i + 1}: field '{col}' must be an integer, got {df[col].iloc[i]!r}")
        df[col] = vals.astype(np.int64)
    return df


def _check_unique(df: pd.DataFrame, col: str, path: str) -> None:
    dup = df[col].duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise DataError(f"{path}: line {i + 1}: duplicate {col} {df[col].iloc[i]} (ids must be unique)")


def _first_genre_100k(df: pd.DataFrame, path: str) -> np.ndarray:
    flags = df[[f"g{j}" for j in range(len(GENRES))]]
    bad = ~flags.isin(["0", "1"]).to_numpy()
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise DataError(f"{path}: line {i + 1}: genre flag '{GENRES[j]}' must be 0 or 1, got {flags.iat[i, j]!r}")
    on = flags.to_numpy() == "1"
    return np.where(on.any(axis=1), on.argmax(axis=1), 0)  # no flag -> unknown


def _first_genre_1m(df: pd.DataFrame, path: str) -> np.ndarray:
    index = {g: k for k, g in enumerate(GENRES)}
    out = np.zeros(len(df), np.int64)
    for i, raw in enumerate(df["genres"]):
        first = raw.split("|")[0].strip()
        if not first or first == "(no genres listed)":
            continue
        if first not in index:
            raise DataError(f"{path}: line {i + 1}: unknown genre {first!r} (expected one of {', '.join(GENRES)})")
        out[i] = index[first]
    return out


def read_movielens(src: str) -> Tuple[str, pd.DataFrame, pd.DataFrame, pd.DataFrame, Dict[str, str]]:
    """(variant, ratings, users, items, paths) with unified columns:
    ratings: user item rating ts line | users: user age gender occupation zip line | items: item genre line
    (``age`` in years for 100K, the band's lower bound for 1M; ``genre`` an index into GENRES)."""
    variant = next((v for v, files in LAYOUTS.items()
                    if os.path.isfile(os.path.join(src, files["ratings"]))), None)
    if variant is None:
        raise FileNotFoundError(f"{src}: no MovieLens ratings file (expected u.data for MovieLens-100K or "
                                "ratings.dat for MovieLens-1M)")
    paths = {k: os.path.join(src, f) for k, f in LAYOUTS[variant].items()}
    if variant == "ml-100k":
        ratings = _read(paths["ratings"], "\t", ["user", "item", "rating", "ts"], ["user", "item", "rating", "ts"])
        users = _read(paths["users"], "|", ["user", "age", "gender", "occupation", "zip"], ["user", "age"])
        items = _read(paths["items"], "|", ["item", "title", "release", "video_release", "url"]
                      + [f"g{j}" for j in range(len(GENRES))], ["item"])
        items["genre"] = _first_genre_100k(items, paths["items"])
    else:
        ratings = _read(paths["ratings"], "::", ["user", "item", "rating", "ts"], ["user", "item", "rating", "ts"])
        users = _read(paths["users"], "::", ["user", "gender", "age", "occupation", "zip"],
                      ["user", "age", "occupation"])
        bad = ~users["age"].isin(ML1M_AGE_BANDS).to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{paths['users']}: line {i + 1}: field 'age' must be an ML-1M age band code "
                            f"{ML1M_AGE_BANDS}, got {users['age'].iloc[i]}")
        bad = ~users["occupation"].between(0, len(ML1M_OCCUPATIONS) - 1).to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{paths['users']}: line {i + 1}: field 'occupation' must be a code in "
                            f"0..{len(ML1M_OCCUPATIONS) - 1}, got {users['occupation'].iloc[i]}")
        users["occupation"] = [ML1M_OCCUPATIONS[c] for c in users["occupation"]]
        items = _read_movies_1m(paths["items"])
        items["genre"] = _first_genre_1m(items, paths["items"])
    bad = ~users["gender"].isin(["F", "M"]).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{paths['users']}: line {i + 1}: field 'gender' must be F or M, got {users['gender'].iloc[i]!r}")
    _check_unique(users, "user", paths["users"])
    _check_unique(items, "item", paths["items"])
    for col, known, meta in (("user", users["user"], paths["users"]), ("item", items["item"], paths["items"])):
        missing = ~ratings[col].isin(known).to_numpy()
        if missing.any():
            i = int(np.flatnonzero(missing)[0])
            raise DataError(f"{paths['ratings']}: line {i + 1}: {col} {ratings[col].iloc[i]} is not in {meta}")
    return variant, ratings, users, items, paths


def _read_movies_1m(path: str) -> pd.DataFrame:
    """movies.dat: ``MovieID::Title::Genres``; a title may hold anything but the separator."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (expected MovieLens-1M movies.dat: MovieID::Title::Genres)")
    ids, genres = [], []
    with open(path, encoding="latin-1") as fh:
        for n, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            head, _, rest = line.partition("::")
            _, sep, tail = rest.rpartition("::")
            if not sep or not head.strip().isdigit():
                raise DataError(f"{path}: line {n}: expected MovieID::Title::Genres with an integer MovieID, "
                                f"got {line[:80]!r}")
            ids.append(int(head))
            genres.append(tail)
    return pd.DataFrame({"item": np.array(ids, np.int64), "genres": genres, "line": np.arange(1, len(ids) + 1)})


# ---------------------------------------------------------------------------------------- scenario rules
def _slug(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "none"


def _age_rule(users: pd.DataFrame, options: dict, variant: str) -> Tuple[np.ndarray, List[str]]:
    bins = _age_bins(options["age_bins"], variant)
    names = [f"age_under{bins[0]}"] + [f"age_{a}_{b - 1}" for a, b in zip(bins[:-1], bins[1:])]
    names.append(f"age_{bins[-1]}plus")
    return np.searchsorted(bins, users["age"].to_numpy(), side="right"), names


def _gender_rule(users, options, variant):
    return (users["gender"].to_numpy() == "M").astype(np.int64), ["female", "male"]


def _occupation_rule(users, options, variant):
    values = sorted(set(users["occupation"]), key=lambda v: (_slug(v), v))
    names = [_slug(v) for v in values]
    if len(set(names)) != len(names):
        raise DataError(f"occupations {values} do not give distinct scenario names ({names})")
    codes = {v: k for k, v in enumerate(values)}
    return np.array([codes[v] for v in users["occupation"]], np.int64), names


# name -> fn(users, options, variant) -> (scenario index per users row, scenario names). Per-user rules only:
# add one here (and it is a --scenario choice) to define scenarios by another user attribute.
SCENARIO_RULES: Dict[str, Callable] = {"age": _age_rule, "gender": _gender_rule, "occupation": _occupation_rule}


def _age_bins(raw: str, variant: str) -> List[int]:
    try:
        bins = [int(b) for b in str(raw).split(",") if b.strip()]
    except ValueError:
        raise DataError(f"--age-bins {raw!r}: expected increasing integers, e.g. 25,35") from None
    if not bins or any(b <= a for a, b in zip(bins, bins[1:])) or bins[0] <= 0:
        raise DataError(f"--age-bins {raw!r}: expected increasing positive integers, e.g. 25,35")
    if variant == "ml-1m" and not set(bins) <= set(ML1M_AGE_BANDS[1:]):
        raise DataError(f"--age-bins {raw!r}: ML-1M stores age bands, so every cut must be a band start "
                        f"{ML1M_AGE_BANDS[1:]}")
    return bins


def _age_band(users: pd.DataFrame) -> np.ndarray:
    """0-based index of the 7 ML-1M age bands (works on years and on 1M band codes)."""
    return np.searchsorted(ML1M_AGE_BANDS[1:], users["age"].to_numpy(), side="right")


def _remap(values) -> Tuple[np.ndarray, list]:
    """Dense ids 1..K by the rank of each value among the sorted distinct values; (ids, originals)."""
    uniq, inv = np.unique(np.asarray(values), return_inverse=True)
    return inv.astype(np.int64) + 1, uniq.tolist()


# ---------------------------------------------------------------------------------------- protocol
def split_sizes(count: np.ndarray, valid: float, test: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user (train, valid, test) row counts: floor fractions, >= 1 train row (valid gives back first)."""
    n_test = np.floor(count * test + 1e-9).astype(np.int64)
    n_valid = np.floor(count * valid + 1e-9).astype(np.int64)
    deficit = np.maximum(0, 1 - (count - n_test - n_valid))
    back = np.minimum(deficit, n_valid)
    n_valid -= back
    n_test -= deficit - back
    return count - n_test - n_valid, n_valid, n_test


def build(ratings: pd.DataFrame, valid: float, test: float) -> dict:
    """Arrays in (user, timestamp, file order) order: ``pos`` (sort permutation of ``ratings``),
    ``split`` (0 train, 1 valid, 2 test), ``start`` (first row of the row's timestamp tie block: its
    history is rows ``start-1, start-2, ...``), ``hist_len`` (how many of those belong to the same user,
    i.e. the user's ratings strictly earlier) and ``out`` (the rows in global (timestamp, file order)
    order, as indices into the sorted arrays)."""
    user, ts, line = (ratings[c].to_numpy() for c in ("user", "ts", "line"))
    pos = np.lexsort((line, ts, user))
    u, t = user[pos], ts[pos]
    n = len(u)
    idx = np.arange(n)
    new_user = np.r_[True, u[1:] != u[:-1]]
    ustart = np.maximum.accumulate(np.where(new_user, idx, 0))
    rank = idx - ustart
    count = np.bincount(u)[u]
    tie_start = np.maximum.accumulate(np.where(new_user | np.r_[True, t[1:] != t[:-1]], idx, 0))
    n_train, n_valid, _ = split_sizes(count, valid, test)
    split = np.where(rank < n_train, 0, np.where(rank < n_train + n_valid, 1, 2))
    out = np.lexsort((line[pos], t))
    return {"pos": pos, "split": split, "start": tie_start, "hist_len": tie_start - ustart, "out": out}


def schema_for(names: List[str], vocab: Dict[str, int], seq_len: int, with_age_band: bool, dim: int) -> Schema:
    cat = lambda name, group: Feature(name, "categorical", group, vocab_size=vocab[name], dim=dim)
    feats = [cat("user_id", "user"), cat("gender", "user"), cat("occupation", "user"), cat("zip3", "user")]
    if with_age_band:
        feats.append(cat("age_band", "user"))
    feats += [
        cat("item_id", "item"), cat("genre", "item"),
        Feature("hist_item_id", "sequence", "behavior", share="item_id", length=seq_len),
        Feature("hist_genre", "sequence", "behavior", share="genre", length=seq_len),
        Feature("hist_scenario", "sequence", "behavior", vocab_size=len(names) + 1, dim=dim, length=seq_len),
    ]
    schema = Schema(scenario=Scenario("scenario", names), labels=["label"], features=feats,
                    extras={"rating": "int64", "timestamp": "int64"}, user_key="user_id", source="movielens")
    schema.validate()
    return schema


class _Ids(NamedTuple):
    """New ids: ``maps[feature][id - 1]`` = raw value, ``vocab[feature]`` = table size, ``user_ids[feature][row
    of users]`` and ``item_ids[row of items]``."""
    maps: Dict[str, list]
    vocab: Dict[str, int]
    user_ids: Dict[str, np.ndarray]
    item_ids: np.ndarray


def _remap_ids(users: pd.DataFrame, items: pd.DataFrame, with_age_band: bool) -> _Ids:
    """Ids by rank among the metadata's sorted distinct values."""
    maps, vocab, user_ids = {}, {}, {}
    cols_u = {"user_id": users["user"], "gender": users["gender"], "occupation": users["occupation"],
              "zip3": users["zip"].str.strip().str[:3].str.upper()}
    for name, values in cols_u.items():
        user_ids[name], maps[name] = _remap(values.to_numpy())
        vocab[name] = len(maps[name]) + 1
    if with_age_band:  # band ids follow the bands' order
        maps["age_band"] = ["under18", "18_24", "25_34", "35_44", "45_49", "50_55", "56plus"]
        user_ids["age_band"], vocab["age_band"] = _age_band(users) + 1, len(maps["age_band"]) + 1
    item_ids, maps["item_id"] = _remap(items["item"].to_numpy())
    vocab["item_id"], vocab["genre"], maps["genre"] = len(maps["item_id"]) + 1, len(GENRES) + 1, list(GENRES)
    return _Ids(maps, vocab, user_ids, item_ids)


class _Rows:
    """The ratings in new ids, split by time within each user (``build``), as the columns of each split."""

    def __init__(self, ratings, users, items, ids: _Ids, user_scen: np.ndarray, valid: float, test: float):
        maps, self.user_ids, item_ids = ids.maps, ids.user_ids, ids.item_ids
        # row of each user / item id (new id - 1 indexes these arrays)
        self.urow = np.empty(len(users), np.int64)
        self.urow[self.user_ids["user_id"] - 1] = np.arange(len(users))
        irow = np.empty(len(items), np.int64)
        irow[item_ids - 1] = np.arange(len(items))
        new_user = np.searchsorted(maps["user_id"], ratings["user"].to_numpy()) + 1
        new_item = np.searchsorted(maps["item_id"], ratings["item"].to_numpy()) + 1
        r = pd.DataFrame({"user": new_user, "item": new_item, "rating": ratings["rating"].to_numpy(),
                          "ts": ratings["ts"].to_numpy(), "line": ratings["line"].to_numpy()})
        self.scen_of_user = user_scen[self.urow]                   # by new user id - 1
        self.genre_of_item = items["genre"].to_numpy()[irow] + 1   # genre id by new item id - 1
        self.b = build(r, valid, test)
        self.srt = {c: r[c].to_numpy()[self.b["pos"]] for c in ("user", "item", "rating", "ts")}

    def chunks(self, k: int, chunk: int, seq_len: int, threshold: int) -> Iterator[Dict[str, np.ndarray]]:
        """Columns of split ``k`` (0 train, 1 valid, 2 test), ``chunk`` rows at a time, in global time order."""
        b, srt, L = self.b, self.srt, seq_len
        steps = np.arange(L)
        rows = b["out"][b["split"][b["out"]] == k]
        for lo in range(0, len(rows), chunk):
            p = rows[lo:lo + chunk]
            hidx = b["start"][p][:, None] - 1 - steps[None, :]
            keep = steps[None, :] < np.minimum(b["hist_len"][p], L)[:, None]
            hidx = np.where(keep, hidx, 0)
            h_item = np.where(keep, srt["item"][hidx], 0)
            u = srt["user"][p] - 1
            cols = {f: ids[self.urow[u]] for f, ids in self.user_ids.items()}
            cols.update({
                "user_id": srt["user"][p], "item_id": srt["item"][p],
                "genre": self.genre_of_item[srt["item"][p] - 1],
                "hist_item_id": h_item, "hist_genre": np.where(keep, self.genre_of_item[h_item - 1], 0),
                "hist_scenario": np.where(keep, self.scen_of_user[u][:, None] + 1, 0),
                "scenario": self.scen_of_user[u], "label": (srt["rating"][p] >= threshold).astype(np.float32),
                "rating": srt["rating"][p], "timestamp": srt["ts"][p],
            })
            yield cols


def convert(src: str, out: str, scenario: str = "age", age_bins: str = "25,35", threshold: int = 4,
            seq_len: int = 30, valid: float = 0.1, test: float = 0.1, dim: int = 16, rows_per_shard: int = 50_000,
            compression=None, overwrite: bool = False, chunk: int = 50_000, layout=None) -> dict:
    """Convert ``src`` into ``out``; returns the stats written to ``out/stats.json``. ``layout``: the shards'
    record layout (``tfmsr.data.layout``; None: the default)."""
    from tfmsr.data.tfrecord import DatasetWriter

    if scenario not in SCENARIO_RULES:
        raise DataError(f"--scenario {scenario!r}: unknown rule (expected one of {', '.join(SCENARIO_RULES)})")
    if seq_len < 1:
        raise DataError(f"--seq-len must be >= 1, got {seq_len}")
    if not (0 <= valid < 1 and 0 <= test < 1 and valid + test < 1):
        raise DataError(f"--valid {valid} / --test {test}: fractions in [0, 1) with valid + test < 1")
    variant, ratings, users, items, paths = read_movielens(src)
    user_scen, names = SCENARIO_RULES[scenario](users, {"age_bins": age_bins}, variant)
    ids = _remap_ids(users, items, with_age_band=scenario != "age")
    rows = _Rows(ratings, users, items, ids, user_scen, valid, test)
    schema = schema_for(names, ids.vocab, seq_len, scenario != "age", dim)
    extra = {
        "converter": {
            "name": NAME, "variant": variant, "src": os.path.abspath(src), "files": paths,
            "scenario_rule": scenario, "age_bins": _age_bins(age_bins, variant) if scenario == "age" else None,
            "label": f"rating >= {threshold}", "seq_len": seq_len, "valid": valid, "test": test,
            "split": "by time within each user: last floor(n*test) test, floor(n*valid) before valid, "
                     "rest train (>= 1 train row per user); ties by file order",
            "behaviour": "earlier ratings strictly before the target's timestamp, most recent first",
            "users": len(users), "items": len(items), "ratings": len(ratings),
        },
        "id_maps": {k: [v if isinstance(v, str) else int(v) for v in vals] for k, vals in ids.maps.items()},
    }
    with DatasetWriter(out, schema, rows_per_shard=rows_per_shard, compression=compression, overwrite=overwrite,
                       extra_stats=extra, layout=layout) as writer:
        for k, split in enumerate(("train", "valid", "test")):
            for cols in rows.chunks(k, chunk, seq_len, threshold):
                writer.write(split, cols)
    return writer.stats.result() | extra


# ---------------------------------------------------------------------------------------- CLI
def add_arguments(parser) -> None:
    parser.add_argument("--scenario", default="age", choices=sorted(SCENARIO_RULES),
                        help="user attribute that defines the scenario (default age)")
    parser.add_argument("--age-bins", default="25,35", help="age cuts of the age rule (default 25,35: <25, 25-34, >=35)")
    parser.add_argument("--threshold", type=int, default=4, help="label = rating >= THRESHOLD (default 4)")
    parser.add_argument("--seq-len", type=int, default=30, help="behaviour sequence length (default 30)")
    parser.add_argument("--valid", type=float, default=0.1, help="share of each user's ratings for validation")
    parser.add_argument("--test", type=float, default=0.1, help="share of each user's (latest) ratings for test")
    parser.add_argument("--dim", type=int, default=16, help="embedding dim written into the schema")
    parser.add_argument("--rows-per-shard", type=int, default=50_000)
    parser.add_argument("--gzip", action="store_true", help="GZIP-compressed shards")
    add_layout_argument(parser, flags=("--record-layout",))


def run(args) -> None:
    stats = convert(args.src, args.out, scenario=args.scenario, age_bins=args.age_bins, threshold=args.threshold,
                    seq_len=args.seq_len, valid=args.valid, test=args.test, dim=args.dim,
                    rows_per_shard=args.rows_per_shard, compression="GZIP" if args.gzip else None,
                    overwrite=args.overwrite, layout=args.record_layout)
    print(json.dumps({"out": args.out, "variant": stats["converter"]["variant"],
                      "splits": {k: v["rows"] for k, v in stats["splits"].items()},
                      "positive_rate": {k: round(v["positive_rate"], 4) for k, v in stats["splits"].items()},
                      "scenario_rows": stats["scenario_rows"]}))
