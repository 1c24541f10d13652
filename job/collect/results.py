"""The collector's front step: the study's results as files, and its progress as text.

Second step of the pipeline (job.collect.pipeline: study -> **front** -> select ->
verify -> picks -> publish -> report -> push). `write_front` takes one read of an
already-opened Optuna study (journal file, SQLite or PostgreSQL: opening it is
`job.search.worker`'s job) with the search config, writes into one folder, and returns
what it wrote as a `Front`:

- `pareto.json`: every trial of the Pareto front — COMPLETE, feasible (every Optuna 5
  constraint value <= 0) and dominated by no other such trial under the directions of
  `config.objectives` — with its number, params, objective values, model YAML and
  augmentation policy;
- `pareto.png`: the seed's figure, validation accuracy against parameter count, every
  COMPLETE trial a point coloured by trial number, the front highlighted and joined;
- `summary.json`: counts by state, feasible count, front size, best value per
  objective, best validation accuracy (and that trial's test accuracy: null unless
  `train.test_each_trial`, research use), the front's normalised hypervolume, trials per
  hour, data fingerprints — what an operator reads and the metrics push sends.

Each file is written atomically (a temporary file beside it, then renamed over it,
`write_json` for every JSON file of the collector); a write that fails (disk full,
quota, read-only) is `job.collect.outputs.OutputError`, one line naming the file, and
leaves the file's last complete content.

Every figure is `job.search.view`'s (`summarise` of one snapshot), the same view the workers'
metrics and the `run` progress bar show. `status_report` is the text of
`python -m job status`; `wait_for_budget` backs `collect --wait`. Nothing here ever sees
a storage URL, so nothing here can print a password.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from optuna.trial import FrozenTrial, TrialState

from job.config import Config
from job.files import write_atomic, writing
from job.search import prune
from job.search.budget import budget_met
from job.search.record import LATENCY_FIGURES, SEARCH_TEST_LABEL, TrialRecord
from job.search.view import (
    StudySummary,
    complete_trials,
    counts_by_state,
    directions,
    objective_table,
    snapshot,
    study_summary,
    summarise,
    values_of,
)
from job.search.view import human_duration as human_duration
from job.search.view import is_feasible as is_feasible

PARETO_JSON, PARETO_PNG, SUMMARY_JSON = "pareto.json", "pareto.png", "summary.json"


def _extras(record: TrialRecord) -> dict[str, Any]:
    """What pareto.json adds of a trial's record: `test_accuracy` always (null unless
    `train.test_each_trial` had it evaluated: research use), the rest when the trial has
    it; the count of weights is `params_count` there, since `params` already names the
    Optuna parameters."""
    found = {
        "params_count": record.params,
        "macs": record.macs,
        **{key: record.latency(key) for key in LATENCY_FIGURES},
    }
    kept = {key: value for key, value in found.items() if value is not None}
    return {"test_accuracy": record.test_accuracy, **kept}


# --- trials -------------------------------------------------------------------------
# Every figure comes from `job.search.view`, the one view of the study that the status text,
# the `run` progress bar and the workers' metrics share. Each public function reads the
# study once and summarises that one snapshot, so the numbers of one report agree with
# each other even while workers keep finishing trials.


def pareto_front(study: optuna.Study, config: Config) -> list[FrozenTrial]:
    """The COMPLETE feasible trials no other such trial dominates, under the directions
    of `config.objectives`; by ascending first objective value (for accuracy vs params:
    the smallest model first), ties by trial number."""
    return list(study_summary(study, config).front)


def best_values(study: optuna.Study, config: Config) -> dict[str, float]:
    """Best value per objective name over COMPLETE feasible trials; {} when there are none."""
    return dict(study_summary(study, config).best)


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state name, only the states present, in Optuna's state order."""
    return counts_by_state(study.get_trials(deepcopy=False))


# --- progress -----------------------------------------------------------------------


