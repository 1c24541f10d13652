"""Render the Prometheus Operator's copy of the alert rules from monitoring/rules.yml.

monitoring/rules.yml is the one source of the recording rules and alerts: promtool checks
and unit-tests it (monitoring/rules.test.yml), a Prometheus without the operator loads it
as a rule file, and this script writes its `groups` as the spec.groups of the
PrometheusRule `small-model-search` in k8s/components/monitoring. Edit rules.yml, then
run `make rules`; tests/deploy/test_rules_source.py fails while the committed
PrometheusRule differs from what this renders.

    python monitoring/render.py            # (re)write the PrometheusRule
    python monitoring/render.py --check    # exit 1, with a diff, when it is stale

The groups are copied as text, indented under `spec:`, so that their comments survive;
the result is then parsed back and must hold exactly rules.yml's groups. Standard library
and PyYAML only: it imports nothing of the product package.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "monitoring" / "rules.yml"
PROMETHEUS_RULE = (
    ROOT / "k8s" / "components" / "monitoring" / "small-model-search-prometheusrule.yaml"
)

# Everything of the PrometheusRule but its spec.groups.
HEAD = """\
# GENERATED from monitoring/rules.yml by monitoring/render.py: do not edit. Edit
# monitoring/rules.yml and run `make rules` (tests/deploy/test_rules_source.py fails
# while this file differs from what the script renders).
#
# The alerts and recording rules of monitoring/rules.yml for the Prometheus Operator:
# spec.groups is that file's `groups`, comments included. Your Prometheus'
# ruleSelector and ruleNamespaceSelector must select it (kube-prometheus-stack selects
# on its `release` label by default: add that label with a patch in your overlay).
# Runbooks: docs/OPERATING.md, section "Alerts".
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: small-model-search
  namespace: small-model-search   # components sit outside the base's namespace transformer
  labels:
    app.kubernetes.io/name: small-model-search
    app.kubernetes.io/component: monitoring
    app.kubernetes.io/part-of: small-model-search
    app.kubernetes.io/version: "0.1.0"
    app.kubernetes.io/managed-by: kustomize
spec:
"""


def render(rules_text: str) -> str:
    """The PrometheusRule's text for the rules file `rules_text`."""
    lines = rules_text.splitlines()
    try:
        start = lines.index("groups:")  # the first (and only) top-level key
    except ValueError:
        raise ValueError("monitoring/rules.yml: no top-level `groups:` line") from None
    body = "".join(f"  {line}\n" if line.strip() else "\n" for line in lines[start:])
    text = HEAD + body
    plain = yaml.safe_load(rules_text)
    if not isinstance(plain, dict) or set(plain) != {"groups"}:
        raise ValueError("monitoring/rules.yml must hold `groups` and nothing else")
    if yaml.safe_load(text)["spec"] != {"groups": plain["groups"]}:
        raise ValueError("the rendered spec.groups differ from monitoring/rules.yml's groups")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 when the file is stale"
    )
    args = parser.parse_args(argv)
    want = render(RULES.read_text())
    have = PROMETHEUS_RULE.read_text() if PROMETHEUS_RULE.exists() else ""
    name = PROMETHEUS_RULE.relative_to(ROOT)
    if args.check:
        if have == want:
            return 0
        sys.stdout.writelines(
            difflib.unified_diff(
                have.splitlines(keepends=True),
                want.splitlines(keepends=True),
                f"{name} (committed)",
                f"{name} (rendered from monitoring/rules.yml)",
            )
        )
        print(f"{name} is stale: run `make rules`", file=sys.stderr)
        return 1
    if have != want:
        PROMETHEUS_RULE.write_text(want)
        print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
