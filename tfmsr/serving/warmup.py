"""TF Serving warm-up requests: ``assets.extra/tf_serving_warmup_requests``, a TFRecord file of
``tensorflow.serving.PredictionLog`` records that the model server replays before marking a version
available (so the first real request does not pay for graph optimisation)."""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, Tuple

import numpy as np
import tensorflow as tf

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def predict_log(model_name: str, signature: str, inputs: Dict[str, np.ndarray]):
    """One PredictionLog holding a PredictRequest of ``inputs`` against ``signature``."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


def write_warmup(export_dir: str, model_name: str, requests: Iterable[Tuple[str, Dict[str, np.ndarray]]]) -> str:
    """Write ``(signature, inputs)`` requests under ``export_dir/assets.extra``; returns the path."""
    path = os.path.join(export_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as w:
        for signature, inputs in requests:
            w.write(predict_log(model_name, signature, inputs).SerializeToString())
    return path


def read_warmup(export_dir: str) -> List[Tuple[str, Dict[str, np.ndarray]]]:
    """The ``(signature, inputs)`` of every warm-up record (parsed as PredictionLog protos)."""
    from tensorflow_serving.apis import prediction_log_pb2

    out = []
    for raw in tf.data.TFRecordDataset(os.path.join(export_dir, WARMUP_FILE)).as_numpy_iterator():
        req = prediction_log_pb2.PredictionLog.FromString(raw).predict_log.request
        out.append((req.model_spec.signature_name, {k: tf.make_ndarray(v) for k, v in req.inputs.items()}))
    return out
