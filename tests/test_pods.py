"""Pods as processes: the `local-cpu` overlay's search and collector Jobs, run here.

No cluster runs on these machines, so this test does the kubelet's part by hand: it renders
the overlay, takes each Job's container command, args and environment from the rendered
objects only (Secret and ConfigMap values resolved, the image's ENV read from the
Dockerfile), gives every volume a local folder, and starts `entrypoint.sh` once per index
with JOB_COMPLETION_INDEX set, against the real PostgreSQL. The one deliberate difference:
pods have a network namespace each and processes share one, so each worker gets its own
metrics port.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from job.config import parse_config
from job.pgserver import External, Server, free_port
from job.verify import verify_study_name
from tests.kube import Obj, container_env, copy_tree, find, mounted_files, pod_spec, render
from tests.proc import ROOT

APP = "/app"  # the image's WORKDIR: the code, which here is the checkout


def image_env() -> dict[str, str]:
    """ENV of the Dockerfile's final stage (PATH aside: the venv comes first here too)."""
    stages = (ROOT / "Dockerfile").read_text().replace("\\\n", " ").split("\nFROM ")
    env: dict[str, str] = {}
    for line in stages[-1].splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["ENV"]:
            env.update(word.split("=", 1) for word in words[1:] if "=" in word)
    env.pop("PATH", None)
    return env


class Pod:
    """One pod's filesystem view: container paths map to folders under `root`."""

    def __init__(self, objs: list[Obj], job: Obj, root: Path, name: str) -> None:
        spec = pod_spec(job)
        assert spec is not None
        self.container = spec["containers"][0]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        self.paths = {APP: ROOT}
        files = mounted_files(objs, spec, self.container)
        for mount in self.container.get("volumeMounts", []):
            claim = volumes[mount["name"]].get("persistentVolumeClaim")
            # A claim is shared by every pod; emptyDir and ConfigMap volumes are the pod's own.
            local = root / (f"pvc-{claim['claimName']}" if claim else f"{name}-{mount['name']}")
            local.mkdir(parents=True, exist_ok=True)
            for key, text in files[mount["mountPath"]].items():
                (local / key).write_text(text)
            self.paths[mount["mountPath"]] = local
        self.env = {k: self.local(v) for k, v in image_env().items()}
        self.env.update({k: self.local(v) for k, v in container_env(objs, self.container).items()})

    def local(self, value: str) -> str:
        """A container path's folder here; any other value as it is."""
        for path in sorted(self.paths, key=len, reverse=True):
            if value == path or value.startswith(path + "/"):
                return str(self.paths[path]) + value[len(path) :]
        return value

    def start(self, log: Path, extra: dict[str, str]) -> subprocess.Popen[bytes]:
        argv = [self.local(a) for a in self.container["command"] + self.container["args"]]
        # Like a container, the process sees only its own environment, not the test runner's.
        env = {**self.env, **extra, "PATH": f"{Path(sys.executable).parent}:{os.defpath}"}
        with log.open("wb") as out:
            return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def database_env(url: str) -> dict[str, str]:
    """The Secret's five keys for the test's own database."""
    parts = urlsplit(url)
    return {
        "POSTGRES_HOST": parts.hostname or "",
        "POSTGRES_PORT": str(parts.port),
        "POSTGRES_USER": unquote(parts.username or ""),
        "POSTGRES_PASSWORD": unquote(parts.password or ""),
        "POSTGRES_DB": parts.path.lstrip("/"),
    }


@pytest.mark.slow
def test_local_cpu_jobs_complete_the_study(postgres: Server | External, tmp_path: Path) -> None:
    url = postgres.new_database()
    secret = database_env(url)
    objs = render(copy_tree(tmp_path, secret), "local-cpu")
    search, collect = find(objs, "Job", "search"), find(objs, "Job", "collect")
    volumes = tmp_path / "volumes"
    n = search["spec"]["parallelism"]
    assert n == search["spec"]["completions"] >= 2

    procs = []
    for index in range(n):
        pod = Pod(objs, search, volumes, f"search-{index}")
        extra = {"JOB_COMPLETION_INDEX": str(index), "SMS_METRICS_PORT": str(free_port())}
        procs.append(pod.start(tmp_path / f"search-{index}.log", extra))
    procs.append(Pod(objs, collect, volumes, "collect").start(tmp_path / "collect.log", {}))
    codes = [proc.wait(timeout=900) for proc in procs]
    logs = {log.name: log.read_text() for log in sorted(tmp_path.glob("*.log"))}
    assert codes == [0] * (n + 1), logs
    assert not any(secret["POSTGRES_PASSWORD"] in text for text in logs.values())

    config_map = find(objs, "ConfigMap", "search-config")
    config = parse_config(yaml.safe_load(config_map["data"]["search.yaml"]), "search.yaml")
    study = optuna.load_study(study_name=config.study.name, storage=url)
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.COMPLETE) == config.study.budget
    assert TrialState.RUNNING not in states
    workers = {t.user_attrs["worker"] for t in study.get_trials()}
    assert len(workers) == n, workers  # every index took part
    results = volumes / "pvc-artifacts" / "results"
    assert {"pareto.json", "summary.json"} <= {p.name for p in results.iterdir()}

    # The verify phase: the workers retrained the picks and the baselines once the budget
    # was met (a second study), the collector waited for them and wrote the selection.
    verify = optuna.load_study(study_name=verify_study_name(config.study.name), storage=url)
    retrains = verify.get_trials()
    assert retrains and all(t.state == TrialState.COMPLETE for t in retrains)
    assert len({t.user_attrs["worker"] for t in retrains}) >= 1
    selection = json.loads((results / "selection.json").read_text())
    assert set(selection) == {p.name for p in config.select.policies}
    for name, choice in selection.items():
        folder = results / "selected" / name
        assert {"model.yaml", "weights.pt", "card.json"} <= {f.name for f in folder.iterdir()}
        card = json.loads((folder / "card.json").read_text())
        assert card["trial"] == choice["trial"] and card["verified"]["mean"] is not None
    baselines = json.loads((results / "baselines.json").read_text())
    assert [b["name"] for b in baselines["baselines"]] == ["resnet8"]
    assert "kendall_tau" in json.loads((results / "verify.json").read_text())
