"""monitoring/rules.yml is the one source of the alert rules: the Prometheus Operator's
PrometheusRule (k8s/components/monitoring) is generated from it by monitoring/render.py
(`make rules`), and the committed file must be exactly what the script renders, so the two
cannot drift. After editing rules.yml, run `make rules` and commit both files.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "rules.yml"
RENDER = ROOT / "monitoring" / "render.py"
PROMETHEUS_RULE = (
    ROOT / "k8s" / "components" / "monitoring" / "small-model-search-prometheusrule.yaml"
)


@pytest.fixture(scope="module")
def render() -> ModuleType:
    """monitoring/render.py, a script outside any package, loaded from its file."""
    spec = importlib.util.spec_from_file_location("sms_monitoring_render", RENDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(text: str) -> Any:
    return yaml.safe_load(text)


def test_committed_prometheus_rule_is_what_render_writes(render: ModuleType) -> None:
    assert render.RULES == RULES and render.PROMETHEUS_RULE == PROMETHEUS_RULE
    want = render.render(RULES.read_text())
    have = PROMETHEUS_RULE.read_text()
    assert have == want, (
        f"{PROMETHEUS_RULE.relative_to(ROOT)} differs from what monitoring/render.py "
        "renders from monitoring/rules.yml: edit rules.yml only, then run `make rules`"
    )


def test_rendered_spec_groups_are_the_rules_groups(render: ModuleType) -> None:
    plain = load(RULES.read_text())
    assert set(plain) == {"groups"}
    rendered = load(render.render(RULES.read_text()))
    assert rendered["spec"] == {"groups": plain["groups"]}
    assert rendered["apiVersion"] == "monitoring.coreos.com/v1"
    assert rendered["kind"] == "PrometheusRule"
    assert rendered["metadata"]["name"] == "small-model-search"
    assert rendered["metadata"]["namespace"] == "small-model-search"
    labels = rendered["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "monitoring"
    assert labels["app.kubernetes.io/managed-by"] == "kustomize"


def test_rendered_file_says_it_is_generated(render: ModuleType) -> None:
    head = render.render(RULES.read_text()).partition("apiVersion:")[0]
    assert "GENERATED from monitoring/rules.yml" in head
    assert "do not edit" in head and "make rules" in head


def test_an_edit_of_rules_yml_shows_as_drift(render: ModuleType) -> None:
    # a changed threshold renders a different file: the committed one is then stale
    text = RULES.read_text()
    edited = text.replace(") > 0.5\n", ") > 0.6\n", 1)
    assert edited != text
    assert render.render(edited) != PROMETHEUS_RULE.read_text()
    assert load(render.render(edited))["spec"]["groups"] == load(edited)["groups"]


def test_render_refuses_a_rules_file_with_more_than_groups(render: ModuleType) -> None:
    with pytest.raises(ValueError, match="groups"):
        render.render(RULES.read_text() + "extra: 1\n")
    with pytest.raises(ValueError, match="groups"):
        render.render("# nothing\n")


def test_check_mode_reports_a_stale_file_and_write_mode_fixes_it(
    render: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    target = tmp_path / "k8s" / "prometheusrule.yaml"
    target.parent.mkdir()
    target.write_text(PROMETHEUS_RULE.read_text().replace("severity: info", "severity: page"))
    monkeypatch.setattr(render, "ROOT", tmp_path)
    monkeypatch.setattr(render, "PROMETHEUS_RULE", target)
    assert render.main(["--check"]) == 1
    out, err = capsys.readouterr()
    assert re.search(r"^-\s+severity: page$", out, re.M), out
    assert re.search(r"^\+\s+severity: info$", out, re.M), out
    assert "make rules" in err
    assert render.main([]) == 0
    assert target.read_text() == PROMETHEUS_RULE.read_text()
    assert render.main(["--check"]) == 0


def test_make_rules_runs_the_renderer() -> None:
    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"^rules:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert target, "no `rules` target in the Makefile"
    assert "monitoring/render.py" in target.group(1)
