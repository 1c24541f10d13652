"""The collector role: the study's results as files, and its progress as text.

Reads an already-opened Optuna study (journal file, SQLite or PostgreSQL: opening it is
`job.search`'s job) together with the search config, and writes into one folder:

- `pareto.json`: every trial of the Pareto front — COMPLETE, feasible (every Optuna 5
  constraint value <= 0) and dominated by no other such trial under the directions of
  `config.objectives` — with its number, params, objective values, model YAML and
  augmentation policy;
- `pareto.png`: the seed's figure, validation accuracy against parameter count, every
  COMPLETE trial a point coloured by trial number, the front highlighted and joined;
- `summary.json`: counts by state, front size, best value per objective, best test
  accuracy, data fingerprints — what an operator reads and the metrics push sends.

`status_report` is the text of `python -m job status`; `wait_for_budget` backs
`collect --wait`. Nothing here ever sees a storage URL, so nothing here can print a
password.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from optuna.trial import FrozenTrial, TrialState

from job.config import Config, ConfigError
from job.space import directions

PARETO_JSON, PARETO_PNG, SUMMARY_JSON = "pareto.json", "pareto.png", "summary.json"
# User attrs copied into pareto.json when a trial has them; the count of weights is
# `params_count` there, since `params` already names the Optuna parameters.
_EXTRA_ATTRS = {
    "test_accuracy": "test_accuracy",
    "params_count": "params",
    "macs": "macs",
    "latency_ms_b1": "latency_ms_b1",
}


# --- trials -------------------------------------------------------------------------
# The public functions take the study; each reads it once (a journal or database read)
# and hands that one snapshot to the private helpers, so the numbers of one report
# agree with each other even while workers keep finishing trials.


def _check_directions(study: optuna.Study, config: Config) -> None:
    """Refuse a study made for other objectives: its trials would be ranked wrongly, and
    `create_study(load_if_exists=True)` does not compare directions."""
    found = [d.name.lower() for d in study.directions]
    wanted = directions(config.objectives)
    if found != wanted:
        raise ConfigError(
            f"objectives: study {study.study_name!r} has directions {found}, "
            f"but {list(config.objectives)} need {wanted}"
        )


def _snapshot(study: optuna.Study, config: Config) -> list[FrozenTrial]:
    _check_directions(study, config)
    return study.get_trials(deepcopy=False)


def is_feasible(trial: FrozenTrial) -> bool:
    """Optuna 5: each `set_constraint(key, v)` is stored as the system attr
    `constraints:<key>`, read back merged by `FrozenTrial.constraints`; none is feasible."""
    return all(value <= 0.0 for value in trial.constraints.values())


def _values(trial: FrozenTrial) -> list[float]:
    return list(trial.values or ())  # a COMPLETE trial always has values


def _complete(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE]


def _ranked(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """COMPLETE, feasible trials: the only ones that may be ranked."""
    return [t for t in _complete(trials) if is_feasible(t)]


def _front(trials: Sequence[FrozenTrial], config: Config) -> list[FrozenTrial]:
    ranked = _ranked(trials)
    if not ranked:
        return []
    # Every column turned into "smaller is better".
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions(config.objectives)])
    loss = np.array([_values(t) for t in ranked], dtype=float) * signs
    front = []
    for i, trial in enumerate(ranked):
        # Dominated: another trial is no worse in every objective and better in one.
        # Equal trials do not dominate each other, so duplicates both stay on the front.
        no_worse = np.all(loss <= loss[i], axis=1)
        better = np.any(loss < loss[i], axis=1)
        if not np.any(no_worse & better):
            front.append(trial)
    return sorted(front, key=lambda t: (_values(t)[0], t.number))


def _best(trials: Sequence[FrozenTrial], config: Config) -> dict[str, float]:
    ranked = _ranked(trials)
    best: dict[str, float] = {}
    pairs = zip(config.objectives, directions(config.objectives), strict=True)
    for i, (name, direction) in enumerate(pairs):
        values = [_values(t)[i] for t in ranked]
        if values:
            best[name] = max(values) if direction == "maximize" else min(values)
    return best


def _counts(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    counts = Counter(t.state for t in trials)
    return {state.name: counts[state] for state in TrialState if counts[state]}


def pareto_front(study: optuna.Study, config: Config) -> list[FrozenTrial]:
    """The COMPLETE feasible trials no other such trial dominates, under the directions
    of `config.objectives`; by ascending first objective value (for accuracy vs params:
    the smallest model first), ties by trial number."""
    return _front(_snapshot(study, config), config)


def best_values(study: optuna.Study, config: Config) -> dict[str, float]:
    """Best value per objective name over COMPLETE feasible trials; {} when there are none."""
    return _best(_snapshot(study, config), config)


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state name, only the states present, in Optuna's state order."""
    return _counts(study.get_trials(deepcopy=False))


