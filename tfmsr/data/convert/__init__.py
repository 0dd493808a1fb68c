"""Dataset converters: public datasets -> TFRecord shards + schema.yaml + stats.json.

Each module here is one converter and defines ``NAME`` (the CLI name, e.g. ``"ali-ccp"``),
``add_arguments(parser)`` (its options beyond ``--src``/``--out``/``--overwrite``) and ``run(args)``.
``tfmsr data convert NAME --src DIR --out DIR`` discovers them, so adding a converter is adding a module.
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Dict


def converters() -> Dict[str, ModuleType]:
    """CLI name -> converter module, for every module in this package."""
    out = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        out[mod.NAME] = mod
    return dict(sorted(out.items()))
