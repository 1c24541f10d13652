"""Pods as processes: the `local-cpu` overlay's search and collector Jobs (made from its
template CronJobs, as `research --launch` makes them), run here.

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

import optuna
import yaml
from optuna.trial import TrialState

from job.config import parse_config
from job.run.launch import TEMPLATES
from job.search.retrain import verify_study_name
from job.testing.pgserver import External, Server, free_port
from tests.support.configs import RESEARCH
from tests.support.data import write_digits
from tests.support.fakekube import FakeKube
from tests.support.kube import (
    VERSIONS,
    Obj,
    container_env,
    copy_tree,
    find,
    grants,
    mounted_files,
    pod_spec,
    render,
    template_of,
    validation_errors,
)
from tests.support.proc import ROOT, database_env

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

    def __init__(
        self, objs: list[Obj], job: Obj, root: Path, name: str, fields: dict[str, str] | None = None
    ) -> None:
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
        env = container_env(objs, self.container, fields)  # fields: the downward API's
        self.env.update({k: self.local(v) for k, v in env.items()})

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


def run_jobs(
    objs: list[Obj], search: Obj, collect: Obj, volumes: Path, logs: Path
) -> dict[str, str]:
    """A worker Job's pods (one per index) and a collector Job's pod, as processes, to
    the end; every exit code must be 0. Returns their logs by file name."""
    procs, prefix = [], search["metadata"]["name"]
    for index in range(search["spec"]["parallelism"]):
        pod = Pod(objs, search, volumes, f"{prefix}-{index}")
        extra = {"JOB_COMPLETION_INDEX": str(index), "SMS_METRICS_PORT": str(free_port())}
        procs.append(pod.start(logs / f"{prefix}-{index}.log", extra))
    name = collect["metadata"]["name"]
    procs.append(Pod(objs, collect, volumes, name).start(logs / f"{name}.log", {}))
    codes = [proc.wait(timeout=900) for proc in procs]
    texts = {log.name: log.read_text() for log in sorted(logs.glob("*.log"))}
    assert codes == [0] * len(procs), texts
    return texts


# The overlay's own config, cut to the fewest trials and epochs that still give every
# worker a trial, two picks and a baseline to retrain: what is under test here is the
# pods' plumbing (its config is validated as shipped by tests/deploy/test_k8s.py).
CUTS = {
    "budget: 8 ": "budget: 4 ",
    "metrics_linger_s: 15": "metrics_linger_s: 0",  # nothing scrapes them here
    "  epochs: 4\n": "  epochs: 2\n",
    "retrain: {epochs: 4,": "retrain: {epochs: 1,",
}


def test_local_cpu_jobs_complete_the_study(postgres: Server | External, tmp_path: Path) -> None:
    url = postgres.new_database()
    secret = database_env(url)
    tree = copy_tree(tmp_path, secret)
    config_file = tree / "overlays" / "local-cpu" / "search.yaml"
    text = config_file.read_text()
    for old, new in CUTS.items():
        assert text.count(old) == 1, old  # the overlay changed: update CUTS
        text = text.replace(old, new)
    config_file.write_text(text)
    objs = render(tree, "local-cpu")
    search, collect = template_of(objs, "search"), template_of(objs, "collect")
    volumes = tmp_path / "volumes"
    n = search["spec"]["parallelism"]
    assert n == search["spec"]["completions"] >= 2

    logs = run_jobs(objs, search, collect, volumes, tmp_path)
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


def test_research_cronjob_launches_the_next_version(
    postgres: Server | External, tmp_path: Path
) -> None:
    """The research CronJob's pod, with the real kubernetes client against a fake API
    server (tests/support/fakekube.py) holding the template CronJobs: no study yet, it
    launches version 1; unchanged data, no request; images added, two research pods at
    once make one version, whose Jobs then run here to the end."""
    url = postgres.new_database()
    tree = copy_tree(tmp_path, database_env(url))
    volumes, logs = tmp_path / "volumes", tmp_path / "logs"
    logs.mkdir()
    # A pod would read /data/images; a config file's paths are not mapped like argv and
    # env, so it names the data volume's folder here.
    images = volumes / "pvc-data" / "images"
    config_text = RESEARCH.replace("PATH", str(images))
    # the pods serve metrics (SMS_METRICS_PORT) but nothing scrapes them here: no linger
    config_text = config_text.replace("seed: 0}", "seed: 0, metrics_linger_s: 0}")
    (tree / "overlays" / "local-cpu" / "search.yaml").write_text(config_text)
    objs = render(tree, "local-cpu")
    write_digits(images, 0, 20)
    cron = find(objs, "CronJob", "research")
    namespace = cron["metadata"]["namespace"]
    fields = {"metadata.namespace": namespace}
    results = volumes / "pvc-artifacts" / "results"
    templates = [find(objs, "CronJob", name) for name in TEMPLATES]
    with FakeKube(namespace, templates) as kube:
        extra = {"KUBECONFIG": str(kube.write_kubeconfig(tmp_path / "kubeconfig"))}

        def research(*names: str) -> list[str]:
            pods = [Pod(objs, cron, volumes, name, fields) for name in names]
            procs = [p.start(logs / f"{n}.log", extra) for p, n in zip(pods, names, strict=True)]
            codes = [proc.wait(timeout=300) for proc in procs]
            texts = [(logs / f"{name}.log").read_text() for name in names]
            assert codes == [0] * len(names), texts
            return texts

        def posted(names: list[str]) -> dict[str, Obj]:
            bodies: dict[str, Obj] = {}  # two pods' POSTs interleave; they send alike
            for body in kube.posted():
                if body["metadata"]["name"] in names:
                    assert bodies.setdefault(body["metadata"]["name"], body) == body
            for version in VERSIONS:
                assert not validation_errors(list(bodies.values()), version)
            return bodies

        # `kubectl apply -k` made no Job: the first research run launches version 1
        (first,) = research("research-0")
        assert "new version digits (version 1" in first, first
        assert kube.created() == ["search-digits", "collect-digits"]
        v1 = posted(kube.created())
        assert v1["search-digits"]["spec"]["activeDeadlineSeconds"] == 7 * 86400
        assert v1["collect-digits"]["spec"]["activeDeadlineSeconds"] == 8 * 86400
        run_jobs(objs, v1["search-digits"], v1["collect-digits"], volumes, logs)
        seen = len(kube.requests)

        (unchanged,) = research("research-1")
        assert "unchanged" in unchanged and len(kube.requests) == seen  # no Job, no GPU-second
        assert json.loads((results / "research.json").read_text())["decision"] == "unchanged"

        write_digits(images, 20, 6)  # new images of every class
        research("research-2", "research-3")  # at once: one version
        created = kube.created()[2:]
        assert sorted(created) == ["collect-digits-v2", "search-digits-v2"], kube.requests
        assert len(kube.posted()) == 6  # the second pod's two: 409 AlreadyExists, fine
        bodies = posted(created)
        granted = grants(objs, "research")
        assert {(r.resource, r.verb) for r in kube.requests} <= {
            ((group, resource), verb) for group, resource, verb in granted
        }

        run_jobs(objs, bodies["search-digits-v2"], bodies["collect-digits-v2"], volumes, logs)
        assert "unchanged" in research("research-4")[0]
        assert len(kube.created()) == 4  # nothing more was created

    study = optuna.load_study(study_name="digits-v2", storage=url)
    trials = study.get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4
    lineage = study.user_attrs["research"]
    assert lineage["parent"] == "digits" and lineage["changed"] == ["data"]
    warm = [t for t in trials if "warm_start" in t.user_attrs]
    assert len(warm) == lineage["warm_start_trials"] >= 1
    v2 = results / "digits-v2"
    assert json.loads((v2 / "research.json").read_text())["decision"] == "new_version"
    assert set(json.loads((v2 / "selection.json").read_text())) == {"best", "knee"}
    drift = json.loads((v2 / "drift.json").read_text())
    assert drift["parent"] == "digits" and len(drift["picks"]) == 2
    assert all(p["problem"] is None for p in drift["picks"]), drift["picks"]
    assert (results / "selection.json").is_file()  # version 1's results stay where they were
