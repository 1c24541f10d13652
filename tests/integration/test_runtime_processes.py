"""job/settings.py as the roles meet it: the example password refused by `python -m job`,
and the start-up wait against a real PostgreSQL (the parsing itself:
tests/unit/test_runtime.py)."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pytest

from job import settings, urls
from job.settings import EnvError, Settings
from job.storage import StorageDownError, StorageURLError, wait_for_database
from job.testing.pgserver import External, Server, free_port
from tests.support.proc import ODD_PASSWORD, POSTGRES, ROOT, run_job


def test_the_example_password_is_refused() -> None:
    example = (ROOT / "k8s" / "base" / "database.env.example").read_text()
    assert f"POSTGRES_PASSWORD={settings.EXAMPLE_PASSWORD}\n" in example
    with pytest.raises(EnvError, match=r"^POSTGRES_PASSWORD: still the example's value"):
        Settings({**POSTGRES, "POSTGRES_PASSWORD": settings.EXAMPLE_PASSWORD}).storage_url()
    # as a role meets it: exit 2, one line, before any connection is tried
    env = {**POSTGRES, "POSTGRES_PASSWORD": settings.EXAMPLE_PASSWORD, "OPTUNA_STORAGE": ""}
    proc = run_job("status", "--config", "configs/quickstart.yaml", env=env, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "POSTGRES_PASSWORD" in proc.stderr and "database.env" in proc.stderr


def test_database_wait(postgres: Server | External, capsys: pytest.CaptureFixture[str]) -> None:
    """A reachable server: no wait, no line; another storage or 0 s: no attempt at all;
    an unreachable one: one waiting line, then a redacted error past the deadline."""
    url = postgres.new_database()
    wait_for_database(url, 5)
    wait_for_database("journal:///nowhere/study.journal", 5)
    closed = settings.postgres_url("127.0.0.1", free_port(), "sms", ODD_PASSWORD, "sms")
    wait_for_database(closed, 0)
    assert capsys.readouterr().err == ""
    start = time.monotonic()
    with pytest.raises(StorageDownError) as info:
        wait_for_database(closed, 1.5, poll_s=0.2)
    assert 1.5 <= time.monotonic() - start < 120  # waited its 1.5 s, then gave up
    message, err = str(info.value), capsys.readouterr().err
    assert err == f"waiting for database {urls.redact(closed)}\n"
    assert message.startswith(f"database {urls.redact(closed)} not reachable after 1.5 s: ")
    assert "127.0.0.1" in message and "\n" not in message
    assert ODD_PASSWORD not in message + err and (urlsplit(closed).password or "") not in message
    with pytest.raises(StorageURLError):
        wait_for_database("postgresql://u:p@[::1", 5)
