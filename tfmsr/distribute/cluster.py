"""Local cluster launcher: every role of a TensorFlow cluster as its own process on this machine.

    tfmsr cluster --workers 2 --ps 2 [--evaluator] -- train --config C --data D --model-dir M

starts the same ``tfmsr`` command once per role with that role's ``TF_CONFIG`` (free localhost ports):
with ``--ps P > 0`` a ParameterServerStrategy cluster (1 chief + W workers + P parameter servers), with
``--ps 0`` a MultiWorkerMirroredStrategy cluster of W workers (worker 0 is the chief); ``--evaluator``
adds an evaluator task. Their output is streamed with role prefixes (``[chief:0] ...``). It is the same
code path as a cluster of machines: only the addresses in ``TF_CONFIG`` differ (``pipelines/k8s``).

Ending: the run is over when the chief (ps) or every worker (multi-worker) exits; the evaluator then gets
``eval_grace`` seconds to score the final weights, and every process group left is stopped (SIGTERM, then
SIGKILL), also when the launcher itself is interrupted or fails.

Failures: a ParameterServerStrategy worker that dies is tolerated (the coordinator re-runs its steps on
the others) and restarted while ``restarts`` last, rejoining the run. A dead chief or parameter server,
or any multi-worker worker, fails the run: with ``restarts`` left the whole cluster is started again
(new ports) and the chief resumes from its last backup; without, the launcher stops everything and
returns the failing exit code (run the same command again to resume).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

Task = Tuple[str, int]


def free_ports(n: int, host: str = "localhost") -> List[int]:
    """``n`` distinct ports that are free now (all bound at once, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cluster_spec(workers: int, ps: int, host: str = "localhost", ports: Optional[Sequence[int]] = None) -> dict:
    """``{"chief": [...], "worker": [...], "ps": [...]}`` (ps > 0) or ``{"worker": [...]}`` (ps == 0)."""
    if workers < 1 or ps < 0:
        raise ValueError(f"a cluster needs at least one worker and no negative ps count (got {workers}, {ps})")
    n = workers + ps + (1 if ps else 0)
    it = iter(ports or free_ports(n, host))
    spec = {"chief": [f"{host}:{next(it)}"]} if ps else {}
    spec["worker"] = [f"{host}:{next(it)}" for _ in range(workers)]
    if ps:
        spec["ps"] = [f"{host}:{next(it)}" for _ in range(ps)]
    return spec


def tf_config(spec: dict, role: str, index: int) -> str:
    return json.dumps({"cluster": spec, "task": {"type": role, "index": index}})


class LocalCluster:
    """Processes of one cluster running ``argv`` (tfmsr CLI arguments, e.g. ``["train", "--config", ...]``;
    ``program`` replaces ``python -m tfmsr.cli``).

    ``start()``, then ``wait()`` -> the run's exit code; ``stop()`` (also on ``with`` exit) ends every
    process group. ``pid(role, index)`` and ``lines`` (all prefixed output) are for tests and tooling.
    """

    def __init__(self, argv: Sequence[str], workers: int, ps: int = 0, evaluator: bool = False,
                 restarts: int = 0, host: str = "localhost", env: Optional[dict] = None,
                 log: Callable[[str], None] = print, threads: Optional[int] = None, eval_grace: float = 300.0,
                 program: Optional[Sequence[str]] = None):
        self.argv, self.workers, self.ps, self.evaluator = list(argv), workers, ps, evaluator
        self.program = list(program or (sys.executable, "-m", "tfmsr.cli"))
        self.restarts, self.host, self.log, self.eval_grace = restarts, host, log, eval_grace
        self.env = dict(os.environ if env is None else env)
        self.env["PYTHONUNBUFFERED"] = "1"
        if threads:
            # inter-op >= 2: with one inter-op thread a worker step waiting on a parameter server deadlocks
            self.env.update(TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS=str(max(2, threads)))
        self.procs: Dict[Task, subprocess.Popen] = {}
        self.lines: List[str] = []
        self._lock = threading.Lock()
        self._pumps: List[threading.Thread] = []
        self.spec: dict = {}

    # ------------------------------------------------------------------ roles
    @property
    def trainers(self) -> List[Task]:
        return [("chief", 0)] if self.ps else [("worker", i) for i in range(self.workers)]

    def tasks(self) -> List[Task]:
        """Start order: parameter servers and workers before the chief, which connects to them."""
        out = [("ps", i) for i in range(self.ps)]
        out += [("worker", i) for i in range(self.workers)]
        out += [("evaluator", 0)] if self.evaluator else []
        return out + ([("chief", 0)] if self.ps else [])

    def _emit(self, line: str) -> None:
        with self._lock:
            self.lines.append(line)
            self.log(line)

    def _spawn(self, task: Task) -> None:
        role, index = task
        env = dict(self.env, TF_CONFIG=tf_config(self.spec, role, index))
        proc = subprocess.Popen([*self.program, *self.argv], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
        self.procs[task] = proc
        where = self.spec[role][index] if role in self.spec else "no server"
        self._emit(f"[cluster] started {role}:{index} (pid {proc.pid}, {where})")
        pump = threading.Thread(target=self._pump, args=(f"[{role}:{index}] ", proc), daemon=True)
        pump.start()
        self._pumps.append(pump)

    def _pump(self, prefix: str, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self._emit(prefix + line.rstrip("\n"))

    def start(self) -> "LocalCluster":
        self.spec = cluster_spec(self.workers, self.ps, self.host)
        self._emit(f"[cluster] {'ParameterServerStrategy' if self.ps else 'MultiWorkerMirroredStrategy'}: "
                   + json.dumps(self.spec))
        for task in self.tasks():
            self._spawn(task)
        return self

    def pid(self, role: str, index: int = 0) -> int:
        return self.procs[(role, index)].pid

    # ------------------------------------------------------------------ run
    def wait(self, timeout: Optional[float] = None) -> int:
        """Block until the run ends; returns its exit code (0: the chief / all workers finished)."""
        deadline = None if timeout is None else time.time() + timeout
        reported = set()
        while True:
            if deadline is not None and time.time() > deadline:
                self.stop()
                raise TimeoutError(f"cluster run did not finish within {timeout:.0f}s")
            failed = None
            for task, proc in list(self.procs.items()):
                rc = proc.poll()
                if rc is None or task in reported:
                    continue
                reported.add(task)
                role, index = task
                self._emit(f"[cluster] {role}:{index} exited with code {rc}")
                if role == "evaluator":
                    continue
                if role == "worker" and self.ps:
                    alive = [t for t, p in self.procs.items() if t[0] == "worker" and p.poll() is None]
                    if self.restarts > 0:
                        self.restarts -= 1
                        self._emit(f"[cluster] restarting worker:{index}; it rejoins the run")
                        self._spawn(task)
                        reported.discard(task)
                    elif not alive:
                        failed = failed or ("every worker is gone", rc or 1)
                    else:
                        self._emit(f"[cluster] training continues on {len(alive)} worker(s)")
                    continue
                if rc != 0 or role == "ps":
                    failed = failed or (f"{role}:{index} failed", rc or 1)
            if failed is None and all(t in reported for t in self.trainers):
                self._finish_evaluator()
                self.stop()
                self._emit("[cluster] run finished")
                return 0
            if failed is not None:
                self.stop()
                if self.restarts <= 0:
                    self._emit(f"[cluster] {failed[0]}: stopped every process (rerun to resume from the last backup)")
                    return failed[1]
                self.restarts -= 1
                self._emit(f"[cluster] {failed[0]}: restarting the whole cluster; the chief resumes from its backup")
                reported.clear()
                self.start()
            time.sleep(0.2)

    def _finish_evaluator(self) -> None:
        proc = self.procs.get(("evaluator", 0))
        if proc is None or proc.poll() is not None:
            return
        self._emit(f"[cluster] training done; waiting up to {self.eval_grace:.0f}s for the evaluator")
        try:
            proc.wait(self.eval_grace)
        except subprocess.TimeoutExpired:
            self._emit("[cluster] evaluator still running; stopping it")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every process group still running, SIGKILL what is left after ``grace`` seconds."""
        live = [p for p in self.procs.values() if p.poll() is None]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in live:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
            end = time.time() + grace
            while time.time() < end and any(p.poll() is None for p in live):
                time.sleep(0.1)
            live = [p for p in live if p.poll() is None]
            if not live:
                break
        for p in self.procs.values():
            p.wait()
        for t in self._pumps:
            t.join(timeout=5)
        self._pumps = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def run(argv: Sequence[str], workers: int, ps: int, evaluator: bool = False, restarts: int = 0,
        threads: Optional[int] = None, host: str = "localhost") -> int:
    """``tfmsr cluster``: start, stream, stop (also on Ctrl-C / SIGTERM); returns the run's exit code."""
    argv = list(argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv or argv[0] not in ("train", "bench"):
        raise ValueError("tfmsr cluster runs a training command: tfmsr cluster --workers W --ps P -- "
                         "train --config C --data D --model-dir M (or: -- bench train ...)")

    def terminate(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, terminate)
    cluster = LocalCluster(argv, workers, ps, evaluator=evaluator, restarts=restarts, threads=threads, host=host,
                           log=lambda line: print(line, flush=True))
    try:
        return cluster.start().wait()
    except KeyboardInterrupt:
        print("[cluster] interrupted; stopping every process", flush=True)
        return 130
    finally:
        cluster.stop()
        signal.signal(signal.SIGTERM, previous)
