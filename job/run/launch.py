"""Research, cluster side: start a study version's worker and collector Jobs.

`research --launch` calls `launch(study, version)` once it has created the version. The
Jobs are clones of the two the manifests ship, `search` (the Indexed worker Job) and
`collect`, read from the cluster, so what an overlay patched into them (GPU limits,
tolerations, parallelism) carries over; no manifest lives in Python. A clone is named
`<template>-<study as a DNS label>`, labelled with the version, annotated with the exact
study name, and its containers get SMS_STUDY. Creating is idempotent: a Job that already
exists (409 AlreadyExists) is fine.

The templates are immutable once created, so after a config or image change `kubectl
apply -k` cannot update them, while it does update the research CronJob (and gives the
ConfigMap a new hash-suffixed name). In a research pod, SMS_JOB_NAME names the pod's own
Job, always current: its image and config map replace the templates'. From a laptop
(a kubeconfig, no SMS_JOB_NAME) the templates are used as they are.

Client: in a pod (KUBERNETES_SERVICE_HOST and the service account's token) the in-cluster
configuration, else the kubeconfig (KUBECONFIG, else ~/.kube/config). Namespace:
SMS_NAMESPACE, else the pod's service account's, else the kubeconfig context's, else
`small-model-search`. What it asks of the API is what k8s/base/research-role.yaml grants:
get, list and create batch Jobs in that namespace.

Errors are one line, no token: `LaunchError` (exit 2) for a setup to fix (no config, a
403, a missing template); `LaunchDownError` (exit 1) for an API server that cannot be
reached or answers 5xx.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import pydantic
import urllib3
import yaml
from kubernetes import client, config

from job import settings

Obj = dict[str, Any]
T = TypeVar("T")

TEMPLATES = ("search", "collect")  # the Jobs of k8s/base/{search,collect}-job.yaml
TTL_S = 604800  # a week to read the pods' logs; the templates themselves carry none
MAX_NAME = 63  # a Job's name is a DNS-1123 label (its pods' labels carry it)
INSTANCE_LABEL = "app.kubernetes.io/instance"
VERSION_LABEL = "small-model-search/version"
STUDY_ANNOTATION = "small-model-search/study"
CONFIG_VOLUME = "config"
DEFAULT_NAMESPACE = "small-model-search"
ROLE = "k8s/base/research-role.yaml"
OVERLAY = "k8s/overlays/<overlay>"
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
TIMEOUT_S = (10.0, 30.0)  # connect, read
# Set by the API server and its Job controller: a clone must not carry the template's.
CONTROLLER_LABELS = (
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
    "job-name",
    "batch.kubernetes.io/job-name",
)
KEPT_METADATA = ("name", "namespace", "labels", "annotations")  # the rest is the server's
DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


# kubernetes.config is untyped: these are its loaders as called here.
_load_incluster = cast(Callable[..., None], config.load_incluster_config)
_load_kubeconfig = cast(Callable[..., None], config.load_kube_config)
_kubeconfig_contexts = cast(
    Callable[[], tuple[list[Obj], Obj | None]], config.list_kube_config_contexts
)


class LaunchError(ValueError):
    """The cluster refuses for a reason to fix (config, RBAC, a missing template): exit 2."""


class LaunchDownError(RuntimeError):
    """The API server cannot be reached or answers 5xx: exit 1, try again later."""


# --- names ---------------------------------------------------------------------------


def slug(study: str, room: int = MAX_NAME) -> str:
    """`study` as a DNS-1123 label of at most `room` characters: lowercase, runs of other
    characters as "-", no "-" at either end; when that changed the name or it is too
    long, truncated and suffixed with "-" and 6 hex digits of its sha256, so distinct
    studies keep distinct labels."""
    label = re.sub(r"[^a-z0-9-]+", "-", study.lower()).strip("-")
    if label == study and len(label) <= room:
        return label
    digest = hashlib.sha256(study.encode()).hexdigest()[:6]
    return f"{label[: room - len(digest) - 1].rstrip('-')}-{digest}".lstrip("-")


def job_name(template: str, study: str) -> str:
    """The clone of `template` for `study`: `<template>-<slug>`, at most 63 characters."""
    return f"{template}-{slug(study, MAX_NAME - len(template) - 1)}"


def version_labels(study: str, version: int) -> dict[str, str]:
    """The labels tying a Job and its pods to the study version."""
    return {INSTANCE_LABEL: slug(study), VERSION_LABEL: str(version)}


QUEUE_LABEL = "kueue.x-k8s.io/queue-name"  # k8s/components/kueue puts it on the templates
MIN_PARALLELISM = "kueue.x-k8s.io/job-min-parallelism"  # partial admission allowed


# --- clones: pure, dict to dict --------------------------------------------------------


def clone_metadata(job: Obj, template: str, study: str, version: int, namespace: str) -> Obj:
    """`job` with the clone's metadata: name, namespace, the template's labels and
    annotations plus the version's; nothing the server set, and no status."""
    out = copy.deepcopy(job)
    meta = {k: v for k, v in out.get("metadata", {}).items() if k in KEPT_METADATA}
    labels = {k: v for k, v in meta.get("labels", {}).items() if k not in CONTROLLER_LABELS}
    annotations = {
        k: v for k, v in meta.get("annotations", {}).items() if k not in DROPPED_ANNOTATIONS
    }
    meta |= {
        "name": job_name(template, study),
        "namespace": namespace,
        "labels": labels | version_labels(study, version),
        "annotations": annotations | {STUDY_ANNOTATION: study},
    }
    out["metadata"] = meta
    out.pop("status", None)
    return out


