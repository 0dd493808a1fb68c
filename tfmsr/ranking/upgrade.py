"""One-off upgrade of a ranking run written before the stacked per-scenario layout (issue 31):
``python -m tfmsr.ranking.upgrade RUN_DIR``.

A run trained before issue 31 holds per-scenario layers (``towers/<s>/dense/<i>``, ``heads/<s>``, SAR-Net's
``specific_experts/<s>``) where the model now has one ``[S, ...]`` variable
(:func:`tfmsr.layers.scenario.legacy_sources`). The upgrade rewrites the run's ``final/`` and ``best/``
checkpoints (what evaluate, export, score and ``--warm-start`` read) in the new layout: the model is rebuilt
from ``run.yaml``, every checkpoint key of the new model is taken from the old checkpoint as is or joined
from its per-scenario keys, and the result replaces the directory atomically; the old one stays beside it as
``<dir>.pre-stacked``. ``checkpoints/`` (resume after a kill, with optimizer slots) is left as it was: an
upgraded run is finished, not resumed.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from typing import Callable

import numpy as np
import tensorflow as tf

from tfmsr.core.io import atomic_dir
from tfmsr.core.rundir import RunDir
from tfmsr.features import Schema
from tfmsr.layers.saml import legacy_specific_value
from tfmsr.layers.scenario import legacy_sources
from tfmsr.ranking.models import build
from tfmsr.serving.writer import build_model

GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def upgrade_checkpoint(model, old_prefix: str, new_prefix: str) -> dict:
    """Write ``new_prefix``: ``model``'s checkpoint (``tf.train.Checkpoint(model=model)``, model built) with
    the values of the old-layout checkpoint ``old_prefix``. Returns counts (copied, joined keys). A key of the
    new model that the old checkpoint holds in neither layout, or a joined shape that differs, is an error."""
    old = tf.train.load_checkpoint(old_prefix)
    have = old.get_variable_to_shape_map()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = tf.train.load_checkpoint(tf.train.Checkpoint(model=model).write(os.path.join(tmp, "ckpt")))
        shapes = fresh.get_variable_to_shape_map()
        names, values, joined = [GRAPH_KEY], [fresh.get_tensor(GRAPH_KEY)], 0
        for key in sorted(k for k in shapes if k != GRAPH_KEY):
            value = _old_value(old, have, key)
            reshaped = legacy_specific_value(key, value, shapes[key])    # SAML's [R, S*d_l] specific tables
            value = value if reshaped is None else reshaped
            if tuple(value.shape) != tuple(shapes[key]):
                raise ValueError(f"{old_prefix}: {key} has shape {tuple(value.shape)} in the old layout, the model "
                                 f"needs {tuple(shapes[key])} (a different config or dataset?)")
            names.append(key)
            values.append(value)
            joined += key not in have
    tf.raw_ops.SaveV2(prefix=new_prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(v) for v in values])
    return {"copied": len(names) - 1 - joined, "joined": joined}


def _old_value(old, have: dict, key: str) -> np.ndarray:
    if key in have:
        return old.get_tensor(key)
    src = legacy_sources(key, have.__contains__)
    if src is None:
        raise KeyError(f"checkpoint has no {key} in the current or the per-scenario layout")
    keys, how = src
    return (np.stack if how == "stack" else np.concatenate)([old.get_tensor(k) for k in keys])


def upgrade_run(model_dir: str, log: Callable[[str], None] = print) -> dict:
    """Upgrade ``final/`` and ``best/`` of the run in ``model_dir`` (those already in the new layout are left)."""
    run_dir = RunDir(model_dir)
    run = run_dir.read()
    schema = Schema.load(os.path.join(model_dir, "schema.yaml"))
    report = {}
    for name in ("final", "best"):
        folder = os.path.join(model_dir, name)
        prefix = tf.train.latest_checkpoint(folder)
        if prefix is None:
            continue
        model = build(run["config"]["model"]["name"], schema, run["config"]["model"]["params"], run_dir.stats())
        build_model(model, schema)
        with atomic_dir(folder + ".stacked") as tmp:
            counts = upgrade_checkpoint(model, prefix, os.path.join(tmp, "ckpt"))
            with open(os.path.join(tmp, "checkpoint"), "w") as fh:
                fh.write('model_checkpoint_path: "ckpt"\nall_model_checkpoint_paths: "ckpt"\n')
        if counts["joined"]:
            os.replace(folder, folder + ".pre-stacked")
            os.replace(folder + ".stacked", folder)
        else:
            tf.io.gfile.rmtree(folder + ".stacked")
        report[name] = counts
        log(f"{folder}: {counts['joined']} keys joined from per-scenario layers, {counts['copied']} copied")
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    upgrade_run(p.parse_args(argv).run_dir)


if __name__ == "__main__":
    main()
