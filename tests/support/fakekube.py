"""A fake Kubernetes API server for tests: batch/v1 Jobs and CronJobs in one namespace,
over real HTTP.

No API server runs here, so the tests drive the real `kubernetes` client against this
one, which answers as the API server does for what `job.run.launch` asks: GET a CronJob
or a Job (200 or 404 NotFound), GET the Job list (JobList), POST a Job (201 with uid,
resourceVersion and creationTimestamp added; 409 AlreadyExists when the name is taken).
Two switches make it misbehave: `forbid_create` answers POSTs with 403 Forbidden, as RBAC
does; `fail_status` answers every request with that status (503: an API server in
trouble). Every request is recorded (method, path, query, parsed JSON body, headers).

    with FakeKube(objects=[search_cronjob, collect_cronjob]) as kube:
        kube.use(monkeypatch, tmp_path)   # KUBECONFIG and SMS_NAMESPACE point at it
        ...
        kube.posted()                     # the Job bodies the client sent
"""

from __future__ import annotations

import copy
import json
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from kubernetes.config import kube_config

from job import settings

Obj = dict[str, Any]
NAMESPACE = "small-model-search"
TOKEN = "fake-token-0123456789"  # the kubeconfig's bearer token: must never be printed
JOBS = "/apis/batch/v1/namespaces/{ns}/jobs"
CRONJOBS = "/apis/batch/v1/namespaces/{ns}/cronjobs"

# The verb the API server's authorizer sees for each request (RBAC's vocabulary).
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclass(frozen=True)
class Request:
    """One request as the server saw it."""

    method: str
    path: str
    query: str
    body: Any  # the parsed JSON body, None without one
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def verb(self) -> str:
        """RBAC's verb: a GET of a collection is `list`, of one object `get`."""
        if self.method == "GET" and self.path.rstrip("/").endswith(("/jobs", "/cronjobs")):
            return "list"
        return _VERBS.get(self.method, self.method.lower())

    @property
    def resource(self) -> tuple[str, str]:
        """(apiGroup, resource) of the path: ("batch", "jobs") for /apis/batch/v1/…/jobs…."""
        parts = self.path.strip("/").split("/")
        if parts[:1] == ["apis"] and len(parts) >= 6:
            return parts[1], parts[5]
        if parts[:1] == ["api"] and len(parts) >= 5:
            return "", parts[4]
        return "?", "?"


def status_body(code: int, reason: str, message: str, name: str = "") -> Obj:
    """A `Status` object as the API server sends with an error."""
    body: Obj = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if name:
        body["details"] = {"name": name, "group": "batch", "kind": "jobs"}
    return body


