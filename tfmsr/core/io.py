"""Atomic writes: every file goes to a temp path beside its target and is renamed into place
(``os.replace``), every directory is built under a temp name and renamed, so a reader never sees half a file."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Callable, Iterator, Optional

import yaml


def temp_path(path: str) -> str:
    """A temp name beside ``path`` (same filesystem, so the rename is atomic), unique per process."""
    return f"{path}.tmp-{os.getpid()}"


def write_atomic(path: str, write: Callable[[str], None]) -> str:
    """Call ``write(tmp)`` to create a temp file beside ``path``, then rename it to ``path``."""
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_text(path: str, text: str) -> str:
    """Write ``text`` to ``path`` atomically."""
    def write(tmp):
        with open(tmp, "w") as fh:
            fh.write(text)
    return write_atomic(path, write)


def write_json(path: str, obj, indent: int = 2, **kwargs) -> str:
    """Write ``obj`` as JSON to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=indent, **kwargs))


def write_yaml(path: str, obj) -> str:
    """Write ``obj`` as YAML (keys in insertion order) to ``path`` atomically."""
    return write_text(path, yaml.safe_dump(obj, sort_keys=False))


@contextlib.contextmanager
def atomic_dir(path: str, replace: bool = False, tmp: Optional[str] = None) -> Iterator[str]:
    """Yield a fresh temp directory beside ``path``; on success rename it to ``path`` (an existing
    ``path`` is removed first when ``replace``), on error remove it."""
    tmp = tmp or temp_path(path)
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
        if replace and os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_yaml(path: str, what: str, error: Callable[[str], Exception]):
    """The parsed YAML file ``path``; an unreadable file or invalid YAML raises ``error(message)`` naming the
    file (and ``what`` it should have been)."""
    try:
        with open(path) as fh:
            return yaml.safe_load(fh)
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML ({e})") from None
