"""SavedModel export of a trained retrieval run (SASS Sec. 4.3 online serving; DESIGN section 6)::

    OUT/
      user_<scenario>/<version>/   request features -> {"vector": float32 [B, d]}: the user tower of scenario s
      item_<scenario>/<version>/   item features    -> {"vector": float32 [B, d]}: the item tower of scenario s
      topk_<scenario>/<version>/   request features -> {"item_ids": int64 [B, K], "scores": float32 [B, K]}:
                                   the user tower + a ``tfrs`` BruteForce index over the scenario's corpus
      corpus/<scenario>.npz        item_ids [C], vectors [C, d]: the item-vector corpus of scenario s
      models.config                TF Serving model_config_list of every servable
      export.json                  scenarios, inputs, k, model, params, source run

Inputs are one named tensor per raw feature, batch-major (categorical int64 ``[None]``, numeric float32
``[None]``, sequences int64 ``[None, None]`` most recent first, right-padded with 0; truncated / padded to
the schema length in the graph): the request servables take the user-side features (groups user, context,
query, behavior) without the scenario, the item servable the item features. The user and item statistics
(``tfmsr.retrieval.data``) are looked up in tables of the training run stored in the SavedModel, by the
user / item id. Vectors are L2-normalised for cosine models, so a dot product is the model's score.
Every servable is a ``tf.Module`` holding the variables its function reads, uses stock TensorFlow ops
only and loads with ``tf.saved_model.load`` in a process that never imports tfmsr. Written under
``OUT/.tmp-export-*`` and renamed into place; an existing version is never overwritten.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

import tfmsr  # noqa: F401  (Keras 2 before tensorflow_recommenders)
import tensorflow_recommenders as tfrs  # noqa: E402

from tfmsr.export.serving_config import write_model_config  # noqa: E402
from tfmsr.export.signatures import input_dtype, servable_names  # noqa: E402
from tfmsr.models.base import ConfigError  # noqa: E402
from tfmsr.retrieval.data import RetrievalData  # noqa: E402
from tfmsr.retrieval.evaluation import ModelScorer  # noqa: E402


class _Servable(tf.Module):
    """Variables a serving function reads: the model's, the statistics tables, the top-K index."""

    def __init__(self, variables, tables: Dict[str, np.ndarray], index=None):
        super().__init__(name="retrieval_servable")
        self.model_variables = list(variables)
        self.tables = {k: tf.Variable(v, trainable=False, name=k) for k, v in tables.items()}
        self.index = index


def _spec(schema, names):
    out = {}
    for n in names:
        seq = schema.feature(n).kind == "sequence"
        out[n] = tf.TensorSpec([None, None] if seq else [None], input_dtype(schema, n), name=n)
    return out


def _fit(x, schema):
    """Sequences of any width -> the schema length (first L entries, right-padded with 0)."""
    x = dict(x)
    for f in schema.of_kind("sequence"):
        if f.name in x:
            seq = x[f.name][:, :f.length]
            seq = tf.pad(seq, [[0, 0], [0, f.length - tf.shape(seq)[1]]])
            x[f.name] = tf.reshape(seq, [-1, f.length])
    return x


def _clamp(ids, vocab):
    ids = tf.cast(ids, tf.int64)
    return tf.where((ids > 0) & (ids < vocab), ids, tf.zeros_like(ids))


def _user_vectors(module, model, s: int, data: RetrievalData, norm):
    """raw request features -> the user's vector in scenario ``s`` (scenario and user statistics filled in)."""
    schema = data.schema

    def fn(x):
        x = _fit(x, schema)
        x[schema.scenario.name] = tf.fill(tf.shape(x[data.user_key]), tf.constant(s, tf.int64))
        x["user_stats"] = tf.gather(module.tables["user_stats"], _clamp(x[data.user_key], data.num_users))
        return norm(model.user_vectors(x, training=False))

    return fn


def _item_vectors(module, model, s: int, data: RetrievalData, norm):
    """raw item features -> the items' vectors in scenario ``s`` (item statistics filled in)."""

    def fn(x):
        x = _fit(x, data.schema)
        x["item_stats"] = tf.gather(module.tables["item_stats"], _clamp(x[data.item_key], data.num_items))
        return norm(model.item_vectors(x, s, training=False))

    return fn


def _named(vectors_fn):
    return lambda x: {"vector": vectors_fn(x)}


def _topk(index, vectors_fn):
    """request -> the top-K corpus items of the user's vector (tfrs BruteForce: exact dot-product top-K)."""

    def fn(x):
        scores, ids = index(vectors_fn(x))
        return {"item_ids": ids, "scores": scores}

    return fn


def _next_version(out: str) -> int:
    have = [int(v) for d in (os.listdir(out) if os.path.isdir(out) else [])
            if os.path.isdir(os.path.join(out, d)) for v in os.listdir(os.path.join(out, d)) if v.isdigit()]
    return 1 + max(have, default=0)


