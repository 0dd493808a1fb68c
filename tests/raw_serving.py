"""Raw values through an export, for any dataset directory whose tables have vocabularies (the small one of
``raw_dataset``, or a real dataset written by ``tfmsr data ingest``):

* ``check_raw_parity(data_dir, work)``: train a ranking model, export it, ``tfmsr score`` a split's raw
  TFRecords, and call ``serving_default`` / ``examples`` of ``all/1`` with the same rows' raw values in a
  python that never imports tfmsr: the probabilities must agree.
* ``check_raw_topk(data_dir, work)``: train a retrieval model, export it, and call ``topk_<scenario>`` with
  raw requests in such a python: every returned item id is a raw value of the item vocabulary, and the
  top-K equals the user tower's vector against the corpus (``corpus.npz`` ``raw_item_ids``).

Both return figures for a report and assert as they go."""
import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf
from conftest import quick_config

from tfmsr.data.pipeline import make_dataset, make_parser, split_files
from tfmsr.features import Schema
from tfmsr.features.lookup import read_vocabulary
from tfmsr.serving.signatures import input_signature

PY_FUNC_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}

FRESH = r"""
import json, sys
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry
args = json.loads(sys.argv[1])
out, loaded = {}, {}

def load(path):
    if path not in loaded:
        sm = saved_model_pb2.SavedModel()
        sm.ParseFromString(open(path + "/saved_model.pb", "rb").read())
        g = sm.meta_graphs[0].graph_def
        ops = {n.op for n in g.node} | {n.op for f in g.library.function for n in f.node_def}
        unknown = sorted(op for op in ops if op_def_registry.get(op) is None)
        assert not unknown and not ops & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}, f"{path}: ops {unknown}"
        loaded[path] = tf.saved_model.load(path)
    return loaded[path]

for i, (path, signature, inputs) in enumerate(args["calls"]):
    try:
        data = np.load(inputs, allow_pickle=True)
        for k, v in load(path).signatures[signature](**{k: tf.constant(data[k]) for k in data.files}).items():
            out[f"{i}/{k}"] = v.numpy()
    except Exception as e:  # collect: reported per call (the caller names the model), the others go on
        if not args["collect"]:
            raise
        out[f"{i}/error"] = np.array(f"{path} {signature}: {type(e).__name__}: {e}"[:3000])
assert not any(m.startswith("tfmsr") for m in sys.modules), "tfmsr was imported"
np.savez(args["out"], **out)
"""


