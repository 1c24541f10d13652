"""Render the kustomize overlays as `kubectl apply -k` would, and read what they say:
validate objects strictly, resolve a container's environment, walk RBAC.

The tests work on a copy of `k8s/` so that they can write the Secret's env file, which is
never committed (`k8s/base/database.env`), without touching the checkout.
"""

from __future__ import annotations

import base64
import math
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from job.run.launch import template_job
from tests.support.proc import ROOT

K8S = ROOT / "k8s"
OVERLAYS = ("local-cpu", "gpu")
NAMESPACE = "small-model-search"
DATABASE_ENV = "base/database.env"

Obj = dict[str, Any]
# The deploy tier's `render_overlay` fixture: (name, kustomization=None, database=None) → objs
RenderOverlay = Callable[..., list[Obj]]
Grant = tuple[str, str, str]  # (apiGroup, resource, verb), as RBAC rules spell them

# Oldest Kubernetes we support (Indexed Job features GA by then) and the newest schemas shipped.
VERSIONS = ("1.31.0", kubernetes_validate.latest_version())
# Custom resources: no schema ships with kubernetes-validate; their tests check them.
CUSTOM = {"PodMonitor", "PrometheusRule"}
# The image every container of ours runs (k8s/base/kustomization.yaml's `images`).
IMAGE = "ghcr.io/small-model-search/small-model-search"


def kubectl() -> str:
    """kubectl with its built-in kustomize; under CI a missing one is a failure, not a skip."""
    found = shutil.which("kubectl")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kubectl (with kustomize) is needed to render k8s/ and was not found")
        pytest.skip("kubectl not installed: the manifests cannot be rendered here")
    return found


def example_env() -> dict[str, str]:
    """The committed example of the Secret's env file, as a dict."""
    values: dict[str, str] = {}
    for line in (K8S / "base" / "database.env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def copy_tree(dest: Path, database: dict[str, str] | None = None) -> Path:
    """A copy of k8s/ under dest with the Secret's env file written from `database`."""
    tree = dest / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("database.env"))
    values = example_env() if database is None else database
    (tree / DATABASE_ENV).write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return tree


