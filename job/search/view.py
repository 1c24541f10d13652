"""One view of the study: every figure anyone reports about a study, computed in one place.

The collector (`summary.json`, `pareto.json`, `pareto.png`), `python -m job status`, the
`run` progress bar and each worker's metrics all summarise the study through
`summarise` (a snapshot of trials already read) or `study_summary` (reads the study
once), so they can never disagree. The rules:

- Only COMPLETE trials have values. A COMPLETE trial is *feasible* when every Optuna 5
  constraint value (`FrozenTrial.constraints`, stored as system attrs
  `constraints:<key>`) is <= 0; a trial without constraints is feasible. Only
  feasible COMPLETE trials are ranked: the front, every "best" and the hypervolume.
- The Pareto front: ranked trials that no other ranked trial dominates under the
  directions of `config.objectives`; equal trials do not dominate each other. Ordered
  by ascending first objective value, ties by trial number.
- The hypervolume: each objective is mapped to a loss in [0, 1] by the fixed
  normalisation of `OBJECTIVES` (clipped), the reference point is (1, ..., 1), and the
  hypervolume is the fraction of that unit box the front dominates (0 for no front).
  The normalisation depends on nothing in the study, so two studies with the same
  objectives compare directly.

`OBJECTIVES` is the one declaration of the objectives: direction, where a value is read
from (a `TrainResult` field, also a trial user attr) and the hypervolume normalisation.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from job.config import Config, ConfigError
from job.search.budget import Spent, spent, verdict
from job.search.record import TrialRecord, latency_key
from job.storage import silent_trials

Point = tuple[float, ...]


class ObjectiveSpec(NamedTuple):
    """An objective: its direction, the `TrainResult` field (and trial user attr) it is
    read from, and its hypervolume loss (value → [0, 1] before clipping, 1 = worst)."""

    direction: str
    field: str
    loss: Callable[[float], float]
    loss_text: str


OBJECTIVES: dict[str, ObjectiveSpec] = {
    "accuracy": ObjectiveSpec("maximize", "val_accuracy", lambda v: 1.0 - v, "1 - accuracy"),
    "f1": ObjectiveSpec("maximize", "val_f1", lambda v: 1.0 - v, "1 - f1"),
    # 1 .. 1e8 weights
    "params": ObjectiveSpec(
        "minimize", "params", lambda p: math.log10(max(p, 1.0)) / 8, "log10(max(params, 1)) / 8"
    ),
    # 1 .. 1e11 multiply-accumulates
    "macs": ObjectiveSpec(
        "minimize", "macs", lambda m: math.log10(max(m, 1.0)) / 11, "log10(max(macs, 1)) / 11"
    ),
    # 1 µs .. 10 s per image (batch 1)
    # the figure of the runtime `train.latency` names (job.search.record.latency_key)
    "latency": ObjectiveSpec(
        "minimize",
        "latency",
        lambda ms: (math.log10(max(ms, 1e-3)) + 3) / 7,
        "(log10(max(latency_ms, 0.001)) + 3) / 7",
    ),
}


def search_latency_key(config: Config) -> str:
    """The name of the latency figure the search times (`train.latency`; LATENCY_KEYS)."""
    return latency_key(config.train.latency.runtime, config.train.latency.precision)


def directions(objectives: Sequence[str]) -> list[str]:
    """ "maximize"/"minimize" per objective name, in the configured order."""
    return [OBJECTIVES[name].direction for name in objectives]


def objective_table(objectives: Sequence[str]) -> list[dict[str, str]]:
    """Name, direction and hypervolume loss of each objective (summary.json's `objectives`)."""
    return [
        {"name": n, "direction": OBJECTIVES[n].direction, "loss": OBJECTIVES[n].loss_text}
        for n in objectives
    ]


# --- reading the study --------------------------------------------------------------


def check_directions(study: optuna.Study, config: Config) -> None:
    """Refuse a study made for other objectives: its trials would be ranked wrongly, and
    `create_study(load_if_exists=True)` does not compare directions."""
    found = [d.name.lower() for d in study.directions]
    wanted = directions(config.objectives)
    if found != wanted:
        raise ConfigError(
            f"objectives: study {study.study_name!r} has directions {found}, "
            f"but {list(config.objectives)} need {wanted}"
        )


def snapshot(study: optuna.Study, config: Config) -> list[FrozenTrial]:
    """Every trial, read once (one journal or database read), after checking directions."""
    check_directions(study, config)
    return study.get_trials(deepcopy=False)


# --- trials -------------------------------------------------------------------------


def is_feasible(trial: FrozenTrial) -> bool:
    """Optuna 5: each `set_constraint(key, v)` is stored as the system attr
    `constraints:<key>`, read back merged by `FrozenTrial.constraints`; none is feasible."""
    return all(value <= 0.0 for value in trial.constraints.values())


def values_of(trial: FrozenTrial) -> list[float]:
    """The objective values; [] for a trial that has none (not COMPLETE)."""
    return list(trial.values or ())


def complete_trials(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE]


def ranked_trials(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """COMPLETE, feasible trials: the only ones that may be ranked."""
    return [t for t in complete_trials(trials) if is_feasible(t)]


def counts_by_state(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    """Trials by state name, only the states present, in Optuna's state order."""
    counts = Counter(t.state for t in trials)
    return {state.name: counts[state] for state in TrialState if counts[state]}


def pareto_trials(trials: Sequence[FrozenTrial], objectives: Sequence[str]) -> list[FrozenTrial]:
    """The front (see the module doc) among `trials`, by first value then number."""
    ranked = ranked_trials(trials)
    if not ranked:
        return []
    # Every column turned into "smaller is better".
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions(objectives)])
    loss = np.array([values_of(t) for t in ranked], dtype=float) * signs
    front = []
    for i, trial in enumerate(ranked):
        # Dominated: another trial is no worse in every objective and better in one.
        no_worse = np.all(loss <= loss[i], axis=1)
        better = np.any(loss < loss[i], axis=1)
        if not np.any(no_worse & better):
            front.append(trial)
    return sorted(front, key=lambda t: (values_of(t)[0], t.number))


def best_per_objective(
    ranked: Sequence[FrozenTrial], objectives: Sequence[str]
) -> dict[str, float]:
    """Best value per objective name over `ranked` trials; {} when there are none."""
    best: dict[str, float] = {}
    for i, (name, direction) in enumerate(zip(objectives, directions(objectives), strict=True)):
        values = [values_of(t)[i] for t in ranked]
        if values:
            best[name] = max(values) if direction == "maximize" else min(values)
    return best


def _accuracy(trial: FrozenTrial, objectives: Sequence[str], test: bool) -> float | None:
    """Validation accuracy is the `accuracy` objective when there is one (so it always
    equals `best["accuracy"]`), else the trial record's (`job.search.record`); test
    accuracy is the record's."""
    if not test and "accuracy" in objectives:
        return values_of(trial)[list(objectives).index("accuracy")]
    record = TrialRecord.from_trial(trial)
    return record.test_accuracy if test else record.val_accuracy


def best_accuracy(
    ranked: Sequence[FrozenTrial], objectives: Sequence[str], test: bool = False
) -> float | None:
    """Highest validation accuracy over `ranked` (the first trial with it); `test`: that
    trial's test accuracy, not the highest test accuracy of any trial, which would choose
    a figure by looking at the test split. None when unknown (a search trial has a test
    accuracy only with `train.test_each_trial`: research use)."""
    found = [(a, t) for t in ranked if (a := _accuracy(t, objectives, False)) is not None]
    if not found:
        return None
    accuracy, best = max(found, key=lambda pair: pair[0])  # max keeps the first of equals
    return _accuracy(best, objectives, True) if test else accuracy


# --- hypervolume --------------------------------------------------------------------


def normalised_losses(values: Sequence[Sequence[float]], objectives: Sequence[str]) -> list[Point]:
    """Objective values → losses in [0, 1] (1 = worst) by `OBJECTIVES`' normalisation."""
    specs = [OBJECTIVES[name] for name in objectives]

    def one(spec: ObjectiveSpec, value: float) -> float:
        loss = spec.loss(float(value))
        return 1.0 if math.isnan(loss) else min(1.0, max(0.0, loss))

    return [tuple(one(s, v) for s, v in zip(specs, row, strict=True)) for row in values]


def _non_dominated(points: Sequence[Point]) -> list[Point]:
    """Distinct points no other point weakly dominates, in lexicographic order.

    A point's dominators sort before it, so comparing with the kept ones suffices.
    """
    kept: list[Point] = []
    for p in sorted(set(points)):
        if not any(all(a <= b for a, b in zip(q, p, strict=True)) for q in kept):
            kept.append(p)
    return kept


def _hv(front: Sequence[Point], ref: Point) -> float:
    """Hypervolume of a non-dominated set whose points all lie below `ref`."""
    if not front:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in front)
    if len(ref) == 2:  # sweep: by ascending x, y descends along a 2-D front
        ordered = sorted(front)
        edges = [p[0] for p in ordered[1:]] + [ref[0]]
        return sum((x1 - p[0]) * (ref[1] - p[1]) for p, x1 in zip(ordered, edges, strict=True))
    # HSO: slice along the last axis; each slab is the (d-1)-D volume of the points below.
    ordered = sorted(front, key=lambda p: p[-1])
    tops = [p[-1] for p in ordered[1:]] + [ref[-1]]
    total = 0.0
    for i, (p, top) in enumerate(zip(ordered, tops, strict=True)):
        if top > p[-1]:
            below = _non_dominated([q[:-1] for q in ordered[: i + 1]])
            total += (top - p[-1]) * _hv(below, ref[:-1])
    return total


