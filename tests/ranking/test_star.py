"""STAR's embedding initialisation switch and the shipped configuration (models/star.py, configs/star.yaml)."""
import numpy as np

from tfmsr.data.pipeline import make_dataset, split_files
from tfmsr.ranking.models import build


def _tables(model, x):
    model(x)
    return {name: t.embeddings.numpy() for name, t in model.embedding.tables.items()}


def test_embedding_std_sets_every_table(synth_dir, synth_schema):
    """``embedding_std``: every table starts N(0, std); None keeps the base's Glorot uniform (bounded by
    sqrt(6 / (rows + dim)), so a table wider than it is long can exceed 0.01 by far)."""
    (x, _), = make_dataset(split_files(synth_dir, "valid"), synth_schema, 64, training=False).take(1)
    small = _tables(build("star", synth_schema, {"hidden": [8], "embedding_std": 0.01}), x)
    glorot = _tables(build("star", synth_schema, {"hidden": [8]}), x)
    for name, w in small.items():
        assert abs(w.std() - 0.01) < 0.003 and np.abs(w).max() < 0.07, name
    assert max(w.std() for w in glorot.values()) > 0.05


def test_shipped_config_builds(synth_schema):
    """configs/star.yaml (PN off, N(0, 0.01) tables; measured in its header) is a valid STAR config."""
    import os

    from tfmsr.core.config import PACKAGED
    from tfmsr.ranking.config import load_config

    cfg = load_config(os.path.join(PACKAGED, "star.yaml"))
    model = build("star", synth_schema, cfg["model"]["params"])
    assert model.norm is None and model.embedding_initializer()["config"]["stddev"] == 0.01
