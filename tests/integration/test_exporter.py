"""job.serve.exporter and the pushes of job.serve.metrics against real servers: a database
outage reads as `sms_storage_up 0`; the exporter verb; the final values pushed to a real
Pushgateway, a rerun replacing its group (the in-process series:
tests/unit/test_exporter.py)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from job.config import load_config, parse_config
from job.search.worker import JOURNAL, open_study
from job.serve.exporter import StudyCollector
from job.serve.metrics import push_final
from job.testing.pgserver import External, Server, free_port
from job.testing.prom import check_metrics, get
from job.testing.prom import pushgateway as start_pushgateway
from tests.support.configs import TINY
from tests.support.metrics import one, picks_registry, samples
from tests.support.proc import ROOT
from tests.support.studies import finished_trial


def test_an_unreachable_database_is_up_0_said_once_then_recovers(
    postgres: Server | External,
) -> None:
    url = postgres.new_database()
    config = parse_config({"study": {"name": "exp", "budget": 3}})
    open_study(config, url)
    port = free_port()  # nothing listens there: a database that is down
    down = url.replace(f":{url.split('@')[1].split('/')[0].split(':')[-1]}/", f":{port}/")
    said: list[str] = []
    collector = StudyCollector(config, down, min_interval_s=0.0, warn=said.append)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    for _ in range(2):
        text = generate_latest(registry).decode()
        assert one(text, "sms_storage_up", study="exp") == 0
        assert not samples(text, "sms_study_trials")  # unknown, not zero
    assert len(said) == 1 and said[0].startswith("warning: storage postgresql")
    password = url.split("://")[1].split("@")[0].split(":")[1]
    assert password not in said[0] and "***" in said[0]
    collector.url, collector._storage = url, None  # the database is back
    text = generate_latest(registry).decode()
    assert one(text, "sms_storage_up", study="exp") == 1
    assert one(text, "sms_study_trials", state="COMPLETE") == 0


# --- the verb ---------------------------------------------------------------------------


def test_the_exporter_verb_serves_until_sigterm(tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    study = open_study(load_config(path), JOURNAL + str(tmp_path / "study.journal"))
    study.add_trial(finished_trial(0.5, 10.0, datetime.now(), 1))
    port = free_port()
    argv = [sys.executable, "-m", "job", "exporter", "--config", str(path), "--out", str(tmp_path)]
    proc = subprocess.Popen(
        [*argv, "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline, text = time.monotonic() + 60, ""
        while not text and time.monotonic() < deadline:
            try:
                text = get(f"http://127.0.0.1:{port}/metrics")
            except OSError:
                time.sleep(0.3)
        assert one(text, "sms_study_trials", study="tiny", state="COMPLETE") == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    assert f"study exporter on http://127.0.0.1:{port}/metrics" in output


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--port", "70000"], "--port"),
        (["--storage", "mysql://x"], "storage"),
        (["--out", "/nonexistent/folder"], "/nonexistent/folder"),
    ],
)
def test_the_exporter_verb_refuses_bad_input_in_one_line(
    tmp_path: Path, extra: list[str], said: str
) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    done = subprocess.run(
        [sys.executable, "-m", "job", "exporter", "--config", str(path), *extra],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "OPTUNA_STORAGE"}
        | {"PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0], done.stderr
    assert "Traceback" not in done.stderr


# --- pushes -------------------------------------------------------------------------------


def test_a_rerun_replaces_its_group_on_a_real_pushgateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with start_pushgateway(tmp_path) as url:
        monkeypatch.setenv("SMS_PUSHGATEWAY", url)
        assert push_final(picks_registry(3), "collect", "exp")
        assert push_final(picks_registry(4), "collect", "exp")  # the rerun
        assert push_final(picks_registry(1), "worker", "exp", index="0")
        text = get(f"{url}/metrics")
    assert check_metrics(text) == ""  # the Pushgateway's endpoint is clean too
    picks = samples(text, "sms_collect_picks")
    assert sorted(picks.values()) == [1, 4]  # one series per group: replaced, not added
    groups = {dict(k)["role"]: dict(k) for k in picks}
    assert groups["collect"]["job"] == "small-model-search"
    assert groups["worker"]["index"] == "0"


def test_nan_survives_the_push_as_nan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with start_pushgateway(tmp_path) as url:
        monkeypatch.setenv("SMS_PUSHGATEWAY", url)
        assert push_final(picks_registry(math.nan), "collect", "exp")
        text = get(f"{url}/metrics")
    assert math.isnan(next(iter(samples(text, "sms_collect_picks").values())))
