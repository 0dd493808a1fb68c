"""Rollback: which version of an export TF Serving answers with, through ``models.config``.

An export root holds integer versions side by side (``OUT/<servable>/<version>``, one more per
``tfmsr export``); the ``models.config`` an export writes serves the **latest** version of every servable
(TF Serving's default ``model_version_policy``), so a new day's model goes live when its export lands.
``pin(out, N)`` rewrites that file so every servable serves version N instead::

    model_version_policy { specific { versions: N } }

and ``pin(out, None)`` returns to the latest. Nothing else changes: the model names and base paths stay
as the export wrote them (also a ``--base-path`` for the serving container), no version is deleted, and
TF Serving (``--model_config_file_poll_wait_seconds``) picks the file up without a restart. A later
``tfmsr export`` writes a ``models.config`` serving the latest version again.
"""
from __future__ import annotations

import os
from typing import Optional

from tfmsr.core.errors import ConfigError
from tfmsr.core.io import write_text
from tfmsr.serving.writer import existing_versions


def _read(path: str):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no models.config (export a run into this folder first)")
    cfg = model_server_config_pb2.ModelServerConfig()
    with open(path) as fh:
        text_format.Parse(fh.read(), cfg)
    return cfg


def pin(out: str, version: Optional[int]) -> dict:
    """Rewrite ``OUT/models.config`` to serve ``version`` of every servable it names (None: the latest);
    a servable without that version on disk is an error and the file is left as it was."""
    from google.protobuf import text_format

    out = os.path.normpath(out)
    path, name = os.path.join(out, "models.config"), os.path.basename(os.path.abspath(out))
    cfg, have = _read(path), existing_versions(out)
    if version is not None and (not isinstance(version, int) or version < 1):
        raise ConfigError(f"{out}: the version to serve must be a positive integer, got {version!r}")
    served = {}
    for entry in cfg.model_config_list.config:
        servable = entry.name[len(name) + 1:] if entry.name.startswith(name + "_") else entry.name
        versions = have.get(servable, [])
        if version is not None and version not in versions:
            raise ConfigError(f"{out}/{servable}: no version {version} to serve (versions on disk: "
                              f"{', '.join(map(str, versions)) or 'none'})")
        entry.ClearField("model_version_policy")
        if version is not None:
            entry.model_version_policy.specific.versions.append(version)
        served[entry.name] = version if version is not None else (versions[-1] if versions else None)
    write_text(path, text_format.MessageToString(cfg))
    return {"models_config": path, "policy": "latest" if version is None else f"specific {version}",
            "serves": served}