def hypervolume(
    points: Sequence[Sequence[float]], reference: Sequence[float] | None = None
) -> float:
    """Exact hypervolume of loss `points` (smaller is better) up to `reference`, by default
    (1, ..., 1); points not strictly below it add nothing. 0.0 for no points."""
    pts = [tuple(float(x) for x in p) for p in points]
    if not pts:
        return 0.0
    ref = tuple(float(r) for r in reference) if reference is not None else (1.0,) * len(pts[0])
    inside = [p for p in pts if all(x < r for x, r in zip(p, ref, strict=True))]
    return _hv(_non_dominated(inside), ref)


def front_hypervolume(front: Sequence[FrozenTrial], objectives: Sequence[str]) -> float:
    """The dominated fraction of the unit loss box (see the module doc), in [0, 1]."""
    return hypervolume(normalised_losses([values_of(t) for t in front], objectives))


# --- progress -----------------------------------------------------------------------


def trials_per_hour(
    trials: Sequence[FrozenTrial], budget: int, now: datetime | None = None
) -> float | None:
    """COMPLETE trials per hour since the first trial started; None while unknown.

    Once the budget is met the clock stops at the last completion, so a finished study
    keeps the rate it ran at instead of decaying while nobody looks.
    """
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    done = [t.datetime_complete for t in complete_trials(trials) if t.datetime_complete is not None]
    if not starts or not done:
        return None
    first = min(starts)
    if len(done) >= budget:
        end = max(done)
    else:
        # Optuna stores naive local times; follow the storage's tzinfo should it have one.
        end = now if now is not None else datetime.now(first.tzinfo)
    hours = (end - first).total_seconds() / 3600.0
    return len(done) / hours if hours > 0 else None