def _fmt(value: float) -> str:
    """Counts (params, MACs) with thousands separators; scores to 4 significant digits."""
    if math.isfinite(value) and float(value).is_integer() and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _count(state: str, n: int, summary: StudySummary) -> str:
    """`RUNNING 2 (1 stale: trial 7, no heartbeat for 95 s)`: a stale trial's worker is
    gone; the next claim of a live worker fails it and queues its retry."""
    if state != TrialState.RUNNING.name or not summary.stale:
        return f"{state} {n}"
    numbers = ", ".join(str(number) for number in summary.stale)
    silent = max(summary.stale.values())
    trials = "trial" if len(summary.stale) == 1 else "trials"
    stale = f"{len(summary.stale)} stale: {trials} {numbers}, no heartbeat for {silent:.0f} s"
    return f"{state} {n} ({stale})"


def _epochs_line(summary: StudySummary) -> str:
    """`120 trained of 300 (study.budget_epochs)`, every trial in any state."""
    trained = summary.spent.epochs_trained
    limit = summary.budget_epochs
    return f"{trained} trained" + ("" if limit is None else f" of {limit} (study.budget_epochs)")


def _pruning_line(summary: StudySummary, config: Config) -> str:
    """`on: rungs at epochs 1, 3 (eta 3); 12 pruned, 40 epochs saved` or `off`."""
    at = prune.rungs(config)
    if not at:
        return "off"
    used = summary.spent
    where = f"rungs at epochs {', '.join(map(str, at))} (eta {config.study.pruning.eta})"
    return f"on: {where}; {used.pruned} pruned, {used.epochs_saved} epochs saved"


def status_report(study: optuna.Study, config: Config, now: datetime | None = None) -> str:
    """Readable progress: counts by state, best values, front size and its hypervolume,
    rate and ETA. `now` is for tests; by default the wall clock.
    """
    summary = study_summary(study, config, now, heartbeats=True)
    complete, budget, best, rate = (
        summary.complete,
        summary.budget,
        summary.best,
        summary.trials_per_hour,
    )
    pairs = zip(summary.objectives, summary.directions, strict=True)
    shown_best = ", ".join(f"{n} {_fmt(best[n])} ({d[:3]})" for n, d in pairs if n in best)
    hv = f"{summary.hypervolume:.4f} (normalised, reference 1 per objective)"
    lines = [
        f"study       {study.study_name}",
        f"budget      {complete}/{budget} COMPLETE ({min(100, 100 * complete // budget)}%)",
        "trials      "
        + (", ".join(_count(k, v, summary) for k, v in summary.counts.items()) or "none yet"),
        f"epochs      {_epochs_line(summary)}",
        f"pruning     {_pruning_line(summary, config)}",
        f"best        {shown_best or '—'}",
        f"front       {len(summary.front)} trials",
        f"hypervolume {hv if summary.front else '—'}",
        f"rate        {'—' if rate is None else f'{rate:.1f}'} COMPLETE trials/h",
        f"eta         {summary.eta}",
    ]
    return "\n".join(lines)


def wait_for_budget(
    study: optuna.Study, config: Config, poll_s: float = 5.0, timeout_s: float | None = None
) -> bool:
    """Poll until the budget is met (True: `study.budget` COMPLETE, or `budget_epochs`
    spent; job.search.budget) or `timeout_s` passes (False)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        if budget_met(study.get_trials(deepcopy=False), config):
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


def _json_text(data: Any) -> str:
    return json.dumps(_plain(data), indent=2, allow_nan=False, default=str)


def write_json(path: Path, data: Any) -> None:
    """Strict JSON, atomically; a failed write is `OutputError` naming the file."""
    text = _json_text(data)
    with writing(path):
        write_atomic(path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))


def front_entry(trial: FrozenTrial, config: Config) -> dict[str, Any]:
    """One pareto.json object: enough to rebuild and retrain the model without the study."""
    record = TrialRecord.from_trial(trial)
    entry: dict[str, Any] = {
        "number": trial.number,
        "params": dict(trial.params),
        "values": dict(zip(config.objectives, values_of(trial), strict=True)),
        "model_yaml": record.model_yaml,
        "augment": record.augment,
    }
    return entry | _extras(record)


def write_pareto_json(front: Sequence[FrozenTrial], config: Config, path: Path) -> None:
    """pareto.json: a list with one `front_entry` per front trial, in the front's order."""
    write_json(Path(path), [front_entry(t, config) for t in front])