class FakeKube:
    """The fake server: a thread serving 127.0.0.1 on a free port while open."""

    def __init__(self, namespace: str = NAMESPACE, objects: Iterable[Obj] = ()) -> None:
        self.namespace = namespace
        self.jobs: dict[str, Obj] = {}
        self.cronjobs: dict[str, Obj] = {}
        self.requests: list[Request] = []
        self.forbid_create = False
        self.fail_status: int | None = None
        self._created: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for obj in objects:
            self.add(obj)

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> FakeKube:
        handler = type("Handler", (_Handler,), {"kube": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "the fake API server is not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- state -------------------------------------------------------------------------

    def add(self, obj: Obj, applied: bool = True) -> Obj:
        """Store a Job or CronJob as the server would have it: `on_cluster`'s fields added
        (`applied`: as `kubectl apply` made it, with its last-applied annotation)."""
        store = self.cronjobs if obj.get("kind") == "CronJob" else self.jobs
        stored = on_cluster(obj, self.namespace, str(len(self.jobs) + 1), applied)
        with self._lock:
            store[stored["metadata"]["name"]] = stored
        return stored

    def remove(self, name: str, kind: str = "Job") -> None:
        with self._lock:
            del (self.cronjobs if kind == "CronJob" else self.jobs)[name]

    def posted(self) -> list[Obj]:
        """The bodies of every POST, in order (accepted or not)."""
        with self._lock:
            return [r.body for r in self.requests if r.method == "POST"]

    def created(self) -> list[str]:
        """Names of the Jobs POSTs created (201 only)."""
        with self._lock:
            return list(self._created)

    # --- client configuration ----------------------------------------------------------

    def write_kubeconfig(self, path: Path, namespace: str | None = None) -> Path:
        return write_kubeconfig(path, self.url, namespace or self.namespace)

    def use(
        self,
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
        namespace: str | None = None,
    ) -> Path:
        """Point this process's client at the server, as a laptop with a kubeconfig would
        be: KUBECONFIG (the kubernetes package reads it at import, so its default is
        patched too), not in a pod, SMS_NAMESPACE set (or unset: namespace ""). Returns
        the kubeconfig's path."""
        path = self.write_kubeconfig(tmp_path / "kubeconfig", namespace or self.namespace)
        use_kubeconfig(monkeypatch, path)
        if namespace == "":
            monkeypatch.delenv(settings.SMS_NAMESPACE, raising=False)
        else:
            monkeypatch.setenv(settings.SMS_NAMESPACE, namespace or self.namespace)
        return path

    # --- answering ---------------------------------------------------------------------

    def answer(self, request: Request) -> tuple[int, Obj]:
        """(status, body) for a request; the handler records it first."""
        if self.fail_status is not None:
            return self.fail_status, status_body(
                self.fail_status, "ServiceUnavailable", "the server is currently unable"
            )
        collection = JOBS.format(ns=self.namespace)
        path = request.path.rstrip("/")
        if request.method == "GET" and path == collection:
            return 200, self._list(request.query)
        if request.method == "GET" and path.startswith(collection + "/"):
            return self._get(self.jobs, "jobs", path[len(collection) + 1 :])
        crons = CRONJOBS.format(ns=self.namespace)
        if request.method == "GET" and path.startswith(crons + "/"):
            return self._get(self.cronjobs, "cronjobs", path[len(crons) + 1 :])
        if request.method == "POST" and path == collection:
            return self._create(request.body)
        return 404, status_body(404, "NotFound", "the server could not find the requested resource")

    def _list(self, query: str) -> Obj:
        """The JobList; a labelSelector of `key=value` terms is honoured."""
        selector = parse_qs(query).get("labelSelector", [""])[0]
        wanted = dict(term.split("=", 1) for term in selector.split(",") if "=" in term)
        with self._lock:
            items = [
                copy.deepcopy(j)
                for j in self.jobs.values()
                if wanted.items() <= j["metadata"].get("labels", {}).items()
            ]
        return {
            "kind": "JobList",
            "apiVersion": "batch/v1",
            "metadata": {"resourceVersion": str(len(items))},
            "items": items,
        }

    def _get(self, store: dict[str, Obj], resource: str, name: str) -> tuple[int, Obj]:
        with self._lock:
            obj = store.get(name)
        if obj is None:
            return 404, status_body(404, "NotFound", f'{resource}.batch "{name}" not found', name)
        return 200, copy.deepcopy(obj)

    def _create(self, body: Any) -> tuple[int, Obj]:
        if not isinstance(body, dict) or not body.get("metadata", {}).get("name"):
            return 422, status_body(422, "Invalid", "Job.batch is invalid: metadata.name")
        name = body["metadata"]["name"]
        if self.forbid_create:
            message = (
                f'jobs.batch is forbidden: User "system:serviceaccount:{self.namespace}:research"'
                f' cannot create resource "jobs" in API group "batch" in the namespace'
                f' "{self.namespace}"'
            )
            return 403, status_body(403, "Forbidden", message, name)
        with self._lock:
            exists = name in self.jobs
        if exists:
            message = f'jobs.batch "{name}" already exists'
            return 409, status_body(409, "AlreadyExists", message, name)
        stored = self.add(body, applied=False)
        with self._lock:
            self._created.append(name)
        return 201, copy.deepcopy(stored)


class _Handler(BaseHTTPRequestHandler):
    kube: FakeKube
    protocol_version = "HTTP/1.1"  # keep-alive, as the real server: the client reuses it

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        request = Request(self.command, parts.path, parts.query, body, dict(self.headers))
        with self.kube._lock:
            self.kube.requests.append(request)
        code, answer = self.kube.answer(request)
        data = json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def on_cluster(job: Obj, namespace: str, resource_version: str = "1", applied: bool = True) -> Obj:
    """`job` as a GET returns it once created: what the API server and the Job controller
    add (uid, resourceVersion, generation, managedFields, the selector and the
    controller's labels on the pod template, suspend, status), and the annotation of a
    client-side `kubectl apply`."""
    stored = copy.deepcopy(job)
    meta = stored.setdefault("metadata", {})
    uid = meta.setdefault("uid", str(uuid.uuid4()))
    name = meta["name"]
    meta["namespace"] = namespace
    meta.setdefault("resourceVersion", resource_version)
    meta.setdefault("creationTimestamp", _now())
    meta.setdefault("generation", 1)
    meta.setdefault("managedFields", [{"manager": "kubectl", "operation": "Update"}])
    if stored.get("kind") != "Job":
        return stored
    if applied:
        last = json.dumps(job, sort_keys=True)
        meta.setdefault("annotations", {})
        meta["annotations"].setdefault("kubectl.kubernetes.io/last-applied-configuration", last)
    spec = stored.setdefault("spec", {})
    controller = {"batch.kubernetes.io/controller-uid": uid}
    spec.setdefault("selector", {"matchLabels": controller})
    spec.setdefault("suspend", False)
    template_meta = spec.setdefault("template", {}).setdefault("metadata", {})
    template_meta.setdefault("creationTimestamp", None)
    template_meta.setdefault("labels", {}).update(
        {
            **controller,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": uid,
            "job-name": name,
        }
    )
    stored.setdefault("status", {"active": 0, "succeeded": 1, "ready": 0})
    return stored


def write_kubeconfig(path: Path, server: str, namespace: str | None = NAMESPACE) -> Path:
    """A kubeconfig with one context: `server`, a bearer-token user, `namespace` (None: the
    context names none)."""
    context: Obj = {"cluster": "fake", "user": "fake"}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "fake", "user": {"token": TOKEN}}],
        "contexts": [{"name": "fake", "context": context}],
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def use_kubeconfig(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """KUBECONFIG=path for this process, and not in a pod (no in-cluster config)."""
    monkeypatch.setenv("KUBECONFIG", str(path))
    # The kubernetes package reads KUBECONFIG once, when imported: patch its default too.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