def render(tree: Path, overlay: str) -> list[Obj]:
    """`kubectl kustomize` of one overlay: every object it would apply."""
    proc = subprocess.run(
        [kubectl(), "kustomize", str(tree / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return [obj for obj in yaml.safe_load_all(proc.stdout) if obj]


def render_with(tree: Path, name: str, kustomization: str) -> list[Obj]:
    """Render a new overlay `name` of the tree, its kustomization.yaml given as text
    (paths in it are relative to overlays/<name>/)."""
    folder = tree / "overlays" / name
    folder.mkdir()
    (folder / "kustomization.yaml").write_text(kustomization)
    return render(tree, name)


def ours(container: Obj) -> bool:
    """Whether the container runs this project's image (not postgres, not the Pushgateway)."""
    return str(container["image"]).split("@")[0].rsplit(":", 1)[0] == IMAGE


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    """The one object of that kind and name (generated names carry a hash suffix)."""
    hits = [
        o
        for o in objs
        if o["kind"] == kind
        and (o["metadata"]["name"] == name or o["metadata"]["name"].startswith(name + "-"))
    ]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} found"
    return hits[0]


def template_of(objs: list[Obj], name: str) -> Obj:
    """The Job that `research --launch` starts from the template CronJob `name` (before
    the version's labels, name and deadline: job.run.launch.clone)."""
    return template_job(find(objs, "CronJob", name))


def validation_errors(objs: list[Obj], version: str) -> list[str]:
    """`kubernetes-validate --strict` of each object (custom resources skipped): one line
    per object that fails, naming it."""
    errors = []
    for obj in objs:
        if obj["kind"] in CUSTOM:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {e.message}")
    return errors


def _binds(binding: Obj, service_account: str, namespace: str) -> bool:
    """Whether a (Cluster)RoleBinding's subjects include the service account."""
    groups = {"system:serviceaccounts", f"system:serviceaccounts:{namespace}"}
    groups.add("system:authenticated")
    for subject in binding.get("subjects", []):
        kind, name = subject["kind"], subject["name"]
        where = subject.get("namespace", binding["metadata"].get("namespace"))
        if kind == "ServiceAccount" and name == service_account and where == namespace:
            return True
        if kind == "Group" and name in groups:
            return True
        if kind == "User" and name == f"system:serviceaccount:{namespace}:{service_account}":
            return True
    return False


def grants(objs: list[Obj], service_account: str, namespace: str = NAMESPACE) -> set[Grant]:
    """What RBAC lets the service account do: every (apiGroup, resource, verb) of every
    rule of every Role and ClusterRole a binding in `objs` gives it ("*" left as is)."""
    granted: set[Grant] = set()
    for binding in objs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not _binds(binding, service_account, namespace):
            continue
        ref = binding["roleRef"]
        role = find(objs, ref["kind"], ref["name"])
        for rule in role.get("rules", []):
            granted |= {
                (group, resource, verb)
                for group in rule.get("apiGroups", [])
                for resource in rule.get("resources", [])
                for verb in rule.get("verbs", [])
            }
    return granted


def pod_spec(obj: Obj) -> Obj | None:
    """The pod template's spec of a workload (CronJob: its Job's), else None."""
    if obj["kind"] == "CronJob":
        return dict(obj["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return dict(obj["spec"]["template"]["spec"])
    return None


def pod_labels(obj: Obj) -> dict[str, str]:
    spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    return dict(spec["template"]["metadata"]["labels"])


def containers(spec: Obj) -> list[Obj]:
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def _data(obj: Obj) -> dict[str, str]:
    """A ConfigMap's or Secret's values, decoded."""
    if obj["kind"] == "Secret":
        encoded = obj.get("data", {})
        return {k: base64.b64decode(v).decode() for k, v in encoded.items()}
    return dict(obj.get("data", {}))


def _quantity_cores(value: str) -> int:
    """A CPU quantity as resourceFieldRef reports it with divisor 1: cores, rounded up."""
    cores = float(value[:-1]) / 1000 if value.endswith("m") else float(value)
    return max(1, math.ceil(cores))


def container_env(
    objs: list[Obj], container: Obj, fields: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment Kubernetes would give the container: envFrom, then env. `fields`:
    the downward API's values by fieldPath (metadata.namespace, …), for fieldRef."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        for kind, key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
            if key in source:
                env.update(_data(find(objs, kind, source[key]["name"])))
    for var in container.get("env", []):
        env[var["name"]] = _env_value(objs, container, var, fields or {})
    return env


def _env_value(objs: list[Obj], container: Obj, var: Obj, fields: Mapping[str, str]) -> str:
    if "value" in var:
        return str(var["value"])
    ref = var["valueFrom"]
    if "fieldRef" in ref and ref["fieldRef"]["fieldPath"] in fields:
        return fields[ref["fieldRef"]["fieldPath"]]
    if "secretKeyRef" in ref:
        return _data(find(objs, "Secret", ref["secretKeyRef"]["name"]))[ref["secretKeyRef"]["key"]]
    if "configMapKeyRef" in ref:
        key = ref["configMapKeyRef"]
        return _data(find(objs, "ConfigMap", key["name"]))[key["key"]]
    if "resourceFieldRef" in ref:
        section, _, resource = ref["resourceFieldRef"]["resource"].partition(".")
        value = str(container["resources"][section][resource])
        return str(_quantity_cores(value)) if resource == "cpu" else value
    raise AssertionError(f"unsupported env source {ref}")


def mounted_files(objs: list[Obj], spec: Obj, container: Obj) -> dict[str, dict[str, str]]:
    """mountPath → the files a ConfigMap or Secret volume puts there (other volumes: none)."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    files: dict[str, dict[str, str]] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            files[mount["mountPath"]] = _data(find(objs, "ConfigMap", volume["configMap"]["name"]))
        elif "secret" in volume:
            files[mount["mountPath"]] = _data(find(objs, "Secret", volume["secret"]["secretName"]))
        else:
            files[mount["mountPath"]] = {}
    return files
