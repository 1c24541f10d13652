"""job/run/launch.py: `research --launch` starts a study version's Jobs through the real
kubernetes client, against a local server that answers like the API server
(tests/support/fakekube.py), preloaded with the template CronJobs the overlays render.

What is checked on the wire: the Job bodies the client sent (each passes
`kubernetes-validate --strict`), the answers it copes with (201, 409, 403, 404, 5xx, no
server), and that every request stays within what the rendered research Role grants.
"""

from __future__ import annotations

import copy
import hashlib
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from job.run.launch import (
    STUDY_ANNOTATION,
    TEMPLATES,
    TTL_S,
    LaunchDownError,
    LaunchError,
    clone,
    clone_metadata,
    clone_spec,
    job_name,
    jobs_of,
    launch,
    slug,
    template_job,
)
from tests.support.fakekube import TOKEN, FakeKube, use_kubeconfig, write_kubeconfig
from tests.support.kube import (
    NAMESPACE,
    OVERLAYS,
    VERSIONS,
    Obj,
    find,
    grants,
    template_of,
    validation_errors,
)

STUDY, VERSION = "quickstart-v2", 2
DEADLINES = {"search": 7200, "collect": 9000}
DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def preloaded(objs: list[Obj]) -> FakeKube:
    return FakeKube(NAMESPACE, [find(objs, "CronJob", t) for t in TEMPLATES])


