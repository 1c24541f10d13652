"""A killed worker on the embedded journal storage: its trial goes stale, is failed and
retried by a live worker (as on PostgreSQL), `status` shows it stale, `run` reports the
lost worker and still ends with the budget met. Real storages and worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from job.collect.results import status_report
from job.config import load_config
from job.ml.data import load_data
from job.run.local import describe, lost_worker
from job.search.space import sample_candidate
from job.search.worker import JOURNAL, Worker, claim_trial, open_study
from job.storage import Heartbeat, budget_lock, fail_stale_trials, silent_trials
from job.testing.pgserver import External, Server
from tests.gate import Gate
from tests.support.configs import TINY
from tests.support.proc import ROOT, journal_url

BEATING = TINY.replace("seed: 0}", "seed: 0, heartbeat_interval_s: 1, grace_period_s: 3}")
GRACE_S = 3


def _config(tmp_path: Path, text: str = BEATING) -> Path:
    path = tmp_path / "beating.yaml"
    path.write_text(text)
    return path


def test_a_silent_journal_trial_is_failed_and_retried_a_beating_one_never(
    tmp_path: Path,
) -> None:
    config = load_config(_config(tmp_path, BEATING.replace("budget: 4", "budget: 2")))
    url = journal_url(tmp_path)
    study = open_study(config, url)
    data = load_data(config.data)
    dead = claim_trial(study, 2, url)
    assert isinstance(dead, optuna.Trial)
    sample_candidate(dead, data, config)  # its params, as a worker draws them
    with Heartbeat(study, dead):  # beats once, then its worker "dies"
        pass
    died = time.time()
    live = claim_trial(study, 2, url)
    assert isinstance(live, optuna.Trial)
    assert claim_trial(study, 2, url) == "wait"  # both slots held
    failed: list[int] = []
    with Heartbeat(study, live):  # alive throughout, longer than the grace period
        while time.time() - died < GRACE_S + 3:
            with budget_lock(url, study.study_name):
                failed += fail_stale_trials(study)
            time.sleep(0.25)
        assert failed == [dead.number]  # failed once, and only the silent one
        assert study.get_trials()[live.number].state == TrialState.RUNNING
    study.tell(live, [0.5, 1000.0])

    trials = study.get_trials()
    assert trials[dead.number].state == TrialState.FAIL
    assert trials[dead.number].user_attrs["fail_reason"] == "stale"
    assert "no heartbeat" in trials[dead.number].user_attrs["fail_message"]
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].system_attrs["failed_trial"] == dead.number

    lines: list[str] = []
    assert Worker(config, url, log=lines.append).run(data) == 1  # takes the retry, then done
    trials = study.get_trials()
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 2 and TrialState.RUNNING not in states
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == dead.number)
    assert retry.state == TrialState.COMPLETE
    assert retry.params == trials[dead.number].params  # the same candidate
    beats = Path(url[len(JOURNAL) :] + ".beats")
    assert not list(beats.iterdir())  # finished trials' beat files are swept


@pytest.mark.parametrize("storage", ["journal", "postgresql"])
def test_a_trial_that_never_beat_goes_stale_after_the_grace_period(
    storage: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A worker killed between `ask` and its first beat, or a claim whose `ask` was
    committed just before the database dropped (the worker retried the claim and never
    learnt of the first trial): its start stands for the beat. Optuna's own RDB check
    would leave it RUNNING for ever, holding a budget slot."""
    config = load_config(_config(tmp_path))
    if storage == "journal":
        url = journal_url(tmp_path)
    else:
        postgres: Server | External = request.getfixturevalue("postgres")
        url = postgres.new_database()
    study = open_study(config, url)
    trial = claim_trial(study, 4, url)
    assert isinstance(trial, optuna.Trial)
    with budget_lock(url, study.study_name):
        assert fail_stale_trials(study) == []
    assert 0 <= silent_trials(study)[trial.number] < GRACE_S
    time.sleep(GRACE_S + 0.5)
    with budget_lock(url, study.study_name):
        assert fail_stale_trials(study) == [trial.number]
    trials = study.get_trials()
    assert trials[trial.number].user_attrs["fail_reason"] == "stale"
    assert [t.state for t in trials[trial.number + 1 :]] == [TrialState.WAITING]  # its retry


