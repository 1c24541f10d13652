"""monitoring/: the alerts and recording rules are valid (promtool check), behave as their
unit tests say (promtool test), every alert is tested firing and silent, documented, and
the Prometheus Operator's copy (k8s/components/monitoring) holds exactly the same groups.

promtool is Debian's `prometheus` package (`make test` installs it): missing, these
tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from job.testing.prom import binary
from tests.support.proc import ROOT

RULES = ROOT / "monitoring" / "rules.yml"
RULE_TESTS = ROOT / "monitoring" / "rules.test.yml"
PROMETHEUS_RULE = (
    ROOT / "k8s" / "components" / "monitoring" / "small-model-search-prometheusrule.yaml"
)
OPERATING = ROOT / "docs" / "OPERATING.md"
EXPORTER = ROOT / "job" / "serve" / "exporter.py"
SEVERITIES = {"critical", "warning", "info"}
# The job label of what the collector pushed, kept by the Pushgateway's honorLabels scrape.
PUSHED_JOB = 'job="small-model-search"'


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules(kind: str) -> list[dict[str, Any]]:
    """Every rule of monitoring/rules.yml that is an `alert` or a `record`."""
    return [r for g in load(RULES)["groups"] for r in g["rules"] if kind in r]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_rules_are_valid() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules('alert')) + len(rules('record'))} rules found" in done.stdout


def test_rules_pass_their_unit_tests() -> None:
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout and "FAILED" not in done.stdout


def test_prometheus_rule_holds_exactly_the_plain_groups() -> None:
    plain = load(RULES)
    assert set(plain) == {"groups"}
    operator = load(PROMETHEUS_RULE)
    assert operator["apiVersion"] == "monitoring.coreos.com/v1"
    assert operator["kind"] == "PrometheusRule"
    assert operator["metadata"]["name"] == "small-model-search"
    assert operator["spec"] == {"groups": plain["groups"]}


def _per_target(rule: dict[str, Any]) -> bool:
    """An alert on Prometheus' own `up` of a target (a worker, the exporter): one per
    target, labelled by job and instance, not by study (no study series is there)."""
    return str(rule.get("expr", "")).lstrip().startswith("up{")


def test_every_alert_fires_and_stays_silent_in_a_unit_test() -> None:
    tests = load(RULE_TESTS)["tests"]
    assert load(RULE_TESTS)["rule_files"] == ["rules.yml"]
    firing: dict[str, list[dict[str, Any]]] = {}  # alert → the tests where it fires
    silent: set[str] = set()
    for test in tests:
        for case in test.get("alert_rule_test", []):
            if case["exp_alerts"]:
                firing.setdefault(case["alertname"], []).append(test)
            else:
                silent.add(case["alertname"])
    alerts = {r["alert"]: r for r in rules("alert")}
    assert set(firing) == set(alerts), "alerts without a case where they fire"
    assert silent == set(alerts), "alerts without a case where they stay silent"
    for name, rule in alerts.items():
        # as rendered: promtool compares the whole label and annotation sets
        for test in firing[name]:
            for case in test["alert_rule_test"]:
                for alert in case["exp_alerts"] if case["alertname"] == name else []:
                    assert alert["exp_labels"]["severity"] == rule["labels"]["severity"], name
                    wanted = {"job", "instance"} if _per_target(rule) else {"study"}
                    assert wanted <= set(alert["exp_labels"]), name
                    assert set(alert["exp_annotations"]) == set(rule["annotations"]), name
        if _per_target(rule):
            continue
        # one alert per study though the exporter and the Pushgateway both report it
        assert any(
            any(PUSHED_JOB in s["series"] for s in test["input_series"])
            and any(PUSHED_JOB not in s["series"] for s in test["input_series"])
            for test in firing[name]
        ), f"{name}: no firing case with the same series from two sources"


def test_every_recording_rule_is_checked_by_value() -> None:
    checked = {
        case["expr"].strip()
        for test in load(RULE_TESTS)["tests"]
        for case in test.get("promql_expr_test", [])
        if case["exp_samples"]
    }
    for rule in rules("record"):
        assert rule["record"] in checked, f"{rule['record']}: no promql_expr_test"


def test_every_alert_has_severity_text_and_a_runbook() -> None:
    for rule in rules("alert"):
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        notes = rule["annotations"]
        assert set(notes) == {"summary", "description", "runbook"}, name
        label = "instance" if _per_target(rule) else "study"
        for key in ("summary", "description"):
            assert f"{{{{ $labels.{label} }}}}" in notes[key], f"{name} {key}"
        assert notes["runbook"] == f"docs/OPERATING.md#{name.lower()}", name


def test_every_expression_aggregates_by_study() -> None:
    # the same series arrive from the exporter and the Pushgateway: max (min) by study
    for rule in rules("alert") + rules("record"):
        expr = rule["expr"]
        if _per_target(rule):
            continue
        assert re.search(r"\b(max|min) by \(study\)", expr), rule
        assert not re.search(r"\bby \((?!study\))", expr), rule


def test_rules_read_only_series_the_exporter_serves() -> None:
    # a misspelt name would make an alert that never fires, silently
    served = EXPORTER.read_text()
    for rule in rules("alert") + rules("record"):
        for metric in set(re.findall(r"\bsms_[a-z_]+", rule["expr"])):
            # a counter is named without its `_total`, which the client library adds
            names = {f'"{metric}"', f'"{metric.removesuffix("_total")}"'}
            assert any(n in served for n in names), (
                f"{metric} (in {rule.get('alert', rule.get('record'))})"
            )


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_runbook_anchor_is_a_heading_of_the_operating_guide() -> None:
    # docs/OPERATING.md, section "Alerts": one `### <AlertName>` heading per alert
    text = re.sub(r"^```.*?^```", "", OPERATING.read_text(), flags=re.M | re.S)  # no code
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)
    anchors = {_github_anchor(h) for h in headings}
    for rule in rules("alert"):
        anchor = rule["annotations"]["runbook"].partition("#")[2]
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in {OPERATING}"