def export_retrieval(model_dir: str, out: str, version: Optional[int] = None, k: Optional[int] = None,
                     base_path: Optional[str] = None, scenarios: Optional[Sequence[str]] = None,
                     data: Optional[RetrievalData] = None, log=print) -> dict:
    """Export the finished retrieval run in ``model_dir`` to ``out`` (layout in the module docstring);
    ``scenarios``: the scenario names to export (default all)."""
    from tfmsr.retrieval.trainer import load_trained

    start = time.time()
    out = os.path.normpath(out)
    version = version or _next_version(out)
    if not isinstance(version, int) or version < 1:
        raise ConfigError(f"{out}: --version must be a positive integer, got {version!r}")
    models, data, cfg = load_trained(model_dir, data=data)
    schema, S, scen = data.schema, data.num_scenarios, data.schema.scenario.name
    k = int(k or cfg["eval"]["k"])
    names = servable_names(schema)
    unknown = sorted(set(scenarios or ()) - set(schema.scenario.values))
    if unknown:
        raise ConfigError(f"--scenarios: unknown scenario(s) {unknown} (the run has {schema.scenario.values})")
    chosen = [s for s, v in enumerate(schema.scenario.values) if not scenarios or v in scenarios]
    taken = [os.path.join(out, f"{kind}_{names[s]}", str(version)) for kind in ("user", "item", "topk") for s in chosen
             if os.path.exists(os.path.join(out, f"{kind}_{names[s]}", str(version)))]
    if taken:
        raise FileExistsError(f"{out}: version {version} already exists ({taken[0]}); exports never overwrite")
    req_names, item_names = data.request_names, data.item_names
    tables = {"user_stats": data.user_stats, "item_stats": data.item_stats}
    name = os.path.basename(os.path.abspath(out))
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, f".tmp-export-{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    summary = {"name": name, "version": version, "model": cfg["model"]["name"], "params": cfg["model"]["params"],
               "model_dir": os.path.abspath(model_dir), "k": k, "scenarios": list(schema.scenario.values),
               "user_inputs": req_names, "item_inputs": item_names, "servables": {}, "corpus": {}}
    try:
        os.makedirs(os.path.join(tmp, "corpus"))
        for s in chosen:
            sname = names[s]
            model = models.get(s, models.get(0))
            cosine = model.cosine

            norm = (lambda v: tf.math.l2_normalize(v, -1)) if cosine else (lambda v: v)

            corpus = data.corpus(s)
            vectors = ModelScorer(model, data).item_vectors(s, corpus)
            np.savez(os.path.join(tmp, "corpus", f"{sname}.npz"), item_ids=corpus, vectors=vectors)
            summary["corpus"][sname] = {"items": int(len(corpus)), "path": os.path.join(out, "corpus", f"{sname}.npz")}

            index = tfrs.layers.factorized_top_k.BruteForce(k=min(k, len(corpus)), name=f"index_{sname}")
            index.index(tf.constant(vectors), tf.constant(corpus))
            user_mod, item_mod = _Servable(model.variables, tables), _Servable(model.variables, tables)
            topk_mod = _Servable(model.variables, tables, index)
            req_spec, item_spec = [_spec(schema, req_names)], [_spec(schema, item_names)]
            user_vec = _user_vectors(user_mod, model, s, data, norm)
            topk_vec = _user_vectors(topk_mod, model, s, data, norm)
            item_vec = _item_vectors(item_mod, model, s, data, norm)
            user_mod.serve = tf.function(_named(user_vec), input_signature=req_spec, autograph=False)
            item_mod.serve = tf.function(_named(item_vec), input_signature=item_spec, autograph=False)
            topk_mod.serve = tf.function(_topk(topk_mod.index, topk_vec), input_signature=req_spec, autograph=False)
            for kind, module in (("user", user_mod), ("item", item_mod), ("topk", topk_mod)):
                target = os.path.join(tmp, f"{kind}_{sname}", str(version))
                tf.saved_model.save(module, target, signatures={"serving_default": module.serve})
                summary["servables"][f"{kind}_{sname}"] = os.path.join(out, f"{kind}_{sname}", str(version))
            log(f"[export] scenario {sname}: user/item/topk servables, corpus of {len(corpus)} items")
        with open(os.path.join(tmp, "export.json"), "w") as fh:
            json.dump(summary, fh, indent=2, default=str)
        for servable in summary["servables"]:
            os.makedirs(os.path.join(out, servable), exist_ok=True)
            os.rename(os.path.join(tmp, servable, str(version)), os.path.join(out, servable, str(version)))
        os.makedirs(os.path.join(out, "corpus"), exist_ok=True)
        for f in os.listdir(os.path.join(tmp, "corpus")):
            os.replace(os.path.join(tmp, "corpus", f), os.path.join(out, "corpus", f))
        os.replace(os.path.join(tmp, "export.json"), os.path.join(out, "export.json"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    root = (base_path or os.path.abspath(out)).rstrip("/")
    summary["models_config"] = os.path.join(out, "models.config")
    write_model_config(summary["models_config"], [(f"{name}_{s}", f"{root}/{s}") for s in summary["servables"]])
    summary["seconds"] = round(time.time() - start, 1)
    return summary
