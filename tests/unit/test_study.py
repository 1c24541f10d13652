"""job.search.view, the one view of the study: hypervolume, front, best, feasibility, rate, and
the issue's acceptance test (a worker's metrics agree with summary.json)."""

from __future__ import annotations

import itertools
import json
import math
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna._hypervolume import compute_hypervolume
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState, create_trial
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from job.collect.results import collect
from job.config import Config, ConfigError, parse_config
from job.search.view import (
    OBJECTIVES,
    directions,
    hypervolume,
    is_feasible,
    normalised_losses,
    progress_text,
    study_summary,
    summarise,
    trials_per_hour,
)
from job.search.worker import JOURNAL, open_study
from job.serve.exporter import study_registry

optuna.logging.set_verbosity(optuna.logging.WARNING)

T0 = datetime(2025, 3, 1, 10, 0, 0)


def make_config(budget: int = 20, objectives: tuple[str, ...] = ("accuracy", "params")) -> Config:
    return parse_config({"study": {"name": "view", "budget": budget}, "objectives": objectives})


def in_memory(config: Config) -> optuna.Study:
    dirs = [StudyDirection[d.upper()] for d in directions(config.objectives)]
    return optuna.create_study(study_name="view", directions=dirs)


def trial(
    number: int, acc: float, params: float, constraint: float | None = None, test: float = 0.5
) -> FrozenTrial:
    """A COMPLETE trial started at T0 + 10 min * number, lasting 10 min."""
    made = create_trial(
        values=[acc, params],
        user_attrs={"val_accuracy": acc, "test_accuracy": test},
        # Stored as the system attr `constraints:params`, as `set_constraint` does.
        constraints=None if constraint is None else {"params": constraint},
    )
    made.datetime_start = T0 + timedelta(minutes=10 * number)
    made.datetime_complete = made.datetime_start + timedelta(minutes=10)
    return made


# --- hypervolume --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        ([(0.5, 0.5)], 0.25),
        ([(0.0, 0.0)], 1.0),
        # two boxes 0.8 x 0.4 overlapping in 0.4 x 0.4
        ([(0.2, 0.6), (0.6, 0.2)], 0.32 + 0.32 - 0.16),
        # strips by x: 0.1..0.5 under 0.9, 0.5..0.9 under 0.5, 0.9..1 under 0.1
        ([(0.1, 0.9), (0.5, 0.5), (0.9, 0.1)], 0.4 * 0.1 + 0.4 * 0.5 + 0.1 * 0.9),
        ([(0.5, 0.5, 0.5)], 0.125),
        # a slab 0.5 deep under two 2-D boxes whose union is 0.5
        ([(0.25, 0.5, 0.5), (0.5, 0.25, 0.5)], 0.25),
        # three boxes of 0.25, each pair and all three meet in the same 0.125 cube
        ([(0.0, 0.5, 0.5), (0.5, 0.0, 0.5), (0.5, 0.5, 0.0)], 3 * 0.25 - 3 * 0.125 + 0.125),
        ([(0.5, 0.5, 0.5, 0.5)], 0.0625),
    ],
)
def test_hypervolume_by_hand(points: list[tuple[float, ...]], expected: float) -> None:
    assert hypervolume(points) == pytest.approx(expected, abs=1e-12)


def test_hypervolume_edge_cases() -> None:
    assert hypervolume([]) == 0.0
    assert hypervolume([(1.0, 0.0), (0.0, 1.0)]) == 0.0  # on the reference: no volume
    assert hypervolume([(0.5, 0.5)], reference=(2.0, 1.0)) == pytest.approx(0.75)


@pytest.mark.parametrize("objectives", [("accuracy", "params"), ("f1", "macs", "latency")])
def test_hypervolume_equals_optunas_on_random_fronts(objectives: tuple[str, ...]) -> None:
    rng = np.random.default_rng(7)
    ranges = {  # wider than the normalisation, so clipping happens too
        "accuracy": (-0.1, 1.0),
        "f1": (0.0, 1.0),
        "params": (0.0, 9.0),  # log10
        "macs": (3.0, 12.0),
        "latency": (-4.0, 2.0),
    }
    for n in (1, 2, 7, 40):
        columns = []
        for name in objectives:
            low, high = ranges[name]
            column = rng.uniform(low, high, n)
            columns.append(column if name in ("accuracy", "f1") else 10.0**column)
        values = np.stack(columns, axis=1).tolist()
        losses = np.array(normalised_losses(values, objectives))
        assert np.all((losses >= 0) & (losses <= 1))
        ours = hypervolume(losses.tolist())
        theirs = compute_hypervolume(losses, np.ones(len(objectives)))
        assert ours == pytest.approx(theirs, abs=1e-12), n