def serve_fresh(calls, work, collect=False):
    """``calls``: [(SavedModel dir, signature, {input: array})] -> [{output: array}], all run in ONE python
    that imports only TensorFlow, each SavedModel loaded once (asserting its graph holds stock ops only).
    ``collect``: a failing call gives ``{"error": message}`` instead of failing the whole process."""
    os.makedirs(work, exist_ok=True)
    spec = []
    for i, (path, signature, inputs) in enumerate(calls):
        np.savez(os.path.join(work, f"in{i}.npz"), **inputs)
        spec.append((os.path.abspath(path), signature, os.path.join(work, f"in{i}.npz")))
    out = os.path.join(work, "out.npz")
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run([sys.executable, "-c", FRESH, json.dumps({"calls": spec, "out": out, "collect": collect})],
                          capture_output=True, text=True, env=env, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = dict(np.load(out, allow_pickle=True))
    return [{k.split("/", 1)[1]: v for k, v in got.items() if k.startswith(f"{i}/")} for i in range(len(calls))]


def saved_model_proto(version_dir):
    """The ``saved_model.pb`` of a SavedModel directory, parsed (no loading)."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as fh:
        sm.ParseFromString(fh.read())
    return sm


def graph_ops(version_dir):
    """Every op type in a SavedModel's graph and its functions."""
    g = saved_model_proto(version_dir).meta_graphs[0].graph_def
    return {n.op for n in g.node} | {n.op for f in g.library.function for n in f.node_def}


def fresh_calls(servables, x, raw):
    """Every signature of ``servables`` {name: version dir} with its inputs from ``x`` (named features) or
    ``raw`` (serialized tf.Examples, for an ``examples`` input): [(name, signature, call)] for ``serve_fresh``."""
    calls = []
    for name, path in servables.items():
        for sig, sd in sorted(saved_model_proto(path).meta_graphs[0].signature_def.items()):
            if sig.startswith("__"):  # __saved_model_init_op: run by the loader, not a signature
                continue
            inputs = set(sd.inputs)
            feed = ({"examples": np.array(list(raw), dtype=object)} if inputs == {"examples"}
                    else {k: x[k] for k in inputs})
            calls.append((name, sig, (path, sig, feed)))
    return calls


def run_fresh(servables, x, raw, tmp_path):
    """Load ``servables`` {name: version dir} in a python that imports only TensorFlow and call every
    signature: {"<name>/<signature>/<output>": array}."""
    calls = fresh_calls(servables, x, raw)
    got = serve_fresh([c for _, _, c in calls], os.path.join(str(tmp_path), "fresh"))
    return {f"{name}/{sig}/{k}": v for (name, sig, _), outputs in zip(calls, got) for k, v in outputs.items()}


def sample_rows(data_dir, schema, n=300):
    """The first ``n`` test rows: (features dict of numpy as the ``all`` servable takes them, serialized records)."""
    files = split_files(data_dir, "test")
    x, _ = next(iter(make_dataset(files, schema, n, training=False)))
    raw = next(iter(tf.data.TFRecordDataset(files[0]).batch(n))).numpy()
    names = set(input_signature(schema))
    return {k: v.numpy() for k, v in x.items() if k in names}, raw


def raw_requests(data_dir, split="test", n=200):
    """The first ``n`` records of a split: (raw inputs as a servable takes them, the serialized records)."""
    schema = Schema.load(os.path.join(data_dir, "schema.yaml"))
    records = next(iter(tf.data.TFRecordDataset(split_files(data_dir, split)).take(n).batch(n)))
    x = make_parser(schema, inputs_only=True, raw=True)(records)
    return {k: v.numpy() for k, v in x.items()}, records.numpy()


def score_split(servable, data_dir, split, output):
    """``tfmsr score`` of a split's shards through ``servable``: (prob per row in file order, summary)."""
    import pyarrow.parquet as pq

    from tfmsr.serving.scoring import score

    summary = score(servable, os.path.join(data_dir, split), output, progress=lambda m: None)
    return pq.read_table(output).column("prob").to_numpy(), summary


def check_raw_parity(data_dir, work, model="dnn", split="test", n=200, before_export=None, **train):
    """Train ``model`` on ``data_dir``, (call ``before_export()``,) export, and compare ``tfmsr score``
    with a fresh process's ``serving_default`` and ``examples`` on the first ``n`` raw rows of ``split``;
    returns the figures."""
    from tfmsr.ranking.export import export
    from tfmsr.ranking.train import train as train_ranking

    model_dir, out = os.path.join(work, "run"), os.path.join(work, "export")
    train_ranking(quick_config(model, validate=False, **train), data_dir, model_dir, log=lambda m: None)
    if before_export is not None:
        before_export()
    export(model_dir, out, log=lambda m: None)
    scored, summary = score_split(os.path.join(out, "all"), data_dir, split, os.path.join(work, "scores.parquet"))
    x, records = raw_requests(data_dir, split, n)
    all1 = os.path.join(out, "all", "1")
    computed = json.load(open(os.path.join(all1, "assets", "export.json"))).get("computed_inputs") or {}
    x = {k: v for k, v in x.items() if k not in computed}  # looked up from the raw key (tfmsr.serving.rates)
    named, examples = serve_fresh([(all1, "serving_default", x),
                                   (all1, "examples", {"examples": np.array(list(records), dtype=object)})],
                                  os.path.join(work, "fresh"))
    n = len(records)
    diff = max(np.abs(named["prob"] - scored[:n]).max(), np.abs(examples["prob"] - scored[:n]).max())
    assert diff < 1e-5, f"serving_default / examples vs tfmsr score: max |diff| {diff}"
    assert scored.std() > 1e-3  # a trained model, not a constant
    return {"model_dir": model_dir, "export": out, "rows_compared": n, "max_abs_diff": float(diff),
            "scored": summary["scored"], "oov_values": summary["oov_values"],
            "oov_by_feature": summary["oov_by_feature"]}


def check_raw_topk(data_dir, work, model="dssm", split="test", n=50, k=5):
    """Train a retrieval ``model``, export, and call ``user_<s>`` and ``topk_<s>`` of every scenario with
    the first ``n`` raw requests of ``split`` in a fresh process; returns the figures."""
    from tfmsr.retrieval.config import load_config
    from tfmsr.retrieval.data import item_key
    from tfmsr.retrieval.export import export_retrieval
    from tfmsr.retrieval.train import train as train_retrieval
    from tfmsr.serving.signatures import servable_names

    cfg = load_config(raw={"model": {"name": model, "params": {"embedding_dim": 8}}, "data": {"batch_size": 128},
                           "pretrain": {"enabled": False}, "train": {"epochs": 1}})
    model_dir, out = os.path.join(work, "run"), os.path.join(work, "export")
    train_retrieval(cfg, data_dir, model_dir, log=lambda m: None)
    res = export_retrieval(model_dir, out, k=k, log=lambda m: None)
    schema = Schema.load(os.path.join(data_dir, "schema.yaml"))
    items = schema.table_owner(schema.feature(item_key(schema)))
    vocab = read_vocabulary(schema.vocab_path(items), items.raw)
    x, _ = raw_requests(data_dir, split, n)
    calls, names = [], [s for s in servable_names(schema) if f"topk_{s}" in res["servables"]]
    for s in names:
        calls.append((res["servables"][f"user_{s}"], "serving_default",
                      {c: x[c] for c in json.load(open(os.path.join(res["servables"][f"user_{s}"], "assets",
                                                                      "export.json")))["inputs"]}))
        calls.append((res["servables"][f"topk_{s}"], "serving_default", calls[-1][2]))
    got = serve_fresh(calls, os.path.join(work, "fresh"))
    returned = set()
    for i, s in enumerate(names):
        vectors, top = got[2 * i]["vector"], got[2 * i + 1]
        corpus = np.load(os.path.join(res["servables"][f"item_{s}"], "assets", "corpus.npz"), allow_pickle=True)
        assert set(top["item_ids"].ravel().tolist()) <= set(vocab.tolist()), f"topk_{s}: ids not in the vocabulary"
        order = np.argsort(-(vectors @ corpus["vectors"].T), axis=1, kind="stable")[:, :top["item_ids"].shape[1]]
        np.testing.assert_array_equal(top["item_ids"], corpus["raw_item_ids"][order], err_msg=f"topk_{s}")
        returned |= {v.decode() if isinstance(v, bytes) else v for v in top["item_ids"].ravel().tolist()}
    return {"returned_item_ids": sorted(returned), "model_dir": model_dir, "export": out, "scenarios": names,
            "requests": len(x[schema.scenario.name]),
            "k": k, "vocabulary": len(vocab)}
