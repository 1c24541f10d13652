"""Kueue: components/kueue puts the search's Jobs in a queue, k8s/kueue holds the queue
objects a cluster admin applies once.

The component's renders must still validate strictly and carry exactly what Kueue reads
(the queue-name label on the Jobs and on the CronJob's jobTemplate, the partial-admission
annotation on `search`, the jobTemplate suspended); the queue objects must fit Kueue's
published v1beta2 CRD schemas (tests/data/kueue_crds.yaml, a copied subset naming its
source commit), fit each other, and fit what the queued pods ask for. No cluster, no
Kueue: everything up to `kubectl apply`.
"""

from __future__ import annotations

import copy
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from job.run.launch import TEMPLATES, clone
from tests.support.kube import (
    K8S,
    NAMESPACE,
    VERSIONS,
    Obj,
    RenderOverlay,
    find,
    kubectl,
    pod_spec,
    template_of,
    validation_errors,
)
from tests.support.proc import ROOT

COMPONENT = K8S / "components" / "kueue" / "kustomization.yaml"
QUEUES = K8S / "kueue"
CRDS = ROOT / "tests" / "data" / "kueue_crds.yaml"

GROUP = "kueue.x-k8s.io"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
MIN_PARALLELISM = "kueue.x-k8s.io/job-min-parallelism"
QUEUE = "small-model-search"  # the LocalQueue's name, which the component's label gives
RENAMED = "team-gpus"  # the name in the component comment's rename example
WITH_COMPONENT = "components: [../../components/kueue]\n"