@pytest.mark.parametrize("storage", ["journal", "postgresql"])
def test_status_tells_a_stale_trial_from_a_running_one(
    storage: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    config = load_config(_config(tmp_path))
    if storage == "journal":
        url = journal_url(tmp_path)
    else:
        postgres: Server | External = request.getfixturevalue("postgres")
        url = postgres.new_database()
    study = open_study(config, url)
    stale, live = study.ask(), study.ask()
    with Heartbeat(study, stale):  # beats, then stops as a killed worker's would
        pass
    with Heartbeat(study, live):
        time.sleep(GRACE_S + 1.5)
        silent = silent_trials(study)
        text = status_report(study, config)
    assert silent[stale.number] > GRACE_S >= silent[live.number]
    line = next(line for line in text.splitlines() if line.startswith("trials"))
    assert f"RUNNING 2 (1 stale: trial {stale.number}, no heartbeat for " in line, text
    study.tell(live, [0.5, 1000.0])
    assert f"RUNNING 1 (1 stale: trial {stale.number}," in status_report(study, config)


def test_run_lines_say_why_a_trial_failed(tmp_path: Path) -> None:
    failed = optuna.trial.create_trial(
        state=TrialState.FAIL,
        user_attrs={
            "fail_reason": "invalid_network",
            "fail_message": "layer 3 (Conv):\n output would be 0x0 " + "x" * 500,
            "retry_of": 2,
        },
    )
    line = describe(failed, ("accuracy", "params"))
    assert "FAIL" in line and "invalid_network: layer 3 (Conv): output would be 0x0" in line
    assert "\n" not in line and len(line) < 220 and line.endswith("(retry of trial 2)")

    log = tmp_path / "worker-1.log"
    log.write_text("".join(f"line {i}\n" for i in range(20)) + "epoch 3\repoch 4\n")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    report = lost_worker(1, proc, log)
    head, *tail = report.splitlines()
    assert head.startswith(f"worker 1 (pid {proc.pid}) lost: killed by SIGKILL")
    assert str(log) in head and [t.strip() for t in tail] == [
        "line 16",
        "line 17",
        "line 18",
        "line 19",
        "epoch 4",
    ]


def test_run_survives_a_sigkilled_worker_with_the_exact_budget(tmp_path: Path) -> None:
    """The issue's acceptance: SIGKILL one of `run`'s two workers mid-trial; `run` reports
    it at once and still ends with the budget met and the outputs written. Every trial
    waits at a gate until the kill has been reported: no poll races a trial."""
    config_path = _config(tmp_path, BEATING)
    out, gate = tmp_path / "out", Gate(tmp_path / "gate")
    cmd = gate.command("run", "--config", str(config_path), "--workers", "2", "--out", str(out))
    stdout_path, stderr_path = tmp_path / "run.out", tmp_path / "run.err"
    with stdout_path.open("wb") as out_file, stderr_path.open("wb") as err_file:
        run = subprocess.Popen(
            cmd, cwd=ROOT, stdout=out_file, stderr=err_file,
            env={**os.environ, **gate.env(), "PYTHONUNBUFFERED": "1"},  # lines as written
        )  # fmt: skip
    try:
        pid = gate.wait_index(1, watch=[run])  # worker 1 is mid-trial, waiting at the gate
        study = open_study(load_config(config_path), journal_url(out))
        running = study.get_trials(states=(TrialState.RUNNING,))
        (killed,) = [
            t.number for t in running if t.user_attrs.get("worker", "").endswith(f":{pid}")
        ]
        os.kill(pid, signal.SIGKILL)
        lost = f"worker 1 (pid {pid}) lost: killed by SIGKILL"
        # reported at once: while the other worker is still held mid-trial by the gate
        reported = lambda: lost in stdout_path.read_text() or None  # noqa: E731
        gate.wait("run reports the lost worker", reported, watch=[run])
        gate.open()
        run.wait(timeout=300)
    finally:
        gate.open()  # nothing left waiting for ever, whatever failed
        if run.poll() is None:
            run.kill()
            run.wait()
    stdout, stderr = stdout_path.read_text(), stderr_path.read_text()
    assert run.returncode == 1, stdout + stderr  # a lost worker is a failure of `run`...
    trials = study.get_trials()
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 4 and TrialState.RUNNING not in states
    assert trials[killed].state == TrialState.FAIL
    assert trials[killed].user_attrs["fail_reason"] == "stale"
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == killed)
    assert retry.state == TrialState.COMPLETE
    assert retry.params == trials[killed].params  # the same candidate, drawn in full
    # ...but the outputs are written all the same
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["COMPLETE"] == 4
    assert (out / "pareto.json").exists() and (out / "pareto.png").exists()
    assert stdout.count(lost) == 1, stdout
    assert stdout.index(lost) < stdout.index(f"(retry of trial {killed})"), stdout
    assert f"trial {killed:>4}  FAIL      stale: no heartbeat" in stdout, stdout
