"""Research, cluster side: start a study version's worker and collector Jobs.

`research --launch` calls `launch(study, version, deadlines)` once it has created the
version. Its Jobs are made from the two templates the manifests ship, the suspended
CronJobs `search` (the Indexed worker Job) and `collect`, read from the cluster, so what
an overlay patched into them (GPU limits, tolerations, parallelism) carries over; no
manifest lives in Python. A Job is named `<template>-<study as a DNS label>`, labelled
with the version, annotated with the exact study name; its containers get SMS_STUDY and
its `activeDeadlineSeconds` comes from the config (`study.deadline_s`; the collector's
adds `select.deadline_s`). Creating is idempotent: a Job that already exists (409
AlreadyExists) is fine.

Why templates are CronJobs and the manifests hold no Job: a Job's pod template is
immutable, so a Job in the manifests fails every `kubectl apply -k` (and every Argo CD or
Flux sync) after a config or image change with "field is immutable". A suspended
CronJob never runs by itself, and `kubectl apply` updates its jobTemplate like any
other field; a changed config is a new study version (job.collect.research), so its Jobs
have new names, and nothing ever needs a Job replaced.

Client: in a pod (KUBERNETES_SERVICE_HOST and the service account's token) the in-cluster
configuration, else the kubeconfig (KUBECONFIG, else ~/.kube/config). Namespace:
SMS_NAMESPACE, else the pod's service account's, else the kubeconfig context's, else
`small-model-search`. What it asks of the API is what k8s/base/research-role.yaml grants:
get the template CronJobs, list and create Jobs, in that namespace.

Errors are one line, no token: `LaunchError` (exit 2) for a setup to fix (no config, a
403, a missing template); `LaunchDownError` (exit 1) for an API server that cannot be
reached or answers 5xx.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import pydantic
import urllib3
import yaml
from kubernetes import client, config

from job import settings
from job.config import Config

Obj = dict[str, Any]
T = TypeVar("T")

TEMPLATES = ("search", "collect")  # the CronJobs of k8s/base/{search,collect}-cronjob.yaml
TTL_S = 604800  # a week to read the pods' logs
MAX_NAME = 63  # a Job's name is a DNS-1123 label (its pods' labels carry it)
INSTANCE_LABEL = "app.kubernetes.io/instance"
VERSION_LABEL = "small-model-search/version"
STUDY_ANNOTATION = "small-model-search/study"
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
    (but queued, when Kueue queues the template: k8s/components/kueue; parallelism as the
    template says, which Kueue never lowers: it is a CronJob), its pods labelled
    with the version (not with the template's controller), SMS_STUDY on every container,
    ttlSecondsAfterFinished a week."""
    out = copy.deepcopy(job)
    spec = out["spec"]
    for key in ("selector", "manualSelector", "suspend"):
        spec.pop(key, None)
    meta = job.get("metadata", {})
    if QUEUE_LABEL in meta.get("labels", {}):
        spec["suspend"] = True  # Kueue admits it (its webhook would suspend it anyway)
    spec["ttlSecondsAfterFinished"] = TTL_S
    meta = spec["template"].setdefault("metadata", {})
    meta.pop("creationTimestamp", None)
    labels = {k: v for k, v in meta.get("labels", {}).items() if k not in CONTROLLER_LABELS}
    meta["labels"] = labels | version_labels(study, version)
    for container in _containers(spec["template"]["spec"]):
        env = [e for e in container.get("env", []) if e.get("name") != settings.SMS_STUDY]
        container["env"] = [*env, {"name": settings.SMS_STUDY, "value": study}]
    return out


def clone(
    template: Obj, study: str, version: int, namespace: str, deadline_s: int | None = None
) -> Obj:
    """The Job to create for `study` (version `version`) from a template Job; stopped by
    the Job controller after `deadline_s` seconds when given."""
    name = template["metadata"]["name"]
    job = {k: v for k, v in template.items() if k in ("apiVersion", "kind", "metadata", "spec")}
    job = clone_spec(clone_metadata(job, name, study, version, namespace), study, version)
    if deadline_s is not None:
        job["spec"]["activeDeadlineSeconds"] = deadline_s
    return job


def template_job(cron: Obj) -> Obj:
    """The Job a template CronJob describes: its jobTemplate (metadata and spec), named
    after the CronJob, as `kubectl create job --from=cronjob/NAME` would make it."""
    job_template = cron.get("spec", {}).get("jobTemplate", {})
    meta = copy.deepcopy(job_template.get("metadata", {}))
    meta["name"] = cron["metadata"]["name"]
    spec = copy.deepcopy(job_template.get("spec", {}))
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}


def _containers(pod: Obj) -> list[Obj]:
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


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


def read_template(cluster: Cluster, name: str) -> Obj:
    """GET the template CronJob `name`; the Job it describes (`template_job`)."""
    missing = (
        f"the template CronJob {name} is not in namespace {cluster.namespace}: "
        f"`kubectl apply -k {OVERLAY}` restores it"
    )
    response = _call(
        cluster,
        "get",
        lambda: cluster.batch.read_namespaced_cron_job(
            name, cluster.namespace, _preload_content=False, _request_timeout=TIMEOUT_S
        ),
        missing=missing,
        what="CronJobs",
    )
    return template_job(cast(Obj, json.loads(cast(urllib3.BaseHTTPResponse, response).data)))


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


def _call(
    cluster: Cluster, verb: str, request: Callable[[], T], missing: str = "", what: str = "Jobs"
) -> T:
    """Run one API request on `what` (a resource, plural); its failures as LaunchError /
    LaunchDownError, one line."""
    try:
        return request()
    except client.exceptions.ApiException as exc:
        status, message = int(exc.status or 0), _api_message(exc)
        if status == 409 and verb == "create":
            raise _AlreadyThereError from None
        if status == 403:
            raise LaunchError(
                f"the research service account may not {verb} {what} in namespace "
                f"{cluster.namespace} ({ROLE}): {message}"
            ) from None
        if status == 404 and missing:
            raise LaunchError(missing) from None
        if status >= 500 or status == 0:
            raise LaunchDownError(
                f"the Kubernetes API server at {cluster.server} answered {status}: {message}"
            ) from None
        raise LaunchError(
            f"the Kubernetes API server at {cluster.server} refused to {verb} {what} "
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


def launch(study: str, version: int, deadlines: Mapping[str, int] | None = None) -> list[str]:
    """Create the worker and collector Jobs of `study` (version `version`), each stopped
    after `deadlines[template]` seconds where given (`job_deadlines`); one line per Job:
    "job NAME: created" or "job NAME: already there"."""
    if version < 1:
        raise LaunchError(f"study version must be >= 1, got {version}")
    deadlines = deadlines or {}
    with connect() as cluster:
        templates = {t: read_template(cluster, t) for t in TEMPLATES}
        jobs = [
            clone(job, study, version, cluster.namespace, deadlines.get(t))
            for t, job in templates.items()
        ]
        lines = []
        for job in jobs:
            state = "created" if create_job(cluster, job) else "already there"
            lines.append(f"job {job['metadata']['name']}: {state}")
    return lines


def job_deadlines(search_config: Config) -> dict[str, int]:
    """Each template's activeDeadlineSeconds: the workers get `study.deadline_s`; the
    collector, which starts with them, waits for them and then retrains and exports,
    that and `select.deadline_s`."""
    search = search_config.study.deadline_s
    return {"search": search, "collect": search + search_config.select.deadline_s}