# An axis of the plot: (objective index, or None to read the trial's record), what to read
# of the record, label.
Axis = tuple[int | None, Callable[[TrialRecord], float | None], str]
Point = tuple[FrozenTrial, float, float]
_FRONT_STYLE: dict[str, Any] = dict(s=90, facecolors="none", edgecolors="crimson", linewidths=2)


def plot_axes(objectives: Sequence[str]) -> tuple[Axis, Axis]:
    """x: the parameter count; y: validation accuracy, else the first maximised objective."""
    names: list[str] = list(objectives)
    maximised = [i for i, d in enumerate(directions(objectives)) if d == "maximize"]
    x = names.index("params") if "params" in names else None
    y = names.index("accuracy") if "accuracy" in names else next(iter(maximised), None)
    y_label = f"validation {'accuracy' if y is None else names[y]}"
    return (x, lambda r: r.params, "parameters"), (y, lambda r: r.val_accuracy, y_label)


def _value(trial: FrozenTrial, axis: Axis) -> float | None:
    index, read, _ = axis
    if index is not None:
        return values_of(trial)[index]
    found = read(TrialRecord.from_trial(trial))
    return None if found is None else float(found)


def plot_points(trials: Sequence[FrozenTrial], objectives: Sequence[str]) -> list[Point]:
    """(trial, x, y) for the trials that have both values; a log axis needs x > 0."""
    x_axis, y_axis = plot_axes(objectives)
    found = ((t, _value(t, x_axis), _value(t, y_axis)) for t in trials)
    return [(t, x, y) for t, x, y in found if x is not None and y is not None and x > 0]


def draw_trials(fig: Figure, ax: Axes, points: Sequence[Point]) -> None:
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


def draw_front(ax: Axes, front: Sequence[Point]) -> None:
    front = sorted(front, key=lambda p: p[1])
    xs, ys = [p[1] for p in front], [p[2] for p in front]
    # "post": the accuracy reached at a size holds until the next, bigger front model,
    # which is how the front reads in the seed's figure.
    ax.step(xs, ys, where="post", color="crimson", linewidth=1.5, zorder=3)
    ax.scatter(xs, ys, zorder=4, label=f"Pareto front ({len(front)})", **_FRONT_STYLE)


def _plot(trials: Sequence[FrozenTrial], summary: StudySummary, name: str, path: Path) -> None:
    # A bare Figure renders through Agg without pyplot: no display needed, and no global
    # backend state shared with whatever else runs in the process.
    fig = Figure(figsize=(8, 5.5))
    ax = fig.add_subplot()
    (_, _, x_label), (_, _, y_label) = plot_axes(summary.objectives)
    complete = complete_trials(trials)  # FAIL trials have nothing to plot
    points = plot_points(complete, summary.objectives)
    if points:
        draw_trials(fig, ax, points)
        draw_front(ax, plot_points(summary.front, summary.objectives))
        ax.set_xscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="best")
        x_label += " (log scale)"
    else:  # say why the axes are empty rather than draw a blank that looks broken
        note = "no complete trials" if not complete else "no trial has both values"
        ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes)
        ax.set(xticks=[], yticks=[])
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    hv = f", hypervolume {summary.hypervolume:.3f}" if summary.front else ""
    ax.set_title(
        f"{name}: {summary.complete} complete, {summary.counts.get('FAIL', 0)} failed, "
        f"front of {len(summary.front)}{hv}"
    )
    fig.tight_layout()
    with writing(path):
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def plot_pareto(study: optuna.Study, config: Config, path: Path) -> None:
    """The seed's figure: accuracy vs parameters, coloured by trial number, front joined."""
    trials = snapshot(study, config)
    _plot(trials, summarise(trials, config), study.study_name, path)


