"""Locks: the run lock (`run --fresh` never deletes a study in use), PostgreSQL advisory
locks (schema, study creation) and the budget lock (count-and-ask, one worker at a time)."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy

from job.storage.base import JOURNAL, StorageURLError, StudyInUseError
from job.storage.heartbeat import BEATS

# --- the run lock: `run --fresh` never deletes a study another process is using ---------
#
# Every process that works on a journal study (`run`, `search`: `open_study`) holds a
# shared flock on `<journal>.run-lock` until it exits, and writes its pid there;
# `run --fresh` needs it exclusively to delete the study. The file itself is never
# deleted (a lock on a deleted file guards nothing).

RUN_LOCK = ".run-lock"
_HELD: dict[str, int] = {}  # lock file → this process's descriptor holding it


def _lock_fd(url: str) -> tuple[Path, int]:
    path = Path(url[len(JOURNAL) :] + RUN_LOCK).absolute()
    fd = _HELD.get(str(path))
    if fd is None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            raise StorageURLError(f"journal {path.parent}: cannot write there: {why}") from None
    return path, fd


def hold_study(url: str) -> None:
    """This process uses the journal study at `url` until it exits: a shared lock on
    `<journal>.run-lock` (once per process; a no-op for other storages)."""
    if not url.startswith(JOURNAL):
        return
    path, fd = _lock_fd(url)
    if str(path) in _HELD:
        return
    fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a --fresh deletes (milliseconds)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[str(path)] = fd


def fresh_study(url: str) -> None:
    """`run --fresh`: delete the journal study at `url` (the journal, its lock files and
    beat files), then hold it as `hold_study` does. `StudyInUseError` naming the pid when
    another live process holds it; nothing is deleted then."""
    journal = Path(url[len(JOURNAL) :])
    if not journal.parent.is_dir():
        return  # no study there yet: nothing to delete, nothing to hold
    path, fd = _lock_fd(url)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if str(path) in _HELD:  # a failed conversion may have dropped our shared lock
            fcntl.flock(fd, fcntl.LOCK_SH)
        else:
            os.close(fd)
        pids = _holders(path)
        who = f"pid {', '.join(map(str, pids))}" if pids else "another process"
        raise StudyInUseError(
            f"--fresh: the study journal {journal} is in use by {who}; stop it first "
            "(or run without --fresh to continue that study)"
        ) from None
    try:
        for suffix in ("", ".lock", ".budget-lock"):
            Path(str(journal) + suffix).unlink(missing_ok=True)
        beats = Path(str(journal) + BEATS)
        if beats.is_dir():
            for beat in beats.iterdir():
                beat.unlink(missing_ok=True)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        fcntl.flock(fd, fcntl.LOCK_SH)
        _HELD[str(path)] = fd


def _holders(path: Path) -> list[int]:
    """The pids holding a lock on `path`, other than this one: from /proc/locks (Linux),
    else the live pids written in the file."""
    me, pids = os.getpid(), []
    try:
        inode = path.stat().st_ino
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.replace("->", "").split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].endswith(f":{inode}"):
                    pids.append(int(fields[4]))
    except (OSError, ValueError):
        pass
    if not pids:
        with contextlib.suppress(OSError, ValueError):
            pids = [int(s) for s in path.read_text().split() if s.isdigit()]
    return sorted({pid for pid in pids if pid != me and _alive(pid)})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@functools.cache
def _lock_engine(url: str) -> sqlalchemy.Engine:
    """One small engine per URL for advisory locks, apart from Optuna's own pool. Locks
    nest (research's lock, then the one that creates a study), one connection each."""
    return sqlalchemy.create_engine(url, pool_pre_ping=True, pool_size=1, max_overflow=3)


@contextmanager
def database_lock(url: str, name: str) -> Iterator[None]:
    """A PostgreSQL advisory lock named `name`, held on its own connection; a no-op on
    other databases (SQLite serialises writers itself)."""
    if not url.startswith("postgresql"):
        yield
        return
    key = zlib.crc32(f"small-model-search:{name}".encode())  # a stable bigint key
    with _lock_engine(url).connect() as conn:
        conn.exec_driver_sql("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            conn.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (key,))
            conn.commit()


@contextmanager
def budget_lock(storage_url: str, study_name: str) -> Iterator[None]:
    """Serialise count-and-ask among all workers of one study: an advisory lock in
    PostgreSQL (workers on many machines), a file lock beside a journal (one machine)."""
    if not storage_url.startswith(JOURNAL):
        with database_lock(storage_url, f"budget:{study_name}"):
            yield
        return
    # not "<journal>.lock": that name is the journal backend's own lock file
    with open(storage_url[len(JOURNAL) :] + ".budget-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
