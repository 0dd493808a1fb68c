"""deepctr's half of ``pipelines/bench_deepctr.py``; runs in deepctr's own virtualenv, never imports tfmsr.

    python bench_deepctr_side.py ROWS.npz DeepFM|DIN|MMOE BATCH STEPS WARMUP   -> one JSON line

Builds deepctr 0.9.4's model on the baseline shape (same vocabularies, 16-d, MLP 256-128-64, MMoE 4 experts
256-128 + towers 64 with one binary task per scenario; every model reads the two sequences, mean-pooled
in DeepFM and MMOE as tfmsr's ``deepfm``/``mmoe`` do) and times ``model.fit`` on in-memory NumPy for
``STEPS`` batches after ``WARMUP`` batches.
"""
import json
import sys
import time

import numpy as np
import tensorflow as tf
from deepctr.feature_column import DenseFeat, SparseFeat, VarLenSparseFeat, get_feature_names
from deepctr.models import DIN, MMOE, DeepFM

path, name, batch, steps, warmup = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
cols = dict(np.load(path))
vocab = {"user_id": 20_001, "gender": 4, "age": 9, "scenario": 4, "item_id": 20_001, "cate_id": 501}
sparse = [SparseFeat(f, v, embedding_dim=16) for f, v in vocab.items()]
dense = [DenseFeat("price", 1)]
seq = [VarLenSparseFeat(SparseFeat("hist_item_id", vocab["item_id"], 16, embedding_name="item_id"), 30),
       VarLenSparseFeat(SparseFeat("hist_cate_id", vocab["cate_id"], 16, embedding_name="cate_id"), 30)]
y = cols["click"].astype(np.float32)
if name == "DeepFM":  # like tfmsr's deepfm: the mean-pooled sequences are fields too
    feats = sparse + dense + seq
    model = DeepFM(feats, feats, dnn_hidden_units=(256, 128, 64))
    target = y
elif name == "DIN":
    model = DIN(sparse + dense + seq, ["item_id", "cate_id"], dnn_hidden_units=(256, 128, 64),
                att_hidden_size=(80, 40), att_activation="sigmoid")
    target = y
else:
    model = MMOE(sparse + dense + seq, num_experts=4, expert_dnn_hidden_units=(256, 128), tower_dnn_hidden_units=(64,),
                 task_types=("binary",) * 4, task_names=tuple(f"s{i}" for i in range(4)))
    target = [y] * 4
model.compile("adam", "binary_crossentropy")
x = {f: cols[f] for f in get_feature_names(sparse + dense + seq)}


def fit(n):
    idx = slice(0, n * batch)
    xs = {k: v[idx] for k, v in x.items()}
    ys = [t[idx] for t in target] if isinstance(target, list) else target[idx]
    model.fit(xs, ys, batch_size=batch, epochs=1, verbose=0, shuffle=True)


fit(warmup)
start, cpu0 = time.perf_counter(), time.process_time()
fit(steps)
secs, cpu = time.perf_counter() - start, time.process_time() - cpu0
params = int(sum(np.prod(v.shape) for v in model.trainable_variables))
print(json.dumps({"model": name, "examples_per_sec": round(steps * batch / secs, 1), "seconds": round(secs, 3),
                  "cpu_seconds": round(cpu, 3), "examples_per_cpu_sec": round(steps * batch / cpu, 1),
                  "trainable_parameters": params, "tensorflow": tf.__version__}))
