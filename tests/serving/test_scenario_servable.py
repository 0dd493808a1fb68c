"""A scenario servable at many scenarios (issue 31): its graph does not grow with S, it holds only its
scenario's slice of the stacked weights, and a python without tfmsr reproduces the model's own head and its
``all_scenarios`` column. Untrained models with perturbed weights (every scenario's slice differs)."""
import gc
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import planted
from raw_serving import serve_fresh

import tfmsr.serving.signatures as signatures
from tfmsr.features import Schema
from tfmsr.ranking.models import build
from tfmsr.serving.signatures import ServingFunctions, sample_batch
from tfmsr.serving.writer import ServableSpec, build_model, write_export

MODELS = ("mmoe", "star")   # towers / gates (ScenarioMLP, own_matmul) and StarDense + partitioned normalization


@pytest.fixture(scope="module")
def schemas(tmp_path_factory):
    """Planted schemas of 4 and 12 scenarios (a few hundred rows: only the schema is read)."""
    out = {}
    for S in (4, 12):
        d = planted(tmp_path_factory, f"s{S}", rows=400, scenarios=S, users=50, items=40, categories=5, brands=8)
        out[S] = Schema.load(os.path.join(d, "schema.yaml"))
    return out


def functions(name, schema, seed=0):
    """A built model with every trainable weight perturbed, and its serving functions."""
    tf.keras.utils.set_random_seed(seed)
    model = build(name, schema, {})
    build_model(model, schema)
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign(v + 0.1 * rng.standard_normal(v.shape).astype(np.float32))
    return model, ServingFunctions(model, schema)


def op_count(fn) -> int:
    """Nodes of a concrete function's graph and of every function it calls."""
    g = fn.graph.as_graph_def()
    return len(g.node) + sum(len(f.node_def) for f in g.library.function)


@pytest.mark.parametrize("name", MODELS)
def test_scenario_graph_and_weights_do_not_grow_with_scenarios(schemas, name):
    counts, shapes, routed = {}, {}, {}
    for S, schema in schemas.items():
        model, fns = functions(name, schema)
        sigs = fns.signatures(1)
        counts[S] = {k: op_count(fn) for k, fn in sigs.items()}
        shapes[S] = {v.name: tuple(v.shape) for v in fns.variables(sigs)}
        routed[S] = op_count(fns.routed())
    assert counts[4] == counts[12], counts
    assert routed[12] > routed[4], routed     # the routed graph partitions by scenario: the count can differ
    assert any("/row_1" in n for n in shapes[12]), sorted(shapes[12])      # slices of the stacked weights
    assert set(shapes[4]) == set(shapes[12]), set(shapes[4]) ^ set(shapes[12])
    grown = {n: (shapes[4][n], shapes[12][n]) for n in shapes[4] if shapes[4][n] != shapes[12][n]}
    # what grows is only embedding tables of inputs sized by S (the scenario's, the behaviours' scenario: [S, d])
    assert grown and set(grown) <= {v.name for v in model.embedding.variables}, grown


@pytest.mark.parametrize("name", MODELS)
def test_fresh_process_scenario_servable_matches_own_head_and_column(schemas, tmp_path, name):
    schema, s = schemas[12], 7
    model, fns = functions(name, schema, seed=3)
    sigs = fns.signatures(s)
    spec = ServableSpec(fns.names[s], sigs, {"scenario_index": s}, fns.variables(sigs),
                        tracked={"vocab": fns.lookups})
    res = write_export(str(tmp_path / "out"), 1, schema, [spec], log=lambda m: None)
    x = sample_batch(schema, n=64, seed=5)
    feats = {k: v for k, v in x.items() if k != schema.scenario.name}
    got = serve_fresh([(res["servables"][fns.names[s]], "serving_default", feats)], str(tmp_path / "fresh"))[0]
    tx = {k: tf.constant(v) for k, v in x.items()}
    tx[schema.scenario.name] = tf.constant(np.full(64, s, np.int64))   # (the shared input reads it too)
    own, cols = model(tx, training=False).numpy(), model.scenario_probs(tx).numpy()
    np.testing.assert_allclose(got["prob"], own, atol=1e-5)
    np.testing.assert_allclose(got["prob"], cols[:, s], atol=1e-5)
    assert np.std(own) > 1e-4
    other = cols[:, (s + 1) % 12]
    assert np.abs(got["prob"] - other).max() > 1e-4      # scenario s's slice, not another's


def test_all_servable_names_scenarios_up_to_the_bound(schemas, monkeypatch):
    _, fns = functions("mmoe", schemas[12])
    assert set(fns.signatures(None)) == {"serving_default", "examples", "all_scenarios", *fns.names}
    monkeypatch.setattr(signatures, "NAMED_SIGNATURES_MAX", 8)
    assert set(fns.signatures(None)) == {"serving_default", "examples", "all_scenarios"}
    sigs = fns.signatures(2)           # beyond the bound its graphs are not cached: they still run, own slices
    assert ("scenario", 2) not in fns._cache
    gc.collect()
    x = sample_batch(schemas[12], n=8, with_scenario=False)
    assert sigs["serving_default"](**{k: tf.constant(v) for k, v in x.items()})["prob"].shape == (8,)
    assert any("/row_2" in v.name for v in fns.variables(sigs))
