"""Pruning end to end: a worker stops trials at their rungs (journal, in process), two
worker processes prune on one PostgreSQL study, and the epoch budget holds."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from job.config import Config
from job.ml.data import load_data
from job.search import budget
from job.search.record import TrialRecord
from job.search.view import pareto_trials
from job.search.worker import Worker, open_study
from job.testing.pgserver import External, Server
from tests.support.configs import tiny
from tests.support.proc import ROOT, journal_url
from tests.support.studies import ask_past_pruned_trials

PRUNING = {"train.epochs": 3, "study.pruning": {"enabled": True, "eta": 3}}


def _pruning(**changes: object) -> Config:
    return Config.model_validate(tiny(**{**PRUNING, **changes}))


def test_a_pruned_trial_stops_training_is_told_pruned_and_never_picked(tmp_path: Path) -> None:
    config = _pruning(**{"study.budget": 8, "study.sampler": "tpe"})
    url = journal_url(tmp_path)
    lines: list[str] = []
    worker = Worker(config, url, log=lines.append)
    worker.run(load_data(config.data))
    trials = open_study(config, url).get_trials()
    states = Counter(t.state for t in trials)
    assert states[TrialState.COMPLETE] == 8 and states[TrialState.PRUNED] >= 1, states
    assert len(trials) > 10, "TPE must have sampled past its start-up trials"
    for trial in trials:
        record = TrialRecord.from_trial(trial)
        if trial.state == TrialState.PRUNED:
            # stopped at its rung: its curve ends there, and it has no objective values
            assert record.pruned_epoch == 1 == max(trial.intermediate_values)
            assert record.rung_size is not None and record.pruned_rank is not None
            assert record.pruned_rank > record.rung_size // 3 and trial.values is None
            assert record.train_loss is not None and len(record.train_loss) == 1
        else:
            assert list(trial.intermediate_values) == [1, 2, 3] and record.pruned_epoch is None
    assert all(t.state == TrialState.COMPLETE for t in pareto_trials(trials, config.objectives))
    assert any("PRUNED at epoch 1: rank" in line for line in lines)


def test_the_epoch_budget_is_never_passed(tmp_path: Path) -> None:
    config = _pruning(**{"study.budget": 50, "study.budget_epochs": 10})
    url = journal_url(tmp_path)
    Worker(config, url, log=lambda _: None).run(load_data(config.data))
    trials = open_study(config, url).get_trials()
    used = budget.spent(trials, epochs=3)
    assert 10 - 3 < used.epochs_trained <= 10  # no room left for a whole new trial
    assert budget.budget_met(trials, config)


def test_two_workers_prune_one_postgres_study_and_pick_only_complete_trials(
    postgres: Server | External, tmp_path: Path
) -> None:
    """Two worker processes judge rungs on one study (TPE past its start-up trials); the
    picks, the front and `status` see the pruned trials for what they are."""
    url = postgres.new_database()
    path = tmp_path / "pruning.yaml"
    doc = tiny(**{**PRUNING, "study.budget": 8, "study.sampler": "tpe"})
    path.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    env = {**os.environ, "OPTUNA_STORAGE": url}
    run = subprocess.run(
        [sys.executable, "-m", "job", "run", "--config", str(path), "--workers", "2",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr + run.stdout
    config = Config.model_validate(doc)
    trials = open_study(config, url).get_trials()
    states = Counter(t.state for t in trials)
    assert states[TrialState.COMPLETE] == 8 and states[TrialState.PRUNED] >= 1, states
    assert len({TrialRecord.from_trial(t).worker for t in trials}) == 2  # both judged
    for trial in trials:
        if trial.state == TrialState.PRUNED:
            assert max(trial.intermediate_values) == 1 and trial.values is None
    status = subprocess.run(
        [sys.executable, "-m", "job", "status", "--config", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    pruned = states[TrialState.PRUNED]
    assert f"on: rungs at epochs 1 (eta 3); {pruned} pruned, {2 * pruned} epochs saved" in (
        status.stdout
    )
    summary = yaml.safe_load((out / "summary.json").read_text())
    complete = {t.number for t in trials if t.state == TrialState.COMPLETE}
    assert set(summary["front"]) <= complete and summary["pruned"] == pruned


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_samplers_keep_sampling_a_postgres_study_full_of_pruned_trials(
    postgres: Server | External, sampler: str
) -> None:
    """As tests/unit/test_prune.py on a journal: the sampler reads PRUNED trials back
    from PostgreSQL (with their curves, without values) and goes on."""
    config = Config.model_validate(tiny(**{"study.sampler": sampler}))
    ask_past_pruned_trials(open_study(config, postgres.new_database()))
