"""Storage faults, for real: torn and damaged journals, a full disk, a foreign schema, a
database outage during `run`, two runs on one folder, SIGTERM to `run`.

No test here races a fast trial: a run is held where the test wants it by a lock the
test itself holds (the study's budget lock, which every claim takes), and each step
waits for a state (a line printed, a waiter on a lock), never for a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path

import pytest
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from job.cli.main import main
from job.config import load_config
from job.search.worker import open_study
from job.storage import JournalDamagedError, check_journal, hold_run_folder
from job.storage.locks import lock_key
from job.testing.pgserver import PASSWORD, External, Server
from tests.support.configs import TINY
from tests.support.proc import ROOT, journal_url, run_job

# A dead worker's RUNNING trial is retried after 5 s rather than the default minute.
QUICK_STALE = "heartbeat_interval_s: 1, grace_period_s: 5"


def _config(tmp_path: Path, budget: int, name: str = "tiny.yaml", study: str = "") -> Path:
    """TINY with its budget; `study`: more keys of its study section."""
    path = tmp_path / name
    text = TINY.replace("budget: 4", f"budget: {budget}")
    path.write_text(text.replace("seed: 0}", f"seed: 0, {study}}}") if study else text)
    return path


def _search(config: Path, out: Path) -> subprocess.CompletedProcess[str]:
    env = {"SMS_TORCH_THREADS": "1", "SMS_METRICS_PORT": "off"}
    return run_job("search", "--config", str(config), "--out", str(out), env=env, timeout=300)


NOTE = {"op_code": 2, "worker_id": "w-note", "study_id": 0, "user_attr": {"note": "x" * 300}}


def _tear(journal: Path) -> bytes:
    """Append one more record with Optuna's own writer, then cut it in the middle, as a
    write that the disk filled up under leaves it; returns the torn bytes."""
    JournalFileBackend(str(journal)).append_logs([NOTE])
    data = journal.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    cut = start + (len(data) - start) // 2
    os.truncate(journal, cut)
    return data[start:cut]


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_a_torn_journal_is_cut_off_before_the_next_write_and_never_built_upon(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    assert _search(_config(tmp_path, 2), out).returncode == 0
    journal = out / "study.journal"
    whole = journal.read_bytes()
    torn = _tear(journal)
    assert len(torn) > 100 and not torn.endswith(b"\n")

    # a reader reads every acknowledged record, and changes nothing (a write may be running)
    status = run_job("status", "--config", str(_config(tmp_path, 2)), "--out", str(out))
    assert status.returncode == 0 and "2/2 COMPLETE" in status.stdout, status.stderr
    assert journal.read_bytes() == whole + torn and not list(out.glob("*.torn-*"))

    # the next writer moves the torn bytes aside, says so in one line, then appends
    search = _search(_config(tmp_path, 3), out)
    assert search.returncode == 0, search.stdout + search.stderr
    said = [line for line in search.stderr.splitlines() if "torn" in line]
    assert len(said) == 1 and f"({len(torn)} bytes, never acknowledged)" in said[0], said
    (aside,) = out.glob("study.journal.torn-*")
    assert aside.read_bytes() == torn and aside.name in said[0]
    data = journal.read_bytes()
    assert data.startswith(whole) and torn not in data
    check_journal(journal)  # every line a whole record
    assert all(json.loads(line)["op_code"] >= 0 for line in data.splitlines())
    study = open_study(load_config(_config(tmp_path, 3)), journal_url(out), create=False)
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.COMPLETE) == 3 and "note" not in study.user_attrs


def _search_limited(config: Path, out: Path, limit: int) -> subprocess.CompletedProcess[str]:
    """`search` as `_search`, with every file it writes capped at `limit` bytes
    (RLIMIT_FSIZE): a write past it stops part-way and then fails with EFBIG, as on a
    disk that fills up (Python ignores SIGXFSZ)."""

    def capped() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    env = {**os.environ, "SMS_TORCH_THREADS": "1", "SMS_METRICS_PORT": "off"}
    argv = [sys.executable, "-m", "job", "search", "--config", str(config), "--out", str(out)]
    return subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, preexec_fn=capped
    )


def test_a_worker_whose_journal_fills_the_disk_stops_in_one_line_and_the_next_one_goes_on(
    tmp_path: Path,
) -> None:
    """The torn write made by the real writer: a worker's journal append stops part-way
    (the disk is full), the worker says so in one line naming the journal and exits 1;
    once there is room, the next worker cuts the torn record off and spends the budget."""
    out = tmp_path / "out"
    assert _search(_config(tmp_path, 2, study=QUICK_STALE), out).returncode == 0
    journal = out / "study.journal"
    config = _config(tmp_path, 6, study=QUICK_STALE)
    full = _search_limited(config, out, journal.stat().st_size + 3000)
    assert full.returncode == 1, full.stdout + full.stderr
    assert f"error: {journal}: File too large (EFBIG)" in _last_line(full), full.stderr
    assert "Traceback" not in full.stderr
    after = _search(config, out)  # retries the trial the full disk left RUNNING, once stale
    assert after.returncode == 0, after.stdout + after.stderr
    check_journal(journal)
    study = open_study(load_config(config), journal_url(out), create=False)
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.COMPLETE) == 6, states


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_a_journal_built_upon_a_torn_record_is_refused_until_repaired(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _search(_config(tmp_path, 2), out).returncode == 0
    journal = out / "study.journal"
    before = journal.read_bytes()
    torn = _tear(journal)
    # what Optuna's own append did next (the old bug): a record written onto the torn one,
    # then another after it; the joined line is now in the middle of the journal
    later = [{"op_code": 2, "worker_id": "w", "study_id": 0, "user_attr": {k: 1}} for k in "ab"]
    for record in later:
        JournalFileBackend(str(journal)).append_logs([record])
    damaged = journal.read_bytes()
    line = before.count(b"\n") + 1
    config = str(_config(tmp_path, 3))

    for verb in ("status", "search"):  # every verb: tests/unit/test_bad_inputs.py's rows
        proc = run_job(verb, "--config", config, "--out", str(out), timeout=300)
        assert proc.returncode == 2, (verb, proc.stdout, proc.stderr)
        said = _one_error_line(proc)
        assert f"{journal}: line {line} is not a journal record" in said, said
        assert f"python -m job repair-journal {journal}" in said, said
        assert journal.read_bytes() == damaged, f"{verb} changed the journal"

    repair = run_job("repair-journal", str(journal))
    assert repair.returncode == 0, repair.stderr
    (aside,) = out.glob("study.journal.damaged-*")
    assert f"moved 1 damaged line(s) ({line})" in repair.stdout and aside.name in repair.stdout
    joined = torn + json.dumps(later[0], separators=(",", ":")).encode() + b"\n"
    assert aside.read_bytes() == joined  # what was dropped is kept, byte for byte
    second = json.dumps(later[1], separators=(",", ":")).encode() + b"\n"
    assert journal.read_bytes() == before + second  # every intact record, in order
    again = run_job("repair-journal", str(journal))
    assert again.returncode == 0 and "nothing changed" in again.stdout

    assert _search(_config(tmp_path, 3), out).returncode == 0  # usable again
    study = open_study(load_config(config), journal_url(out), create=False)
    assert [t.state for t in study.get_trials()].count(TrialState.COMPLETE) == 3
    assert study.user_attrs.get("b") == 1 and "a" not in study.user_attrs


HOLD = """
import sys, time
from pathlib import Path
from job.storage import {what}
{what}({arg})
print("held", flush=True)
time.sleep(600)
"""


@contextmanager
def _holder(what: str, arg: str) -> Iterator[subprocess.Popen[str]]:
    """A process that holds a lock with the product's own function, until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD.format(what=what, arg=arg)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_repair_is_refused_while_a_process_works_on_the_study(tmp_path: Path) -> None:
    journal = tmp_path / "study.journal"
    journal.write_text(json.dumps(NOTE) + "\n")
    with _holder("hold_study", repr(journal_url(tmp_path))) as holder:
        proc = run_job("repair-journal", str(journal))
        assert proc.returncode == 2
        assert f"is in use by pid {holder.pid}; stop it first" in _one_error_line(proc)


