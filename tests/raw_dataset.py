"""A small dataset that stores RAW values (the layout ``tfmsr data ingest`` writes), for the lookup, export
and scoring tests: string user ids and int64 item ids (beyond 2^32) with vocabulary files, a behaviour
sequence of raw item ids sharing the item table, next to tables that keep storing ids (``category``) or
hash strings (``city``). Some raw values are missing ("" / 0) and some are unknown (not in the vocabulary).

``write_raw_dataset(out)`` returns the raw columns written per split, so a test can recompute the ids with
NumPy (``expected_ids``)."""
import os

import numpy as np

from tfmsr.data.tfrecord import DatasetWriter
from tfmsr.features import Schema

USERS = [f"user-{k:02d}" for k in range(40)]
ITEMS = [10 ** 12 + 7919 * k for k in range(30)]
LENGTH = 4


def raw_schema() -> Schema:
    return Schema.from_dict({
        "scenario": {"name": "scenario", "values": ["feed", "search"]},
        "labels": ["click"],
        "user_key": "user_id",
        "features": [
            {"name": "user_id", "kind": "categorical", "group": "user", "vocab_size": len(USERS) + 1, "dim": 8,
             "vocab": "vocab/user_id.txt", "raw": "string"},
            {"name": "item_id", "kind": "categorical", "group": "item", "vocab_size": len(ITEMS) + 1, "dim": 8,
             "vocab": "vocab/item_id.txt", "raw": "int64"},
            {"name": "category", "kind": "categorical", "group": "item", "vocab_size": 6, "dim": 4},
            {"name": "city", "kind": "categorical", "group": "context", "hash_buckets": 50, "dim": 4},
            {"name": "hist_item_id", "kind": "sequence", "group": "behavior", "share": "item_id",
             "length": LENGTH},
            {"name": "price", "kind": "numeric", "group": "item", "mean": 1.0, "std": 0.5},
        ]})


def _raw(rng, vocab, n, unknown, missing_value, p_unknown=0.06, p_missing=0.04):
    """``n`` raw values: from ``vocab``, an unknown value, or the missing value."""
    vals = np.array(vocab, dtype=object)[rng.integers(0, len(vocab), n)]
    u = rng.random(n)
    vals[u < p_unknown] = unknown
    vals[(u >= p_unknown) & (u < p_unknown + p_missing)] = missing_value
    return vals


def _columns(rng, n):
    users = _raw(rng, USERS, n, "ghost-user", "")
    items = _raw(rng, ITEMS, n, 5, 0).astype(np.int64)
    lengths = rng.integers(0, LENGTH + 3, n)  # some histories longer than L: truncated to the most recent L
    hist = [list(_raw(rng, ITEMS, int(k), 123, 0, p_unknown=0.1, p_missing=0.0).astype(np.int64)) for k in lengths]
    u_eff = {u: rng.normal() for u in USERS}
    i_eff = {i: rng.normal() for i in ITEMS}
    logit = np.array([u_eff.get(u, 0.0) + 1.5 * i_eff.get(i, 0.0) for u, i in zip(users, items)])
    return {
        "scenario": rng.integers(0, 2, n).astype(np.int64),
        "click": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32),
        "user_id": users, "item_id": items, "hist_item_id": hist,
        "category": rng.integers(0, 7, n).astype(np.int64),  # 6 is out of range: an OOV id, as before
        "city": np.array([f"city-{c}" for c in rng.integers(0, 9, n)], dtype=object),
        "price": rng.lognormal(0.0, 0.5, n).astype(np.float32),
    }


def write_vocab(path, values) -> None:
    """One raw value per line (line n = id n), written atomically."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.writelines(f"{v}\n" for v in values)
    os.replace(tmp, path)


def write_raw_dataset(out, rows=None, seed=0, rows_per_shard=700):
    """Write the dataset (train / valid / test) with its vocabularies (the vocabulary files in a shuffled
    order, so an id is not the value's rank); returns ``{split: raw columns}``."""
    rows = rows or {"train": 2000, "valid": 500, "test": 500}
    rng = np.random.default_rng(seed)
    schema = raw_schema()
    cols = {split: _columns(rng, n) for split, n in rows.items()}
    with DatasetWriter(out, schema, rows_per_shard=rows_per_shard) as w:
        for split, c in cols.items():
            w.write(split, c)
    write_vocab(os.path.join(out, "vocab", "user_id.txt"), rng.permutation(USERS))
    write_vocab(os.path.join(out, "vocab", "item_id.txt"), rng.permutation(np.array(ITEMS, np.int64)))
    return cols


def read_vocab(data_dir, table, dtype):
    with open(os.path.join(data_dir, "vocab", f"{table}.txt")) as fh:
        return [dtype(line.rstrip("\n")) for line in fh]


def expected_ids(data_dir, cols):
    """NumPy ids of the raw columns (the contract of ``tfmsr.features.lookup``): line n -> n, missing -> 0,
    unknown -> -1; sequences truncated to L and right-padded with 0."""
    users = {v: n + 1 for n, v in enumerate(read_vocab(data_dir, "user_id", str))}
    items = {v: n + 1 for n, v in enumerate(read_vocab(data_dir, "item_id", int))}

    def ids(values, vocab, missing):
        return np.array([0 if v == missing else vocab.get(v, -1) for v in values], np.int64)

    hist = np.zeros((len(cols["hist_item_id"]), LENGTH), np.int64)
    for r, h in enumerate(cols["hist_item_id"]):
        row = ids([int(v) for v in h[:LENGTH]], items, 0)
        hist[r, :len(row)] = row
    return {"user_id": ids(list(cols["user_id"]), users, ""), "item_id": ids(cols["item_id"].tolist(), items, 0),
            "hist_item_id": hist}
