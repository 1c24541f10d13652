"""k8s/: both overlays render, every object validates strictly, every container follows
the security and resource rules, and the workloads have the shape the docs promise.

No cluster runs here: this is everything up to `kubectl apply`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from job.config import load_config, parse_config
from job.run.launch import TEMPLATES
from tests.support.kube import (
    CUSTOM,
    NAMESPACE,
    OVERLAYS,
    VERSIONS,
    Obj,
    container_env,
    containers,
    copy_tree,
    find,
    grants,
    mounted_files,
    ours,
    pod_labels,
    pod_spec,
    render,
    render_with,
    template_of,
    validation_errors,
)
from tests.support.proc import ROOT

APP_LABELS = ("name", "component", "part-of", "version", "managed-by")
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
PUSHGATEWAY = "http://pushgateway:9091"
# What components/monitoring adds; the gpu overlay includes it, local-cpu does not.
MONITORING = {
    ("PodMonitor", "worker"),
    ("PodMonitor", "exporter"),
    ("PodMonitor", "pushgateway"),
    ("PrometheusRule", "small-model-search"),
    ("Deployment", "pushgateway"),
    ("Service", "pushgateway"),
    ("NetworkPolicy", "pushgateway"),
}
# The containers that push their final metrics when there is a Pushgateway.
PUSHERS = (
    ("CronJob", "search", "worker"),
    ("CronJob", "collect", "collect"),
    ("CronJob", "research", "research"),
)
# The downward API's values research's env reads, for container_env.
FIELDS = {"metadata.namespace": NAMESPACE}


def workloads(objs: list[Obj]) -> list[tuple[Obj, Obj]]:
    return [(o, spec) for o in objs if (spec := pod_spec(o)) is not None]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_strictly(
    rendered: dict[str, list[Obj]], overlay: str, version: str
) -> None:
    errors = validation_errors(rendered[overlay], version)
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_locked_down_and_sized(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    walked = 0
    for obj, spec in workloads(rendered[overlay]):
        where = f"{overlay}: {obj['kind']}/{obj['metadata']['name']}"
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", where
        assert isinstance(pod["runAsUser"], int) and pod["runAsUser"] > 0, where
        assert spec["enableServiceLinks"] is False, where  # env of ours, not docker links
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in containers(spec):
            here = f"{where} container {c['name']}"
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, here
            assert sc["readOnlyRootFilesystem"] is True, here
            assert sc["runAsNonRoot"] is True, here
            assert sc["capabilities"]["drop"] == ["ALL"], here
            assert not sc["capabilities"].get("add"), here
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][section]), f"{here} {section}"
            image = c["image"]
            assert "@sha256:" in image or image.rsplit("/", 1)[-1].count(":") == 1, here
            assert not image.endswith(":latest"), here
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{here}: no emptyDir /tmp"
            for mount in c.get("volumeMounts", []):
                template_names = {
                    t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])
                }
                assert mount["name"] in volumes or mount["name"] in template_names, here
            walked += 1
    # postgres, worker, collector, research, dashboard, exporter (and the Pushgateway)
    assert walked >= (7 if overlay == "gpu" else 6)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_labelled_and_namespaced(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    for obj in rendered[overlay]:
        where = f"{overlay}: {obj['kind']}/{obj['metadata']['name']}"
        labels = obj["metadata"]["labels"]
        assert all(f"app.kubernetes.io/{k}" in labels for k in APP_LABELS), where
        assert labels["app.kubernetes.io/part-of"] == "small-model-search", where
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == NAMESPACE, where
        if pod_spec(obj) is not None:
            template = pod_labels(obj)
            assert all(f"app.kubernetes.io/{k}" in template for k in APP_LABELS), where


def test_one_object_per_file_named_for_it() -> None:
    for path in sorted((ROOT / "k8s").rglob("*.yaml")):
        if path.name == "kustomization.yaml" or path.name == "search.yaml":
            continue
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert len(docs) == 1, path
        obj = docs[0]
        assert path.name == f"{obj['metadata']['name']}-{obj['kind'].lower()}.yaml", path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_search_job_survives_preemption_and_scales(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    job = template_of(rendered[overlay], "search")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] >= 1
    assert spec["backoffLimitPerIndex"] >= 1
    rules = spec["podFailurePolicy"]["rules"]
    disrupted = {"type": "DisruptionTarget", "status": "True"}
    assert {"action": "Ignore", "onPodConditions": [disrupted]} in rules
    bad_input = next(r for r in rules if r["action"] == "FailJob")["onExitCodes"]
    assert bad_input == {"containerName": "worker", "operator": "In", "values": [2]}
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["terminationGracePeriodSeconds"] >= 30
    (worker,) = pod["containers"]
    assert worker["args"][0] == "worker"
    port = {p["name"]: p["containerPort"] for p in worker["ports"]}["metrics"]
    assert container_env(rendered[overlay], worker)["SMS_METRICS_PORT"] == str(port)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_templates_are_suspended_cronjobs_and_no_job_is_applied(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    # A Job's pod template is immutable: one in the manifests would fail every re-apply
    # after a config change. The templates never run; research makes the Jobs.
    objs = rendered[overlay]
    assert not [o["metadata"]["name"] for o in objs if o["kind"] == "Job"]
    for name in TEMPLATES:
        cron = find(objs, "CronJob", name)["spec"]
        assert cron["suspend"] is True, name
        job = template_of(objs, name)["spec"]
        # what research --launch sets itself (job/run/launch.py): never in a template
        assert {"ttlSecondsAfterFinished", "activeDeadlineSeconds"}.isdisjoint(job), name
        assert not job.get("suspend") and "selector" not in job, name
    cron = find(objs, "CronJob", "research")["spec"]
    assert cron["jobTemplate"]["spec"]["ttlSecondsAfterFinished"] > 0
    assert cron["jobTemplate"]["spec"]["activeDeadlineSeconds"] > 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_collector_research_and_dashboard(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    collect = template_of(objs, "collect")["spec"]["template"]["spec"]["containers"][0]
    assert collect["args"][:1] == ["collect"] and "--wait" in collect["args"]
    cron = find(objs, "CronJob", "research")["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    assert cron["suspend"] is False  # the launcher; nothing changed: no Job, no GPU
    assert cron["schedule"] == "*/5 * * * *"  # a changed config starts within minutes
    research = cron["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert research["args"][:1] == ["research"] and "--launch" in research["args"]
    out = research["args"][research["args"].index("--out") + 1]
    assert out == collect["args"][collect["args"].index("--out") + 1]  # research.json beside
    mounts = {m["mountPath"]: m for m in research["volumeMounts"]}
    assert "/artifacts" in mounts and not mounts["/artifacts"].get("readOnly")
    dashboard = find(objs, "Deployment", "dashboard")
    container = dashboard["spec"]["template"]["spec"]["containers"][0]
    # it serves the collector's artifact store (each pick's ONNX files), read-only
    store = collect["args"][collect["args"].index("--out") + 1] + "/artifacts"
    assert container["args"] == ["dashboard", "--artifacts", store]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "artifacts")
    assert store.startswith(mount["mountPath"] + "/") and mount["readOnly"] is True
    volumes = dashboard["spec"]["template"]["spec"]["volumes"]
    claim = next(v for v in volumes if v["name"] == "artifacts")["persistentVolumeClaim"]
    assert claim == {"claimName": "artifacts", "readOnly": True}
    service = find(objs, "Service", "dashboard")
    assert service["spec"]["selector"].items() <= pod_labels(dashboard).items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_research_may_create_jobs(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    creators = {
        o["metadata"]["name"]
        for o in objs
        if o["kind"] in ("Role", "ClusterRole")
        for rule in o.get("rules", [])
        if {"jobs", "*"} & set(rule.get("resources", []))
        and {"create", "*"} & set(rule.get("verbs", []))
    }
    assert creators == {"research"}
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    binding = find(objs, "RoleBinding", "research")
    assert binding["roleRef"]["name"] == "research"
    assert [s["name"] for s in binding["subjects"]] == ["research"]
    for obj, spec in workloads(objs):
        is_research = obj["metadata"]["name"] == "research"
        assert (spec.get("serviceAccountName") == "research") == is_research, obj["kind"]
        if not is_research:  # no API token where no API is used
            assert spec["automountServiceAccountToken"] is False, obj["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_walk_grants_research_exactly_its_jobs(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    # Each workload's service account → the RoleBindings naming it → their Roles' rules.
    objs = rendered[overlay]
    accounts = {spec.get("serviceAccountName", "default") for _, spec in workloads(objs)}
    assert accounts == {"research", "worker", "default"}  # default: the postgres pod
    for account in accounts - {"default"}:
        assert find(objs, "ServiceAccount", account)
    walked = {account: grants(objs, account) for account in accounts}
    # job/run/launch.py: get the template CronJobs, list a version's Jobs, create them
    assert walked["research"] == {
        ("batch", "cronjobs", "get"),
        ("batch", "jobs", "list"),
        ("batch", "jobs", "create"),
    }
    rules = find(objs, "Role", "research")["rules"]
    (read,) = [r for r in rules if "cronjobs" in r["resources"]]
    assert sorted(read["resourceNames"]) == sorted(TEMPLATES)  # only the templates
    assert walked["worker"] == set() and walked["default"] == set()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_research_knows_its_namespace(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    cron = find(objs, "CronJob", "research")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "research"
    assert pod.get("automountServiceAccountToken", True) is True  # the in-cluster client
    (research,) = pod["containers"]
    refs = {e["name"]: e["valueFrom"]["fieldRef"] for e in research["env"] if "valueFrom" in e}
    assert refs == {"SMS_NAMESPACE": {"fieldPath": "metadata.namespace"}}
    env = container_env(objs, research, {"metadata.namespace": NAMESPACE})
    assert env["SMS_NAMESPACE"] == NAMESPACE


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_this_app_reaches_postgres(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    server = find(objs, "StatefulSet", "postgres")
    policy = find(objs, "NetworkPolicy", "postgres")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels(server).items()
    assert policy["policyTypes"] == ["Ingress", "Egress"]  # egress: test_egress.py
    (rule,) = policy["ingress"]
    peers = [p["podSelector"]["matchLabels"] for p in rule["from"]]
    assert peers == [{"app.kubernetes.io/part-of": "small-model-search"}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5432}]
    for obj, _ in workloads(objs):  # every client of ours carries the label it lets in
        assert pod_labels(obj)["app.kubernetes.io/part-of"] == "small-model-search"
    container = server["spec"]["template"]["spec"]["containers"][0]
    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(container)
    assert server["spec"]["volumeClaimTemplates"]
    service = find(objs, "Service", "postgres")
    assert service["spec"]["selector"].items() <= pod_labels(server).items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dashboard_and_metrics_open_to_the_namespace_and_monitoring_only(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objs = rendered[overlay]
    for policy_name, kind, name in (
        ("dashboard", "Deployment", "dashboard"),
        ("search", "CronJob", "search"),
    ):
        workload = find(objs, kind, name)
        policy = find(objs, "NetworkPolicy", policy_name)["spec"]
        assert policy["podSelector"]["matchLabels"].items() <= pod_labels(workload).items()
        assert policy["policyTypes"] == ["Ingress", "Egress"]  # egress: test_egress.py
        (rule,) = policy["ingress"]
        assert rule["from"] == [
            {"podSelector": {}},
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
        ]
        served = [  # every port of the pod: the dashboard's and the exporter's
            p["containerPort"]
            for c in (pod_spec(workload) or {})["containers"]
            for p in c.get("ports", [])
        ]
        assert rule["ports"] == [{"protocol": "TCP", "port": port} for port in served]
    opened = find(objs, "NetworkPolicy", "dashboard")["spec"]["ingress"][0]["ports"]
    assert {"protocol": "TCP", "port": 9101} in opened
    dashboard = find(objs, "Deployment", "dashboard")["spec"]["template"]["spec"]
    assert "--allow-writes" not in dashboard["containers"][0].get("args", [])


def test_gpu_only_in_the_gpu_overlay(rendered: dict[str, list[Obj]]) -> None:
    gpu = template_of(rendered["gpu"], "search")["spec"]["template"]["spec"]
    worker = gpu["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    assert gpu["nodeSelector"]
    cpu = template_of(rendered["local-cpu"], "search")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in str(cpu)
    for overlay, mode in (("gpu", "ReadWriteMany"), ("local-cpu", "ReadWriteOnce")):
        for name in ("data", "artifacts"):
            claim = find(rendered[overlay], "PersistentVolumeClaim", name)
            assert claim["spec"]["accessModes"] == [mode]


def test_gpu_pods_run_several_workers_and_research_clones_keep_them(
    rendered: dict[str, list[Obj]],
) -> None:
    from job import settings
    from job.run.launch import clone

    job = template_of(rendered["gpu"], "search")
    (worker,) = job["spec"]["template"]["spec"]["containers"]
    env = container_env(rendered["gpu"], worker)
    procs = settings.Settings(env).workers_per_pod()  # parsed as `search` parses it: valid
    assert procs == 2 and (settings.Settings(env).torch_threads() or 0) // procs >= 1
    (cpu,) = template_of(rendered["local-cpu"], "search")["spec"]["template"]["spec"]["containers"]
    assert settings.Settings(container_env(rendered["local-cpu"], cpu)).workers_per_pod() == 1
    (cloned,) = clone(job, "cifar10-v2", 2, NAMESPACE)["spec"]["template"]["spec"]["containers"]
    assert container_env(rendered["gpu"], cloned)[settings.SMS_WORKERS_PER_POD] == str(procs)


def test_podmonitor_scrapes_the_workers(rendered: dict[str, list[Obj]]) -> None:
    monitor = find(rendered["gpu"], "PodMonitor", "worker")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    job = template_of(rendered["gpu"], "search")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels(job).items()
    ports = {p["name"] for p in job["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= ports
    assert not [o for o in rendered["local-cpu"] if o["kind"] in CUSTOM]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_search_configs_load(rendered: dict[str, list[Obj]], overlay: str) -> None:
    config_map = find(rendered[overlay], "ConfigMap", "search-config")
    config = parse_config(yaml.safe_load(config_map["data"]["search.yaml"]), "search.yaml")
    assert config.study.budget >= 1
    worker = template_of(rendered[overlay], "search")["spec"]["template"]["spec"]["containers"][0]
    assert worker["args"][worker["args"].index("--config") + 1] == "/etc/sms/search.yaml"


def test_cluster_config_is_the_seed_scenario() -> None:
    cluster = load_config(ROOT / "k8s" / "base" / "search.yaml").model_dump()
    seed = load_config(ROOT / "configs" / "cifar10.yaml").model_dump()
    for section in ("data", "augment", "space", "train", "objectives", "constraints", "select"):
        assert cluster[section] == seed[section], section


def test_database_secret_is_never_committed(tmp_path: Path) -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "k8s/base/database.env"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0, "k8s/base/database.env must be git-ignored"
    assert (ROOT / "k8s" / "base" / "database.env.example").is_file()


def test_managed_postgres_component_drops_the_server(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    managed = tree / "overlays" / "managed"
    managed.mkdir()
    (managed / "kustomization.yaml").write_text(
        "resources: [../gpu]\ncomponents: [../../components/external-postgres]\n"
    )
    objs = render(tree, "managed")
    assert not [o for o in objs if o["metadata"]["name"] == "postgres"]
    assert template_of(objs, "search") and find(objs, "Secret", "database")


@pytest.mark.parametrize("version", VERSIONS)
def test_toolbox_pod_validates_and_is_locked_down(version: str) -> None:
    pod = yaml.safe_load((ROOT / "k8s" / "tools" / "toolbox-pod.yaml").read_text())
    kubernetes_validate.validate(pod, version, strict=True)
    assert pod["metadata"]["namespace"] == NAMESPACE
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    (container,) = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"data", "artifacts"} <= {
        v["persistentVolumeClaim"]["claimName"]
        for v in spec["volumes"]
        if "persistentVolumeClaim" in v
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_exporter_serves_the_study_beside_the_dashboard(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objs = rendered[overlay]
    spec = find(objs, "Deployment", "dashboard")["spec"]["template"]["spec"]
    by_name = {c["name"]: c for c in spec["containers"]}
    assert list(by_name) == ["dashboard", "exporter"]
    exporter = by_name["exporter"]
    assert exporter["command"] == ["/app/entrypoint.sh"]  # the role adds --host 0.0.0.0
    args = exporter["args"]
    assert args[0] == "exporter"
    config = args[args.index("--config") + 1]
    folder, _, name = config.rpartition("/")
    files = mounted_files(objs, spec, exporter)
    assert name in files[folder]  # the search config map, as the workers read it
    ports = {p["name"]: p["containerPort"] for p in exporter["ports"]}
    assert ports == {"exporter": 9101} and args[args.index("--port") + 1] == "9101"
    for probe in ("readinessProbe", "livenessProbe"):
        assert exporter[probe]["httpGet"] == {"path": "/metrics", "port": "exporter"}, probe
    env = container_env(objs, exporter)
    assert {"POSTGRES_HOST", "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"} <= set(env)
    assert exporter["resources"]["requests"]["cpu"] == "50m"
    # the dashboard's own port and Service are unchanged
    assert {p["name"] for p in by_name["dashboard"]["ports"]} == {"http"}
    service = find(objs, "Service", "dashboard")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_of_ours_logs_json(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    logged = set()
    for _, spec in workloads(objs):
        for c in containers(spec):
            if ours(c):
                assert container_env(objs, c, FIELDS)["SMS_LOG_FORMAT"] == "json", c["name"]
                logged.add(c["name"])
    assert logged == {"worker", "collect", "research", "dashboard", "exporter"}


def _pushgateway_env(objs: list[Obj]) -> dict[str, str | None]:
    """Each pushing container's SMS_PUSHGATEWAY (None: unset)."""
    found = {}
    for kind, name, container in PUSHERS:
        spec = pod_spec(find(objs, kind, name))
        assert spec is not None
        (c,) = [c for c in spec["containers"] if c["name"] == container]
        found[container] = container_env(objs, c, FIELDS).get("SMS_PUSHGATEWAY")
    return found


