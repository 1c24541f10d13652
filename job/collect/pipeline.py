"""The collector's pipeline (the `collect` verb, and `run` after its workers): study ->
front -> select -> verify -> publish (ONNX, cards, artifacts) -> report -> push.

Called by job/cli; each step is a function of its own module in job/collect/.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from job import logs, settings
from job.config import Config
from job.errors import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_OK
from job.storage import ARTIFACTS

if TYPE_CHECKING:
    from job.ml.data import Dataset
    from job.ml.model import ModelSpec
    from job.run.local import RunOptions


def run_and_collect(
    config: Config, options: RunOptions, models: dict[str, ModelSpec], data: Dataset
) -> int:
    """`run`'s work once everything is checked: the workers, then the collector."""
    from job.collect.results import collect
    from job.run.local import run_local, study_after_run

    code = run_local(config, options)
    # one read for every file of the collector, once the database answers (an outage)
    study, trials = study_after_run(config, options)
    out = options.out_dir
    logs.event("collected", collect_line(collect(study, config, out, trials), out))
    selected = select_and_publish(study, trials, config, options.storage, models, data, out)
    if code == EXIT_OK and not selected:
        code = EXIT_ERROR
    # a worker's bad input (every trial failing alike: exit 2) is the run's bad input too
    return code if code in (EXIT_OK, EXIT_BAD_INPUT) else EXIT_ERROR


# What a run's study leaves in its folder besides the journal: the picks, the retrained
# weights, the artifact store, the checkpoints. `run --fresh` deletes them with the study,
# so that nothing of the old study is read as the new one's.
STUDY_OUTPUTS = ("selected", "verified", ARTIFACTS, "checkpoints")


def clear_outputs(out: Path) -> None:
    """Delete the folders of STUDY_OUTPUTS in `out` (only those: `out` may be any folder)."""
    for name in STUDY_OUTPUTS:
        shutil.rmtree(out / name, ignore_errors=True)


def select_and_publish(
    study: optuna.Study,
    trials: list[optuna.trial.FrozenTrial],
    config: Config,
    url: str,
    models: dict[str, ModelSpec],
    data: Dataset,
    out: Path,
    wait: bool = False,
    timeout_s: float | None = None,
) -> bool:
    """The selection files (job.collect.picks) of `trials`; False when something asked for
    is missing (a retrain failed, weights not found). Once the budget is met the
    verification plan is queued for the workers; with `wait`, waited for (`timeout_s`:
    None for ever). Then each pick is exported and verified, uploaded, and the report
    written (job.collect.publish)."""
    from job.collect.picks import selection_text, write_selection
    from job.collect.publish import export_text, publish
    from job.collect.verify import ensure_plan, plan_retrains, wait_for_retrains
    from job.search.retrain import verify_study_name
    from job.search.worker import open_study

    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    finished = complete >= config.study.budget
    planned = plan_retrains(trials, config, models)
    verify_trials: list[optuna.trial.FrozenTrial] = []
    if config.select.verify and finished:
        name = verify_study_name(study.study_name)
        verify = open_study(config, url, name, verify=True)
        ensure_plan(verify, url, planned[1])
        if wait and not wait_for_retrains(verify, url, timeout_s=timeout_s):
            print(f"error: the retrains did not finish within {timeout_s}s", file=sys.stderr)
            return False
        verify_trials = verify.get_trials(deepcopy=False)
    report = write_selection(trials, verify_trials, planned, config, study.study_name, out)
    drift = drift_step(study, trials, config, data, out)
    report["problems"] += publish(out, study, trials, config, data, report)
    print(selection_text(report))
    if exported := export_text(out, report["picks"]):
        print(exported)
    if config.select.verify and not finished:
        print(f"verification waits for the budget ({complete}/{config.study.budget} COMPLETE)")
    elif report["pending"]:
        print(
            "the retrains run on the workers (`python -m job search`); collect again, "
            "or `collect --wait`, for their results"
        )
    ok = not report["problems"] and not report["failed"]
    push_collect(config, url, study.study_name, ok, len(report["picks"]), drift)
    return ok


def push_collect(
    config: Config, url: str, name: str, ok: bool, picks: int, drift: dict[str, Any] | None
) -> None:
    """With SMS_PUSHGATEWAY: the study's final figures (the exporter's families, read now),
    the drift gauges and this collect's outcome, as the group {role=collect, study}."""
    from prometheus_client import CollectorRegistry, Gauge

    from job.collect.drift import drift_registry
    from job.serve.exporter import study_registry
    from job.serve.metrics import Together, push_final

    if settings.pushgateway() is None:
        return
    mine, now = CollectorRegistry(), time.time()
    outcome = [
        ("sms_collect_timestamp_seconds", "When this collect ran (Unix time).", now),
        ("sms_collect_success", "1: every pick selected, exported and verified.", float(ok)),
        ("sms_collect_picks", "Models this collect picked.", float(picks)),
    ]
    if ok:  # absent after a failed collect: its group replaced the last good one's
        outcome.append(("sms_collect_last_success_timestamp_seconds", "When it succeeded.", now))
    for metric, doc, value in outcome:
        Gauge(metric, doc, ["study"], registry=mine).labels(study=name).set(value)
    parts = [study_registry(config, url, name, min_interval_s=0.0), mine]
    if drift is not None:
        parts.append(drift_registry(drift))
    push_final(Together(*parts), "collect", name)


def drift_step(
    study: optuna.Study,
    trials: list[optuna.trial.FrozenTrial],
    config: Config,
    data: Dataset,
    out: Path,
) -> dict[str, Any] | None:
    """Where this collector writes (a later version's drift report finds the picks there),
    and, for a version `research` made, its drift report against its parent (returned)."""
    from job.collect.drift import drift_report, drift_text, write_drift, write_drift_metrics
    from job.search.record import StudyAttrs

    if StudyAttrs.read(study).results_dir != str(out.resolve()):  # no write per collect
        StudyAttrs(results_dir=str(out.resolve())).write(study)
    report = drift_report(study, trials, config, data, out)
    if report is not None:
        write_drift(out, report)
        write_drift_metrics(out, report)
        print(drift_text(report))
    return report


def collect_line(summary: dict[str, Any], out: Path) -> str:
    best = summary.get("best_test_accuracy")
    shown = f"{best:.4f}" if isinstance(best, float) else "—"
    counts = ", ".join(f"{n} {state}" for state, n in summary["trials"].items())
    files = ", ".join(str(out / name) for name in summary["files"])
    return (
        f"trials: {counts or 'none'}; Pareto front of {summary['front_size']}; "
        f"best test accuracy {shown}\nwrote {files}"
    )
