"""MovieLens converter: the README protocol on the real MovieLens-100K (re-computed with pandas) and the
MovieLens-1M layout on a tiny generated input (re-computed with plain Python)."""
import json
import os

import numpy as np
import pandas as pd
import pytest
from conftest import datasets_dir

from tfmsr.cli import main as cli
from tfmsr.data.convert.movielens import GENRES, split_sizes
from tfmsr.data.pipeline import DataError


def read_dataset(out):
    """Every split of a converted dataset as one DataFrame (sequences as lists of their non-zero ids)."""
    from tfmsr.data.pipeline import make_dataset, split_files
    from tfmsr.features import Schema

    schema = Schema.load(os.path.join(out, "schema.yaml"))
    frames = []
    for split in ("train", "valid", "test"):
        if not os.path.isdir(os.path.join(out, split)):
            continue
        cols = {}
        for x, y in make_dataset(split_files(out, split), schema, 4096, training=False):
            x = dict(x, label=y)
            for k, v in x.items():
                v = v.numpy()
                v = [list(r[r != 0]) for r in v] if v.ndim == 2 else list(v)
                cols.setdefault(k, []).extend(v)
        df = pd.DataFrame(cols)
        df["split"] = split
        frames.append(df)
    return schema, pd.concat(frames, ignore_index=True)


def expected_split(df, valid=0.1, test=0.1):
    """Per row of ``df`` (user, ts, line): train/valid/test by the protocol, computed row by row."""
    out = pd.Series(index=df.index, dtype=object)
    for _, g in df.sort_values(["ts", "line"]).groupby("user", sort=False):
        n = len(g)
        n_test, n_valid = int(n * test + 1e-9), int(n * valid + 1e-9)
        while n - n_test - n_valid < 1:  # >= 1 train row: valid gives back first
            if n_valid:
                n_valid -= 1
            else:
                n_test -= 1
        n_train = n - n_test - n_valid
        out[g.index] = ["train"] * n_train + ["valid"] * n_valid + ["test"] * n_test
    return out


def expected_history(df, row, length):
    """Items of the user's ratings strictly before ``row``'s timestamp, most recent first (ties by line)."""
    earlier = df[(df.user == row.user) & (df.ts < row.ts)].sort_values(["ts", "line"], ascending=False)
    return earlier.item.tolist()[:length]


def test_split_sizes_keep_a_train_row():
    count = np.array([1, 2, 3, 9, 10, 19, 20, 25, 101])
    tr, va, te = split_sizes(count, 0.1, 0.1)
    assert te.tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 10]
    assert va.tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 10]
    assert (tr + va + te == count).all() and (tr >= 1).all()
    tr, va, te = split_sizes(np.array([1, 2, 3]), 0.4, 0.5)  # 2 -> 0 valid, 1 test; 3 -> 1 / 1 / 1
    assert tr.tolist() == [1, 1, 1] and va.tolist() == [0, 0, 1] and te.tolist() == [0, 1, 1]


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    src = datasets_dir("ml-100k")
    out = str(tmp_path_factory.mktemp("ml100k") / "data")
    assert cli(["data", "convert", "movielens", "--src", src, "--out", out]) == 0
    schema, got = read_dataset(out)
    raw = pd.read_csv(os.path.join(src, "u.data"), sep="\t", names=["user", "item", "rating", "ts"])
    raw["line"] = np.arange(len(raw))
    users = pd.read_csv(os.path.join(src, "u.user"), sep="|", names=["user", "age", "gender", "occ", "zip"])
    items = pd.read_csv(os.path.join(src, "u.item"), sep="|", header=None, encoding="latin-1")
    flags = items.iloc[:, 5:24].to_numpy()
    genre = pd.Series(np.where(flags.any(1), flags.argmax(1), 0) + 1, index=items[0])  # first genre id
    with open(os.path.join(out, "stats.json")) as fh:
        stats = json.load(fh)
    return schema, got, raw, users, genre, stats


def test_ml100k_schema_and_label(ml100k):
    schema, got, raw, users, genre, stats = ml100k
    assert schema.scenario.values == ["age_under25", "age_25_34", "age_35plus"]
    assert [f.name for f in schema.features] == ["user_id", "gender", "occupation", "zip3", "item_id", "genre",
                                                 "hist_item_id", "hist_genre", "hist_scenario"]
    assert schema.feature("hist_scenario").vocab_size == 4 and schema.oracle is None
    assert schema.feature("item_id").vocab_size == 1683 and schema.feature("user_id").vocab_size == 944
    assert len(got) == len(raw) == 100_000
    # ids: entry k-1 of the map is the original id of new id k (identity on 100K, whose ids are dense)
    umap, imap = np.array(stats["id_maps"]["user_id"]), np.array(stats["id_maps"]["item_id"])
    got["user"], got["item"] = umap[got.user_id - 1], imap[got.item_id - 1]
    m = got.merge(raw, on=["user", "item"], validate="one_to_one")
    assert len(m) == len(raw)
    assert (m.label == (m.rating_y >= 4)).all() and (m.rating_x == m.rating_y).all() and (m.timestamp == m.ts).all()
    assert int(got.label.sum()) == int((raw.rating >= 4).sum())
    assert (got.genre.to_numpy() == genre[got.item].to_numpy()).all()