def test_one_run_per_folder_and_a_killed_run_s_lock_blocks_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    with _holder("hold_run_folder", f"Path({str(folder)!r})") as first:
        with pytest.raises(Exception, match=f"another run \\(pid {first.pid}\\)"):
            hold_run_folder(folder)
        lock = folder / "run.lock"
        assert lock.read_text().split() == [str(first.pid)]
    # killed (SIGKILL: no clean-up ran): its file is still there, its lock is not
    assert lock.read_text().split() == [str(first.pid)]
    with _holder("hold_run_folder", f"Path({str(folder)!r})") as second:
        assert lock.read_text().split() == [str(second.pid)]


def test_run_and_search_refuse_a_nearly_full_disk_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import job.storage.journal

    config = _config(tmp_path, 2)
    monkeypatch.setattr(job.storage.journal, "MIN_FREE_BYTES", 1 << 62)  # more than any disk
    for verb in ("run", "search"):
        out = tmp_path / verb
        err = io.StringIO()
        with redirect_stderr(err):
            code = main([verb, "--config", str(config), "--out", str(out)])
        lines = err.getvalue().splitlines()
        assert code == 2 and len(lines) == 1, err.getvalue()
        assert " bytes free in " in lines[0] and "needed before a study writes there" in lines[0]
        assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


