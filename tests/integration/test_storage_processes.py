"""job/storage/ against live servers and live processes: a wrong password or database, an
empty database, `--fresh` against another process holding the study. The table of bad
storage inputs is in tests/unit/test_bad_inputs.py, the in-process cases in
tests/unit/test_storage.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from job.cli.main import main
from job.search.worker import JOURNAL
from job.storage import (
    StudyInUseError,
    fresh_study,
    hold_study,
    study_exists,
)
from job.testing.pgserver import PASSWORD, External, Server
from tests.support.configs import TINY
from tests.support.proc import ROOT


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _holder(journal: Path) -> subprocess.Popen[str]:
    """Another live process holding the journal study, as a `run` or a worker does."""
    code = (
        "import sys, time\nfrom job.storage import hold_study\n"
        f"hold_study({JOURNAL + str(journal)!r})\nprint('held', flush=True)\ntime.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_wrong_password_or_database_exits_2_at_once(
    postgres: Server | External,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Not an outage: no wait (SMS_DB_WAIT_S is long here), one line naming the URL."""
    url = postgres.new_database()
    config = tmp_path / "c.yaml"
    config.write_text(TINY)
    monkeypatch.chdir(tmp_path)
    wrong = _with_password(url, "not-the-password")
    unknown = url.rsplit("/", 1)[0] + "/no_such_database"
    # A wait of 600 s that is not waited: the check below could not pass after one
    for wait in ("600", "0"):  # the start-up wait's check, and opening the storage's
        monkeypatch.setenv("SMS_DB_WAIT_S", wait)
        for bad, says in ((wrong, "password authentication failed"), (unknown, "does not exist")):
            start = time.monotonic()
            code = main(["status", "--config", str(config), "--storage", bad])
            line = _one_line(capsys)
            assert code == 2 and time.monotonic() - start < 120, line
            assert line.startswith("error: storage postgresql+psycopg2://sms:***@"), line
            assert says in line, line
            assert "not-the-password" not in line and PASSWORD not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_status_on_an_empty_database_creates_nothing(
    postgres: Server | External, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = postgres.new_database()  # no Optuna schema
    config = tmp_path / "c.yaml"
    config.write_text(TINY)
    assert main(["status", "--config", str(config), "--storage", url]) == 2
    line = _one_line(capsys)
    assert "study 'tiny' not found in postgresql+psycopg2://sms:***@" in line
    import psycopg2  # type: ignore[import-untyped]  # no stubs installed

    parts = urlsplit(url)
    conn = psycopg2.connect(
        host=parts.hostname, port=parts.port, user=parts.username,
        password=parts.password, dbname=parts.path.lstrip("/"),
    )  # fmt: skip
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            assert cur.fetchone() == (0,)  # no schema made by a status
    finally:
        conn.close()
    assert not study_exists(url, "tiny")


def test_fresh_refuses_while_another_process_holds_the_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    journal = out / "study.journal"
    journal.write_text("")  # the study (its content does not matter here)
    config = tmp_path / "c.yaml"
    config.write_text(TINY)
    monkeypatch.chdir(tmp_path)
    holder = _holder(journal)
    try:
        code = main(["run", "--config", str(config), "--out", str(out), "--fresh"])
        line = _one_line(capsys)
        assert code == 2, line
        assert f"--fresh: the study journal {journal} is in use by pid {holder.pid}" in line
        assert journal.exists()  # nothing deleted
    finally:
        holder.kill()
        holder.wait()
    fresh_study(JOURNAL + str(journal))  # its holder gone: deleted
    assert not journal.exists()


def test_fresh_deletes_a_free_study_and_then_holds_it(tmp_path: Path) -> None:
    journal = tmp_path / "study.journal"
    url = JOURNAL + str(journal)
    for suffix in ("", ".lock", ".budget-lock"):
        Path(str(journal) + suffix).write_text("x")
    (tmp_path / "study.journal.beats").mkdir()
    (tmp_path / "study.journal.beats" / "3").write_text("")
    hold_study(url)  # this process's own hold does not stop its own --fresh
    fresh_study(url)
    left = sorted(p.name for p in tmp_path.rglob("*"))
    assert left == ["study.journal.beats", "study.journal.run-lock"]
    # now held by this process: another one's --fresh refuses, naming this pid
    code = f"from job.storage import fresh_study\nfresh_study({url!r})\n"
    other = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert other.returncode != 0
    assert f"StudyInUseError: --fresh: the study journal {journal} is in use by pid " in (
        other.stderr
    )
    assert str(os.getpid()) in other.stderr.splitlines()[-1]
    with pytest.raises(StudyInUseError):  # nor is this process's hold lost by a refusal
        _fresh_in_child_holding(url)


def _fresh_in_child_holding(url: str) -> None:
    """fresh_study from here while a child holds the study."""
    journal = Path(url[len(JOURNAL) :])
    holder = _holder(journal)
    try:
        fresh_study(url)
    finally:
        holder.kill()
        holder.wait()