def clone_spec(job: Obj, study: str, version: int) -> Obj:
    """`job` with the clone's spec: no selector (the server makes one), not suspended
    (but queued, when Kueue queues the template: k8s/components/kueue), its pods labelled
    with the version (not with the template's controller), SMS_STUDY on every container,
    ttlSecondsAfterFinished a week."""
    out = copy.deepcopy(job)
    spec = out["spec"]
    for key in ("selector", "manualSelector", "suspend"):
        spec.pop(key, None)
    meta = job.get("metadata", {})
    if QUEUE_LABEL in meta.get("labels", {}):
        spec["suspend"] = True  # Kueue admits it (its webhook would suspend it anyway)
    if MIN_PARALLELISM in meta.get("annotations", {}) and "completions" in spec:
        # Kueue's partial admission lowered the live template's parallelism and restores
        # it only on eviction: the clone asks for every worker again, Kueue decides.
        spec["parallelism"] = spec["completions"]
    spec["ttlSecondsAfterFinished"] = TTL_S
    meta = spec["template"].setdefault("metadata", {})
    meta.pop("creationTimestamp", None)
    labels = {k: v for k, v in meta.get("labels", {}).items() if k not in CONTROLLER_LABELS}
    meta["labels"] = labels | version_labels(study, version)
    for container in _containers(spec["template"]["spec"]):
        env = [e for e in container.get("env", []) if e.get("name") != settings.SMS_STUDY]
        container["env"] = [*env, {"name": settings.SMS_STUDY, "value": study}]
    return out


def with_own_job(job: Obj, own: Obj) -> Obj:
    """`job` with the image of `own`'s first container in every container, and the config
    map of `own`'s volume `config` in its volume `config`: the research pod's own Job is
    what `kubectl apply -k` last made, the templates may be older."""
    out = copy.deepcopy(job)
    own_pod = own["spec"]["template"]["spec"]
    image = own_pod["containers"][0]["image"]
    pod = out["spec"]["template"]["spec"]
    for container in _containers(pod):
        container["image"] = image
    config_map = _config_map(own_pod)
    if config_map is not None:
        for volume in pod.get("volumes", []):
            if volume.get("name") == CONFIG_VOLUME and "configMap" in volume:
                volume["configMap"]["name"] = config_map
    return out


def clone(template: Obj, study: str, version: int, namespace: str, own: Obj | None = None) -> Obj:
    """The Job to create for `study` (version `version`) from a template Job."""
    name = template["metadata"]["name"]
    job = {k: v for k, v in template.items() if k in ("apiVersion", "kind", "metadata", "spec")}
    job = clone_spec(clone_metadata(job, name, study, version, namespace), study, version)
    return job if own is None else with_own_job(job, own)


def _containers(pod: Obj) -> list[Obj]:
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def _config_map(pod: Obj) -> str | None:
    for volume in pod.get("volumes", []):
        if volume.get("name") == CONFIG_VOLUME and "configMap" in volume:
            return str(volume["configMap"]["name"])
    return None


# --- the API ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """A client of one API server, and the namespace to work in."""

    batch: client.BatchV1Api
    server: str
    namespace: str


@contextmanager
def connect() -> Iterator[Cluster]:
    """The client: in-cluster in a pod, else the kubeconfig; closed on exit."""
    configuration = client.Configuration()
    namespace = _load(configuration)
    with client.ApiClient(configuration) as api:
        yield Cluster(client.BatchV1Api(api), configuration.host, namespace)


def _load(configuration: client.Configuration) -> str:
    """Fill `configuration` (never the global default); return the namespace."""
    try:
        _load_incluster(client_configuration=configuration)
        found = _read(IN_CLUSTER_NAMESPACE)
    except config.ConfigException as in_cluster:
        try:
            _load_kubeconfig(client_configuration=configuration)
            _, current = _kubeconfig_contexts()
        except (config.ConfigException, OSError, ValueError, yaml.YAMLError) as exc:
            raise LaunchError(
                f"no Kubernetes API to talk to: not in a pod ({_line(in_cluster)}) and no "
                f"usable kubeconfig (KUBECONFIG, else ~/.kube/config): {_line(exc)}"
            ) from None
        found = (current or {}).get("context", {}).get("namespace")
    return settings.current().namespace() or found or DEFAULT_NAMESPACE


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def read_job(cluster: Cluster, name: str, missing: str) -> Obj:
    """GET the Job `name` as a plain dict (the API's own camelCase JSON); `missing` is the
    LaunchError's message when there is none."""
    response = _call(
        cluster,
        "get",
        lambda: cluster.batch.read_namespaced_job(
            name, cluster.namespace, _preload_content=False, _request_timeout=TIMEOUT_S
        ),
        missing=missing,
    )
    return cast(Obj, json.loads(cast(urllib3.BaseHTTPResponse, response).data))


