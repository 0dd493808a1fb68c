"""Helpers of the config checks (DESIGN section 7): where a value came from (the config file or ``--set``),
and what differs between two configs. Model parameters are typed and checked by ``tfmsr.core.params``."""
from __future__ import annotations

from typing import Any, Iterable, List


def origin(source: str, overrides: Iterable[str], dotted: str) -> str:
    """``--set KEY=VALUE`` when that override set ``dotted`` (or a key inside it), else ``source``."""
    for pair in overrides or ():
        key = pair.split("=", 1)[0].strip()
        if key == dotted or key.startswith(dotted + ".") or dotted.startswith(key + "."):
            return f"--set {pair}"
    return source


def config_diff(old, new, prefix: str = "") -> List[str]:
    """``["train.epochs: 3 -> 4", ...]``: every key whose value differs between two nested configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += config_diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def shown_diff(diff: List[str], most: int = 5) -> str:
    """``config_diff`` lines for a message: the first ``most``, then how many more."""
    return "; ".join(diff[:most]) + (f"; and {len(diff) - most} more" if len(diff) > most else "")


def with_added_keys(old: Any, new: Any) -> Any:
    """``old`` (a run's stored config) with every key it lacks taken from ``new``: a setting added to tfmsr
    after that run was written (its ``run.yaml`` has no such key) is not a difference when resuming or
    reusing the run; a key both have keeps ``old``'s value."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return old
    out = {k: with_added_keys(v, new.get(k)) for k, v in old.items()}
    out.update({k: v for k, v in new.items() if k not in old})
    return out
