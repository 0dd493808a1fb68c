"""Temp files and folders left by a killed run, swept by the next run of the same command.

Every temp name tfmsr writes carries the id of the process that writes it (``core.io.temp_path``:
``<target>.tmp-<pid>``; exports: ``OUT/.tmp-export-<version>-<pid>``). A process that is killed cannot
remove its own; the next run of the same command calls ``sweep`` on the same target and removes the temp
names whose process is no longer alive on this machine. A live process's temp files (a concurrent run)
are never touched. (A pid is only meaningful on its own machine: on a filesystem shared by several hosts,
run commands that write the same target from one host.)
"""
from __future__ import annotations

import glob
import os
import re
import shutil
from typing import Callable, List, Optional


def pid_alive(pid: int) -> bool:
    """True when a process with this id exists on this machine (also one of another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(directory: str, pattern: str, log: Optional[Callable[[str], None]] = None) -> List[str]:
    """Remove the entries of ``directory`` whose whole name matches ``pattern`` (a regex whose group 1 is
    the writer's pid) and whose writer is gone; returns the removed paths."""
    if not os.path.isdir(directory):
        return []
    removed = []
    for name in sorted(os.listdir(directory)):
        m = re.fullmatch(pattern, name)
        if not m or int(m.group(1)) == os.getpid() or pid_alive(int(m.group(1))):
            continue
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        removed.append(path)
        if log:
            log(f"removed {path} (a temp file of process {m.group(1)}, which is gone: a killed run)")
    return removed


def sweep_beside(path: str, log: Optional[Callable[[str], None]] = None) -> List[str]:
    """``sweep`` the ``<path>.tmp-<pid>`` temp names of a file or folder target (``core.io.temp_path``)."""
    directory, base = os.path.split(os.path.abspath(path))
    return sweep(directory, re.escape(base) + r"\.tmp-(\d+)", log)

