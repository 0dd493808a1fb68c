"""Retrieval samples from any tfmsr dataset directory (the shards + ``schema.yaml`` of DESIGN section 3).

One streaming pass over each split turns click rows into matching data:

* **request** (the user side): the row's features of groups ``user``, ``context``, ``query`` and
  ``behavior`` (the behaviour sequence as of that row) and its scenario, plus ``user_stats``.
* **positive**: the row's item when the label is 1 (``click = 1``; MovieLens ``rating >= 4``). Train
  positives train the models; the positives of the evaluation split are its queries.
* **item table**: the ``item``-group features of every item id (the last value seen; row 0 = padding).
  Training reads it as is. The **served item table** (``served_items``), which the evaluation's and the
  export's corpus vectors read, differs in the label-rate features a servable computes from the raw item id
  (``item_rate``, ``item_train_n``; ``tfmsr.serving.rates``): there they hold the item's full-train value, what
  a server computes and what ingest gives valid / test rows. A train row holds an out-of-fold value (its own
  fold's labels left out), so training does not learn from a feature that contains its own label; the corpus
  is scored with what a server sees. Datasets without ``rates/`` serve the training table.
* **user- and item-scenario statistics** (SASS Sec. 4.1.1: "statistic characteristics in the
  corresponding scenario"), from the train split, per key and scenario: ``log1p(exposures)``,
  ``log1p(clicks)`` and the smoothed click rate ``(clicks + 10 p) / (exposures + 10)`` (``p`` = train click
  rate); index ``S`` holds all scenarios together. ``float32 [V, S + 1, 3]``.
* **corpus** of scenario s: the item ids exposed in s in the train split (sorted), the candidates the
  evaluation ranks and an example's sampled negatives are drawn from (those of its own scenario s).
* **train positives per user** (CSR), removed from the evaluation ranking.

Memory: the kept positive rows plus O(users x scenarios + items x scenarios) counters; the non-clicked
rows are streamed and only counted. Keys (the schema's ``user_key`` and the item id) must be integer ids.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfmsr.data.pipeline import DataError, make_dataset, read_errors, split_files
from tfmsr.features import Schema, SchemaError
from tfmsr.features.lookup import read_vocabulary
from tfmsr.layers.behavior import behavior_pairs

REQUEST_GROUPS = ("user", "context", "query", "behavior")
STATS = ("log1p_exposures", "log1p_clicks", "click_rate")
SMOOTHING = 10.0


def item_key(schema: Schema) -> str:
    """The item id feature: ``item_id`` if present, else the item feature a behaviour sequence shares."""
    items = {f.name: f for f in schema.group("item", "categorical")}
    name = "item_id" if "item_id" in items else next((f.name for _, f in behavior_pairs(schema)), None)
    if name is None:
        raise SchemaError(f"{schema.source}: retrieval needs an item id: a categorical feature of group 'item' "
                          "named item_id (or one that a behaviour sequence shares)")
    return name


def _integer_key(schema: Schema, name: str, what: str) -> int:
    f = schema.feature(name)
    if f.kind != "categorical" or schema.table_owner(f).hashed:
        raise SchemaError(f"{schema.source}: retrieval needs the {what} key '{name}' as a categorical feature with "
                          "vocab_size (integer ids), not hashed or numeric")
    return int(schema.table_owner(f).vocab_size)


def request_names(schema: Schema) -> List[str]:
    return [f.name for f in schema.features if f.group in REQUEST_GROUPS]


def item_names(schema: Schema) -> List[str]:
    return [f.name for f in schema.group("item")]


def iter_split(data_dir: str, schema: Schema, split: str, batch: int = 8192) -> Iterator[Tuple[dict, np.ndarray]]:
    """(columns as NumPy, label) batches of one split, in file order."""
    files = split_files(data_dir, split)
    ds = make_dataset(files, schema, batch, training=False)
    with read_errors(files, schema):
        for x, y in ds:
            if isinstance(y, dict):
                y = y[schema.label]
            yield {k: v.numpy() for k, v in x.items()}, y.numpy()


def stats_features(exposures: np.ndarray, clicks: np.ndarray) -> np.ndarray:
    """``[V, S]`` counts -> ``float32 [V, S + 1, 3]`` (see the module docstring)."""
    exp = np.concatenate([exposures, exposures.sum(1, keepdims=True)], axis=1).astype(np.float64)
    clk = np.concatenate([clicks, clicks.sum(1, keepdims=True)], axis=1).astype(np.float64)
    p = clk[:, -1].sum() / max(exp[:, -1].sum(), 1.0)
    rate = (clk + SMOOTHING * p) / (exp + SMOOTHING)
    return np.stack([np.log1p(exp), np.log1p(clk), rate], axis=-1).astype(np.float32)


def served_items(schema: Schema, data_dir: str, items: Dict[str, np.ndarray], log=print) -> Dict[str, np.ndarray]:
    """``items`` (the item table) with each label-rate feature a servable computes from a raw key at that value
    (:func:`with_rates` of ``tfmsr.serving.rates.from_dataset``'s lookups); ``items`` itself when there are none."""
    from tfmsr.serving.rates import from_dataset

    with tempfile.TemporaryDirectory(prefix="tfmsr-rates-") as work:
        return with_rates(schema, items, from_dataset(schema, data_dir, work, log, tag="served items"))


def with_rates(schema: Schema, items: Dict[str, np.ndarray], rates) -> Dict[str, np.ndarray]:
    """``items`` with the features of ``rates`` (``RateLookups`` or None) run on the raw keys of the table's ids
    (id 0 / outside the vocabulary: the missing key); ``items`` itself when none of them is an item feature."""
    rates = rates.only(list(items)) if rates else None
    if not rates:
        return items
    raw = {}
    for key in {f.key for f in rates.features.values()}:
        owner = schema.table_owner(schema.feature(key))
        vocab = read_vocabulary(schema.vocab_path(schema.feature(key)), owner.raw)
        ids = items[key].astype(np.int64)
        inside = (ids > 0) & (ids <= len(vocab))
        values = np.full(len(ids), b"" if owner.raw == "string" else 0, dtype=vocab.dtype)
        values[inside] = vocab[ids[inside] - 1]
        raw[key] = tf.constant(values, tf.string if owner.raw == "string" else tf.int64)
    got = rates(raw)
    return {**items, **{n: got[n].numpy().astype(items[n].dtype) for n in rates.names}}


def _concat(parts: List[dict]) -> dict:
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def take(rows: dict, mask_or_index) -> dict:
    return {k: v[mask_or_index] for k, v in rows.items()}


def _clamp(ids, vocab: int):
    return tf.where((ids > 0) & (ids < vocab), ids, tf.zeros_like(ids))


def sample_negatives(logits: tf.Tensor, row: tf.Tensor, m: int, seed: Optional[int] = None) -> tf.Tensor:
    """``int64 [B * m]``: ``m`` item ids per example b drawn from the categorical distribution of row
    ``row[b]`` of ``logits [R, V]`` (row-major by example). One ``tf.random.categorical`` draws ``B * m``
    ids from every row, and each example keeps its own row's: ``R * B * m`` draws, no per-example loop."""
    b = tf.shape(row)[0]
    draws = tf.random.categorical(logits, b * m, dtype=tf.int64, seed=seed)          # [R, B * m]
    draws = tf.reshape(draws, [tf.shape(logits)[0], b, m])
    own = tf.gather_nd(draws, tf.stack([tf.cast(row, tf.int32), tf.range(b)], axis=1))  # [B, m]
    return tf.reshape(own, [-1])


def sample_pool(logits: tf.Tensor, m: int, seed: Optional[int] = None) -> tf.Tensor:
    """``int64 [R * m]``: ``m`` item ids drawn from each row of ``logits [R, V]`` (row-major by row): one
    pool of negatives per scenario, shared by every example of the batch in that scenario."""
    return tf.reshape(tf.random.categorical(logits, m, dtype=tf.int64, seed=seed), [-1])


@dataclass
class RetrievalData:
    schema: Schema
    data_dir: str
    user_key: str
    item_key: str
    num_users: int                      # user id vocab (table rows)
    num_items: int                      # item id vocab
    items: Dict[str, np.ndarray]        # item feature -> [num_items] values by item id
    exposures: np.ndarray               # int64 [num_items, S] train exposures per scenario
    item_positives: np.ndarray          # int64 [num_items, S] train positives per scenario
    item_stats: np.ndarray              # float32 [num_items, S + 1, 3]
    user_stats: np.ndarray              # float32 [num_users, S + 1, 3]
    train: Dict[str, np.ndarray]        # train positives: request columns, scenario, "item"
    queries: Dict[str, Dict[str, np.ndarray]]  # split -> its positives (same columns)
    user_pos_indptr: np.ndarray         # CSR of the sorted train positive item ids of each user
    user_pos_items: np.ndarray
    _tables: Optional[dict] = field(default=None, repr=False)
    _served: Optional[dict] = field(default=None, repr=False)

    @property
    def num_scenarios(self) -> int:
        return self.schema.num_scenarios

    @property
    def scenario_names(self) -> List[str]:
        return list(self.schema.scenario.values)

    @property
    def request_names(self) -> List[str]:
        return request_names(self.schema)

    @property
    def item_names(self) -> List[str]:
        return item_names(self.schema)

    def corpus(self, s: int) -> np.ndarray:
        """Sorted item ids exposed in scenario ``s`` in the train split."""
        return np.flatnonzero(self.exposures[:, s] > 0).astype(np.int64)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, data_dir: str, eval_splits: Sequence[str] = ("test",), batch: int = 8192) -> "RetrievalData":
        schema = Schema.load(f"{data_dir}/schema.yaml")
        ukey, ikey = schema.user_key, item_key(schema)
        U, I, S = _integer_key(schema, ukey, "user"), _integer_key(schema, ikey, "item"), schema.num_scenarios
        req_cols = request_names(schema) + [schema.scenario.name]
        items = {}
        u_exp, u_clk = np.zeros(U * S, np.int64), np.zeros(U * S, np.int64)
        i_exp, i_clk = np.zeros(I * S, np.int64), np.zeros(I * S, np.int64)
        pos_parts = []
        for x, y in iter_split(data_dir, schema, "train", batch):
            s = x[schema.scenario.name].astype(np.int64)
            if s.size and (s.min() < 0 or s.max() >= S):
                raise DataError(f"{data_dir}/train: scenario outside [0, {S})")
            u = np.where((x[ukey] > 0) & (x[ukey] < U), x[ukey], 0)
            it = np.where((x[ikey] > 0) & (x[ikey] < I), x[ikey], 0)
            pos = y > 0.5
            u_exp += np.bincount(u * S + s, minlength=U * S)
            u_clk += np.bincount((u * S + s)[pos], minlength=U * S)
            i_exp += np.bincount(it * S + s, minlength=I * S)
            i_clk += np.bincount((it * S + s)[pos], minlength=I * S)
            for name in item_names(schema):
                if name not in items:
                    items[name] = np.zeros((I,) + x[name].shape[1:], x[name].dtype)
                items[name][it] = x[name]
            if pos.any():
                row = {c: x[c][pos] for c in req_cols}
                row["item"] = it[pos]
                pos_parts.append(row)
        if not pos_parts:
            raise DataError(f"{data_dir}/train: no positive rows (label {schema.label} = 1): nothing to retrieve")
        i_exp, i_clk = i_exp.reshape(I, S), i_clk.reshape(I, S)
        u_exp, u_clk = u_exp.reshape(U, S), u_clk.reshape(U, S)
        i_exp[0] = i_clk[0] = 0  # id 0 (padding / OOV) is never a candidate
        train = _concat(pos_parts)
        queries = {}
        for split in eval_splits:
            parts = []
            for x, y in iter_split(data_dir, schema, split, batch):
                pos = y > 0.5
                if pos.any():
                    row = {c: x[c][pos] for c in req_cols}
                    row["item"] = np.where((x[ikey] > 0) & (x[ikey] < I), x[ikey], 0)[pos]
                    parts.append(row)
            queries[split] = _concat(parts) if parts else {}
        # train positives per user (CSR over user ids, item ids sorted and unique)
        uid = np.where((train[ukey] > 0) & (train[ukey] < U), train[ukey], 0)
        code = np.unique(uid * I + train["item"])
        indptr = np.zeros(U + 1, np.int64)
        np.cumsum(np.bincount(code // I, minlength=U), out=indptr[1:])
        return cls(schema, data_dir, ukey, ikey, U, I, items, i_exp, i_clk, stats_features(i_exp, i_clk),
                   stats_features(u_exp, u_clk), train, queries, indptr, (code % I).astype(np.int64))

    def user_positives(self, user: int) -> np.ndarray:
        return self.user_pos_items[self.user_pos_indptr[user]:self.user_pos_indptr[user + 1]]

    def positives(self, split: str, scenario: Optional[int] = None) -> Dict[str, np.ndarray]:
        rows = self.train if split == "train" else self.queries.get(split)
        if rows is None:
            raise KeyError(f"split '{split}' was not loaded (loaded: train, {', '.join(self.queries)})")
        if scenario is None or not rows:
            return rows
        return take(rows, rows[self.schema.scenario.name] == scenario)

    # ------------------------------------------------------------------ TensorFlow views
    def tables(self) -> dict:
        if self._tables is None:
            with tf.init_scope():  # eager constants, shared by every dataset map / function that reads them
                self._tables = {"items": {k: tf.constant(v) for k, v in self.items.items()},
                                "item_stats": tf.constant(self.item_stats),
                                "user_stats": tf.constant(self.user_stats)}
        return self._tables

    def item_view(self, ids: tf.Tensor) -> Dict[str, tf.Tensor]:
        """Item tower input of item ids ``[N]``: the item features and ``item_stats [N, S + 1, 3]``."""
        t = self.tables()
        ids = _clamp(tf.cast(ids, tf.int64), self.num_items)
        out = {k: tf.gather(v, ids) for k, v in t["items"].items()}
        out["item_stats"] = tf.gather(t["item_stats"], ids)
        return out

    def with_user_stats(self, request: Dict[str, tf.Tensor], table=None) -> Dict[str, tf.Tensor]:
        """A request dict plus ``user_stats [B, S + 1, 3]`` looked up by its user id (in ``table``, e.g.
        an exported variable holding ``user_stats``; default the constant of ``tables()``)."""
        out = dict(request)
        ids = _clamp(tf.cast(request[self.user_key], tf.int64), self.num_users)
        out["user_stats"] = tf.gather(self.tables()["user_stats"] if table is None else table, ids)
        return out

    def with_item_stats(self, items: Dict[str, tf.Tensor], table) -> Dict[str, tf.Tensor]:
        """Item features plus ``item_stats [N, S + 1, 3]`` looked up in ``table`` by the item id."""
        out = dict(items)
        out["item_stats"] = tf.gather(table, _clamp(tf.cast(items[self.item_key], tf.int64), self.num_items))
        return out

    def request_of(self, rows: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        cols = self.request_names + [self.schema.scenario.name]
        return self.with_user_stats({c: rows[c] for c in cols})

    @property
    def served(self) -> Dict[str, np.ndarray]:
        """The served item table (``served_items``; module docstring: why it differs from ``items``)."""
        if self._served is None:
            self._served = served_items(self.schema, self.data_dir, self.items)
        return self._served

    def serve_with(self, rates) -> None:
        """Make the served item table with ``rates`` (the export's ``RateLookups``, or None: none), not a
        second build of the same tables (:func:`with_rates`)."""
        self._served = with_rates(self.schema, self.items, rates)

    def numpy_items(self, ids: np.ndarray, served: bool = True) -> Dict[str, np.ndarray]:
        """Item tower input of item ids (NumPy): the served item table by default (evaluation, export),
        the training one with ``served=False``."""
        ids = np.asarray(ids, np.int64)
        out = {k: v[ids] for k, v in (self.served if served else self.items).items()}
        out["item_stats"] = self.item_stats[ids]
        return out

    def numpy_request(self, rows: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        out = {c: rows[c] for c in self.request_names + [self.schema.scenario.name]}
        u = rows[self.user_key]
        out["user_stats"] = self.user_stats[np.where((u > 0) & (u < self.num_users), u, 0)]
        return out

    def negative_logits(self, power: float = 0.75, scenario: Optional[int] = None) -> np.ndarray:
        """``float32 [S, V]`` (``[1, V]`` for one ``scenario``): row s holds the log-probabilities of the
        negative sampler in scenario s, ``power * log(train exposures in s)`` on the corpus of s (``corpus``: the
        candidates evaluation ranks) and -1e9 elsewhere: word2vec's unigram^0.75 distribution at power 0.75,
        uniform over the corpus at power 0."""
        counts = self.exposures if scenario is None else self.exposures[:, scenario:scenario + 1]
        counts = counts.T.astype(np.float64)
        return np.where(counts > 0, power * np.log(np.maximum(counts, 1.0)), -1e9).astype(np.float32)

    def finetune_dataset(self, batch_size: int, negatives: int, seed: int = 0, scenario: Optional[int] = None,
                         with_probability: bool = False, power: float = 0.75,
                         shared: bool = False) -> Tuple[tf.data.Dataset, int]:
        """Endless shuffled batches ``{"request", "pos", "pos_id"[, "neg", "neg_id"][, "pos_prob"]}`` of the
        train positives (of one ``scenario``, or all), with ``negatives`` items per positive drawn from the
        positive's scenario corpus with probability ~ exposures^``power`` (``negative_logits``; ``neg`` holds
        ``B * negatives`` items, row-major by example; ``shared``: ``negatives`` items per scenario row of
        ``negative_logits`` for the whole batch, ``[R * negatives]`` row-major by scenario, R = S or 1 for one
        ``scenario``, see ``sample_pool``); returns (dataset, steps per epoch).
        ``pos_prob`` is each positive item's share of the training positives (its in-batch sampling
        probability, for the logQ correction of sampled softmax)."""
        rows = self.positives("train", scenario)
        n = len(rows["item"]) if rows else 0
        if n == 0:
            name = "all scenarios" if scenario is None else f"scenario {self.scenario_names[scenario]}"
            raise DataError(f"{self.data_dir}/train: no positives in {name}")
        counts = np.bincount(rows["item"], minlength=self.num_items).astype(np.float32)
        prob = tf.constant(counts / counts.sum())
        logits = tf.constant(self.negative_logits(power, scenario))
        scen = self.schema.scenario.name
        ds = tf.data.Dataset.from_tensor_slices(rows).shuffle(n, seed=seed, reshuffle_each_iteration=True)
        ds = ds.repeat().batch(batch_size, drop_remainder=True)

        def make(b):
            out = {"request": self.request_of(b), "pos": self.item_view(b["item"]), "pos_id": b["item"]}
            if negatives:
                row = tf.cast(b[scen], tf.int64) if scenario is None else tf.zeros_like(b["item"])
                neg = (sample_pool(logits, negatives, seed + 1) if shared else
                       sample_negatives(logits, row, negatives, seed + 1))
                out["neg"], out["neg_id"] = self.item_view(neg), neg
            if with_probability:
                out["pos_prob"] = tf.gather(prob, b["item"])
            return out

        ds = ds.map(make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.prefetch(tf.data.AUTOTUNE), max(1, math.ceil(n / batch_size))