# Every kueue.x-k8s.io/ key the component writes, where: (kind, name, path, key).
KUEUE_KEYS = {
    ("CronJob", "search", "spec.jobTemplate.metadata.labels", QUEUE_LABEL),
    ("CronJob", "search", "spec.jobTemplate.metadata.annotations", MIN_PARALLELISM),
    ("CronJob", "collect", "spec.jobTemplate.metadata.labels", QUEUE_LABEL),
    ("CronJob", "research", "spec.jobTemplate.metadata.labels", QUEUE_LABEL),
}
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]*)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?")
SCALE = {None: 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
SCALE |= {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}


def rename_patch() -> str:
    """The overlay patches the component's comment gives for another LocalQueue, as text:
    the `#   ` block from `#   patches:` on."""
    lines = COMPONENT.read_text().splitlines()
    block = []
    for line in lines[lines.index("#   patches:") :]:
        if not line.startswith("#   "):
            break
        block.append(line[4:])
    return "\n".join(block) + "\n"


@pytest.fixture(scope="module")
def rendered(render_overlay: RenderOverlay) -> dict[str, list[Obj]]:
    """base and gpu with the component, gpu without it, gpu with it and the rename."""
    return {
        "base": render_overlay("base-kueue", "resources: [../../base]\n" + WITH_COMPONENT),
        "gpu": render_overlay("gpu-kueue", "resources: [../gpu]\n" + WITH_COMPONENT),
        "gpu-plain": render_overlay("gpu"),
        "renamed": render_overlay(
            "renamed", "resources: [../gpu]\n" + WITH_COMPONENT + rename_patch()
        ),
    }


@pytest.fixture(scope="module")
def examples() -> dict[str, Obj]:
    """k8s/kueue's objects by kind."""
    objs = [yaml.safe_load(p.read_text()) for p in sorted(QUEUES.glob("*.yaml"))]
    return {o["kind"]: o for o in objs if o["kind"] != "Kustomization"}


@pytest.fixture(scope="module")
def crds() -> dict[str, Obj]:
    return {crd["kind"]: crd for crd in yaml.safe_load(CRDS.read_text())["crds"]}


def _walk(node: Any, path: str) -> Iterator[tuple[str, str]]:
    """(path of the mapping, key) for every key of every mapping under node."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, str(key)
            yield from _walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, path)


def kueue_keys(objs: list[Obj]) -> set[tuple[str, str, str, str]]:
    """Every kueue.x-k8s.io/ key anywhere in the objects: (kind, name, path, key)."""
    return {
        (o["kind"], o["metadata"]["name"], path, key)
        for o in objs
        for path, key in _walk(o, "")
        if key.startswith(GROUP + "/")
    }


def without_kueue(objs: list[Obj]) -> list[Obj]:
    """The objects less what the component adds: its keys, the jobTemplate's suspend."""
    out = copy.deepcopy(objs)
    for obj in out:
        for section in ("labels", "annotations"):
            meta = obj["metadata"]
            for key in [k for k in meta.get(section, {}) if k.startswith(GROUP + "/")]:
                del meta[section][key]
            if section in meta and not meta[section]:
                del meta[section]
        if obj["kind"] == "CronJob":
            template = obj["spec"]["jobTemplate"]
            template["spec"].pop("suspend", None)
            for section in ("labels", "annotations"):
                keys = template["metadata"].get(section, {})
                for key in [k for k in keys if k.startswith(GROUP + "/")]:
                    del keys[key]
                if section in template["metadata"] and not keys:
                    del template["metadata"][section]
    return out


def quantity(value: object) -> float:
    """A Kubernetes quantity ("500m", "16Gi", 4) as a number."""
    match = QUANTITY.fullmatch(str(value))
    assert match, f"not a quantity this test reads: {value!r}"
    return float(match[1]) * SCALE[match[2]]


def requests(container: Obj) -> dict[str, str]:
    """What Kueue counts for a container: its requests, else its limits."""
    resources = container.get("resources", {})
    return {**resources.get("limits", {}), **resources.get("requests", {})}


def queued_pods(objs: list[Obj]) -> Iterator[tuple[Obj, Obj, int]]:
    """(workload, pod spec, pods at full admission) of each queued Job and CronJob."""
    for obj in objs:
        if obj["kind"] == "Job" and QUEUE_LABEL in obj["metadata"].get("labels", {}):
            spec = obj["spec"]
            parallelism = int(spec.get("parallelism", 1))  # as the API server defaults it
            yield obj, spec["template"]["spec"], min(parallelism, spec.get("completions", 1))
        if obj["kind"] == "CronJob":
            template = obj["spec"]["jobTemplate"]
            if QUEUE_LABEL in template["metadata"].get("labels", {}):
                spec = pod_spec(obj)
                assert spec is not None
                yield obj, spec, int(template["spec"].get("parallelism", 1))


def strict(schema: Obj) -> Obj:
    """The schema with additionalProperties false wherever it lists properties: an
    unknown field is an error, as kubectl's server-side field validation makes it."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: strict(v) for k, v in out["properties"].items()}
        out.setdefault("additionalProperties", False)
    if isinstance(out.get("items"), dict):
        out["items"] = strict(out["items"])
    return out


def schema_errors(obj: Obj, crd: Obj) -> list[str]:
    validator = jsonschema.Draft7Validator(strict(crd["openAPIV3Schema"]))
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(obj)
    ]


# --- components/kueue -----------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("variant", ["base", "gpu"])
def test_queued_objects_validate_strictly(
    rendered: dict[str, list[Obj]], variant: str, version: str
) -> None:
    errors = validation_errors(rendered[variant], version)
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("variant", ["base", "gpu"])
def test_jobs_carry_exactly_what_kueue_reads(rendered: dict[str, list[Obj]], variant: str) -> None:
    objs = rendered[variant]
    assert kueue_keys(objs) == KUEUE_KEYS
    for name in TEMPLATES:
        job = template_of(objs, name)
        assert job["metadata"]["labels"][QUEUE_LABEL] == QUEUE, name
        # Kueue reads the Job's label; the pods never carry it (its pod integration would
        # take them for plain pods to queue)
        assert QUEUE_LABEL not in job["spec"]["template"]["metadata"]["labels"], name
        # research --launch creates a queued Job suspended itself (job/run/launch.py):
        # the template says nothing of it
        assert "suspend" not in job["spec"], name
    cron = find(objs, "CronJob", "research")
    template = cron["spec"]["jobTemplate"]
    assert template["metadata"]["labels"][QUEUE_LABEL] == QUEUE
    assert QUEUE_LABEL not in cron["metadata"]["labels"]  # Kueue queues the Jobs, not it
    assert template["spec"]["suspend"] is True  # Kueue resumes each run's Job
    assert cron["spec"]["suspend"] is False  # the schedule itself still runs


@pytest.mark.parametrize("variant", ["base", "gpu"])
def test_partial_admission_only_for_the_workers(
    rendered: dict[str, list[Obj]], variant: str
) -> None:
    # job_webhook.go (validatePartialAdmissionCreate): an integer in
    # [1, min(parallelism, completions) - 1], or Kueue refuses the Job
    search = template_of(rendered[variant], "search")
    count = min(search["spec"]["parallelism"], search["spec"]["completions"])
    minimum = search["metadata"]["annotations"][MIN_PARALLELISM]
    assert re.fullmatch(r"[0-9]+", minimum) and 1 <= int(minimum) < count
    collect = template_of(rendered[variant], "collect")
    assert MIN_PARALLELISM not in collect["metadata"].get("annotations", {})


def test_component_adds_nothing_else(rendered: dict[str, list[Obj]]) -> None:
    plain = rendered["gpu-plain"]
    assert not kueue_keys(plain) and GROUP not in yaml.safe_dump_all(plain)
    # GPU limits, parallelism, env, names: all as without the component
    assert without_kueue(rendered["gpu"]) == without_kueue(plain)


def test_overlay_can_rename_the_queue_as_the_comment_says(
    rendered: dict[str, list[Obj]],
) -> None:
    objs = rendered["renamed"]
    assert kueue_keys(objs) == KUEUE_KEYS
    for name in TEMPLATES:
        assert template_of(objs, name)["metadata"]["labels"][QUEUE_LABEL] == RENAMED
    template = find(objs, "CronJob", "research")["spec"]["jobTemplate"]
    assert template["metadata"]["labels"][QUEUE_LABEL] == RENAMED


def test_research_clones_stay_queued(rendered: dict[str, list[Obj]]) -> None:
    # job/run/launch.py clones the live templates; Kueue's webhook suspends each clone at
    # creation because it keeps the template's queue-name label
    objs = rendered["gpu"]
    for name in TEMPLATES:
        template = template_of(objs, name)
        job = clone(template, "cifar10-v2", 2, NAMESPACE)
        assert job["metadata"]["labels"][QUEUE_LABEL] == QUEUE, name
        assert job["spec"]["suspend"] is True, name  # never created running
        annotations = template["metadata"].get("annotations", {})
        if MIN_PARALLELISM in annotations:
            assert job["metadata"]["annotations"][MIN_PARALLELISM] == annotations[MIN_PARALLELISM]


def test_a_clone_asks_for_the_workers_the_template_names(
    rendered: dict[str, list[Obj]],
) -> None:
    # Kueue's partial admission lowers a running Job's parallelism, never the template's
    # (a CronJob): each version's Job asks for every worker again, Kueue decides
    template = template_of(rendered["gpu"], "search")
    spec = clone(template, "cifar10-v2", 2, NAMESPACE)["spec"]
    assert spec["parallelism"] == spec["completions"] == template["spec"]["completions"] == 4


# --- k8s/kueue ------------------------------------------------------------------------


def test_queue_objects_are_applied_on_their_own() -> None:
    # k8s/kueue/kustomization.yaml lists every file there, and renders them as they are
    listed = yaml.safe_load((QUEUES / "kustomization.yaml").read_text())["resources"]
    files = sorted(p.name for p in QUEUES.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == files
    proc = subprocess.run(
        [kubectl(), "kustomize", str(QUEUES)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    out = sorted((o["kind"], yaml.safe_dump(o)) for o in yaml.safe_load_all(proc.stdout) if o)
    ours = sorted((o["kind"], yaml.safe_dump(o)) for o in map(_load, files))
    assert out == ours
    # ... and no kustomization the overlays build reaches into k8s/kueue
    for path in K8S.rglob("kustomization.yaml"):
        if path.parent == QUEUES:
            continue
        listed = yaml.safe_load(path.read_text())
        for entry in listed.get("resources", []) + listed.get("components", []):
            target = (path.parent / entry).resolve()
            assert not target.is_relative_to(QUEUES.resolve()), f"{path}: {entry}"


def _load(name: str) -> Obj:
    return dict(yaml.safe_load((QUEUES / name).read_text()))


@pytest.mark.parametrize("kind", ["ResourceFlavor", "ClusterQueue", "LocalQueue"])
def test_queue_objects_fit_kueues_published_v1beta2_schema(
    examples: dict[str, Obj], crds: dict[str, Obj], kind: str
) -> None:
    obj, crd = examples[kind], crds[kind]
    group, _, version = obj["apiVersion"].partition("/")
    assert group == crd["group"] == GROUP and version == "v1beta2"
    assert crd["versions"][version] == {"served": True, "deprecated": False}
    assert not schema_errors(obj, crd), "\n".join(schema_errors(obj, crd))
    meta = obj["metadata"]
    assert DNS_SUBDOMAIN.fullmatch(meta["name"]) and len(meta["name"]) <= 253
    if crd["scope"] == "Cluster":
        assert "namespace" not in meta
    else:
        assert meta["namespace"] == NAMESPACE


def _first_quota(queue: Obj) -> Obj:
    """The first resource quota of the ClusterQueue (the object itself, to mutate)."""
    quota: Obj = queue["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]
    return quota


BROKEN = {  # what the strict check must refuse, and the word its error names
    "cohort": lambda q: q["spec"].update(cohort="gpus"),  # v1beta1's name: now cohortName
    "nominalQuota": lambda q: _first_quota(q).pop("nominalQuota"),
    "FIFO": lambda q: q["spec"].update(queueingStrategy="FIFO"),
    "lots": lambda q: _first_quota(q).update(nominalQuota="lots"),
}


@pytest.mark.parametrize("word", sorted(BROKEN))
def test_schema_check_is_strict(examples: dict[str, Obj], crds: dict[str, Obj], word: str) -> None:
    bad = copy.deepcopy(examples["ClusterQueue"])
    BROKEN[word](bad)
    errors = schema_errors(bad, crds["ClusterQueue"])
    assert errors and word in "\n".join(errors), errors


def test_queue_objects_fit_each_other(
    examples: dict[str, Obj], rendered: dict[str, list[Obj]]
) -> None:
    flavor, cluster, local = (examples[k] for k in ("ResourceFlavor", "ClusterQueue", "LocalQueue"))
    # the Jobs name the LocalQueue, the LocalQueue the ClusterQueue, that the flavor
    assert local["metadata"]["name"] == QUEUE
    assert local["spec"]["clusterQueue"] == cluster["metadata"]["name"]
    for group in cluster["spec"]["resourceGroups"]:
        for entry in group["flavors"]:
            assert entry["name"] == flavor["metadata"]["name"]
            # the CRD's CEL rule (one quota per covered resource) and its docs (same order)
            assert [r["name"] for r in entry["resources"]] == group["coveredResources"]
    # the ClusterQueue admits the namespace (null would admit none)
    namespace = find(rendered["base"], "Namespace", NAMESPACE)
    labels = {**namespace["metadata"]["labels"], "kubernetes.io/metadata.name": NAMESPACE}
    selector = cluster["spec"]["namespaceSelector"]
    assert set(selector) == {"matchLabels"}
    assert selector["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("variant", ["base", "gpu"])
def test_clusterqueue_covers_and_fits_a_study_version(
    examples: dict[str, Obj], rendered: dict[str, list[Obj]], variant: str
) -> None:
    (group,) = examples["ClusterQueue"]["spec"]["resourceGroups"]
    (entry,) = group["flavors"]
    quota = {r["name"]: quantity(r["nominalQuota"]) for r in entry["resources"]}
    needed: dict[str, float] = {}
    walked = set()
    for obj, spec, pods in queued_pods(rendered[variant]):
        for container in spec.get("initContainers", []) + spec["containers"]:
            asked = requests(container)
            # a resource the ClusterQueue does not cover makes the Workload inadmissible
            assert set(asked) <= set(group["coveredResources"]), obj["metadata"]["name"]
            for resource, value in asked.items():
                needed[resource] = needed.get(resource, 0.0) + pods * quantity(value)
        walked.add(obj["metadata"]["name"])
    assert walked == {"search", "collect", "research"}
    # a whole version at once: every worker, the collector and the re-search
    for resource, total in needed.items():
        assert total <= quota[resource], f"{resource}: {total} > {quota[resource]}"


def test_crd_subset_names_its_source() -> None:
    data = yaml.safe_load(CRDS.read_text())
    assert re.fullmatch(r"[0-9a-f]{40}", data["source"]["commit"])
    for crd in data["crds"]:
        assert crd["name"] == f"{crd['kind'].lower()}s.{GROUP}"
        assert crd["path"] == f"config/components/crd/bases/{GROUP}_{crd['kind'].lower()}s.yaml"
        assert Path(crd["path"]).name in CRDS.read_text()  # listed in the header comment
