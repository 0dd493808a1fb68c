"""Export traces the model once per head (issue 30, export time): ``serving_default`` and ``examples`` of
``all`` share the routed head, a scenario's named signature in ``all`` and its servable's two signatures share
that scenario's head; the thin wrappers map their inputs to ids and call the head's concrete function;
``all_scenarios`` runs the model's forward pass once (``prob`` is its own-scenario column of ``probs``)."""
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import planted

from tfmsr.features import Schema
from tfmsr.ranking.models import build
from tfmsr.ranking.models.base import get_class
from tfmsr.serving.signatures import ServingFunctions, sample_batch, to_examples
from tfmsr.serving.writer import build_model

S = 3


@pytest.fixture(scope="module")
def schema(tmp_path_factory):
    d = planted(tmp_path_factory, "tracing", rows=300, scenarios=S, users=40, items=30, categories=5, brands=8)
    return Schema.load(os.path.join(d, "schema.yaml"))


@pytest.mark.parametrize("name", ["dnn", "mmoe"])   # one tower fed the scenario; multi-head with own-head path
def test_export_traces_the_model_once_per_head(schema, monkeypatch, name):
    traced = []
    cls = get_class(name)
    logits = cls.logits   # the model's forward pass (``call`` and ``scenario_probs`` both run it)
    monkeypatch.setattr(cls, "logits", lambda self, x, **kw: traced.append(1) or logits(self, x, **kw))
    model = build(name, schema, {})
    build_model(model, schema)
    fns = ServingFunctions(model, schema)
    eager_calls = len(traced)
    sigs = {s: fns.signatures(s) for s in [None, *range(S)]}   # what tfmsr.ranking.export.export asks for
    # heads: routed (serving_default, examples), all_scenarios, and one per scenario (its named signature in
    # ``all``, its servable's serving_default and examples); all_scenarios once (not ``call`` + ``scenario_probs``)
    assert len(traced) - eager_calls == 2 + S, len(traced) - eager_calls

    batch = sample_batch(schema, 4, seed=1, raw=True)
    ids = {k: tf.constant(v) for k, v in sample_batch(schema, 4, seed=1).items()}
    examples = tf.constant(to_examples(batch, schema))
    for s in range(S):
        fixed = dict(ids, **{schema.scenario.name: tf.fill([4], tf.constant(s, tf.int64))})
        want = model(fixed, training=False).numpy().reshape(-1)
        named = {k: tf.constant(v) for k, v in batch.items() if k != schema.scenario.name}
        for got in (sigs[s]["serving_default"](named)["prob"], sigs[s]["examples"](examples)["prob"],
                    sigs[None][fns.names[s]](named)["prob"]):
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    routed = sigs[None]["examples"](examples)["prob"].numpy()
    np.testing.assert_allclose(routed, model(ids, training=False).numpy().reshape(-1), rtol=1e-5, atol=1e-6)
    both = sigs[None]["all_scenarios"](**{k: tf.constant(v) for k, v in batch.items()})
    np.testing.assert_allclose(both["prob"].numpy(), routed, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both["probs"].numpy(), model.scenario_probs(ids).numpy(), rtol=1e-5, atol=1e-6)
