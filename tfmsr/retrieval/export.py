"""SavedModel export of a trained retrieval run (SASS Sec. 4.3 online serving; DESIGN section 6)::

    OUT/                          (its basename NAME names the TF Serving models: NAME_user_<scenario>, ...)
      user_<scenario>/<version>/  the user tower of scenario s: request -> {"vector": float32 [B, d]}
      item_<scenario>/<version>/  the item tower of scenario s: item features -> {"vector": float32 [B, d]};
                                  ``assets/corpus.npz``: ``item_ids [C]``, ``vectors [C, d]``, the item-vector
                                  corpus of s (the items exposed in s in the train split), and
                                  ``raw_item_ids [C]`` when the item table has a vocabulary
      topk_<scenario>/<version>/  request -> {"item_ids": [B, K], "scores": float32 [B, K]}: the user
                                  tower + a ``tfrs`` BruteForce index over that corpus (exact top-K by dot
                                  product; not written with ``k = 0``); ``item_ids`` are the raw item ids
                                  (string or int64, mapped back through the vocabulary in the graph) when
                                  the item table has a vocabulary, else int64 ids
      models.config               TF Serving model_config_list of every servable

It is ``tfmsr export`` (``tfmsr.cli.export``) for a retrieval run, and writes the ranking export's
layout through the same code (``tfmsr.serving.writer.write_export``): integer versions never
overwritten, everything under ``OUT/.tmp-export-*`` first, ``assets/schema.yaml``, ``assets/export.json``
and TF Serving warm-up requests in every version, stock TensorFlow ops only (loads with
``tf.saved_model.load`` in a process that never imports tfmsr).

Every servable has two signatures (``tfmsr.serving.signatures.feature_signatures``): ``serving_default``,
one named tensor per raw feature (batch-major; categorical int64 ``[None]``, numeric float32 ``[None]``,
sequences int64 ``[None, None]`` most recent first, right-padded with 0, fitted to the schema length in
the graph; a table with a vocabulary takes its raw values, string or int64, mapped to ids in the graph
from ``assets/<file>``, unknown values scored like id 0), and ``examples``, serialized ``tf.Example`` s (a
training record works: features the tower does not read are ignored). The request servables read the
user-side features (groups user, context, query, behavior) without the scenario, which the servable fixes;
the item servable reads the item features. The user and item statistics (``tfmsr.retrieval.data``) are
looked up by the user / item id in tables of the training run stored in the SavedModel; an item feature
ingest derives from the item's train labels (``item_rate``, ``item_train_n``) is computed from the raw
item id when the dataset has its table (``tfmsr.serving.rates``: not an input then), and the corpus
vectors (``corpus.npz``, the top-K index) are computed from the same values (``RetrievalData.served``), so
they equal what ``item_<s>`` returns for the raw id. Vectors are
L2-normalised for cosine models, so a dot product is the model's score. The top-K servable does not
exclude the user's earlier positives (the offline evaluation does).
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

import tfmsr  # noqa: F401  (Keras 2 before tensorflow_recommenders)
import tensorflow_recommenders as tfrs  # noqa: E402

from tfmsr.core.errors import ConfigError  # noqa: E402
from tfmsr.features.lookup import VocabLookups, read_vocabulary  # noqa: E402
from tfmsr.retrieval.data import RetrievalData  # noqa: E402
from tfmsr.retrieval.evaluate import ModelScorer  # noqa: E402
from tfmsr.serving.rates import RateLookups, from_dataset  # noqa: E402
from tfmsr.serving.signatures import feature_signatures, servable_names  # noqa: E402
from tfmsr.serving.writer import (ServableSpec, chosen_scenarios, new_version, servable_meta,  # noqa: E402
                                 write_export)


def _inputs(sigs) -> dict:
    return sigs["serving_default"].structured_input_signature[0][0]


def _raw_ids(schema, data: RetrievalData, corpus: np.ndarray) -> dict:
    """``{"raw_item_ids": ...}``: the raw values of the corpus ids when the item table has a vocabulary."""
    path = schema.vocab_path(schema.feature(data.item_key))
    if path is None:
        return {}
    return {"raw_item_ids": read_vocabulary(path, schema.table_owner(schema.feature(data.item_key)).raw)[corpus - 1]}


def export_retrieval(model_dir: str, out: str, version: Optional[int] = None, k: Optional[int] = None,
                     base_path: Optional[str] = None, scenarios: Optional[Sequence[str]] = None,
                     data: Optional[RetrievalData] = None, log=print) -> dict:
    """Export the finished retrieval run in ``model_dir`` to ``out`` (layout in the module docstring).
    ``k``: items of the top-K servables (default the run's ``eval.k``; 0: none); ``scenarios``: the
    scenario names to export (default all)."""
    from tfmsr.retrieval.train import load_trained

    start = time.time()
    out = os.path.normpath(out)
    version = new_version(out, version)
    models, data, cfg = load_trained(model_dir, data=data)
    schema = data.schema
    k = int(cfg["eval"]["k"] if k is None else k)
    if k < 0:
        raise ConfigError(f"--k must be >= 0 (0: no top-K servables), got {k}")
    if scenarios is not None and not scenarios:
        raise ConfigError("--scenarios none: a retrieval export is made of per-scenario servables; name at least one")
    chosen = chosen_scenarios(schema, scenarios)
    with tempfile.TemporaryDirectory(prefix="tfmsr-rates-") as work:   # the rate tables, copied into assets/
        rates = from_dataset(schema, data.data_dir, work, log)
        data.serve_with(rates)                  # the corpus from these very tables
        servables = _Servables(models, data, cfg, k, log, rates)
        summary = write_export(out, version, schema, servables.specs(chosen), base_path, log, k=k,
                               model=cfg["model"]["name"], model_dir=os.path.abspath(model_dir),
                               scenarios=[schema.scenario.values[s] for s in chosen], user_inputs=data.request_names,
                               item_inputs=data.item_names, corpus=servables.corpora,
                               computed_inputs=servables.rates.names if servables.rates else [])
    summary["seconds"] = round(time.time() - start, 1)
    return summary


class _Servables:
    """The user, item and top-K servables of each exported scenario; they share the run's user / item
    statistics tables and the vocabularies."""

    def __init__(self, models: dict, data: RetrievalData, cfg: dict, k: int, log, rates=None):
        self.models, self.data, self.k, self.log, self.rates = models, data, k, log, rates
        self.schema, self.names = data.schema, servable_names(data.schema)
        self.run = {"config": cfg, "data": data.data_dir}
        self.user_stats = tf.Variable(data.user_stats, trainable=False, name="user_stats")
        self.item_stats = tf.Variable(data.item_stats, trainable=False, name="item_stats")
        self.corpora = {}  # servable name -> items in its corpus, filled as the servables are written
        self.lookups = VocabLookups(self.schema)  # raw values -> ids in every servable; item ids -> raw values in top-K
        self.items = self.lookups.of(data.item_key)

    def _rates(self, names):
        """The computed features among ``names`` (``RateLookups``, maybe empty)."""
        return self.rates.only(names) if self.rates else RateLookups({}, {})

    def specs(self, chosen: Sequence[int]):
        """The servables of each chosen scenario, built one at a time as ``write_export`` writes them."""
        for s in chosen:
            yield from self._scenario(s)

    def _scenario(self, s: int):
        """Scenario ``s``'s user and item servables, and its top-K servable unless k = 0 or its corpus is empty."""
        data, schema, name, scen = self.data, self.schema, self.names[s], self.schema.scenario.name
        model = self.models.get(s, self.models[0])     # single-scenario training: the model of s
        norm = (lambda v: tf.math.l2_normalize(v, -1)) if model.cosine else (lambda v: v)

        def user_vector(x):
            x = dict(x)
            x[scen] = tf.fill(tf.shape(x[data.user_key])[:1], tf.constant(s, tf.int64))
            return norm(model.user_vectors(data.with_user_stats(x, self.user_stats), training=False))

        def item_vector(x):
            return {"vector": norm(model.item_vectors(data.with_item_stats(x, self.item_stats), s, training=False))}

        corpus = data.corpus(s)
        vectors = ModelScorer(model, data).item_vectors(s, corpus) if len(corpus) else None
        self.corpora[name] = int(len(corpus))
        meta = dict(cosine=model.cosine, corpus_items=int(len(corpus)))

        def meta_of(kind, sigs, **more):
            return servable_meta(schema, self.run, s, _inputs(sigs), kind=kind, **meta, **more)

        rates = self._rates(data.request_names)
        sigs = feature_signatures(schema, data.request_names, lambda x: {"vector": user_vector(x)}, self.lookups, rates)
        yield ServableSpec(f"user_{name}", sigs, meta_of("user", sigs, **rates.meta), model.variables,
                           tracked={"user_stats": self.user_stats, "vocab": self.lookups, "rates": rates})
        rates = self._rates(data.item_names)
        sigs = feature_signatures(schema, data.item_names, item_vector, self.lookups, rates)
        corpus_file = {"corpus.npz": lambda p: np.savez(p, item_ids=corpus, vectors=vectors,
                                                        **_raw_ids(schema, data, corpus))}
        yield ServableSpec(f"item_{name}", sigs, meta_of("item", sigs, **rates.meta), model.variables,
                           tracked={"item_stats": self.item_stats, "vocab": self.lookups, "rates": rates},
                           files=corpus_file if len(corpus) else {})
        self.log(f"[export] scenario {name}: corpus of {len(corpus)} items")
        if self.k and len(corpus):
            yield self._topk(s, model, user_vector, corpus, vectors, meta_of)

    def _topk(self, s: int, model, user_vector, corpus: np.ndarray, vectors: np.ndarray, meta_of) -> ServableSpec:
        """Scenario ``s``'s top-K servable: its user tower and a ``tfrs`` BruteForce index over its corpus."""
        k, items = min(self.k, len(corpus)), self.items
        index = tfrs.layers.factorized_top_k.BruteForce(k=k, name=f"index_{self.names[s]}")
        index.index(tf.constant(vectors), tf.constant(corpus))

        def topk(x):
            scores, ids = index(user_vector(x))
            return {"item_ids": ids if items is None else items.raw_values(ids), "scores": scores}

        rates = self._rates(self.data.request_names)
        sigs = feature_signatures(self.schema, self.data.request_names, topk, self.lookups, rates)
        return ServableSpec(f"topk_{self.names[s]}", sigs, meta_of("topk", sigs, k=k, **rates.meta), model.variables,
                            tracked={"user_stats": self.user_stats, "index": index, "vocab": self.lookups,
                                     "rates": rates})
