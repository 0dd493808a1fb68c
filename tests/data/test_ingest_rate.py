"""``rate_per`` / ``train_count_per`` (``tfmsr/data/ingest/rates.py``): a key's train positive rate per row,
checked against a brute-force NumPy recomputation on a small CSV log (ties in time, keys with no earlier
train row, valid/test rows), the no-own-label property, spec errors and the --vocab-from carry-over."""
import json
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from tfmsr.data.convert._common import hash_unit
from tfmsr.data.ingest import SpecError, ingest
from tfmsr.data.ingest.rows import read_split
from tfmsr.data.pipeline import DataError

SPLITS = ("train", "valid", "test")
M = 3.0


def log_rows(seed=0, users=12, first_user=1, t0=0):
    """A rating log: 12 users x 6-9 ratings of 6 items (one item rated once), times on a coarse grid so that
    many rows tie in time, shuffled input order."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(first_user, first_user + users):
        for _ in range(rng.integers(6, 10)):
            rows.append((u, int(rng.choice([10, 11, 12, 13, 14], p=[.3, .3, .2, .1, .1])),
                         float(rng.integers(1, 6)), t0 + int(rng.integers(0, 8)) * 100))
    rows.append((first_user, 99, 5.0, t0 + 1000))  # an item rated once (last: test) -> prior only
    df = pd.DataFrame(rows, columns=["user", "item", "rating", "ts"]).drop_duplicates(["user", "item", "ts"])
    return df.iloc[rng.permutation(len(df))]


def spec(path, reading="as_of", **over):
    s = {"inputs": [{"path": path, "columns": {"user": "int64", "item": "int64", "rating": "float64", "ts": "int64"}}],
         "derive": {"rate": {"rate_per": "item", "m": M, "reading": reading, "folds": 3},
                    "seen": {"train_count_per": "item", "reading": reading, "folds": 3}},
         "label": {"name": "label", "rule": "rating >= 4"}, "user": "user_id", "time": "ts",
         "features": {"user_id": {"from": "user", "group": "user"}, "item_id": {"from": "item", "group": "item"},
                      "rate": {"group": "item", "kind": "numeric"},
                      "seen": {"group": "item", "kind": "numeric"}},
         "split": {"by": "user_time", "valid": 0.2, "test": 0.2}, "extras": {"ts": "int64"}}
    s.update(over)
    return s


def run(tmp_path, df, name="out", reading="as_of", vocab_from=None, **over):
    d = tmp_path / name
    d.mkdir()
    df.to_csv(d / "log.csv", index=False)
    (d / "spec.yaml").write_text(yaml.safe_dump(spec("log.csv", reading, **over), sort_keys=False))
    out = str(d / "ds")
    ingest(str(d / "spec.yaml"), out, log=None, vocab_from=vocab_from)
    rows = pd.concat([read_split(out, s).assign(split=s) for s in SPLITS], ignore_index=True)
    return out, rows.astype({"user_id": np.int64, "item_id": np.int64})


def oracle(rows, train_mask, prior=(None, 0, 0)):
    """Brute force: per row, the train rows of its item strictly earlier, all train rows strictly earlier;
    ``prior`` = (carried rows, positives by item; carried totals N0, P0)."""
    carried, n0, p0 = prior
    carried = carried or {}
    tr = rows[train_mask]
    out_rate, out_n = [], []
    for item, t in zip(rows.item_id, rows.ts):
        earlier = tr[tr.ts < t]
        mine = earlier[earlier.item_id == item]
        cn, cp = carried.get(item, (0, 0))
        n, pos = len(mine) + cn, mine.label.sum() + cp
        p = (earlier.label.sum() + p0 + 1.0) / (len(earlier) + n0 + 2.0)
        out_rate.append((pos + M * p) / (n + M))
        out_n.append(n)
    return np.array(out_rate), np.array(out_n)


def test_as_of_rate_matches_a_brute_force_recomputation(tmp_path):
    df = log_rows()
    out, rows = run(tmp_path, df)
    rate, n = oracle(rows, rows.split == "train")
    np.testing.assert_allclose(rows.rate, rate, rtol=1e-6)
    np.testing.assert_array_equal(rows.seen, n)
    # the data exercises what it should: ties between train rows of one item, valid/test rows, prior-only rows
    tr = rows[rows.split == "train"]
    assert tr.duplicated(["item_id", "ts"]).any() and (rows.split != "train").sum() >= 20
    with open(os.path.join(out, "stats.json")) as fh:
        stats = json.load(fh)["ingest"]["rates"]["rate"]
    for s in SPLITS:
        assert stats[f"{s}_rows"] == (rows.split == s).sum()
        assert stats[f"{s}_prior_only"] == ((rows.split == s) & (n == 0)).sum()
    assert rows.loc[rows.item_id == 99, "seen"].tolist() == [0] and stats["test_prior_only"] >= 1
    assert stats["train_rows_indexed"] == len(tr) and stats["table_bytes"] > 0


def test_a_row_never_reads_its_own_label_nor_valid_test_labels(tmp_path):
    df = log_rows()
    _, base = run(tmp_path, df, "a")
    key = ["user_id", "item_id", "ts"]
    base = base.sort_values(key).reset_index(drop=True)
    for split, field in (("train", "rate"), ("test", "rate"), ("valid", "rate")):
        row = base[base.split == split].iloc[0]
        flipped = df.copy()
        at = (flipped.user == row.user_id) & (flipped.item == row.item_id) & (flipped.ts == row.ts)
        flipped.loc[at, "rating"] = 1.0 if row.label else 5.0
        _, other = run(tmp_path, flipped, f"flip_{split}")
        other = other.sort_values(key).reset_index(drop=True)
        mine = (other.user_id == row.user_id) & (other.item_id == row.item_id) & (other.ts == row.ts)
        assert np.allclose(other.loc[mine, field], base.loc[mine, field])  # its own value: unchanged
        changed = ~np.isclose(other[field], base[field])
        if split == "train":  # later rows of the item (and the global prior) move
            assert changed.any() and (other.ts[changed] > row.ts).all()
        else:  # a valid/test label reaches no row
            assert not changed.any()


def test_out_of_fold_reading(tmp_path):
    df = log_rows(seed=1)
    out, rows = run(tmp_path, df, reading="out_of_fold")
    tr = rows[rows.split == "train"]
    users = np.sort(rows.user_id.unique())
    fold = dict(zip(users, np.minimum((hash_unit(pd.util.hash_array(users), 7) * 3).astype(int), 2)))
    for i, r in rows.iterrows():
        ref = tr[tr.user_id.map(fold) != fold[r.user_id]] if r.split == "train" else tr
        mine = ref[ref.item_id == r.item_id]
        p = (ref.label.sum() + 1.0) / (len(ref) + 2.0)
        assert r.seen == len(mine)
        assert r.rate == pytest.approx((mine.label.sum() + M * p) / (len(mine) + M), rel=1e-6)
    assert len(set(fold.values())) == 3


def test_vocab_from_carries_the_train_counts_over(tmp_path):
    day1 = log_rows(seed=2)
    out1, rows1 = run(tmp_path, day1, "day1")
    saved = pq.read_table(os.path.join(out1, "rates", "item.parquet")).to_pandas()
    tr1 = rows1[rows1.split == "train"]
    want = tr1.groupby("item_id").label.agg(["size", "sum"])
    assert dict(zip(saved.key, zip(saved.rows, saved.positives))) == {k: (a, b) for k, (a, b) in want.iterrows()}
    day2 = log_rows(seed=3, users=6, first_user=7, t0=5000)
    day2 = day2[day2.item != 12]  # item 12: only in day 1; must survive into day 2's file
    out2, rows2 = run(tmp_path, day2, "day2", vocab_from=out1)
    carried = {k: (a, b) for k, (a, b) in want.iterrows()}
    rate, n = oracle(rows2, rows2.split == "train", (carried, len(tr1), int(tr1.label.sum())))
    np.testing.assert_allclose(rows2.rate, rate, rtol=1e-6)
    np.testing.assert_array_equal(rows2.seen, n)
    saved2 = pq.read_table(os.path.join(out2, "rates", "item.parquet")).to_pandas().set_index("key")
    tr2 = rows2[rows2.split == "train"]
    assert saved2.loc[12, "rows"] == carried[12][0]
    for k in (10, 11):
        assert saved2.loc[k, "rows"] == carried[k][0] + (tr2.item_id == k).sum()
    # a previous dataset without the counts: an error naming the option, no silent restart from zero
    plain = spec("log.csv")
    del plain["derive"], plain["features"]["rate"], plain["features"]["seen"]
    d = tmp_path / "plain"
    d.mkdir()
    day1.to_csv(d / "log.csv", index=False)
    (d / "spec.yaml").write_text(yaml.safe_dump(plain))
    ingest(str(d / "spec.yaml"), str(d / "ds"), log=None)
    with pytest.raises(DataError, match=r"--vocab-from .*rates/item.parquet"):
        run(tmp_path, day2, "day2b", vocab_from=str(d / "ds"))


@pytest.mark.parametrize("change, fragment", [
    ({"time": None}, "needs 'time'"),
    ({"derive": {"rate": {"rate_per": "item", "m": 0}}}, "prior strength > 0"),
    ({"derive": {"rate": {"rate_per": "item", "reading": "loo"}}}, "reading"),
    ({"derive": {"rate": {"rate_per": "item", "reading": "out_of_fold", "folds": 1}}}, "folds >= 2"),
    ({"derive": {"rate": {"rate_per": "item", "reading": "out_of_fold"}}, "user": None,
      "split": {"by": "hash", "key": "item"}}, "needs 'user'"),
    ({"derive": {"rate": {"rate_per": "user", "reading": "out_of_fold"}}}, "never read its own key 'user'"),
    ({"derive": {"rate": {"rate_per": "item"}, "t2": {"bucketize": "rate", "boundaries": [0.5]}},
      "time": "t2"}, "computed from train labels"),
    ({"filter": ["rate > 0.5"]}, "per-key value"),
])
def test_spec_errors(tmp_path, change, fragment):
    s = spec("log.csv")
    s["features"] = {k: v for k, v in s["features"].items() if k != "seen"}
    s.update(change)
    s = {k: v for k, v in s.items() if v is not None}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(s))
    with pytest.raises(SpecError, match=fragment):
        ingest(str(tmp_path / "spec.yaml"), str(tmp_path / "out"), log=None)
