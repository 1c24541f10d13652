"""job.collect.figures: the report's Pareto plot labels every pick where no label hides
another, however the picks crowd (measured on the laid-out figure, as it is saved)."""

from __future__ import annotations

import itertools
from datetime import datetime

import pytest
from matplotlib.text import Annotation

from job.collect import figures
from job.config import parse_config
from tests.support.studies import finished_trial

CONFIG = parse_config({"study": {"name": "crowd", "budget": 8}})


def _crowded() -> tuple[list, dict[str, dict[str, int]]]:  # type: ignore[type-arg]
    """Eight trials on a front at the accurate end, close together, each one a pick of
    a policy with a long name (the labels the report shows)."""
    start = datetime(2026, 1, 1)
    trials = [finished_trial(0.99 + 0.0005 * i, 1000.0 * 1.02**i, start, 1) for i in range(8)]
    # the rest of the search, spread wide: the picks end up in one corner of the plot
    trials += [finished_trial(0.3 + 0.03 * i, 100.0 * 2.0**i, start, 1) for i in range(16)]
    for number, trial in enumerate(trials):
        trial.number = number
    selection = {f"policy-with-a-long-name-{i}": {"trial": i} for i in range(8)}
    return trials, selection


def _overlaps(fig: figures.Figure) -> list[tuple[str, str]]:
    labels = [t for t in fig.axes[0].texts if isinstance(t, Annotation)]
    boxes = figures.label_boxes(fig, labels)
    pairs = itertools.combinations(zip(labels, boxes, strict=True), 2)
    return [(a.get_text(), b.get_text()) for (a, ab), (b, bb) in pairs if ab.overlaps(bb)]


def test_no_two_pick_labels_overlap_on_the_pareto_plot() -> None:
    trials, selection = _crowded()
    fig = figures.pareto_figure(trials, CONFIG, selection)
    assert len([t for t in fig.axes[0].texts if isinstance(t, Annotation)]) == 8
    assert _overlaps(fig) == []


def test_without_separating_them_the_crowded_labels_would_overlap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(figures, "separate", lambda fig, labels: None)
    trials, selection = _crowded()
    assert _overlaps(figures.pareto_figure(trials, CONFIG, selection))


def test_baselines_stand_on_the_pareto_plot_and_their_labels_overlap_nothing() -> None:
    trials, selection = _crowded()
    baselines = {
        "baselines": [
            {"name": "resnet8", "params": 1100.0, "verified_accuracy": 0.992},  # in the crowd
            {"name": "mobilenetv3_small", "params": 1.5e6, "verified_accuracy": 0.99},
            {"name": "pending", "params": 5000.0, "verified_accuracy": None},  # not trained yet
        ]
    }
    fig = figures.pareto_figure(trials, CONFIG, selection, baselines)
    texts = [t.get_text() for t in fig.axes[0].texts if isinstance(t, Annotation)]
    assert "resnet8 (baseline)" in texts and "mobilenetv3_small (baseline)" in texts
    assert "pending (baseline)" not in texts
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "baselines (verified test accuracy)" in legend
    assert _overlaps(fig) == []