def test_hypervolume_ignores_dominated_points_duplicates_and_order() -> None:
    rng = np.random.default_rng(3)
    front = rng.random((12, 3)).tolist()
    base = hypervolume(front)
    dominated = [[min(1.0, x + 0.05) for x in p] for p in front]
    assert hypervolume(front + dominated + front) == pytest.approx(base, abs=1e-12)
    for perm in itertools.islice(itertools.permutations(range(4)), 6):
        assert hypervolume([front[i] for i in perm] + front[4:]) == pytest.approx(base)


def test_normalisation_is_fixed_and_documented() -> None:
    worst = [0.0, 0.0, 1e8, 1e11, 1e4]  # 10 s per image
    best = [1.0, 1.0, 1.0, 1.0, 1e-3]  # 1 µs per image
    names = ("accuracy", "f1", "params", "macs", "latency")
    assert normalised_losses([worst, best], names) == [(1.0,) * 5, (0.0,) * 5]
    assert normalised_losses([[0.0, 1e12]], ("params", "params")) == [(0.0, 1.0)]
    assert normalised_losses([[1e4]], ("params",)) == [(0.5,)]
    assert normalised_losses([[1.0]], ("latency",)) == [(pytest.approx(3 / 7),)]
    assert normalised_losses([[math.nan]], ("accuracy",)) == [(1.0,)]
    assert all(spec.loss_text for spec in OBJECTIVES.values())


# --- front, best, feasibility -------------------------------------------------------
# (accuracy, params, constraint): 0 front; 1 front; 2 dominated by 0; 3 infeasible and
# the most accurate; 4 front; 5 equal to 1 (both stay); 6 constraint exactly 0, front.
ROWS = [
    (0.90, 1000, None),
    (0.95, 5000, -0.2),
    (0.85, 2000, None),
    (0.99, 500, 0.5),
    (0.80, 200, None),
    (0.95, 5000, None),
    (0.97, 9000, 0.0),
]


@pytest.fixture
def study() -> optuna.Study:
    study = in_memory(make_config())
    for number, (acc, params, constraint) in enumerate(ROWS):
        study.add_trial(trial(number, acc, params, constraint, test=acc - 0.01))
    study.add_trial(create_trial(state=TrialState.FAIL))
    study.add_trial(create_trial(state=TrialState.RUNNING))
    return study


def test_front_best_and_feasibility(study: optuna.Study) -> None:
    summary = study_summary(study, make_config(), now=T0 + timedelta(minutes=80))
    trials = study.get_trials()
    assert trials[3].system_attrs == {"constraints:params": 0.5} and not is_feasible(trials[3])
    assert is_feasible(trials[6]) and is_feasible(trials[0])
    assert summary.counts == {"RUNNING": 1, "COMPLETE": 7, "FAIL": 1}
    assert list(summary.counts) == ["RUNNING", "COMPLETE", "FAIL"]  # Optuna's order
    assert summary.complete == 7 and summary.feasible == 6
    assert summary.front_numbers == [4, 0, 1, 5, 6]  # by accuracy, then number
    assert summary.best == {"accuracy": 0.97, "params": 200.0}
    assert summary.best_accuracy == 0.97  # not trial 3's 0.99: it breaks a hard limit
    assert summary.best_test_accuracy == pytest.approx(0.96)
    losses = normalised_losses([t.values for t in summary.front], summary.objectives)
    assert summary.hypervolume == pytest.approx(compute_hypervolume(np.array(losses), np.ones(2)))
    assert 0 < summary.hypervolume < 1
    # 7 COMPLETE from T0 to T0 + 80 min: 5.25 per hour; 13 to go: about 2.5 h.
    assert summary.trials_per_hour == pytest.approx(5.25)
    assert summary.eta == "2.5 h"
    assert progress_text(summary) == f"best acc 0.9700, front 5, HV {summary.hypervolume:.4f}"


