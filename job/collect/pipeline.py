"""The collector, top to bottom: study -> front -> select -> verify -> picks -> publish
(ONNX, cards, artifacts) -> report -> push.

`collect` is what the `collect` verb runs once its study is opened and checked, and
what `run` and `research` run after their workers (job.cli). Each step is a function of
its own module in job/collect/ and hands the next a typed object; each file is written
once, by the step that owns it:

    step      module         hands on        writes
    study     search.view    the trials      (one read of the study)
    front     results        Front           pareto.json, pareto.png, summary.json
    select    selection      Selection       (nothing: choices and the retrain plan)
    verify    verify         Verification    (nothing yet: the retrains, gathered;
                                             queued by retrains)
    picks     picks          Picks           baselines.json
    drift     drift          drift report    drift.json, drift.prom (a research version)
    publish   publish        Publication     selected/trial-<N>/ (card.json, ONNX, ...)
                                             and a link selected/<policy> to it,
                                             selection.json, the trials' artifacts
              verify         Verification    verify.json, with the deployed latency's
                                             agreement (after the picks' own files)
    report    report         (Page)          report.html
    push      push           -               the Pushgateway group (SMS_PUSHGATEWAY)

Errors are exceptions the CLI maps to exit codes (`OutputError`: 1); `collect` returns
whether everything asked for is there (False: a retrain failed, a pick not published,
or `--wait` ran out).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from job import logs
from job.collect.drift import drift_step
from job.collect.outputs import publish_lock
from job.collect.picks import Picks, resolve_picks, selection_text
from job.collect.publish import Publication, export_text, publish
from job.collect.push import push_collect
from job.collect.report import page_of, preview_images, render_report
from job.collect.results import write_front
from job.collect.selection import Selection, select
from job.collect.verify import Verification, verify, write_verify
from job.config import Config
from job.ml.data import Dataset
from job.ml.model import ModelSpec
from job.search.view import snapshot
from job.storage import ARTIFACTS


def collect(
    study: optuna.Study, config: Config, url: str, models: dict[str, ModelSpec], data: Dataset,
    out: Path, trials: Sequence[FrozenTrial] | None = None, wait: bool = False,
    timeout_s: float | None = None,
) -> bool:  # fmt: skip
    """The collector on `study` (its storage `url`), into `out`. `models`: the baseline
    and reference networks by path; `data`: the study's data (ONNX exports are verified
    on its test split); `trials`: the caller's one read of the study (else read here);
    `wait`: wait for the retrains, up to `timeout_s` (None: for ever)."""
    trials = snapshot(study, config) if trials is None else trials
    front = write_front(study, config, out, trials)
    logs.event("collected", front.line(out))
    selection = select(trials, config, models)
    verification = verify(study, selection, config, url, wait, timeout_s)
    if verification is None:  # --wait ran out
        return False
    picks = resolve_picks(selection, verification, config, study.study_name, out)
    drift = drift_step(study, trials, config, data, out)
    with publish_lock(out):  # one collector at a time publishes and reports in `out`
        publication = publish(out, study, picks, config, data)
        verification = write_verify(out, verification, selection, config, data)
        page = page_of(out, study.study_name, front, picks, verification, publication, drift)
        render_report(out, page, trials, config, preview_images(config))
    print(outcome_text(selection, verification, picks, publication, config))
    ok = not publication.problems and not verification.failed
    push_collect(config, url, study.study_name, ok, len(picks.picks), drift)
    return ok


def outcome_text(
    selection: Selection, verification: Verification, picks: Picks, publication: Publication,
    config: Config,
) -> str:  # fmt: skip
    """What `collect` prints at the end: the picks, their exports, what is still to come."""
    lines = [selection_text(picks, verification, publication.problems)]
    if exported := export_text(publication):
        lines.append(exported)
    if config.select.verify and not selection.finished:
        done = f"{selection.complete}/{selection.budget} COMPLETE"
        lines.append(f"verification waits for the budget ({done})")
    elif verification.pending:
        lines.append(
            "the retrains run on the workers (`python -m job search`); collect again, "
            "or `collect --wait`, for their results"
        )
    return "\n".join(lines)


# What a run's study leaves in its folder besides the journal: the picks, the retrained
# weights, the artifact store, the checkpoints. `run --fresh` deletes them with the study,
# so that nothing of the old study is read as the new one's.
STUDY_OUTPUTS = ("selected", "verified", ARTIFACTS, "checkpoints")


def clear_outputs(out: Path) -> None:
    """Delete the folders of STUDY_OUTPUTS in `out` (only those: `out` may be any folder)."""
    for name in STUDY_OUTPUTS:
        shutil.rmtree(out / name, ignore_errors=True)
