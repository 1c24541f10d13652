"""NetworkPolicies limit what every pod of ours may reach (egress), as rendered: each pod
is selected by a policy with Egress, and what the union of those policies lets out is
exactly what the pod needs — DNS, the study's database or its pooler, the Pushgateway,
the API server for `research`; a managed database (components/external-postgres) adds
its port outside the cluster. No cluster enforces them here: this is everything up to
the CNI."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.kube import (
    OVERLAYS,
    Obj,
    RenderOverlay,
    example_env,
    pod_labels,
    pod_spec,
    template_of,
)

Peer = tuple[str, str, int]  # (destination, protocol, port); destination "any" = no `to`
DNS: set[Peer] = {("any", "UDP", 53), ("any", "TCP", 53)}
DATABASE: set[Peer] = {("pod:postgres", "TCP", 5432), ("pod:pgbouncer", "TCP", 6432)}
PUSH: set[Peer] = {("pod:pushgateway", "TCP", 9091)}
API: set[Peer] = {("any", "TCP", 443), ("any", "TCP", 6443)}
MANAGED: set[Peer] = {("ip:0.0.0.0/0", "TCP", 5432)}
# What each pod of ours reaches (by its app.kubernetes.io/name), and nothing more.
NEEDS: dict[str, set[Peer]] = {
    "search": DNS | DATABASE | PUSH,
    "collect": DNS | DATABASE | PUSH,
    "research": DNS | DATABASE | PUSH | API,
    "dashboard": DNS | DATABASE,  # the dashboard and the study exporter read the study
    "postgres": set(),
    "pushgateway": set(),
    "pgbouncer": DNS | {("pod:postgres", "TCP", 5432)},
}


def _selects(policy: Obj, labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for term in selector.get("matchExpressions", []):
        assert term["operator"] == "In", term  # the only operator our policies use
        if labels.get(term["key"]) not in term["values"]:
            return False
    return True


def _peers(rule: dict[str, Any]) -> set[Peer]:
    destinations = []
    for peer in rule.get("to") or [{"any": True}]:
        if "podSelector" in peer:
            assert set(peer) == {"podSelector"}, peer  # this namespace only
            destinations.append(
                "pod:" + peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
            )
        elif "ipBlock" in peer:
            destinations.append("ip:" + peer["ipBlock"]["cidr"])
        else:
            destinations.append("any")
    return {(d, p["protocol"], p["port"]) for d in destinations for p in rule["ports"]}


def egress(objs: list[Obj], labels: dict[str, str]) -> set[Peer] | None:
    """What a pod with `labels` may reach: the union of the egress rules of every policy
    that selects it with Egress; None when none does (then it reaches everything)."""
    policies = [
        o
        for o in objs
        if o["kind"] == "NetworkPolicy"
        and "Egress" in o["spec"]["policyTypes"]
        and _selects(o, labels)
    ]
    if not policies:
        return None
    return {peer for p in policies for rule in p["spec"].get("egress", []) for peer in _peers(rule)}


def _pods(objs: list[Obj]) -> dict[str, dict[str, str]]:
    return {
        pod_labels(o)["app.kubernetes.io/name"]: pod_labels(o)
        for o in objs
        if pod_spec(o) is not None
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_reaches_only_what_it_needs(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    pods = _pods(objs)
    assert {"search", "collect", "research", "dashboard", "postgres"} <= set(pods)
    for name, labels in pods.items():
        assert egress(objs, labels) == NEEDS[name], name


@pytest.fixture(scope="module")
def with_components(render_overlay: RenderOverlay) -> list[Obj]:
    """The gpu overlay with a managed database behind the pooler."""
    database = example_env() | {"POSTGRES_PASSWORD": "n0t-the-example"}
    kustomization = (
        "resources: [../gpu]\n"
        "components: [../../components/external-postgres, ../../components/pgbouncer]\n"
    )
    return render_overlay("egress-managed", kustomization, database)


def test_a_managed_database_is_reached_outside_and_the_statefulset_is_gone(
    with_components: list[Obj],
) -> None:
    pods = _pods(with_components)
    assert "postgres" not in pods and {"pgbouncer", "pushgateway"} <= set(pods)
    for name, labels in pods.items():
        wanted = NEEDS[name] | (MANAGED if name != "pushgateway" else set())
        assert egress(with_components, labels) == wanted, name


def test_the_next_versions_jobs_fall_under_the_same_policies(
    rendered: dict[str, list[Obj]],
) -> None:
    """`research --launch` clones the search and collect Jobs (job.run.launch) for the
    next study version: the clones' pods are selected as the templates' are."""
    from job.run.launch import clone_spec

    objs = rendered["gpu"]
    for name in ("search", "collect"):
        clone = clone_spec(template_of(objs, name), "quickstart-v2", 2)
        labels = pod_labels(clone)
        assert labels != pod_labels(template_of(objs, name))  # labelled with the version
        assert egress(objs, labels) == NEEDS[name], name