def test_empty_and_single_objective_studies() -> None:
    summary = study_summary(in_memory(make_config()), make_config())
    assert summary.counts == {} and summary.front == () and summary.best == {}
    assert summary.hypervolume == 0.0 and summary.best_accuracy is None
    assert summary.trials_per_hour is None and summary.eta == "—"
    assert progress_text(summary) == "best acc —, front 0, HV —"

    config = make_config(objectives=("accuracy",))
    study = in_memory(config)
    for acc in (0.5, 0.9, 0.7, 0.9):
        study.add_trial(create_trial(values=[acc]))
    summary = study_summary(study, config)
    assert summary.front_numbers == [1, 3] and summary.hypervolume == pytest.approx(0.9)


def test_the_headline_test_accuracy_is_the_best_validation_trials_own() -> None:
    """Not the highest test accuracy of any trial: that would pick a number by looking at
    the test split (the report's "its test accuracy")."""
    study = in_memory(make_config())
    study.add_trial(trial(0, 0.90, 100, None, test=0.99))  # lucky on the test split
    study.add_trial(trial(1, 0.95, 200, None, test=0.93))  # the best on validation
    study.add_trial(trial(2, 0.95, 300, None, test=0.80))  # as good, but later
    summary = study_summary(study, make_config(), now=T0 + timedelta(minutes=5))
    assert summary.best_accuracy == 0.95
    assert summary.best_test_accuracy == pytest.approx(0.93)


def test_best_accuracy_reads_the_user_attr_without_an_accuracy_objective() -> None:
    config = make_config(objectives=("f1", "latency"))
    trials = [
        create_trial(values=[0.7, 2.0], user_attrs={"val_accuracy": 0.75}),
        create_trial(values=[0.8, 3.0], user_attrs={"val_accuracy": 0.85}),
        create_trial(values=[0.9, 1.0], user_attrs={"val_accuracy": 0.95}, constraints={"x": 1}),
    ]
    summary = summarise(trials, config)
    assert summary.best_accuracy == 0.85 and summary.best == {"f1": 0.8, "latency": 2.0}


def test_a_study_made_for_other_objectives_is_refused() -> None:
    study = in_memory(make_config(objectives=("params", "accuracy")))
    with pytest.raises(ConfigError, match="objectives: study 'view' has directions"):
        study_summary(study, make_config())


# --- trials per hour ----------------------------------------------------------------


def test_trials_per_hour_clock_stops_at_the_budget() -> None:
    trials = [trial(n, 0.5, 100) for n in range(6)]  # T0 .. T0 + 60 min, 6 COMPLETE
    later = T0 + timedelta(days=2)
    assert trials_per_hour(trials, budget=6, now=later) == pytest.approx(6.0)
    assert trials_per_hour(trials, budget=12, now=T0 + timedelta(hours=2)) == pytest.approx(3.0)
    assert trials_per_hour(trials[:0], budget=6) is None
    running = create_trial(state=TrialState.RUNNING)
    running.datetime_start = T0
    assert trials_per_hour([running], budget=6, now=later) is None  # none COMPLETE yet
    done = summarise(trials, make_config(budget=6), now=later)
    assert done.trials_per_hour == pytest.approx(6.0) and done.eta == "done"


# --- acceptance: the exporter's best accuracy equals summary.json's -----------------


def _gauge(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise KeyError(name)


def test_exporter_metrics_equal_summary_json_with_infeasible_trials(tmp_path: Path) -> None:
    config = make_config()
    url = JOURNAL + str(tmp_path / "study.journal")
    study = open_study(config, url)
    for number, (acc, params, constraint) in enumerate(ROWS):
        study.add_trial(trial(number, acc, params, constraint))
    study.add_trial(create_trial(state=TrialState.FAIL))

    text = generate_latest(study_registry(config, url)).decode()  # what a scrape reads
    summary = collect(study, config, tmp_path / "out")
    written = json.loads((tmp_path / "out" / "summary.json").read_text())

    assert written == summary
    # The most accurate COMPLETE trial (0.99) is infeasible: neither counts it.
    assert _gauge(text, "sms_study_best_accuracy") == written["best_accuracy"] == 0.97
    assert written["best"]["accuracy"] == 0.97
    assert _gauge(text, "sms_study_pareto_front_size") == written["front_size"] == 5
    assert _gauge(text, "sms_study_hypervolume") == pytest.approx(written["hypervolume"])
    assert _gauge(text, "sms_study_budget") == written["budget"] == 20
    counts = {
        s.labels["state"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "sms_study_trials"
    }
    assert {k: v for k, v in counts.items() if v} == written["trials"]
