"""job/logs.py in real processes: a process's output is only JSON lines, and a worker and
the collector on PostgreSQL log JSON without the password (the in-process cases:
tests/unit/test_logs.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.logs import PASSWORD, records
from tests.support.proc import ROOT

pytestmark = pytest.mark.usefixtures("fresh_logs")

SCRIPT = """
import sys, threading, warnings
import optuna  # its logging handler holds the stderr of import time, as in job.cli.main
from job import logs
logs.setup("search")
print("trial 1")
print("error: x", file=sys.stderr)
optuna.logging.get_logger("optuna").warning("from optuna")
warnings.warn("careful")
thread = threading.Thread(target=print, args=("from a thread",))
thread.start()
thread.join()
sys.stdout.write("no newline at exit")
raise RuntimeError("boom")
"""


def test_a_process_writes_only_json_lines() -> None:
    env = {**os.environ, "SMS_LOG_FORMAT": "json", "POSTGRES_PASSWORD": PASSWORD}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1  # the uncaught exception: its traceback is records too
    out, err = records(done.stdout), records(done.stderr)
    assert {r["role"] for r in out + err} == {"search"}
    assert [r["message"] for r in out] == ["trial 1", "from a thread", "no newline at exit"]
    levels = {r["message"]: r["level"] for r in err}
    assert levels["error: x"] == "error"
    assert [level for m, level in levels.items() if m.endswith("] from optuna")] == ["warning"]
    assert any(m.endswith("UserWarning: careful") for m in levels)
    assert "RuntimeError: boom" in levels and "Traceback (most recent call last):" in levels


def test_a_worker_and_the_collector_log_json_on_postgresql_without_the_password(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Real roles as the manifests run them: POSTGRES_* in the environment, json logs."""
    from job.testing.pgserver import External, Server
    from tests.support.configs import TINY
    from tests.support.proc import database_env

    postgres: Server | External = request.getfixturevalue("postgres")
    secret = database_env(postgres.new_database())
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("budget: 4", "budget: 2"))
    env = {k: v for k, v in os.environ.items() if k != "OPTUNA_STORAGE"}
    env |= secret | {"SMS_LOG_FORMAT": "json", "SMS_TORCH_THREADS": "1", "PYTHONPATH": str(ROOT)}
    said = {}
    for verb in ("search", "collect"):
        done = subprocess.run(
            [sys.executable, "-m", "job", verb, "--config", str(config), "--out", str(tmp_path)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        for stream in (done.stdout, done.stderr):
            assert secret["POSTGRES_PASSWORD"] not in stream
        said[verb] = records(done.stdout) + records(done.stderr)  # every line one record
        assert {r["role"] for r in said[verb]} == {verb}
    trials = [r for r in said["search"] if r["event"] == "trial_finished"]
    assert sorted(r["trial"] for r in trials) == [0, 1]
    assert all(r["study"] == "tiny" and r["fields"]["state"] == "COMPLETE" for r in trials)
    assert {"worker_started", "worker_finished"} <= {r["event"] for r in said["search"]}
    collected = [r for r in said["collect"] if r["event"] == "collected"]
    assert len(collected) == 1 and collected[0]["study"] == "tiny"
