"""A training run directory: ``run.yaml`` (``kind``, ``config``, ``data``), ``schema.yaml``, ``stats.json``.

``kind`` is ``ranking`` or ``retrieval``: ``tfmsr export`` dispatches on it. A run dir written before
``kind`` existed is recognised the old way: a retrieval config has a ``pretrain`` section, which the
ranking config refuses as an unknown key.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import yaml

from tfmsr.core.io import write_json, write_yaml

KINDS = ("ranking", "retrieval")


class RunDir:
    """The files of one run directory ``path`` (ranking and retrieval share this loader)."""

    def __init__(self, path: str):
        self.path = path

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def exists(self) -> bool:
        """A run was started here (``run.yaml`` is written before training starts)."""
        return os.path.isfile(self.file("run.yaml"))

    def read(self) -> dict:
        """``run.yaml`` as a dict with ``kind`` filled in (old run dirs: inferred from the config)."""
        path = self.file("run.yaml")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{self.path}: no run.yaml (is this a tfmsr model dir?)")
        with open(path) as fh:
            run = yaml.safe_load(fh) or {}
        if run.get("kind") not in KINDS:
            run["kind"] = "retrieval" if "pretrain" in (run.get("config") or {}) else "ranking"
        return run

    @property
    def kind(self) -> Optional[str]:
        """``ranking`` | ``retrieval``, or None when there is no run here."""
        return self.read()["kind"] if self.exists else None

    def write_run(self, kind: str, cfg: dict, data_dir: str) -> None:
        """``run.yaml``: the kind, the resolved config and the absolute data directory."""
        if kind not in KINDS:
            raise ValueError(f"run kind {kind!r} (expected one of {', '.join(KINDS)})")
        os.makedirs(self.path, exist_ok=True)
        write_yaml(self.file("run.yaml"), {"kind": kind, "config": cfg, "data": os.path.abspath(data_dir)})

    def stats(self) -> dict:
        """The dataset statistics copied into the run (``stats.json``), or {} when there are none."""
        return read_stats(self.path)

    def write_stats(self, stats: dict) -> None:
        """Keep the dataset's ``stats.json`` in the run, so a model rebuilt from it gets the same inputs."""
        if stats:
            write_json(self.file("stats.json"), stats)


def read_stats(directory: str) -> dict:
    """``DIR/stats.json`` (a dataset or a run dir), or {} when the file does not exist."""
    path = os.path.join(directory, "stats.json")
    if not os.path.exists(path):
        return {}
    with open(path) as fh:
        return json.load(fh)
