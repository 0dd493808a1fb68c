"""``tfmsr data ingest``: the shipped specs on the real files (../shared/datasets), the MovieLens spec against
the converter, input formats, id policies, splits, vocabulary growth (--vocab-from), temp dirs, the CLI."""
import glob
import json
import os

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import datasets_dir

from tfmsr.data.ingest import ingest
from tfmsr.data.ingest.rows import read_columns, read_split

SPECS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "tfmsr", "configs", "data")
SPLITS = ("train", "valid", "test")


def run_spec(name, tmp_path, folder, **kw):
    out = str(tmp_path / name)
    summary = ingest(os.path.join(SPECS, f"{name}.yaml"), out, root=datasets_dir(folder), log=None, **kw)
    return out, summary


def read_all(out):
    return pd.concat([read_split(out, s).assign(split=s) for s in SPLITS if os.path.isdir(os.path.join(out, s))],
                     ignore_index=True)


def write_spec(tmp_path, spec, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def stats_of(out):
    with open(os.path.join(out, "stats.json")) as fh:
        return json.load(fh)


def check_item_quality(out, df, st):
    """The shipped specs' item_rate / item_train_n / item_id min_count 5 (issue 32), recomputed from the rows."""
    train = df[df.split == "train"]
    p = (train.label.sum() + 1) / (len(train) + 2)
    per = train.groupby("item_id").label.agg(["size", "sum"])
    held = df[df.split != "train"]  # out of fold: a valid/test row reads every train row (the popularity row's rate)
    n, pos = held.item_id.map(per["size"]).fillna(0), held.item_id.map(per["sum"]).fillna(0)
    np.testing.assert_allclose(held.item_rate, (pos + 10 * p) / (n + 10), rtol=1e-6)
    np.testing.assert_allclose(held.item_train_n, np.log1p(n), rtol=1e-6)  # stored log1p; standardised in the graph
    assert st["ingest"]["rates"]["item_rate"]["test_prior_only"] == ((df.split == "test") & (df.item_id.map(
        per["size"]).isna())).sum() > 0
    with open(os.path.join(out, "vocab", "item_id.txt")) as fh:  # rarer items share the OOV id
        assert set(fh.read().split()) == {str(i) for i in per.index[per["size"] >= 5]}


# ---------------------------------------------------------------------------------------------- MovieLens
def reorder(flat, lens, order):
    """Ragged rows (flat values, lengths) taken in ``order``."""
    start = np.concatenate([[0], np.cumsum(lens)])[order]
    n = lens[order]
    idx = np.repeat(start - np.concatenate([[0], np.cumsum(n)])[:-1], n) + np.arange(n.sum())
    return flat[idx], n


def test_movielens_spec_reproduces_the_converter(tmp_path):
    from tfmsr.data.convert.movielens import convert

    src = datasets_dir("ml-100k")
    out, summary = run_spec("movielens_100k", tmp_path, "ml-100k")
    conv = convert(src, str(tmp_path / "conv"))
    maps = {k: np.asarray(v, dtype=object) for k, v in conv["id_maps"].items()}
    assert summary["splits"] == {s: conv["splits"][s]["rows"] for s in SPLITS}
    mine = stats_of(out)
    for s in SPLITS:
        for scen in conv["scenarios"]:
            assert mine["splits"][s]["scenarios"][scen]["rows"] == conv["splits"][s]["scenarios"][scen]["rows"]
            for key in ("positives", "repeat_rate"):
                assert mine["splits"][s]["scenarios"][scen][key] == conv["splits"][s]["scenarios"][scen][key]
        a, b = read_columns(out, s), read_columns(str(tmp_path / "conv"), s)
        for f in ("user_id", "item_id", "genre", "gender", "occupation", "zip3"):
            b[f] = maps[f][b[f] - 1]                                   # converter ids -> raw values
        for f, table in (("hist_item_id", "item_id"), ("hist_genre", "genre")):
            b[f] = (maps[table][b[f][0] - 1], b[f][1])
        oa = np.lexsort((a["timestamp"], a["item_id"].astype(np.int64), a["user_id"].astype(np.int64)))
        ob = np.lexsort((b["timestamp"], b["item_id"].astype(np.int64), b["user_id"].astype(np.int64)))
        for col in ("user_id", "item_id", "genre", "gender", "occupation", "zip3", "scenario", "label", "rating"):
            assert (a[col][oa] == b[col][ob]).all(), (s, col)
        for col in ("hist_item_id", "hist_genre", "hist_scenario"):
            fa, na = reorder(*a[col], oa)
            fb, nb = reorder(*b[col], ob)
            assert (na == nb).all() and (fa == fb).all(), (s, col)
    check_item_quality(out, read_all(out), mine)


# ---------------------------------------------------------------------------------------------- Douban
def douban_expected(src):
    """Raw log with each rating's relative position in its user's block of its file."""
    frames = []
    for k, dom in enumerate(("book", "music")):
        d = pd.read_csv(os.path.join(src, f"{dom}_ratings.dat"), sep="\t", header=None,
                        names=["user", "item", "rating"])
        d["item_id"] = dom + ":" + d["item"].astype(str)
        d["pos"] = (d.groupby("user").cumcount() + 0.5) / d.groupby("user")["user"].transform("size")
        d["scen"], d["file"] = k, k
        frames.append(d)
    df = pd.concat(frames, ignore_index=True)
    df["row"] = np.arange(len(df))
    return df


def test_douban_spec(tmp_path):
    src = datasets_dir("douban-book-music")
    out, summary = run_spec("douban", tmp_path, "douban-book-music")
    raw = douban_expected(src)
    assert summary["rows_written"] == len(raw) and summary["scenarios"] == {"book": 96041, "music": 69709}
    df = read_all(out)
    assert (df.groupby("split")["scenario"].nunique() == 2).all()          # both scenarios in every split
    assert df.groupby("user_id")["scenario"].nunique().max() == 2          # users shared across scenarios
    assert ((df.scenario == 0) == df.item_id.str.startswith("book:")).all()
    test = df[df.split == "test"]
    assert not any(t in h for t, h in zip(test.item_id, test.hist_item_id))  # no history holds its target
    for h, hs in zip(df.hist_item_id.head(2000), df.hist_scenario.head(2000)):  # riding scenario = the item's
        assert hs == [1 if i.startswith("book:") else 2 for i in h]
    # histories recomputed from the raw files for 300 test rows
    by_user = {u: g for u, g in raw.groupby("user")}
    for r in test.sample(300, random_state=0).itertuples():
        g = by_user[r.user_id]
        t = g[g.item_id == r.item_id].iloc[0]
        earlier = g[g.pos < t.pos].sort_values(["pos", "row"], ascending=False)
        assert r.hist_item_id == earlier.item_id.tolist()[:30]
        assert r.label == float(t.rating >= 4)
    check_item_quality(out, df, stats_of(out))


# ---------------------------------------------------------------------------------------------- ml-latest-small
def test_ml_latest_small_spec(tmp_path):
    src = datasets_dir("ml-latest-small")
    out, _ = run_spec("ml_latest_small", tmp_path, "ml-latest-small")
    ratings = pd.read_csv(os.path.join(src, "ratings.csv"))
    movies = pd.read_csv(os.path.join(src, "movies.csv"))
    genre = dict(zip(movies.movieId, movies.genres.str.split("|").str[0]))
    counts = ratings.userId.value_counts()
    tier = {u: int(np.searchsorted([45, 127], c, side="right")) for u, c in counts.items()}
    df = read_all(out)
    assert len(df) == len(ratings)
    assert (df.scenario == df.user_id.map(tier)).all()
    assert (df.genre == df.item_id.map(genre)).all()
    assert (df.label == (df.rating >= 4).astype(float)).all()
    ratings["row"] = np.arange(len(ratings))
    by_user = {u: g for u, g in ratings.groupby("userId")}
    for r in df[df.split == "test"].sample(200, random_state=1).itertuples():
        g = by_user[r.user_id]
        earlier = g[g.timestamp < r.timestamp].sort_values(["timestamp", "row"], ascending=False)
        assert r.hist_item_id == earlier.movieId.tolist()[:30]
        assert r.hist_genre == [genre[m] for m in earlier.movieId.tolist()[:30]]
        assert r.hist_scenario == [tier[r.user_id] + 1] * len(r.hist_item_id)
    st = stats_of(out)
    assert st["ingest"]["joins"]["movies"]["rows_without_match"] == 0
    assert st["ingest"]["files"][os.path.join(src, "ratings.csv")]["rows"] == len(ratings)
    check_item_quality(out, df, st)


# ---------------------------------------------------------------------------------------------- Amazon
def test_amazon_spec(tmp_path):
    src = datasets_dir("amazon-5core-musical-instruments")
    out, summary = run_spec("amazon_musical_instruments", tmp_path, "amazon-5core-musical-instruments")
    raw = pd.read_json(os.path.join(src, "Musical_Instruments.json"), lines=True)
    year = pd.to_datetime(raw.unixReviewTime, unit="s").dt.year
    assert summary["scenarios"] == {"until_2012": int((year <= 2012).sum()), "y2013": int((year == 2013).sum()),
                                    "y2014": int((year == 2014).sum())}
    n = raw.reviewerID.value_counts()
    assert summary["splits"]["test"] == int(np.floor(n * 0.2 + 1e-9).sum())
    df = read_all(out)
    assert df.groupby("user_id")["split"].apply(lambda s: (s == "test").sum()).min() == 1
    assert (df.label == (df.overall >= 4).astype(float)).all()
    same_day = df.apply(lambda r: r.item_id in r.hist_item_id, axis=1)
    assert not same_day.any()


# ---------------------------------------------------------------------------------------------- formats
def ml_small_spec(paths, fmt_keys=None, **extra):
    spec = {"inputs": [dict({"path": paths, "columns": {"userId": "int64", "movieId": "int64", "rating": "float64",
                                                         "timestamp": "int64"}}, **(fmt_keys or {}))],
            "label": {"rule": "rating >= 4"}, "user": "user_id", "time": "timestamp",
            "features": {"user_id": {"from": "userId", "group": "user"},
                         "item_id": {"from": "movieId", "group": "item"}},
            "behaviour": {"length": 10, "features": {"hist_item_id": "item_id"}}}
    spec.update(extra)
    return spec


@pytest.fixture(scope="module")
def small_ratings():
    src = datasets_dir("ml-latest-small")
    return pd.read_csv(os.path.join(src, "ratings.csv")).head(20_000)


def test_csv_gzip_glob_parquet_and_jsonl_give_the_same_dataset(tmp_path, small_ratings):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "in"
    d.mkdir()
    small_ratings.to_csv(d / "all.csv", index=False)
    small_ratings.iloc[:12_000].to_csv(d / "part-1.csv.gz", index=False)
    small_ratings.iloc[12_000:].to_csv(d / "part-2.csv.gz", index=False)
    pq.write_table(pa.Table.from_pandas(small_ratings), d / "all.parquet")
    small_ratings.to_json(d / "all.jsonl", orient="records", lines=True)
    results = []
    for name, path in (("csv", "all.csv"), ("gz", "part-*.csv.gz"), ("pq", "all.parquet"), ("js", "all.jsonl")):
        out = str(tmp_path / name)
        ingest(write_spec(tmp_path, ml_small_spec(path), f"{name}.yaml"), out, root=str(d), log=None)
        st = stats_of(out)
        df = read_split(out, "test").sort_values(["user_id", "item_id"]).reset_index(drop=True)
        results.append((st["splits"], df.hist_item_id.tolist(), st["ingest"]["rows_read"]))
    assert all(r == results[0] for r in results[1:])
    assert results[0][2] == len(small_ratings)


# ---------------------------------------------------------------------------------------------- policies
def test_numeric_transforms_id_policies_filters_and_delimited_sequences(tmp_path, small_ratings):
    src = datasets_dir("ml-latest-small")
    d = tmp_path / "in"
    d.mkdir()
    small_ratings.to_csv(d / "r.csv", index=False)
    movies = {"path": os.path.join(src, "movies.csv"), "key": "movieId",
              "columns": {"movieId": "int64", "genres": "string"}}
    spec = ml_small_spec("r.csv", tables={"movies": movies})
    spec["filter"] = ["rating >= 1"]
    spec["features"].update({
        "rating_z": {"from": "rating", "group": "context", "transform": ["log1p", {"clip": [0.5, 1.5]}, "standardize"]},
        "hour_bucket": {"from": "timestamp", "group": "context", "boundaries": [1e9, 1.2e9, 1.4e9]},
        "item_hash": {"from": "movieId", "group": "item", "hash_buckets": 1000},
        "genres": {"kind": "sequence", "from": "genres", "sep": "|", "length": 3, "group": "item"},
    })
    spec["extras"] = {"genres_raw": {"from": "genres", "dtype": "string"}, "rating": "float32",
                      "timestamp": "int64"}
    spec["split"] = {"by": "hash", "valid": 0.1, "test": 0.2}
    out = str(tmp_path / "p")
    ingest(write_spec(tmp_path, spec), out, root=str(d), log=None)
    st = stats_of(out)
    assert st["ingest"]["dropped"] == {"filter: rating >= 1": int((small_ratings.rating < 1).sum())}
    df = read_all(out)
    assert df.groupby("user_id")["split"].nunique().max() == 1               # hash of the user: one split each
    train = df[df.split == "train"]
    expect = np.clip(np.log1p(train.rating), 0.5, 1.5)
    schema = yaml.safe_load(open(os.path.join(out, "schema.yaml")))
    z = {f["name"]: f for f in schema["features"]}["rating_z"]
    assert z["mean"] == pytest.approx(expect.mean(), rel=1e-6) and z["std"] == pytest.approx(expect.std(ddof=0), rel=1e-6)
    assert np.allclose(df.rating_z, np.clip(np.log1p(df.rating), 0.5, 1.5), atol=1e-6)
    assert (df.hour_bucket == np.searchsorted([1e9, 1.2e9, 1.4e9], df.timestamp, side="right") + 1).all()
    assert df.item_hash.tolist() == df.item_id.astype(str).tolist()          # hashed: raw strings
    assert df.genres.tolist() == [g.split("|")[:3] for g in df.genres_raw]
    feats = {f["name"]: f for f in schema["features"]}
    assert feats["hour_bucket"]["vocab_size"] == 5 and feats["item_hash"]["hash_buckets"] == 1000
    lines = open(os.path.join(out, "vocab", "genres.txt")).read().split("\n")[:-1]
    assert feats["genres"]["vocab_size"] == len(lines) + 1 and "Drama" in lines


def test_global_time_split_column_split_and_other_scenario_bucket(tmp_path, small_ratings):
    cut = int(small_ratings.timestamp.quantile(0.8))
    out = str(tmp_path / "g")
    d = tmp_path / "in"
    d.mkdir()
    small_ratings.assign(page=np.where(small_ratings.movieId % 7 == 0, "search",
                                       "p" + (small_ratings.movieId % 5).astype(str)),
                         part=np.where(small_ratings.userId % 3 == 0, "eval", "fit")).to_csv(d / "r.csv", index=False)
    spec = ml_small_spec("r.csv", split={"by": "global_time", "test_from": cut},
                         scenario={"from": "page", "max_scenarios": 4, "other": "rest"},
                         extras={"timestamp": "int64"})
    spec["inputs"][0]["columns"].update(page="string", part="string")
    ingest(write_spec(tmp_path, spec), out, root=str(d), log=None)
    df = read_all(out)
    assert (df[df.split == "test"].timestamp >= cut).all() and (df[df.split == "train"].timestamp < cut).all()
    names = yaml.safe_load(open(os.path.join(out, "schema.yaml")))["scenario"]["values"]
    top = small_ratings.assign(page=np.where(small_ratings.movieId % 7 == 0, "search",
                                             "p" + (small_ratings.movieId % 5).astype(str))).page.value_counts()
    assert names == sorted(top.index[:3]) + ["rest"]
    assert (df.scenario == 3).sum() == top.iloc[3:].sum()
    spec["split"] = {"by": "column", "from": "part", "values": {"train": "fit", "test": "eval"}}
    ingest(write_spec(tmp_path, spec), out + "2", root=str(d), log=None)
    df2 = read_all(out + "2")
    assert set(df2[df2.split == "test"].user_id % 3) == {0} and "valid" not in set(df2.split)


# ---------------------------------------------------------------------------------------------- day over day
def test_vocab_from_grows_append_only(tmp_path):
    src = datasets_dir("ml-latest-small")
    ratings = pd.read_csv(os.path.join(src, "ratings.csv"))
    cut = ratings.timestamp.quantile(0.7)
    d = tmp_path / "in"
    d.mkdir()
    ratings[ratings.timestamp < cut].to_csv(d / "day1.csv", index=False)
    ratings[ratings.timestamp >= cut].to_csv(d / "day2.csv", index=False)
    spec = ml_small_spec("day1.csv")
    spec["features"]["item_id"]["min_count"] = 2
    day1, day2 = str(tmp_path / "day1"), str(tmp_path / "day2")
    ingest(write_spec(tmp_path, spec, "d1.yaml"), day1, root=str(d), log=None)
    spec["inputs"][0]["path"] = "day2.csv"
    ingest(write_spec(tmp_path, spec, "d2.yaml"), day2, root=str(d), log=None, vocab_from=day1)
    for table in ("user_id", "item_id"):
        old = open(os.path.join(day1, "vocab", f"{table}.txt")).read().split("\n")[:-1]
        new = open(os.path.join(day2, "vocab", f"{table}.txt")).read().split("\n")[:-1]
        assert new[:len(old)] == old and len(new) > len(old)           # every old id kept, new ones appended
        assert len(set(new)) == len(new)
    st = stats_of(day2)["ingest"]["tables"]["item_id"]
    train2 = read_split(day2, "train")
    counts = train2.item_id.value_counts()
    old_items = set(map(int, open(os.path.join(day1, "vocab", "item_id.txt")).read().split()))
    appended = set(map(int, open(os.path.join(day2, "vocab", "item_id.txt")).read().split())) - old_items
    assert appended == {i for i, c in counts.items() if c >= 2 and i not in old_items}
    assert st["values_new"] == len(appended) and st["previous_size"] == len(old_items) + 1
    assert st["splits"]["train"]["known"] == int(train2.item_id.isin(old_items).sum())
    assert st["splits"]["train"]["new"] == int(train2.item_id.isin(appended).sum())
    assert sum(st["splits"]["train"].values()) == len(train2)


# ---------------------------------------------------------------------------------------------- run mechanics
def test_stale_temp_dirs_are_removed_and_outputs_are_atomic(tmp_path, small_ratings):
    d = tmp_path / "in"
    d.mkdir()
    small_ratings.head(3000).to_csv(d / "r.csv", index=False)
    out = str(tmp_path / "ds")
    stale = [out + ".tmp-999999999", out + ".tmp-999999999-spill"]
    for s in stale:
        os.makedirs(os.path.join(s, "train"))
    ingest(write_spec(tmp_path, ml_small_spec("r.csv")), out, root=str(d), log=None)
    assert not any(os.path.exists(s) for s in stale)
    assert sorted(os.listdir(out)) == ["schema.yaml", "stats.json", "test", "train", "valid", "vocab"]
    assert glob.glob(out + ".tmp-*") == []
    with pytest.raises(FileExistsError):
        ingest(write_spec(tmp_path, ml_small_spec("r.csv")), out, root=str(d), log=None)


def test_cli_ingest_end_to_end(tmp_path, capsys):
    from tfmsr.cli import main

    out = str(tmp_path / "ds")
    args = ["data", "ingest", "--spec", os.path.join(SPECS, "amazon_musical_instruments.yaml"), "--out", out,
            "--root", datasets_dir("amazon-5core-musical-instruments"), "--quiet"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows_written"] == 10261 and os.path.isfile(os.path.join(out, "vocab", "item_id.txt"))
    assert main(args) == 2 and "already exists" in capsys.readouterr().err


VALS, INTS = [b"a", b"bbb", "\u00fc".encode(), b"x" * 300], [5, 300, -2, 2 ** 40]  # raw values of the encoder tests
CODES = np.array([0, 1, -1, 3])                                                       # -1: missing
SEQ = np.array([[0, 1, -1], [-1, -1, -1], [3, 3, 2], [1, -1, -1]])                   # -1: padding


def encoder_dictionaries():
    """(string, int64) ``encode.Dictionary`` of VALS and INTS."""
    from tfmsr.data.ingest import encode

    return encode.Dictionary(VALS, "string"), encode.Dictionary(INTS, "int64")


def test_encoder_bytes_parse_with_protobuf():
    import tensorflow as tf

    from tfmsr.data.ingest import encode

    words, nums = encoder_dictionaries()
    codes, seq, keep = CODES, SEQ, SEQ >= 0
    lists = [("q", seq[keep], keep.sum(1), words), ("k" * 200, seq[keep], keep.sum(1), nums)]
    rows = encode.split_records(encode.examples(
        4, [("i", "int", np.array([1, -5, 300, 2 ** 40])), ("f", "float", np.array([0.5, 1, 2, 3]))],
        [("s", codes, words), ("n", codes, nums)], lists))
    vals, ints = VALS, INTS
    for r, c, q, i, f in zip(rows, codes, seq, [1, -5, 300, 2 ** 40], [0.5, 1, 2, 3]):
        feat = tf.train.Example.FromString(r).features.feature
        assert feat["s"].bytes_list.value == ([vals[c]] if c >= 0 else [b""])
        assert feat["n"].int64_list.value == ([ints[c]] if c >= 0 else [0])
        assert feat["q"].bytes_list.value == [vals[x] for x in q if x >= 0]
        assert feat["k" * 200].int64_list.value == [ints[x] for x in q if x >= 0]
        assert feat["i"].int64_list.value == [i] and feat["f"].float_list.value == [f]