def test_ml100k_scenarios(ml100k):
    schema, got, raw, users, genre, stats = ml100k
    age = users.set_index("user").age
    want = np.digitize(age[raw.user].to_numpy(), [25, 35])
    counts = np.bincount(want, minlength=3)
    assert np.bincount(got.scenario, minlength=3).tolist() == counts.tolist()
    assert [stats["scenario_rows"][n] for n in schema.scenario.values] == counts.tolist()
    assert (got.scenario.to_numpy() == np.digitize(age[got.user_id].to_numpy(), [25, 35])).all()


def test_ml100k_time_split_within_user(ml100k):
    schema, got, raw, users, genre, stats = ml100k
    raw = raw.assign(expect=expected_split(raw))
    m = got.merge(raw, left_on=["user_id", "item_id"], right_on=["user", "item"])
    assert (m.split == m.expect).all()
    per_user = got.groupby("user_id").split.value_counts().unstack(fill_value=0)
    assert (per_user["train"] >= 1).all() and len(per_user) == 943
    n = per_user.sum(axis=1)
    assert (per_user["test"] == np.floor(n * 0.1 + 1e-9)).all()
    assert (per_user["valid"] == np.floor(n * 0.1 + 1e-9)).all()
    # test rows are each user's latest, never earlier than a train row of the same user
    last_train = got[got.split == "train"].groupby("user_id").timestamp.max()
    first_test = got[got.split == "test"].groupby("user_id").timestamp.min()
    assert (first_test >= last_train[first_test.index]).all()


def test_ml100k_sequences_strictly_earlier(ml100k):
    schema, got, raw, users, genre, stats = ml100k
    # length of every sequence = min(30, the user's ratings strictly earlier)
    ts_by_user = {u: np.sort(g.ts.to_numpy()) for u, g in raw.groupby("user")}
    earlier = np.array([np.searchsorted(ts_by_user[u], t, side="left")
                        for u, t in zip(got.user_id, got.timestamp)])
    assert (got.hist_item_id.map(len).to_numpy() == np.minimum(earlier, 30)).all()
    # a few rows checked element by element against pandas
    rng = np.random.default_rng(0)
    for i in rng.choice(len(got), 40, replace=False):
        row = got.iloc[i]
        want = expected_history(raw, raw[(raw.user == row.user_id) & (raw.item == row.item_id)].iloc[0], 30)
        assert row.hist_item_id == want
        assert row.hist_genre == genre[want].tolist()
        assert row.hist_scenario == [row.scenario + 1] * len(want)


# ---------------------------------------------------------------------------------------- ML-1M layout
def write_ml1m(src, ratings=None):
    """users/movies/ratings.dat in the ML-1M layout; returns the generated ratings as tuples."""
    os.makedirs(src, exist_ok=True)
    users = ["1::F::1::10::48067", "2::M::56::16::70072", "3::M::25::15::55117", "5::F::35::4::T8H1N"]
    genres = ["Animation|Children's|Comedy", "Comedy|Drama", "Action|Adventure|Thriller", "Drama", "Western"]
    titles = ["Toy Story (1995)", "Café au lait (1993)", 'Beauty and the Beast, "The" (1991)', "Heat (1995)"]
    movies = [f"{i}::{titles[k % 4]}::{genres[k % 5]}" for k, i in enumerate(range(1, 46, 3))]  # ids 1,4,..,43
    generated = ratings is None
    if generated:
        rng = np.random.default_rng(1)
        ratings = []
        for user, n in ((1, 12), (2, 1), (3, 3), (5, 10)):
            items = rng.choice(np.arange(1, 46, 3), n, replace=False)
            ts = np.sort(rng.integers(978300000, 978300020, n))  # many timestamp ties
            ratings += [f"{user}::{i}::{rng.integers(1, 6)}::{t}" for i, t in zip(items, ts)]
        ratings = [ratings[j] for j in rng.permutation(len(ratings))]  # file order is not time order
    for name, lines in (("users.dat", users), ("movies.dat", movies), ("ratings.dat", ratings)):
        with open(os.path.join(src, name), "w", encoding="latin-1") as fh:
            fh.write("\n".join(lines) + "\n")
    return [tuple(int(v) for v in r.split("::")) for r in ratings] if generated else None