def test_a_foreign_studies_table_is_refused_and_left_alone(
    postgres: Server | External,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import psycopg2  # type: ignore[import-untyped]  # no stubs installed

    url = postgres.new_database()
    db = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE studies (id INTEGER, title TEXT)")
        conn.commit()
    plain = url.replace("postgresql+psycopg2", "postgresql")
    with contextlib.closing(psycopg2.connect(plain)) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE studies (id integer, title text)")
        conn.commit()
    config = str(_config(tmp_path, 2))
    sqlite_before = db.read_bytes()
    for storage in (f"sqlite:///{db}", url):
        monkeypatch.setenv("OPTUNA_STORAGE", storage)
        for verb in ("status", "search"):
            code = main([verb, "--config", config, "--out", str(tmp_path / "out")])
            err = capsys.readouterr().err
            assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
            assert "its `studies` table is not Optuna's" in err and PASSWORD not in err
    assert db.read_bytes() == sqlite_before  # no Optuna table added beside the user's
    with contextlib.closing(psycopg2.connect(plain)) as conn, conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        assert [row[0] for row in cur.fetchall()] == ["studies"]


# --- `run` with its workers: held at the budget lock by the test ---------------------


class Lines:
    """A process's merged output, read line by line on a thread; `wait_for(text)`
    returns once a line holding `text` has been printed (or the process ended)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc, self._new = proc, threading.Condition()
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._new:
                self.lines.append(line)
                self._new.notify_all()
        with self._new:
            self.lines.append("")  # the end
            self._new.notify_all()

    def wait_for(self, text: str, timeout: float = 300) -> str:
        with self._new:
            found = self._new.wait_for(
                lambda: any(text in line for line in self.lines) or "" in self.lines, timeout
            )
            hits = [line for line in self.lines if text in line]
        assert found and hits, f"{text!r} never printed:\n{self.text()}"
        return hits[0]

    def text(self) -> str:
        with self._new:
            return "".join(self.lines)


def _start_run(config: Path, out: Path, env: dict[str, str] | None = None) -> Lines:
    cmd = [sys.executable, "-m", "job", "run", "--config", str(config), "--out", str(out)]
    proc = subprocess.Popen(
        [*cmd, "--workers", "2"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )  # fmt: skip
    return Lines(proc)


def _flock_waiters(path: Path) -> int:
    """How many processes wait for a flock on `path` (Linux: /proc/locks' "->" lines)."""
    inode = path.stat().st_ino
    with open("/proc/locks") as locks:
        return sum(
            1
            for line in locks
            if "->" in line and line.replace("->", "").split()[5].endswith(f":{inode}")
        )


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone
    return False


def test_a_second_run_is_refused_and_sigterm_stops_the_first_with_143(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    config = _config(tmp_path, 2)
    budget_lock = out / "study.journal.budget-lock"
    with open(budget_lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # every claim waits here: the run stays up
        first = _start_run(config, out, {"SMS_TORCH_THREADS": "1"})
        try:
            first.wait_for("dashboard:")
            while _flock_waiters(budget_lock) < 2:  # both workers are at their first claim
                assert first.proc.poll() is None, first.text()
                time.sleep(0.05)
            journal = (out / "study.journal").read_bytes()

            second = run_job("run", "--config", str(config), "--out", str(out), timeout=300)
            assert second.returncode == 2, second.stdout + second.stderr
            said = _one_error_line(second)
            assert f"--out {out}: another run (pid {first.proc.pid}) is writing there" in said
            assert (out / "study.journal").read_bytes() == journal  # it wrote nothing

            workers = _children(first.proc.pid)
            assert len(workers) == 2
            first.proc.send_signal(signal.SIGTERM)
            first.wait_for("SIGTERM: stopping workers")
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)  # let the workers see their SIGTERM
            code = first.proc.wait(timeout=300)
    assert code == 143, first.text()
    assert not [pid for pid in workers if _alive(pid)]
    assert "Traceback" not in first.text()


def test_run_rides_out_a_database_outage_and_collects(
    postgres: Server | External, tmp_path: Path
) -> None:
    """PostgreSQL stopped while `run` watches its workers: `run` says so, waits as they
    do, and once the server is back the budget is met exactly and the collector runs."""
    if not isinstance(postgres, Server):
        pytest.skip("stops only the suite's own throwaway server")
    import psycopg2

    url = postgres.new_database()
    config = _config(tmp_path, 3)
    out = tmp_path / "out"
    # Hold the study's budget lock: no worker claims a trial until the server is down (and
    # the lock with it), so the outage is sure to come while `run` is watching.
    holder = psycopg2.connect(url.replace("postgresql+psycopg2", "postgresql"))
    holder.cursor().execute("SELECT pg_advisory_xact_lock(%s)", (lock_key("budget:tiny"),))
    env = {"OPTUNA_STORAGE": url, "SMS_TORCH_THREADS": "1"}
    run = _start_run(config, out, env)
    try:
        run.wait_for("dashboard:")  # the study is made, the workers are starting
        postgres.stop("fast")
        with contextlib.suppress(psycopg2.Error):
            holder.close()
        said = run.wait_for("unreachable")
        assert "the workers ride it out" in said and PASSWORD not in said
        assert run.proc.poll() is None  # still watching, not dead with a traceback
    finally:
        postgres.start()
    try:
        code = run.proc.wait(timeout=600)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    output = run.text()
    assert code == 0, output
    assert "reachable again after" in output
    assert "Traceback" not in output and PASSWORD not in output
    study = open_study(load_config(config), url, create=False)
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.COMPLETE) == 3 and TrialState.RUNNING not in states
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["COMPLETE"] == 3


def test_a_torn_tail_that_is_no_record_is_never_moved(tmp_path: Path) -> None:
    """A file that only looks torn (no newline at its end) but is no journal record is
    refused, and left where it is: the cut moves only what a journal write could be."""
    from job.storage.journal import cut_torn_tail

    journal = tmp_path / "study.journal"
    journal.write_bytes(json.dumps(NOTE).encode() + b"\nnot json at all")
    with pytest.raises(JournalDamagedError, match="line 2 is not a journal record"):
        cut_torn_tail(journal)
    assert not list(tmp_path.glob("*.torn-*"))


def test_a_password_on_the_command_line_is_warned_about() -> None:
    from job.run.local import password_on_command_line

    warning = password_on_command_line("postgresql+psycopg2://u:s3cret@h/db")
    assert warning is not None and "OPTUNA_STORAGE" in warning and "s3cret" not in warning
    for quiet in (None, "postgresql+psycopg2://u@h/db", "journal:///a@b/study.journal"):
        assert password_on_command_line(quiet) is None