def _monitoring(objs: list[Obj]) -> set[tuple[str, str]]:
    return {(o["kind"], o["metadata"]["name"]) for o in objs} & MONITORING


def test_pushgateway_only_with_the_monitoring_component(
    rendered: dict[str, list[Obj]], tmp_path: Path
) -> None:
    # gpu includes components/monitoring: the Pushgateway, and every pusher told of it
    assert _monitoring(rendered["gpu"]) == MONITORING
    assert set(_pushgateway_env(rendered["gpu"]).values()) == {PUSHGATEWAY}
    # local-cpu does not: no Pushgateway, no push to one that is not there
    assert _monitoring(rendered["local-cpu"]) == set()
    assert set(_pushgateway_env(rendered["local-cpu"]).values()) == {None}
    assert "SMS_PUSHGATEWAY" not in str(rendered["local-cpu"])
    # the component builds on any overlay, alike
    tree = copy_tree(tmp_path)
    objs = render_with(
        tree,
        "local-monitored",
        "resources: [../local-cpu]\ncomponents: [../../components/monitoring]\n",
    )
    assert _monitoring(objs) == MONITORING
    assert set(_pushgateway_env(objs).values()) == {PUSHGATEWAY}
    assert not validation_errors(objs, VERSIONS[-1])


def test_pushgateway_is_where_the_pushers_look(rendered: dict[str, list[Obj]]) -> None:
    objs = rendered["gpu"]
    deployment = find(objs, "Deployment", "pushgateway")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    image, _, tag = container["image"].partition(":v")
    assert image == "docker.io/prom/pushgateway"
    assert tuple(int(p) for p in tag.split(".")) >= (1, 11, 3)  # not the 2022 release
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert spec["automountServiceAccountToken"] is False
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    service = find(objs, "Service", "pushgateway")
    assert service["spec"]["selector"].items() <= pod_labels(deployment).items()
    (port,) = service["spec"]["ports"]
    assert port["name"] == "http" and port["targetPort"] == "http" and ports["http"] == 9091
    assert f"http://{service['metadata']['name']}:{port['port']}" == PUSHGATEWAY
    policy = find(objs, "NetworkPolicy", "pushgateway")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels(deployment).items()
    assert policy["policyTypes"] == ["Ingress", "Egress"]  # egress: test_egress.py
    (rule,) = policy["ingress"]
    assert rule["from"] == [
        {"podSelector": {}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
    ]
    assert rule["ports"] == [{"protocol": "TCP", "port": 9091}]


def test_podmonitors_scrape_the_exporter_and_the_pushgateway(
    rendered: dict[str, list[Obj]],
) -> None:
    objs = rendered["gpu"]
    for monitor_name, kind, name, port, honor in (
        ("exporter", "Deployment", "dashboard", "exporter", False),
        ("pushgateway", "Deployment", "pushgateway", "http", True),
    ):
        monitor = find(objs, "PodMonitor", monitor_name)
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        workload = find(objs, kind, name)
        assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels(workload).items()
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        served = {
            p["name"] for c in (pod_spec(workload) or {})["containers"] for p in c.get("ports", [])
        }
        assert endpoint["port"] == port and port in served, monitor_name
        assert endpoint["path"] == "/metrics" and endpoint["interval"] == "30s"
        # pushed series keep their job, role and study labels only with honorLabels
        assert endpoint.get("honorLabels", False) is honor, monitor_name


def test_prometheus_rule_renders_the_plain_rules(rendered: dict[str, list[Obj]]) -> None:
    rule = find(rendered["gpu"], "PrometheusRule", "small-model-search")
    plain = yaml.safe_load((ROOT / "monitoring" / "rules.yml").read_text())
    assert rule["spec"]["groups"] == plain["groups"]