def human_duration(seconds: float) -> str:
    """12 min, 3.5 h, 2.1 d: as precise as an estimate deserves."""
    if seconds < 60:
        return "<1 min"
    if seconds < 2 * 3600:
        return f"{round(seconds / 60)} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def eta_text(complete: int, budget: int, rate: float | None) -> str:
    """Time left to the budget at the current rate: "done", "—" (unknown) or a duration."""
    if complete >= budget:
        return "done"
    return "—" if rate is None else human_duration((budget - complete) / rate * 3600.0)


# --- the summary --------------------------------------------------------------------


@dataclass(frozen=True)
class StudySummary:
    """Everything reported about one snapshot of a study; see the module doc."""

    objectives: tuple[str, ...]
    directions: tuple[str, ...]
    budget: int
    counts: Mapping[str, int]  # by state name, present states only, Optuna's order
    complete: int
    feasible: int  # COMPLETE and feasible: the ranked trials
    front: tuple[FrozenTrial, ...]
    best: Mapping[str, float]  # objective name -> best value over ranked trials
    best_accuracy: float | None  # validation accuracy, ranked trials only
    best_test_accuracy: float | None  # best_accuracy's trial's; None: test_each_trial off
    trials_per_hour: float | None
    eta: str
    hypervolume: float  # normalised, in [0, 1]; 0.0 without a front
    spent: Spent  # epochs trained and saved by pruning, every trial (job.search.budget)
    budget_epochs: int | None  # study.budget_epochs
    finished: bool  # either budget met (job.search.budget.budget_met)
    # RUNNING trials silent past study.grace_period_s: number -> seconds since the last
    # heartbeat (the next claim fails and retries them); only when asked for (`status`)
    stale: Mapping[int, float] = field(default_factory=dict)

    @property
    def front_numbers(self) -> list[int]:
        return [t.number for t in self.front]