def create_job(cluster: Cluster, job: Obj) -> bool:
    """POST `job`; True when created, False when one of that name is already there."""
    name = job["metadata"]["name"]
    try:
        body = client.V1Job.from_dict(job)
    except pydantic.ValidationError as exc:
        raise LaunchError(f"job {name}: the client cannot send it: {_line(exc)}") from None
    assert body is not None  # from_dict returns None for None only
    try:
        _call(
            cluster,
            "create",
            lambda: cluster.batch.create_namespaced_job(
                cluster.namespace, body, _preload_content=False, _request_timeout=TIMEOUT_S
            ),
        )
    except _AlreadyThereError:
        return False
    return True


def jobs_of(study: str) -> list[str]:
    """The names of the Jobs launched for `study` (listed by its instance label)."""
    with connect() as cluster:
        selector = f"{INSTANCE_LABEL}={slug(study)}"
        response = _call(
            cluster,
            "list",
            lambda: cluster.batch.list_namespaced_job(
                cluster.namespace,
                label_selector=selector,
                _preload_content=False,
                _request_timeout=TIMEOUT_S,
            ),
        )
    items = json.loads(cast(urllib3.BaseHTTPResponse, response).data).get("items", [])
    return sorted(
        j["metadata"]["name"]
        for j in items
        if j["metadata"].get("annotations", {}).get(STUDY_ANNOTATION) == study
    )


class _AlreadyThereError(Exception):
    """409 AlreadyExists on a create: success for an idempotent launch."""


def _call(cluster: Cluster, verb: str, request: Callable[[], T], missing: str = "") -> T:
    """Run one API request; its failures as LaunchError / LaunchDownError, one line."""
    try:
        return request()
    except client.exceptions.ApiException as exc:
        status, message = int(exc.status or 0), _api_message(exc)
        if status == 409 and verb == "create":
            raise _AlreadyThereError from None
        if status == 403:
            raise LaunchError(
                f"the research service account may not {verb} Jobs in namespace "
                f"{cluster.namespace} ({ROLE}): {message}"
            ) from None
        if status == 404 and missing:
            raise LaunchError(missing) from None
        if status >= 500 or status == 0:
            raise LaunchDownError(
                f"the Kubernetes API server at {cluster.server} answered {status}: {message}"
            ) from None
        raise LaunchError(
            f"the Kubernetes API server at {cluster.server} refused to {verb} a Job "
            f"({status}): {message}"
        ) from None
    except urllib3.exceptions.HTTPError as exc:
        raise LaunchDownError(
            f"cannot reach the Kubernetes API server at {cluster.server}: {_reason(exc)}"
        ) from None


def _api_message(exc: client.exceptions.ApiException) -> str:
    """The API's own message (its Status body's), else the HTTP reason."""
    try:
        body = json.loads(exc.body or "")
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("message"):
        return _line(body["message"])
    return _line(exc.reason or "no reason given")


def _reason(exc: urllib3.exceptions.HTTPError) -> str:
    """urllib3's reason without its object repr: "[Errno 111] Connection refused"."""
    reason = getattr(exc, "reason", None) or exc
    return re.sub(r"^<[^>]*>: ", "", _line(reason)) or type(exc).__name__


def _line(value: object) -> str:
    """One line: the first non-blank line of str(value)."""
    lines = [line.strip() for line in str(value).splitlines() if line.strip()]
    return lines[0] if lines else ""


# --- the verb's step -------------------------------------------------------------------


def launch(study: str, version: int) -> list[str]:
    """Create the worker and collector Jobs of `study` (version `version`); one line per
    Job: "job NAME: created" or "job NAME: already there"."""
    if version < 1:
        raise LaunchError(f"study version must be >= 1, got {version}")
    with connect() as cluster:
        templates = [read_job(cluster, t, _no_template(cluster, t)) for t in TEMPLATES]
        own = None
        if (own_name := settings.current().own_job()) is not None:
            missing = (
                f"this pod's own Job {own_name} ({settings.SMS_JOB_NAME}) is not in "
                f"namespace {cluster.namespace}"
            )
            own = read_job(cluster, own_name, missing)
        jobs = [clone(t, study, version, cluster.namespace, own) for t in templates]
        lines = []
        for job in jobs:
            state = "created" if create_job(cluster, job) else "already there"
            lines.append(f"job {job['metadata']['name']}: {state}")
    return lines


def _no_template(cluster: Cluster, name: str) -> str:
    return (
        f"the template Job {name} is not in namespace {cluster.namespace}: "
        f"`kubectl apply -k {OVERLAY}` restores it"
    )
