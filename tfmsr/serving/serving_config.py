"""``models.config``: the TF Serving ``model_config_list`` naming every servable of an export
(``tensorflow_model_server --model_config_file=.../models.config``)."""
from __future__ import annotations

from typing import Sequence, Tuple

from tfmsr.core.io import write_text


def model_config_text(servables: Sequence[Tuple[str, str]]) -> str:
    """``(model name, base path)`` pairs -> ModelServerConfig text proto (each serves its latest version)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    cfg = model_server_config_pb2.ModelServerConfig()
    for name, base_path in servables:
        entry = cfg.model_config_list.config.add()
        entry.name, entry.base_path, entry.model_platform = name, base_path, "tensorflow"
    return text_format.MessageToString(cfg)


def write_model_config(path: str, servables: Sequence[Tuple[str, str]]) -> None:
    write_text(path, model_config_text(servables))
