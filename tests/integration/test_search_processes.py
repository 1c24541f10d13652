"""job/search/worker.py, job/run/local.py and the search verbs: real searches, worker
processes, PostgreSQL (the in-process cases: tests/unit/test_search.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from prometheus_client.parser import text_string_to_metric_families

from job.config import load_config
from job.ml.data import load_data
from job.ml.train import train
from job.search.budget import trained_epochs
from job.search.worker import (
    Worker,
    claim_trial,
    count_states,
    open_study,
)
from job.storage import Heartbeat, budget_lock
from tests.gate import Gate
from tests.support.configs import TINY
from tests.support.proc import ROOT, free_port, journal_url, run_job


def _in_a_thread(call: Callable[[], object], timeout_s: float = 20.0) -> object:
    """`call()`'s answer from another thread, or a failure if it blocks past the timeout."""
    answer: list[object] = []
    thread = threading.Thread(target=lambda: answer.append(call()), daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert answer, f"blocked for over {timeout_s:g} s"
    return answer[0]


@pytest.mark.parametrize("storage", ["journal", "postgresql"])
def test_wait_and_done_need_no_lock_a_stale_trial_is_claimed_under_it(
    storage: str, tiny: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Idle workers poll: "wait" and "done" come from a count without the budget lock
    (here held by another worker throughout), so they never queue with the claims; a
    full study with a stale trial is not "wait": that claim takes the lock, fails the
    trial and takes its retry. The count is the database's (`count_states`)."""
    text = TINY.replace("seed: 0}", "seed: 0, heartbeat_interval_s: 1, grace_period_s: 3}")
    path = tmp_path / "beating.yaml"
    path.write_text(text)
    config = load_config(path)
    if storage == "journal":
        url = journal_url(tmp_path)
    else:
        url = request.getfixturevalue("postgres").new_database()
    study = open_study(config, url)
    first, second = claim_trial(study, 2, url), claim_trial(study, 2, url)
    assert isinstance(first, optuna.Trial) and isinstance(second, optuna.Trial)
    assert count_states(study) == Counter(t.state for t in study.get_trials())
    assert count_states(study)[TrialState.RUNNING] == 2
    held, release = threading.Event(), threading.Event()

    def another_worker_claiming() -> None:
        with budget_lock(url, study.study_name):
            held.set()
            release.wait(60)

    holder = threading.Thread(target=another_worker_claiming, daemon=True)
    holder.start()
    assert held.wait(20)
    try:
        # both beat (however long this machine took since they were claimed): none is stale
        with Heartbeat(study, first), Heartbeat(study, second):
            assert _in_a_thread(lambda: claim_trial(study, 2, url)) == "wait"
            study.tell(first, [0.5, 10.0])
        # `second` stopped beating: past the grace period it is stale, and the claim queues
        time.sleep(3.5)
        claim = threading.Thread(target=lambda: claimed.append(claim_trial(study, 2, url)))
        claimed: list[object] = []
        claim.start()
        claim.join(1.0)
        assert claim.is_alive() and not claimed  # waits for the lock: it has work to do
    finally:
        release.set()
    claim.join(20)
    retry = claimed[0]
    assert isinstance(retry, optuna.Trial)
    assert study.get_trials()[retry.number].system_attrs["failed_trial"] == second.number
    assert study.get_trials()[second.number].user_attrs["fail_reason"] == "stale"
    study.tell(retry, [0.6, 20.0])
    with budget_lock(url, study.study_name):  # held again: "done" needs no lock either
        assert _in_a_thread(lambda: claim_trial(study, 2, url), timeout_s=20) == "done"


def test_a_nan_trial_fails_with_its_reason_and_the_worker_goes_on(
    tiny: Path, tmp_path: Path
) -> None:
    config = load_config(tiny)
    data = load_data(config.data)
    calls = []

    def first_one_diverges(spec, policy, recipe, data, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:  # a real divergence through the real training loop
            recipe = recipe.model_copy(update={"lr": 1e30, "momentum": 0.0})
        return train(spec, policy, recipe, data, **kwargs)

    lines: list[str] = []
    worker = Worker(config, journal_url(tmp_path), train_fn=first_one_diverges, log=lines.append)
    assert worker.run(data) == 5
    trials = worker.study.get_trials()
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 4
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["fail_reason"] == "nan_loss"
    assert "nan" in failed[0].user_attrs["fail_message"]
    done = next(t for t in trials if t.state == TrialState.COMPLETE)
    for key in (
        "model_yaml",
        "augment",
        "recipe",
        "params",
        "macs",
        "data_fingerprint",
        "code_version",
        "seconds",
        "train_images_per_s",
        "device",
        "worker",
    ):
        assert key in done.user_attrs, key
    assert done.user_attrs["data_fingerprint"] == data.fingerprint
    assert any("FAIL nan_loss" in line for line in lines)


def test_run_two_workers_exact_budget_then_collect(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_job("run", "--config", str(tiny), "--workers", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    study = open_study(load_config(tiny), journal_url(out))
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.COMPLETE) == 4 and TrialState.RUNNING not in states
    workers = {t.user_attrs["worker"] for t in study.get_trials()}
    assert len(workers) == 2  # both processes took trials
    front = json.loads((out / "pareto.json").read_text())
    assert front and all("model_yaml" in entry for entry in front)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["COMPLETE"] == 4 and summary["front_size"] == len(front)
    assert (out / "pareto.png").stat().st_size > 1000
    assert "COMPLETE" in proc.stdout and (out / "worker-0.log").exists()

    status = run_job("status", "--config", str(tiny), "--out", str(out))
    assert status.returncode == 0, status.stderr
    assert "COMPLETE" in status.stdout and "4" in status.stdout


def test_one_worker_with_a_seed_makes_the_same_study_twice(tiny: Path, tmp_path: Path) -> None:
    """`run --workers 1` twice from nothing, TPE seeded: the same parameters, objective
    values and learning curves, trial by trial (N > 1 workers interleave their claims
    differently each run: docs/ARCHITECTURE.md, "Reproducing a study")."""
    tiny.write_text(
        TINY.replace("sampler: random", "sampler: tpe").replace("budget: 4", "budget: 5")
    )
    studies = []
    for out in (tmp_path / "a", tmp_path / "b"):
        proc = run_job("run", "--config", str(tiny), "--workers", "1", "--out", str(out))
        assert proc.returncode == 0, proc.stderr + proc.stdout
        trials = open_study(load_config(tiny), journal_url(out)).get_trials()
        studies.append([(t.params, t.values, t.intermediate_values) for t in trials])
    assert len(studies[0]) == 5 and studies[0] == studies[1]


def test_run_fresh_deletes_the_old_studys_outputs_and_nothing_else(
    tiny: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    old = {"selected/gone/card.json", "verified/x.pt", "artifacts/abc", "checkpoints/t.pt"}
    for name in [*old, "notes.txt"]:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("from the old study")
    proc = run_job("run", "--config", str(tiny), "--workers", "1", "--out", str(out), "--fresh")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert not any((out / name).exists() for name in old)
    assert (out / "notes.txt").read_text() == "from the old study"  # not ours: kept


def test_worker_metrics_endpoint_matches_the_study(tiny: Path, tmp_path: Path) -> None:
    config_path = tmp_path / "lingering.yaml"
    config_path.write_text(TINY.replace("seed: 0}", "seed: 0, metrics_linger_s: 60}"))
    port = free_port()
    out = tmp_path / "out"
    worker = subprocess.Popen(
        [sys.executable, "-m", "job", "search", "--config", str(config_path), "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "SMS_METRICS_PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert worker.stdout is not None
        for line in worker.stdout:  # wait until the worker has spent the budget
            if "done:" in line:
                break
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert all(name.startswith("sms_") for name in families)
    counted = {
        s.labels["state"]: s.value
        for s in families["sms_trials"].samples
        if s.name == "sms_trials_total"
    }
    study = open_study(load_config(config_path), journal_url(out))
    assert (
        counted["COMPLETE"] == sum(t.state == TrialState.COMPLETE for t in study.get_trials()) == 4
    )
    assert "postgresql" not in text and "password" not in text


def test_sigterm_checkpoints_hands_back_and_the_retry_resumes(tmp_path: Path) -> None:
    """SIGTERM mid-trial (the trial waits at a gate after its first epoch until then: no
    sleep guesses how far it got): checkpoint, hand back, exit 143; the next worker
    resumes the trial from its checkpoint and records it once."""
    config_path = tmp_path / "long.yaml"
    config_path.write_text(
        TINY.replace("budget: 4", "budget: 2").replace("epochs: 1,", "epochs: 3,")
    )
    out, gate = tmp_path / "out", Gate(tmp_path / "gate", after_epoch=1)
    args = ["search", "--config", str(config_path), "--out", str(out)]
    env = {**os.environ, "SMS_TORCH_THREADS": "1"}
    first = subprocess.Popen(gate.command(*args), cwd=ROOT, env=env | gate.env())
    try:
        gate.wait_blocked([first])  # an epoch in, the gate shut: it cannot finish the trial
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 143  # stopped early, not finished
    finally:
        gate.open()
        if first.poll() is None:
            first.kill()
    study = open_study(load_config(config_path), journal_url(out))
    preempted = study.get_trials()[0]
    assert preempted.state == TrialState.FAIL
    assert preempted.user_attrs["fail_reason"] == "preempted"
    epoch = preempted.user_attrs["checkpoint_epoch"]
    assert epoch == 2  # stopped at the first step after epoch 1
    assert [t.state for t in study.get_trials()].count(TrialState.WAITING) == 1

    second = run_job(*args, env={"SMS_TORCH_THREADS": "1"})  # the product itself, ungated
    assert second.returncode == 0, second.stdout + second.stderr
    trials = study.get_trials()
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 2  # recorded once
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == preempted.number)
    assert retry.state == TrialState.COMPLETE and retry.params == preempted.params
    assert retry.user_attrs["resumed_epoch"] == epoch >= 1  # resumed, not restarted
    # The learning curve: the preempted trial's epoch, then the retry's whole curve, which
    # starts with that same point (from the checkpoint) and has each epoch once.
    assert list(preempted.intermediate_values) == [1]
    assert list(retry.intermediate_values) == [1, 2, 3]
    assert retry.intermediate_values[1] == preempted.intermediate_values[1]
    # the training loss per epoch too, the retry's from epoch 1; the epoch budget counts
    # the resumed epoch once (job.search.budget)
    assert len(preempted.user_attrs["train_loss"]) == 1
    assert len(retry.user_attrs["train_loss"]) == 3
    assert retry.user_attrs["train_loss"][0] == preempted.user_attrs["train_loss"][0]
    assert trained_epochs(preempted) + trained_epochs(retry) == 3
    assert not list((out / "checkpoints").glob("*.pt"))  # cleaned up after the result