@pytest.fixture
def kube(
    rendered: dict[str, list[Obj]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[FakeKube]:
    """The local-cpu overlay's templates on a fake server; this process's client points at
    it, as a research pod's would (its namespace from the downward API)."""
    with preloaded(rendered["local-cpu"]) as server:
        server.use(monkeypatch, tmp_path)
        yield server


def assert_within_role(objs: list[Obj], kube: FakeKube) -> None:
    """Every request the client made is one the rendered research Role grants."""
    granted = grants(objs, "research")
    assert granted, "the research service account is granted nothing"
    for request in kube.requests:
        group, resource = request.resource
        assert (group, resource, request.verb) in granted, (request.method, request.path)
        assert f"/namespaces/{NAMESPACE}/" in request.path


def containers(job: Obj) -> list[Obj]:
    pod = job["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


# --- against the fake API server ---------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_launch_creates_valid_clones_of_the_templates(
    rendered: dict[str, list[Obj]], overlay: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    objs = rendered[overlay]
    with preloaded(objs) as kube:
        kube.use(monkeypatch, tmp_path)
        templates = {t: template_job(kube.cronjobs[t]) for t in TEMPLATES}
        lines = launch(STUDY, VERSION, DEADLINES)
    assert lines == [f"job search-{STUDY}: created", f"job collect-{STUDY}: created"]
    posted = kube.posted()
    assert [j["metadata"]["name"] for j in posted] == [f"search-{STUDY}", f"collect-{STUDY}"]
    assert kube.created() == [f"search-{STUDY}", f"collect-{STUDY}"]
    for version in VERSIONS:
        assert not validation_errors(posted, version), version
    for job, template in zip(posted, templates.values(), strict=True):
        # what the client sent is what launch built, nothing lost or renamed on the way
        name = template["metadata"]["name"]
        assert job == clone(template, STUDY, VERSION, NAMESPACE, DEADLINES[name])
        # the template as the manifests render it, after the API server stored it
        assert template == template_of(objs, name)
        meta = job["metadata"]
        assert meta["namespace"] == NAMESPACE
        assert meta["annotations"] == {STUDY_ANNOTATION: STUDY}
        expected = {"app.kubernetes.io/instance": STUDY, "small-model-search/version": "2"}
        assert expected.items() <= meta["labels"].items()
        assert {"uid", "resourceVersion", "creationTimestamp", "managedFields"}.isdisjoint(meta)
        assert "status" not in job
        spec = job["spec"]
        assert {"selector", "manualSelector", "suspend"}.isdisjoint(spec)
        assert spec["ttlSecondsAfterFinished"] == TTL_S
        assert spec["activeDeadlineSeconds"] == DEADLINES[meta["name"].split("-")[0]]
        pod_labels = spec["template"]["metadata"]["labels"]
        assert expected.items() <= pod_labels.items()
        assert not {"controller-uid", "job-name"} & {k.split("/")[-1] for k in pod_labels}
        for container in containers(job):
            assert {"name": "SMS_STUDY", "value": STUDY} in container["env"]
            assert [e["name"] for e in container["env"]].count("SMS_STUDY") == 1
        config = next(v for v in spec["template"]["spec"]["volumes"] if v["name"] == "config")
        assert config["configMap"]["name"].startswith("search-config-")  # the applied one
        # everything else is the template's: the overlay's patches carry over
        assert spec["podFailurePolicy"] == template["spec"]["podFailurePolicy"]
        assert containers(job)[0]["resources"] == containers(template)[0]["resources"]
    search = posted[0]["spec"]
    assert search["completionMode"] == "Indexed"
    assert search["parallelism"] == templates["search"]["spec"]["parallelism"]
    limits = search["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) == (overlay == "gpu")
    if overlay == "gpu":
        assert search["template"]["spec"]["tolerations"]
    assert_within_role(objs, kube)


def test_launch_again_is_idempotent(kube: FakeKube, rendered: dict[str, list[Obj]]) -> None:
    launch(STUDY, VERSION)
    assert launch(STUDY, VERSION) == [
        f"job search-{STUDY}: already there",
        f"job collect-{STUDY}: already there",
    ]
    assert len(kube.posted()) == 4
    assert len(kube.created()) == 2
    assert jobs_of(STUDY) == [f"collect-{STUDY}", f"search-{STUDY}"]
    assert jobs_of("quickstart-v3") == []
    assert_within_role(rendered["local-cpu"], kube)


def test_the_templates_are_read_as_applied_last(
    kube: FakeKube, rendered: dict[str, list[Obj]]
) -> None:
    # `kubectl apply -k` after a change updates the CronJobs in place: the next launch
    # starts from what was applied last, image and config map included
    cron = copy.deepcopy(find(rendered["local-cpu"], "CronJob", "search"))
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    pod["containers"][0]["image"] = "registry.example/sms/small-model-search:0.2.0"
    next(v for v in pod["volumes"] if v["name"] == "config")["configMap"]["name"] = "cfg-2"
    kube.add(cron)
    launch("quickstart-v3", 3)
    search = kube.posted()[0]["spec"]["template"]["spec"]
    assert search["containers"][0]["image"] == "registry.example/sms/small-model-search:0.2.0"
    assert next(v for v in search["volumes"] if v["name"] == "config")["configMap"] == {
        "name": "cfg-2"
    }
    gets = [r.path.rsplit("/", 2)[-2:] for r in kube.requests if r.method == "GET"]
    assert gets == [["cronjobs", "search"], ["cronjobs", "collect"]]  # within resourceNames


def test_without_deadlines_the_jobs_have_none(kube: FakeKube) -> None:
    launch(STUDY, VERSION)
    assert all("activeDeadlineSeconds" not in j["spec"] for j in kube.posted())


def test_forbidden_is_one_line_naming_the_role(kube: FakeKube) -> None:
    kube.forbid_create = True
    with pytest.raises(LaunchError) as caught:
        launch(STUDY, VERSION)
    message = str(caught.value)
    assert "\n" not in message and TOKEN not in message
    assert "may not create Jobs in namespace small-model-search" in message
    assert "k8s/base/research-role.yaml" in message and "forbidden" in message
    assert kube.created() == []


def test_missing_template_is_named_and_nothing_is_created(kube: FakeKube) -> None:
    kube.remove("collect", "CronJob")
    with pytest.raises(LaunchError, match=r"template CronJob collect .*kubectl apply -k") as caught:
        launch(STUDY, VERSION)
    assert "\n" not in str(caught.value)
    assert kube.posted() == []


def test_server_error_is_down_not_bad_setup(kube: FakeKube) -> None:
    kube.fail_status = 503
    with pytest.raises(LaunchDownError, match=f"{kube.url} answered 503") as caught:
        launch(STUDY, VERSION)
    assert "\n" not in str(caught.value)


def test_unreachable_server_is_down(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    use_kubeconfig(monkeypatch, write_kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{port}"))
    monkeypatch.setenv("SMS_NAMESPACE", NAMESPACE)
    with pytest.raises(LaunchDownError) as caught:
        launch(STUDY, VERSION)
    message = str(caught.value)
    assert message.startswith(f"cannot reach the Kubernetes API server at http://127.0.0.1:{port}")
    assert "\n" not in message and TOKEN not in message and "object at 0x" not in message


@pytest.mark.parametrize("text", [None, "clusters: [\n", "apiVersion: v1\nkind: Config\n"])
def test_no_usable_kubeconfig_is_bad_setup(
    text: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "kubeconfig"
    if text is not None:
        path.write_text(text)
    use_kubeconfig(monkeypatch, path)
    with pytest.raises(LaunchError, match="no Kubernetes API to talk to") as caught:
        launch(STUDY, VERSION)
    assert "\n" not in str(caught.value)


def test_namespace_from_the_kubeconfig_else_the_default(
    rendered: dict[str, list[Obj]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    objs = rendered["local-cpu"]
    with FakeKube("team-a", [find(objs, "CronJob", t) for t in TEMPLATES]) as kube:
        kube.use(monkeypatch, tmp_path, namespace="")  # the kubeconfig's, no SMS_NAMESPACE
        launch(STUDY, VERSION)
        assert kube.created() == [f"search-{STUDY}", f"collect-{STUDY}"]
        assert {p["metadata"]["namespace"] for p in kube.posted()} == {"team-a"}
        use_kubeconfig(monkeypatch, write_kubeconfig(tmp_path / "kc2", kube.url, None))
        with pytest.raises(LaunchError, match="not in namespace small-model-search"):
            launch(STUDY, VERSION)


def test_a_version_below_one_is_refused() -> None:
    with pytest.raises(LaunchError, match="version"):
        launch(STUDY, 0)


# --- the clone rules, without a server --------------------------------------------------


@pytest.mark.parametrize(
    "study",
    ["quickstart-v2", "CIFAR10-v3", "my.study_v1", "a" * 120, "A_" * 60, "x", "9lives", "-"],
)
def test_names_are_dns_labels(study: str) -> None:
    for template in ("search", "collect"):
        name = job_name(template, study)
        assert len(name) <= 63 and DNS_LABEL.match(name), name
        assert name.startswith(f"{template}-")
    assert DNS_LABEL.match(slug(study)) and len(slug(study)) <= 63


def test_names_are_kept_when_valid_and_distinct_when_not() -> None:
    assert job_name("search", "quickstart-v2") == "search-quickstart-v2"
    assert slug("quickstart-v2") == "quickstart-v2"
    changed = ["Quickstart-v2", "quickstart.v2", "quickstart_v2", "quickstart--v2_"]
    names = {job_name("search", s) for s in [*changed, "quickstart-v2"]}
    assert len(names) == 5  # a changed name carries its hash: no two studies share a Job
    long = ["a" * 119 + c for c in "xyz"]
    assert len({job_name("collect", s) for s in long}) == 3
    assert slug("My.Study") == "my-study-" + hashlib.sha256(b"My.Study").hexdigest()[:6]


def test_clone_drops_what_the_server_set() -> None:
    template: Obj = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "search",
            "namespace": "elsewhere",
            "uid": "u",
            "resourceVersion": "7",
            "generation": 1,
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "managedFields": [{}],
            "ownerReferences": [{}],
            "selfLink": "/x",
            "labels": {"app.kubernetes.io/name": "search", "job-name": "search"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "a": "b"},
        },
        "spec": {
            "suspend": True,
            "manualSelector": False,
            "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u"}},
            "ttlSecondsAfterFinished": 60,
            "template": {
                "metadata": {
                    "creationTimestamp": None,
                    "labels": {"controller-uid": "u", "batch.kubernetes.io/job-name": "s"},
                },
                "spec": {
                    "initContainers": [{"name": "init", "image": "i"}],
                    "containers": [
                        {"name": "w", "image": "i", "env": [{"name": "SMS_STUDY", "value": "old"}]}
                    ],
                },
            },
        },
        "status": {"succeeded": 1},
    }
    before = copy.deepcopy(template)
    job = clone(template, "s-v2", 2, NAMESPACE)
    assert template == before  # pure
    assert job["metadata"] == {
        "name": "search-s-v2",
        "namespace": NAMESPACE,
        "labels": {
            "app.kubernetes.io/name": "search",
            "app.kubernetes.io/instance": "s-v2",
            "small-model-search/version": "2",
        },
        "annotations": {"a": "b", STUDY_ANNOTATION: "s-v2"},
    }
    assert "status" not in job
    assert job["spec"]["ttlSecondsAfterFinished"] == TTL_S
    assert {"suspend", "manualSelector", "selector"}.isdisjoint(job["spec"])
    assert job["spec"]["template"]["metadata"] == {
        "labels": {"app.kubernetes.io/instance": "s-v2", "small-model-search/version": "2"}
    }
    for container in containers(job):
        assert container["env"] == [{"name": "SMS_STUDY", "value": "s-v2"}]
    # the steps are pure functions too, and compose to the same
    step = clone_spec(clone_metadata(template, "search", "s-v2", 2, NAMESPACE), "s-v2", 2)
    assert {k: step[k] for k in ("metadata", "spec")} == {k: job[k] for k in ("metadata", "spec")}