def test_ml1m_layout(tmp_path):
    src, out = str(tmp_path / "ml-1m"), str(tmp_path / "out")
    rows = write_ml1m(src)
    assert cli(["data", "convert", "movielens", "--src", src, "--out", out, "--scenario", "occupation",
                "--seq-len", "4"]) == 0
    schema, got = read_dataset(out)
    with open(os.path.join(out, "stats.json")) as fh:
        stats = json.load(fh)
    assert stats["converter"]["variant"] == "ml-1m"
    # occupations 10, 16, 15, 4 -> sorted names; age_band is a feature when age is not the scenario
    assert schema.scenario.values == ["college_grad_student", "k_12_student", "scientist", "self_employed"]
    assert "age_band" in [f.name for f in schema.features]
    imap, umap = stats["id_maps"]["item_id"], stats["id_maps"]["user_id"]
    assert imap == list(range(1, 46, 3)) and umap == [1, 2, 3, 5]
    assert stats["id_maps"]["zip3"] == ["480", "551", "700", "T8H"]
    raw = pd.DataFrame(rows, columns=["user", "item", "rating", "ts"]).assign(line=np.arange(len(rows)))
    raw["expect"] = expected_split(raw)
    got["user"] = np.array(umap)[got.user_id - 1]
    got["item"] = np.array(imap)[got.item_id - 1]
    m = got.merge(raw, on=["user", "item"], validate="one_to_one")
    assert len(m) == len(raw) and (m.split == m.expect).all()
    assert (m.label == (m.rating_y >= 4)).all()
    occ_scen = {1: 1, 2: 3, 3: 2, 5: 0}  # 10 K-12 student, 16 self-employed, 15 scientist, 4 college/grad
    assert (m.scenario == m.user.map(occ_scen)).all()
    band = {1: 1, 2: 7, 3: 3, 5: 4}  # age codes 1, 56, 25, 35 -> bands under18 .. 56plus (ids 1..7)
    assert (m.age_band == m.user.map(band)).all()
    first_genre = {i: GENRES.index(("Animation Comedy Action Drama Western".split())[k % 5]) + 1
                   for k, i in enumerate(range(1, 46, 3))}
    assert (m.genre == m.item.map(first_genre)).all()
    for _, row in m.iterrows():
        want = expected_history(raw, row, 4)
        assert [imap[i - 1] for i in row.hist_item_id] == want
        assert row.hist_genre == [first_genre[i] for i in want]
        assert row.hist_scenario == [row.scenario + 1] * len(want)
    # each split is in time order
    for _, g in got.groupby("split", sort=False):
        assert (np.diff(g.timestamp.to_numpy()) >= 0).all()


def test_ml1m_age_rule_and_bins(tmp_path):
    src = str(tmp_path / "ml-1m")
    write_ml1m(src)
    out = str(tmp_path / "age")
    assert cli(["data", "convert", "movielens", "--src", src, "--out", out]) == 0
    schema, got = read_dataset(out)
    assert schema.scenario.values == ["age_under25", "age_25_34", "age_35plus"]
    assert "age_band" not in [f.name for f in schema.features]
    assert sorted(got.groupby("user_id").scenario.first().tolist()) == [0, 1, 2, 2]  # ages 1, 56, 25, 35
    from tfmsr.data.convert.movielens import convert

    with pytest.raises(DataError, match="band start"):
        convert(src, str(tmp_path / "bad"), age_bins="30")


@pytest.mark.parametrize("ratings, match", [
    (["1::1::5::978300000", "1::2::4::978300001"], r"ratings\.dat: line 2: item 2 is not in .*movies\.dat"),
    (["1::1::5::978300000", "1::4::x::978300001"], r"ratings\.dat: line 2: field 'rating' must be an integer"),
    (["1::1::5::978300000", "1::4::5"], r"ratings\.dat: line 2: 3 field\(s\), expected 4"),
])
def test_ml1m_bad_input_names_file_and_line(tmp_path, ratings, match):
    src = str(tmp_path / "ml-1m")
    write_ml1m(src, ratings=ratings)
    from tfmsr.data.convert.movielens import convert

    with pytest.raises(DataError, match=match):
        convert(src, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_missing_source_is_one_clear_error(tmp_path, capsys):
    assert cli(["data", "convert", "movielens", "--src", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "u.data for MovieLens-100K or ratings.dat for MovieLens-1M" in capsys.readouterr().err
