"""Shared fixtures: a small planted dataset (generated once per session) and quick configs."""
import os

import pytest

import tfmsr  # noqa: F401  (pins Keras 2 before TensorFlow loads)

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")
DATASETS = os.path.abspath(os.path.join(SHARED, "datasets"))


def planted(tmp_path_factory, name: str, **sizes) -> str:
    """Planted data (``tfmsr.data.synth.generate``, seed 0) of ``sizes`` in a fresh ``<name>/data`` temp folder."""
    from tfmsr.data.synth import generate

    out = str(tmp_path_factory.mktemp(name) / "data")
    generate(out, seed=0, progress=False, **sizes)
    return out


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """~6,000 planted rows, 5 scenarios, 3 shards per split at most (train/valid/test)."""
    return planted(tmp_path_factory, "synth", rows=6000, users=300, items=200, categories=20, brands=60,
                   rows_per_shard=2000)


@pytest.fixture(scope="session")
def synth_schema(synth_dir):
    from tfmsr.features import Schema

    return Schema.load(os.path.join(synth_dir, "schema.yaml"))


def quick_config(model="dnn", params=None, **train):
    """A config that trains in seconds: small batch, one epoch, no early stopping."""
    from tfmsr.ranking.config import load_config

    t = {"epochs": 1, "log_every": 1000, "checkpoint_every": 1000, "early_stopping_patience": 0}
    t.update(train)
    return load_config(raw={"model": {"name": model, "params": params or {}}, "data": {"batch_size": 256},
                            "train": t})


def datasets_dir(name):
    """Path of ../shared/datasets/<name>, or skip the test with a clear message when it is absent."""
    path = os.path.join(DATASETS, name)
    if not os.path.isdir(path):
        pytest.skip(f"{path} is not present (the shared datasets folder sits beside the repo)")
    return path
