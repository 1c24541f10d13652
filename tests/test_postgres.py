"""The search on a real PostgreSQL server: many workers at once, exact budget, no secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from job.config import parse_config
from job.search import open_study
from tests.postgres import PASSWORD, External, Server
from tests.test_search import ROOT, TINY

pytestmark = pytest.mark.slow


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
    outputs = [w.communicate(timeout=600)[0] for w in workers]
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
