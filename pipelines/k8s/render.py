"""Plain Kubernetes manifests for one tfmsr cluster run, no operator needed: per task one headless
Service (a stable DNS name, ``NAME-worker-3``) and one Job whose container runs the same ``tfmsr``
command with that task's ``TF_CONFIG``. With the Kubeflow training operator use ``tfjob.yaml`` instead
(it writes ``TF_CONFIG`` itself).

    python -m pipelines.k8s.render --name fimn --workers 30 --ps 6 --evaluator \\
        --image registry.example.com/tfmsr:0.1.0 --claim tfmsr-shared \\
        -- train --config /shared/configs/fimn.yaml --data /shared/data/ali_ccp --model-dir /shared/runs/fimn \\
        > fimn.yaml && kubectl apply -f fimn.yaml

``--ps 0`` renders a MultiWorkerMirroredStrategy cluster (worker 0 is the chief). Every task mounts the
claim at ``--mount`` (data, configs and the model dir must be shared: the chief writes checkpoints there,
the evaluator reads them, a restarted chief resumes from them). Jobs restart a failed container in place
(``restartPolicy: OnFailure``, same pod IP and name), so a worker rejoins and a chief resumes from its
backup. Workers and parameter servers never exit by themselves: when the chief's Job completes, delete
the run with ``kubectl delete job,service -l tfmsr/run=NAME``.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Sequence

import yaml

PORT = 2222


def task_list(workers: int, ps: int, evaluator: bool) -> List[tuple]:
    out = ([("chief", 0)] if ps else []) + [("worker", i) for i in range(workers)] + [("ps", i) for i in range(ps)]
    return out + ([("evaluator", 0)] if evaluator else [])


def cluster_spec(name: str, workers: int, ps: int, port: int = PORT) -> dict:
    """``TF_CONFIG`` cluster: the tasks' Service names (the evaluator is not part of it)."""
    spec: dict = {}
    for role, i in task_list(workers, ps, False):
        spec.setdefault(role, []).append(f"{name}-{role}-{i}:{port}")
    return spec


def manifests(name: str, workers: int, ps: int, evaluator: bool, image: str, command: Sequence[str],
              claim: str, mount: str = "/shared", port: int = PORT, cpu: str = "4", memory: str = "16Gi") -> list:
    if workers < 1 or ps < 0:
        raise ValueError(f"need at least one worker and ps >= 0 (got {workers}, {ps})")
    spec = cluster_spec(name, workers, ps, port)
    docs = []
    for role, i in task_list(workers, ps, evaluator):
        task = f"{name}-{role}-{i}"
        labels = {"tfmsr/run": name, "tfmsr/role": role, "tfmsr/task": task}
        tf_config = json.dumps({"cluster": spec, "task": {"type": role, "index": i}})
        if role != "evaluator":
            docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": task, "labels": labels},
                         "spec": {"clusterIP": "None", "selector": {"tfmsr/task": task},
                                  "ports": [{"name": "grpc", "port": port, "targetPort": port}]}})
        container = {
            "name": "tfmsr", "image": image, "command": ["tfmsr", *command],
            "env": [{"name": "TF_CONFIG", "value": tf_config}],
            "ports": [{"containerPort": port, "name": "grpc"}] if role != "evaluator" else [],
            "resources": {"requests": {"cpu": cpu, "memory": memory}},
            "volumeMounts": [{"name": "shared", "mountPath": mount}],
        }
        docs.append({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": task, "labels": labels},
                     "spec": {"backoffLimit": 10, "template": {
                         "metadata": {"labels": labels},
                         "spec": {"restartPolicy": "OnFailure", "containers": [container],
                                  "volumes": [{"name": "shared", "persistentVolumeClaim": {"claimName": claim}}]}}}})
    return docs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.k8s.render", description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True, help="run name: prefix of every Service/Job, label tfmsr/run")
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--ps", type=int, default=0, help="parameter servers (0: MultiWorkerMirroredStrategy)")
    p.add_argument("--evaluator", action="store_true")
    p.add_argument("--image", required=True)
    p.add_argument("--claim", required=True, help="PersistentVolumeClaim with data, configs and model dirs")
    p.add_argument("--mount", default="/shared")
    p.add_argument("--port", type=int, default=PORT)
    p.add_argument("--cpu", default="4")
    p.add_argument("--memory", default="16Gi")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- train --config ... (what every task runs)")
    a = p.parse_args(argv)
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if command[:1] != ["train"]:
        p.error("the command every task runs must be: -- train --config C --data D --model-dir M")
    docs = manifests(a.name, a.workers, a.ps, a.evaluator, a.image, command, a.claim, a.mount, a.port, a.cpu, a.memory)
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