def summarise(
    trials: Sequence[FrozenTrial],
    config: Config,
    now: datetime | None = None,
    silent: Mapping[int, float] | None = None,
) -> StudySummary:
    """The summary of one snapshot of trials (`now`, for tests, stands for the clock);
    `silent`: RUNNING trial number -> seconds since its last heartbeat (see `stale`)."""
    objectives = tuple(config.objectives)
    budget = config.study.budget
    complete, ranked = complete_trials(trials), ranked_trials(trials)
    front = pareto_trials(trials, objectives)
    rate = trials_per_hour(trials, budget, now)
    used = spent(trials, config.train.epochs)
    finished = verdict(used, config) == "done"  # either budget met (job.search.budget)
    return StudySummary(
        objectives=objectives,
        directions=tuple(directions(objectives)),
        budget=budget,
        counts=counts_by_state(trials),
        complete=len(complete),
        feasible=len(ranked),
        front=tuple(front),
        best=best_per_objective(ranked, objectives),
        best_accuracy=best_accuracy(ranked, objectives),
        best_test_accuracy=best_accuracy(ranked, objectives, test=True),
        trials_per_hour=rate,
        eta="done" if finished else eta_text(len(complete), budget, rate),
        hypervolume=front_hypervolume(front, objectives),
        spent=used,
        budget_epochs=config.study.budget_epochs,
        finished=finished,
        stale=stale_trials(trials, silent or {}, config.study.grace_period_s),
    )


def stale_trials(
    trials: Sequence[FrozenTrial], silent: Mapping[int, float], grace_s: float
) -> dict[int, float]:
    """RUNNING trials silent for longer than `grace_s`: number -> seconds silent."""
    running = {t.number for t in trials if t.state == TrialState.RUNNING}
    return {n: s for n, s in sorted(silent.items()) if n in running and s > grace_s}


def study_summary(
    study: optuna.Study, config: Config, now: datetime | None = None, heartbeats: bool = False
) -> StudySummary:
    """Read the study once (refusing one made for other objectives) and summarise it;
    with `heartbeats` also its running trials' heartbeats, to tell the stale ones."""
    trials = snapshot(study, config)
    silent = silent_trials(study) if heartbeats else None  # after: no trial started since
    return summarise(trials, config, now, silent)


def progress_text(summary: StudySummary) -> str:
    """The short line of the `run` progress bar: best accuracy, front size, hypervolume
    (and COMPLETE trials where the bar counts epochs)."""
    acc = "—" if summary.best_accuracy is None else f"{summary.best_accuracy:.4f}"
    hv = f"{summary.hypervolume:.4f}" if summary.front else "—"
    pruned = f", pruned {summary.spent.pruned}" if summary.spent.pruned else ""
    # a bar over epochs (job.search.budget.progress) leaves the trials to say here
    done = f"{summary.complete} COMPLETE, " if summary.budget_epochs is not None else ""
    return f"{done}best acc {acc}, front {len(summary.front)}, HV {hv}{pruned}"
