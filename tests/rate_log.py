"""A small ingested log whose item table has label-rate features (the shipped specs' ``item_rate``: rate_per,
out of fold, and ``item_train_n``: train_count_per, log1p), for the tests of servables that compute them from
the raw item id (``tfmsr/serving/rates.py``; ranking and retrieval)."""
import os

import numpy as np
import pandas as pd
import yaml

from tfmsr.data.ingest import ingest

COMPUTED = ("item_rate", "item_train_n")


def write_log(path, users, seed):
    """Ratings of 40 items (zipf popularity) in two domains: the item key is "<domain>:<item>"."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in users:
        for _ in range(rng.integers(8, 16)):
            it = int(rng.zipf(1.5)) % 40
            rows.append((u, "ab"[it % 2], it, float(rng.integers(1, 6) + (it % 3 == 0)), int(rng.integers(0, 10 ** 6))))
    pd.DataFrame(rows, columns=["user", "dom", "item", "rating", "ts"]).to_csv(path, index=False)


SPEC = {
    "inputs": [{"path": "log.csv", "columns": {"user": "int64", "dom": "string", "item": "int64", "rating": "float64",
                                               "ts": "int64"}}],
    "derive": {"item_key": {"concat": ["dom", "item"], "sep": ":"},
               "item_rate": {"rate_per": "item_key", "m": 10, "reading": "out_of_fold", "folds": 5},
               "item_train_n": {"train_count_per": "item_key", "reading": "out_of_fold", "folds": 5}},
    "label": {"name": "label", "rule": "rating >= 4"}, "scenario": {"from": "dom"}, "user": "user_id", "time": "ts",
    "features": {"user_id": {"from": "user", "group": "user"},
                 "item_id": {"from": "item_key", "group": "item", "min_count": 2},
                 "item_rate": {"group": "item", "transform": ["standardize"]},
                 "item_train_n": {"group": "item", "transform": ["log1p", "standardize"]}},
    "behaviour": {"length": 5, "features": {"hist_item_id": "item_id"}},
    "split": {"by": "user_time", "valid": 0.1, "test": 0.2}}


def day(root, name, users, seed, vocab_from=None):
    """Ingest one day's log (``SPEC``); returns the dataset directory."""
    d = os.path.join(root, name)
    os.makedirs(d)
    write_log(os.path.join(d, "log.csv"), users, seed)
    with open(os.path.join(d, "spec.yaml"), "w") as fh:
        yaml.safe_dump(SPEC, fh)
    ingest(os.path.join(d, "spec.yaml"), os.path.join(d, "ds"), log=None, vocab_from=vocab_from)
    return os.path.join(d, "ds")