# --- progress -----------------------------------------------------------------------


def _rate(trials: Sequence[FrozenTrial], budget: int, now: datetime | None) -> float | None:
    """COMPLETE trials per hour since the first trial started; None while unknown.

    Once the budget is met the clock stops at the last completion, so a finished study
    keeps the rate it ran at instead of decaying while nobody looks.
    """
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    done = [t.datetime_complete for t in _complete(trials) if t.datetime_complete is not None]
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


def _eta(complete: int, budget: int, rate: float | None) -> str:
    """Time left to the budget at the current rate: "done", "—" (unknown) or a duration."""
    if complete >= budget:
        return "done"
    return "—" if rate is None else human_duration((budget - complete) / rate * 3600.0)


def _fmt(value: float) -> str:
    """Counts (params, MACs) with thousands separators; scores to 4 significant digits."""
    if math.isfinite(value) and float(value).is_integer() and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def status_report(study: optuna.Study, config: Config, now: datetime | None = None) -> str:
    """Readable progress: counts by state, best values, front size, rate and ETA.

    `now` is for tests; by default the wall clock.
    """
    trials = _snapshot(study, config)
    counts, budget = _counts(trials), config.study.budget
    complete = counts.get("COMPLETE", 0)
    best = _best(trials, config)
    pairs = zip(config.objectives, directions(config.objectives), strict=True)
    shown_best = ", ".join(f"{n} {_fmt(best[n])} ({d[:3]})" for n, d in pairs if n in best)
    rate = _rate(trials, budget, now)
    lines = [
        f"study    {study.study_name}",
        f"budget   {complete}/{budget} COMPLETE ({min(100, 100 * complete // budget)}%)",
        "trials   " + (", ".join(f"{k} {v}" for k, v in counts.items()) or "none yet"),
        f"best     {shown_best or '—'}",
        f"front    {len(_front(trials, config))} trials",
        f"rate     {'—' if rate is None else f'{rate:.1f}'} COMPLETE trials/h",
        f"eta      {_eta(complete, budget, rate)}",
    ]
    return "\n".join(lines)


def wait_for_budget(
    study: optuna.Study, config: Config, poll_s: float = 5.0, timeout_s: float | None = None
) -> bool:
    """Poll until COMPLETE >= budget (True) or `timeout_s` passes (False)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(complete) >= config.study.budget:
            return True
        left = math.inf if deadline is None else deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(poll_s, left))


# --- files --------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON-safe: NaN/inf become null, so the files stay strict JSON for any reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _write_json(path: Path, data: Any) -> None:
    text = json.dumps(_plain(data), indent=2, allow_nan=False, default=str)
    path.write_text(text + "\n", encoding="utf-8")


def front_entry(trial: FrozenTrial, config: Config) -> dict[str, Any]:
    """One pareto.json object: enough to rebuild and retrain the model without the study."""
    entry: dict[str, Any] = {
        "number": trial.number,
        "params": dict(trial.params),
        "values": dict(zip(config.objectives, _values(trial), strict=True)),
        "model_yaml": trial.user_attrs.get("model_yaml"),
        "augment": trial.user_attrs.get("augment"),
    }
    for key, attr in _EXTRA_ATTRS.items():
        if attr in trial.user_attrs:
            entry[key] = trial.user_attrs[attr]
    return entry


def write_pareto_json(front: Sequence[FrozenTrial], config: Config, path: Path) -> None:
    """pareto.json: a list with one `front_entry` per front trial, in the front's order."""
    _write_json(Path(path), [front_entry(t, config) for t in front])


# An axis of the plot: (objective index, or None to read the user attr), user attr, label.
Axis = tuple[int | None, str, str]
Point = tuple[FrozenTrial, float, float]
_FRONT_STYLE: dict[str, Any] = dict(s=90, facecolors="none", edgecolors="crimson", linewidths=2)


def _axes(config: Config) -> tuple[Axis, Axis]:
    """x: the parameter count; y: validation accuracy, else the first maximised objective."""
    names: list[str] = list(config.objectives)
    maximised = [i for i, d in enumerate(directions(config.objectives)) if d == "maximize"]
    x = names.index("params") if "params" in names else None
    y = names.index("accuracy") if "accuracy" in names else next(iter(maximised), None)
    y_label = f"validation {'accuracy' if y is None else names[y]}"
    return (x, "params", "parameters"), (y, "val_accuracy", y_label)


def _value(trial: FrozenTrial, axis: Axis) -> float | None:
    index, attr, _ = axis
    if index is not None:
        return _values(trial)[index]
    found = trial.user_attrs.get(attr)
    return float(found) if isinstance(found, int | float) else None


