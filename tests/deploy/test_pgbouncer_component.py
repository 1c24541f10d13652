"""The PgBouncer component (k8s/components/pgbouncer) as rendered: every pod of ours
reaches PostgreSQL through it, it pools transactions, it is locked down, sized and
labelled, and no overlay has it unless asked. The real PgBouncer in front of the suite's
PostgreSQL: tests/integration/test_pgbouncer.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from job import settings
from tests.support.kube import (
    NAMESPACE,
    VERSIONS,
    Obj,
    RenderOverlay,
    container_env,
    containers,
    copy_tree,
    example_env,
    find,
    ours,
    pod_labels,
    pod_spec,
    render_with,
    template_of,
    validation_errors,
)
from tests.support.proc import ROOT

COMPONENT = "components: [../../components/pgbouncer]\n"
IMAGE = "docker.io/edoburu/pgbouncer:v1.25.1-p0"
# The downward API's values research's env reads, for container_env.
FIELDS = {
    "metadata.namespace": NAMESPACE,
    "metadata.labels['batch.kubernetes.io/job-name']": "research-29000000",
}
# Every pod of ours that opens the storage: (kind, name, container).
CLIENTS = {
    ("CronJob", "search", "worker"),
    ("CronJob", "collect", "collect"),
    ("CronJob", "research", "research"),
    ("Deployment", "dashboard", "dashboard"),
    ("Deployment", "dashboard", "exporter"),
}


@pytest.fixture(scope="module")
def pooled(render_overlay: RenderOverlay) -> list[Obj]:
    """The base with the component, as an overlay would add it (a real password: the
    example's is refused when the URL is built)."""
    database = example_env() | {"POSTGRES_PASSWORD": "n0t-the-example"}
    return render_overlay("pooled", "resources: [../../base]\n" + COMPONENT, database)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_component_validates_strictly(pooled: list[Obj], version: str) -> None:
    errors = validation_errors(pooled, version)
    assert not errors, "\n".join(errors)


def test_our_pods_reach_postgres_through_pgbouncer(pooled: list[Obj]) -> None:
    service = find(pooled, "Service", "pgbouncer")
    (port,) = service["spec"]["ports"]
    seen = set()
    for obj in pooled:
        spec = pod_spec(obj)
        for container in containers(spec) if spec else []:
            if not ours(container):
                continue
            env = container_env(pooled, container, FIELDS)
            where = (obj["kind"], obj["metadata"]["name"], container["name"])
            assert env["POSTGRES_HOST"] == service["metadata"]["name"], where
            assert env["POSTGRES_PORT"] == str(port["port"]), where
            url = make_url(str(settings.Settings(env).storage_url()))
            assert (url.host, url.port) == ("pgbouncer", 6432), where
            seen.add(where)
    assert seen == CLIENTS


def test_pgbouncer_pools_transactions_for_the_real_server(pooled: list[Obj]) -> None:
    deployment = find(pooled, "Deployment", "pgbouncer")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["image"] == IMAGE  # pinned, never latest
    env = container_env(pooled, container)
    assert env["POOL_MODE"] == "transaction"
    assert int(env["MAX_CLIENT_CONN"]) >= 1000
    assert 30 <= int(env["DEFAULT_POOL_SIZE"]) <= int(env["MAX_DB_CONNECTIONS"]) <= 50
    assert int(env["DEFAULT_POOL_SIZE"]) + int(env["RESERVE_POOL_SIZE"]) <= 50
    assert env["AUTH_TYPE"] == "scram-sha-256"  # what postgres:16 stores passwords as
    # the server the Secret names (not the patched env: never itself), with its credentials
    assert (env["DB_HOST"], env["DB_PORT"]) == ("postgres", "5432")
    assert env["DB_USER"] == "sms" and env["DB_NAME"] == "optuna"
    assert env["DB_PASSWORD"] == "n0t-the-example"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"pgbouncer": int(env["LISTEN_PORT"])} == {"pgbouncer": 6432}
    service = find(pooled, "Service", "pgbouncer")
    assert service["spec"]["selector"].items() <= pod_labels(deployment).items()
    assert service["spec"]["ports"][0]["targetPort"] == "pgbouncer"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["tcpSocket"]["port"] == "pgbouncer"


def test_pgbouncer_is_locked_down_sized_and_labelled(pooled: list[Obj]) -> None:
    added = [o for o in pooled if o["metadata"]["name"] == "pgbouncer"]
    assert {o["kind"] for o in added} == {"Deployment", "Service", "NetworkPolicy"}
    for obj in added:
        labels = obj["metadata"]["labels"]
        assert obj["metadata"]["namespace"] == NAMESPACE
        assert labels["app.kubernetes.io/part-of"] == "small-model-search"
        for key in ("name", "component", "version", "managed-by"):
            assert f"app.kubernetes.io/{key}" in labels
    deployment = find(pooled, "Deployment", "pgbouncer")
    spec = deployment["spec"]["template"]["spec"]
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["enableServiceLinks"] is False and spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True and sc["capabilities"] == {"drop": ["ALL"]}
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][section])
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    # where the entrypoint writes pgbouncer.ini and the auth file, and /tmp: emptyDirs
    assert {"/etc/pgbouncer", "/tmp"} == set(mounts)
    assert all("emptyDir" in v for v in mounts.values())
    # the postgres NetworkPolicy lets it in as one of ours
    assert pod_labels(deployment)["app.kubernetes.io/part-of"] == "small-model-search"


def test_only_this_app_reaches_pgbouncer(pooled: list[Obj]) -> None:
    policy = find(pooled, "NetworkPolicy", "pgbouncer")["spec"]
    deployment = find(pooled, "Deployment", "pgbouncer")
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels(deployment).items()
    assert policy["policyTypes"] == ["Ingress", "Egress"]  # egress: test_egress.py
    (rule,) = policy["ingress"]
    ours_only = {"matchLabels": {"app.kubernetes.io/part-of": "small-model-search"}}
    assert rule["from"] == [{"podSelector": ours_only}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6432}]


def test_in_no_overlay_by_default_and_with_a_managed_server(tmp_path: Path) -> None:
    for overlay in sorted((ROOT / "k8s" / "overlays").glob("*/kustomization.yaml")):
        assert "pgbouncer" not in str(yaml.safe_load(overlay.read_text()).get("components"))
    database = example_env() | {"POSTGRES_HOST": "db.example.com", "POSTGRES_PASSWORD": "x1"}
    objs = render_with(
        copy_tree(tmp_path, database),
        "managed-pooled",
        "resources: [../gpu]\n"
        "components: [../../components/external-postgres, ../../components/pgbouncer]\n",
    )
    assert not [o for o in objs if o["metadata"]["name"] == "postgres"]
    (container,) = find(objs, "Deployment", "pgbouncer")["spec"]["template"]["spec"]["containers"]
    assert container_env(objs, container)["DB_HOST"] == "db.example.com"
    worker = template_of(objs, "search")["spec"]["template"]["spec"]["containers"][0]
    assert container_env(objs, worker)["POSTGRES_HOST"] == "pgbouncer"
    assert not validation_errors(objs, VERSIONS[-1])