def _summary(trials: Sequence[FrozenTrial], name: str, summary: StudySummary) -> dict[str, Any]:
    """summary.json; a model over a hard limit is no answer however accurate, so every
    best, the front and its hypervolume count feasible COMPLETE trials only."""
    fingerprints = {TrialRecord.from_trial(t).data_fingerprint for t in trials}
    return {
        "study": name,
        "budget": summary.budget,
        "trials": dict(summary.counts),
        "complete": summary.complete,
        "pruned": summary.spent.pruned,
        "epochs_trained": summary.spent.epochs_trained,
        "epochs_saved": summary.spent.epochs_saved,
        "feasible": summary.feasible,
        "front_size": len(summary.front),
        "front": summary.front_numbers,
        "best": dict(summary.best),
        "best_accuracy": summary.best_accuracy,
        "best_test_accuracy": summary.best_test_accuracy,
        "hypervolume": summary.hypervolume,
        "trials_per_hour": summary.trials_per_hour,
        "objectives": objective_table(summary.objectives),
        "data_fingerprints": sorted(str(f) for f in fingerprints if f is not None),
        "files": [PARETO_JSON, PARETO_PNG, SUMMARY_JSON],
    }


def as_written(data: Any) -> Any:
    """`data` as a reader of the file `write_json` makes of it finds it (NaN as null,
    keys as strings, tuples as lists), without the file."""
    return json.loads(_json_text(data))


@dataclass(frozen=True)
class Front:
    """The front step's outcome: summary.json's and pareto.json's content, as written."""

    summary: dict[str, Any]
    pareto: list[dict[str, Any]]

    def line(self, out: Path) -> str:
        """What `collect` logs: trials by state, the front, the best validation accuracy
        (and that trial's test accuracy, labelled, with `train.test_each_trial`), the files."""
        best, test = self.summary.get("best_accuracy"), self.summary.get("best_test_accuracy")
        shown = f"{best:.4f}" if isinstance(best, float) else "—"
        if isinstance(test, float):
            shown += f", its test accuracy {test:.4f} ({SEARCH_TEST_LABEL})"
        counts = ", ".join(f"{n} {state}" for state, n in self.summary["trials"].items())
        files = ", ".join(str(out / name) for name in self.summary["files"])
        return (
            f"trials: {counts or 'none'}; Pareto front of {self.summary['front_size']}; "
            f"best validation accuracy {shown}\nwrote {files}"
        )


def write_front(
    study: optuna.Study, config: Config, out: Path, trials: Sequence[FrozenTrial]
) -> Front:
    """The front step: pareto.json, pareto.png and summary.json in `out`, all three from
    one read of the study (`trials`, which the later steps read too), so they agree."""
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    summary = summarise(trials, config)
    pareto = [front_entry(t, config) for t in summary.front]
    write_json(out / PARETO_JSON, pareto)
    _plot(trials, summary, study.study_name, out / PARETO_PNG)
    data = _summary(trials, study.study_name, summary)
    write_json(out / SUMMARY_JSON, data)
    return Front(data, pareto)


def collect(
    study: optuna.Study,
    config: Config,
    out_dir: Path,
    trials: Sequence[FrozenTrial] | None = None,
) -> dict[str, Any]:
    """The front step alone (`write_front`) on `trials`, or on a read of the study now;
    returns summary.json's content."""
    trials = snapshot(study, config) if trials is None else trials
    return write_front(study, config, Path(out_dir), trials).summary
