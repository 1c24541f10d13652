"""A re-apply after a change never ends in "field is immutable" (k8s/, job/run/launch.py).

GitOps tools (Argo CD, Flux) run `kubectl apply` of the overlay on every commit. The API
server refuses an update that changes an immutable field of an object that keeps its name:
a Job's pod template above all, a workload's selector, a StatefulSet's volume claims, a
PersistentVolumeClaim's access modes, a RoleBinding's role. No API server runs here, so
each overlay is rendered twice, as shipped and after a commit that changes the search
config and the image, and every object that keeps its name is compared field by field
with the rules the API server applies. The Jobs themselves are made by `research
--launch`, named by study version: a changed config is a new version, so new Job names.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from job.collect.research import NEW_VERSION, decide
from job.config import config_fingerprint, parse_config
from job.run.launch import TEMPLATES, clone, job_name
from job.search.versions import Fingerprints, Version
from tests.support.kube import OVERLAYS, Obj, copy_tree, find, pod_spec, render, template_of

NEW_TAG = "0.2.0"


def _path(obj: Obj, *keys: str) -> Any:
    for key in keys:
        obj = obj.get(key, {}) if isinstance(obj, dict) else {}
    return obj


def _pvc_fixed(obj: Obj) -> Any:
    # only resources.requests.storage may change (and only grow)
    return {k: v for k, v in obj["spec"].items() if k != "resources"}


# The fields the API server refuses to change on update, by kind (validation in
# pkg/apis/*/validation: ValidateJobUpdate, ValidateStatefulSetUpdate, ...).
IMMUTABLE: dict[str, list[Callable[[Obj], Any]]] = {
    "Job": [
        lambda o: _path(o, "spec", "template"),
        lambda o: _path(o, "spec", "selector"),
        lambda o: _path(o, "spec", "completionMode"),
    ],
    "Deployment": [lambda o: _path(o, "spec", "selector")],
    "DaemonSet": [lambda o: _path(o, "spec", "selector")],
    "StatefulSet": [
        lambda o: _path(o, "spec", "selector"),
        lambda o: _path(o, "spec", "serviceName"),
        lambda o: _path(o, "spec", "volumeClaimTemplates"),
        lambda o: _path(o, "spec", "podManagementPolicy"),
    ],
    "PersistentVolumeClaim": [_pvc_fixed],
    "RoleBinding": [lambda o: o.get("roleRef")],
    "ClusterRoleBinding": [lambda o: o.get("roleRef")],
    "Service": [lambda o: _path(o, "spec", "clusterIP")],
    "ConfigMap": [lambda o: o.get("data") if o.get("immutable") else None],
    "Secret": [lambda o: o.get("data") if o.get("immutable") else None],
}


def changed_tree(root: Path) -> Path:
    """k8s/ after a commit: another search config (the learning rate) and a new image."""
    tree = copy_tree(root)
    kustomization = tree / "base" / "kustomization.yaml"
    text = kustomization.read_text()
    assert text.count('newTag: "0.1.0"') == 1
    kustomization.write_text(text.replace('newTag: "0.1.0"', f'newTag: "{NEW_TAG}"'))
    local = tree / "overlays" / "local-cpu" / "kustomization.yaml"
    text = local.read_text()
    assert text.count('newTag: "0.1.0-cpu"') == 1
    local.write_text(text.replace('newTag: "0.1.0-cpu"', f'newTag: "{NEW_TAG}-cpu"'))
    for config in (tree / "base" / "search.yaml", tree / "overlays" / "local-cpu" / "search.yaml"):
        text, count = re.subn(r"\n  lr: [0-9.]+", "\n  lr: 0.0123", config.read_text())
        assert count == 1, config
        config.write_text(text)
    return tree


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[list[Obj], list[Obj]]]:
    before = copy_tree(tmp_path_factory.mktemp("before"))
    after = changed_tree(tmp_path_factory.mktemp("after"))
    return {o: (render(before, o), render(after, o)) for o in OVERLAYS}


def by_name(objs: list[Obj]) -> dict[tuple[str, str], Obj]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_commit_changed_what_it_should(
    renders: dict[str, tuple[list[Obj], list[Obj]]], overlay: str
) -> None:
    before, after = renders[overlay]
    # the ConfigMap is generated: a new config is a new name, which the templates follow
    old, new = find(before, "ConfigMap", "search-config"), find(after, "ConfigMap", "search-config")
    assert old["metadata"]["name"] != new["metadata"]["name"]
    for name in TEMPLATES:
        spec = pod_spec(find(after, "CronJob", name))
        assert spec is not None
        volume = next(v for v in spec["volumes"] if v["name"] == "config")
        assert volume["configMap"]["name"] == new["metadata"]["name"]
        assert spec["containers"][0]["image"].split(":")[-1].startswith(NEW_TAG)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_object_with_immutable_fields_keeps_its_name_while_they_change(
    renders: dict[str, tuple[list[Obj], list[Obj]]], overlay: str
) -> None:
    before, after = (by_name(objs) for objs in renders[overlay])
    assert not [k for k in [*before, *after] if k[0] == "Job"]  # Jobs: research's alone
    compared = 0
    for key in before.keys() & after.keys():
        for field in IMMUTABLE.get(key[0], []):
            assert field(before[key]) == field(after[key]), key
            compared += 1
    assert compared >= 8  # the PVCs, the StatefulSet, the Deployments, the RoleBinding


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_changed_config_is_the_next_version_with_new_job_names(
    renders: dict[str, tuple[list[Obj], list[Obj]]], overlay: str
) -> None:
    before, after = renders[overlay]
    configs = []
    for objs in (before, after):
        text = find(objs, "ConfigMap", "search-config")["data"]["search.yaml"]
        configs.append(parse_config(yaml.safe_load(text), "search.yaml"))
    old, new = (config_fingerprint(c) for c in configs)
    assert old != new
    base = configs[0].study.name
    running = Version(base, 1, configs[0].study.budget, Fingerprints("d", old, "k"))
    decision = decide(running, base, configs[1].study.budget, Fingerprints("d", new, "k"))
    assert decision.decision == NEW_VERSION and decision.study == f"{base}-v2"
    for name in TEMPLATES:
        first = clone(template_of(before, name), base, 1, "ns")
        second = clone(template_of(after, name), decision.study, 2, "ns")
        assert first["metadata"]["name"] == job_name(name, base)
        assert second["metadata"]["name"] == job_name(name, decision.study)
        assert first["metadata"]["name"] != second["metadata"]["name"]
        assert first["spec"]["template"] != second["spec"]["template"]
