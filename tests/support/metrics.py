"""Prometheus text read back by labels, and a one-gauge registry to push."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[tuple[str, str], ...], float]


def samples(text: str, name: str) -> Samples:
    """Sample `name`'s values by their sorted labels."""
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def by_label(found: Samples, label: str) -> dict[str, float]:
    """`found`'s values by the one label `label`."""
    return {dict(labels)[label]: value for labels, value in found.items()}


def complete(text: str) -> Samples:
    """sms_trials_total{state="COMPLETE"}, by labels."""
    found = samples(text, "sms_trials_total")
    return {k: v for k, v in found.items() if ("state", "COMPLETE") in k}


def one(text: str, name: str, **labels: str) -> float:
    """The one sample of `name` whose labels include `labels`."""
    found = [v for k, v in samples(text, name).items() if labels.items() <= dict(k).items()]
    assert len(found) == 1, (name, labels, text)
    return found[0]


def picks_registry(value: float) -> CollectorRegistry:
    """A registry of one gauge, sms_collect_picks{study="exp"} = `value`."""
    registry = CollectorRegistry()
    Gauge("sms_collect_picks", "Models picked.", ["study"], registry=registry).labels(
        study="exp"
    ).set(value)
    return registry
