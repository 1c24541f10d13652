"""The search on a real PostgreSQL server: many workers at once, exact budget, no secrets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from job.config import load_config, parse_config
from job.search.worker import open_study
from job.testing.pgserver import PASSWORD, External, Server
from tests.gate import Gate
from tests.support.configs import TINY
from tests.support.proc import ROOT
from tests.support.scenarios import four_workers_one_killed_one_preempted_exact_budget


def _config(tmp_path: Path, budget: int) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.replace("budget: 4", f"budget: {budget}"))
    return path


def test_six_workers_at_once_on_an_empty_database(
    postgres: Server | External, tmp_path: Path
) -> None:
    url = postgres.new_database()  # no Optuna schema yet: all six race to create it
    config_path = _config(tmp_path, budget=6)
    env = {**os.environ, "OPTUNA_STORAGE": url, "SMS_TORCH_THREADS": "1"}
    cmd = [sys.executable, "-m", "job", "search", "--config", str(config_path)]
    workers = [
        subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**env, "SMS_WORKER_INDEX": str(i)},
        )
        for i in range(6)
    ]
    try:
        outputs = [w.communicate(timeout=300)[0] for w in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output
        assert PASSWORD not in output
    study = open_study(parse_config({"study": {"name": "tiny"}}), url)
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.COMPLETE) == 6  # exactly the budget, no overshoot
    assert TrialState.RUNNING not in states


def test_run_and_status_on_postgres(postgres: Server | External, tmp_path: Path) -> None:
    url = postgres.new_database()
    config_path = _config(tmp_path, budget=3)
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "job", "run", "--config", str(config_path), "--workers", "2",
         "--storage", url, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr + run.stdout
    assert "3 COMPLETE" in run.stdout and PASSWORD not in run.stdout + run.stderr
    status = subprocess.run(
        [sys.executable, "-m", "job", "status", "--config", str(config_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "OPTUNA_STORAGE": url},
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert "3/3 COMPLETE" in status.stdout
    assert ":***@" in status.stdout and PASSWORD not in status.stdout
    for log in out.glob("worker-*.log"):
        assert PASSWORD not in log.read_text()


def test_a_killed_worker_s_trial_is_retried_and_the_budget_stays_exact(
    postgres: Server | External, tmp_path: Path
) -> None:
    """SIGKILL a worker mid-trial (its trial waits at a gate, RUNNING and beating, until
    the kill: no poll races a fast trial): the trial goes stale, is failed and retried
    with the same candidate by the live worker; exactly the budget COMPLETE."""
    url = postgres.new_database()
    path = tmp_path / "beating.yaml"
    path.write_text(
        TINY.replace("seed: 0}", "seed: 0, heartbeat_interval_s: 1, grace_period_s: 3}")
    )
    gate = Gate(tmp_path / "gate")
    env = {**os.environ, "OPTUNA_STORAGE": url, "SMS_TORCH_THREADS": "1", **gate.env()}
    cmd = gate.command("search", "--config", str(path))
    workers = [
        subprocess.Popen(cmd, cwd=ROOT, env={**env, "SMS_WORKER_INDEX": str(i)}) for i in range(2)
    ]
    victim = workers[0]
    try:
        gate.wait_blocked([victim], watch=workers)  # mid-trial: params drawn, beating
        study = open_study(load_config(path), url)
        running = study.get_trials(states=(TrialState.RUNNING,))
        mine = f":{victim.pid}"
        (killed,) = [t.number for t in running if t.user_attrs.get("worker", "").endswith(mine)]
        victim.send_signal(signal.SIGKILL)  # no chance to clean up
        assert victim.wait(timeout=60) == -signal.SIGKILL
        gate.open()
        assert workers[1].wait(timeout=600) == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    trials = study.get_trials()
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 4 and TrialState.RUNNING not in states
    assert trials[killed].state == TrialState.FAIL  # went stale, failed by heartbeat
    assert trials[killed].user_attrs["fail_reason"] == "stale"
    retries = [t for t in trials if t.user_attrs.get("retry_of") == killed]
    # the same candidate: killed at the gate, it had drawn every param before training
    assert retries and retries[0].params == trials[killed].params


def _wait_for_complete(study: optuna.Study, n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(study.get_trials(states=(TrialState.COMPLETE,))) >= n:
            return
        time.sleep(0.3)
    raise AssertionError(f"fewer than {n} COMPLETE trials after {timeout}s")


def test_workers_ride_out_a_database_restart(postgres: Server | External, tmp_path: Path) -> None:
    """The database stops while both workers are mid-trial (each waits at a gate,
    RUNNING and beating) and stays down until each has had a storage call fail: their
    writes are retried through the outage, and after the restart the budget is met."""
    if not isinstance(postgres, Server):
        pytest.skip("restarts only the suite's own throwaway server")
    url = postgres.new_database()
    path = tmp_path / "restart.yaml"
    text = TINY.replace("budget: 4", "budget: 6")
    # A claim cut off by the restart may leave a trial no worker knows of: it goes stale
    # after the grace period (longer than the outage, so no beating trial does) and retries.
    beats = "seed: 0, heartbeat_interval_s: 1, grace_period_s: 12}"
    path.write_text(text.replace("seed: 0}", beats))
    gate = Gate(tmp_path / "gate")
    env = {**os.environ, "OPTUNA_STORAGE": url, "SMS_TORCH_THREADS": "1", **gate.env()}
    cmd = gate.command("search", "--config", str(path))
    pipe, merged = subprocess.PIPE, subprocess.STDOUT
    workers = [
        subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**env, "SMS_WORKER_INDEX": str(i)},
            stdout=pipe,
            stderr=merged,
            text=True,
        )
        for i in range(2)
    ]
    try:
        gate.wait_blocked(workers)
        for marker in gate.folder.glob("outage-*"):
            marker.unlink()  # only a call that fails from now on counts
        postgres.stop("fast")  # every connection drops mid-search
        try:
            gate.open()  # each trial trains on, then writes its result: into the outage
            pids = {w.pid for w in workers}
            gate.wait(
                "every worker's storage call failed in the outage",
                lambda: True if pids <= set(gate.markers("outage")) else None,
                watch=workers,
            )
        finally:
            postgres.start()
        outputs = [w.communicate(timeout=300)[0] for w in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output
        assert PASSWORD not in output
    study = open_study(load_config(path), url)
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.COMPLETE) == 6 and TrialState.RUNNING not in states


def test_a_long_outage_exits_1_naming_no_password(
    postgres: Server | External, tmp_path: Path
) -> None:
    if not isinstance(postgres, Server):
        pytest.skip("stops only the suite's own throwaway server")
    url = postgres.new_database()
    path = tmp_path / "outage.yaml"
    text = TINY.replace("budget: 4", "budget: 500")
    path.write_text(text.replace("seed: 0}", "seed: 0, db_outage_deadline_s: 3}"))
    worker = subprocess.Popen(
        [sys.executable, "-m", "job", "search", "--config", str(path)],
        cwd=ROOT,
        env={**os.environ, "OPTUNA_STORAGE": url, "SMS_TORCH_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for_complete(open_study(load_config(path), url), 1)
        postgres.stop("fast")
        output = worker.communicate(timeout=120)[0]
    finally:
        if worker.poll() is None:
            worker.kill()
        postgres.start()
    assert worker.returncode == 1, output
    last = output.strip().splitlines()[-1]
    assert (
        last.startswith("error: storage postgresql+psycopg2://sms:***@") and "unreachable" in last
    )
    assert PASSWORD not in output and "Traceback" not in output


def test_four_workers_one_killed_one_preempted_exact_budget(
    postgres: Server | External, tmp_path: Path
) -> None:
    """The issue's acceptance run (tests/support/scenarios.py): an empty database, 4
    workers, SIGKILL one and SIGTERM another mid-trial; exactly the budget COMPLETE."""
    four_workers_one_killed_one_preempted_exact_budget(postgres, tmp_path)


def _children(pid: int) -> dict[int, str]:
    """The live child processes of `pid` and their command lines, from /proc (Linux)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)"
            if int(fields[1]) == pid:  # ppid
                cmdline = (stat.parent / "cmdline").read_bytes()
                found[int(stat.parent.name)] = cmdline.replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return found


def test_run_hands_the_storage_url_to_workers_outside_argv(
    postgres: Server | External, tmp_path: Path
) -> None:
    """`run --storage URL-with-password`: no worker's command line (what `ps` shows every
    user) holds the password; the URL reaches the workers through their environment."""
    url = postgres.new_database()
    config_path = _config(tmp_path, budget=50)  # long enough to look at its workers
    run = subprocess.Popen(
        [sys.executable, "-m", "job", "run", "--config", str(config_path), "--workers", "2",
         "--storage", url, "--out", str(tmp_path / "out")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    seen: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        while len(seen) < 2 and time.monotonic() < deadline and run.poll() is None:
            seen |= {pid: cmd for pid, cmd in _children(run.pid).items() if " search " in cmd}
            time.sleep(0.1)
    finally:
        run.send_signal(signal.SIGINT)  # Ctrl-C: the workers stop, run exits
        output = run.communicate(timeout=120)[0]
    assert len(seen) == 2, output
    for cmdline in seen.values():
        assert PASSWORD not in cmdline and "postgresql" not in cmdline, cmdline
        assert "--storage" not in cmdline, cmdline
    assert PASSWORD not in output