def _points(trials: Sequence[FrozenTrial], config: Config) -> list[Point]:
    """(trial, x, y) for the trials that have both values; a log axis needs x > 0."""
    x_axis, y_axis = _axes(config)
    found = ((t, _value(t, x_axis), _value(t, y_axis)) for t in trials)
    return [(t, x, y) for t, x, y in found if x is not None and y is not None and x > 0]


def _draw_trials(fig: Figure, ax: Axes, points: Sequence[Point]) -> None:
    """Every COMPLETE trial coloured by number; infeasible ones as crosses."""
    numbers = [p[0].number for p in points]
    low, high = min(numbers), max(max(numbers), min(numbers) + 1)
    style: dict[str, Any] = {"cmap": "viridis", "vmin": low, "vmax": high, "s": 28}
    scatter = None
    for feasible, marker, label in ((True, "o", "trial"), (False, "x", "infeasible")):
        group = [p for p in points if is_feasible(p[0]) == feasible]
        if group:
            xs, ys = [p[1] for p in group], [p[2] for p in group]
            colour = [p[0].number for p in group]
            scatter = ax.scatter(xs, ys, c=colour, marker=marker, label=label, **style)
    if scatter is not None:
        fig.colorbar(scatter, ax=ax, label="trial number")


def _draw_front(ax: Axes, front: Sequence[Point]) -> None:
    front = sorted(front, key=lambda p: p[1])
    xs, ys = [p[1] for p in front], [p[2] for p in front]
    # "post": the accuracy reached at a size holds until the next, bigger front model,
    # which is how the front reads in the seed's figure.
    ax.step(xs, ys, where="post", color="crimson", linewidth=1.5, zorder=3)
    ax.scatter(xs, ys, zorder=4, label=f"Pareto front ({len(front)})", **_FRONT_STYLE)


def _plot(trials: Sequence[FrozenTrial], name: str, config: Config, path: Path) -> None:
    # A bare Figure renders through Agg without pyplot: no display needed, and no global
    # backend state shared with whatever else runs in the process.
    fig = Figure(figsize=(8, 5.5))
    ax = fig.add_subplot()
    (_, _, x_label), (_, _, y_label) = _axes(config)
    front = _front(trials, config)
    points = _points(_complete(trials), config)  # FAIL trials have nothing to plot
    if points:
        _draw_trials(fig, ax, points)
        _draw_front(ax, _points(front, config))
        ax.set_xscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="best")
        x_label += " (log scale)"
    else:  # say why the axes are empty rather than draw a blank that looks broken
        note = "no complete trials" if not _complete(trials) else "no trial has both values"
        ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes)
        ax.set(xticks=[], yticks=[])
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    counts = _counts(trials)
    ax.set_title(
        f"{name}: {counts.get('COMPLETE', 0)} complete, {counts.get('FAIL', 0)} failed, "
        f"front of {len(front)}"
    )
    fig.tight_layout()
    fig.savefig(Path(path), dpi=120)


def plot_pareto(study: optuna.Study, config: Config, path: Path) -> None:
    """The seed's figure: accuracy vs parameters, coloured by trial number, front joined."""
    _plot(_snapshot(study, config), study.study_name, config, path)


def _summary(
    trials: Sequence[FrozenTrial], name: str, config: Config, front: Sequence[FrozenTrial]
) -> dict[str, Any]:
    complete = _complete(trials)
    tests = [
        float(t.user_attrs["test_accuracy"])
        for t in complete  # a model over a hard limit is no answer, however accurate
        if is_feasible(t) and isinstance(t.user_attrs.get("test_accuracy"), int | float)
    ]
    fingerprints = {t.user_attrs.get("data_fingerprint") for t in trials}
    pairs = zip(config.objectives, directions(config.objectives), strict=True)
    return {
        "study": name,
        "budget": config.study.budget,
        "trials": _counts(trials),
        "complete": len(complete),
        "front_size": len(front),
        "front": [t.number for t in front],
        "best": _best(trials, config),
        "best_test_accuracy": max(tests) if tests else None,
        "objectives": [{"name": n, "direction": d} for n, d in pairs],
        "data_fingerprints": sorted(str(f) for f in fingerprints if f is not None),
        "files": [PARETO_JSON, PARETO_PNG, SUMMARY_JSON],
    }


def collect(study: optuna.Study, config: Config, out_dir: Path) -> dict[str, Any]:
    """Write pareto.json, pareto.png and summary.json into `out_dir`; return the summary.

    All three come from one read of the study, so they describe the same trials.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trials = _snapshot(study, config)
    front = _front(trials, config)
    write_pareto_json(front, config, out / PARETO_JSON)
    _plot(trials, study.study_name, config, out / PARETO_PNG)
    summary = _summary(trials, study.study_name, config, front)
    _write_json(out / SUMMARY_JSON, summary)
    return summary
