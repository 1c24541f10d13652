"""The storage stage's locks: the run lock (`run --fresh` never deletes a study in use),
PostgreSQL advisory locks (schema, study creation, research) and the budget lock
(count-and-ask, one worker at a time).

Every PostgreSQL advisory lock here is transaction-scoped (`pg_try_advisory_xact_lock`
inside an explicit transaction on a connection of its own, released by its COMMIT or
ROLLBACK) and is waited for outside the server, so that the locks hold through a
transaction-mode pooler (PgBouncer) as they do on a direct connection: see
`database_lock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import random
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy

from job.storage.base import BEATS, JOURNAL, StorageError, StorageURLError, StudyInUseError

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
        who = holder_name(path)
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


# --- the folder lock: one `run` (or local `research`) per output folder ------------------
#
# `<out>/run.lock`, flock'd exclusively by the run for as long as it lives (a lock that
# dies with its process: a killed run's file blocks nothing), its pid written in it. The
# descriptor is close-on-exec: the workers do not inherit it. Never deleted.

FOLDER_LOCK = "run.lock"


class FolderInUseError(StorageError):
    """A second `run` on an output folder that a live run holds: exit 2."""


def hold_run_folder(folder: Path) -> None:
    """This process is the one run writing into `folder` until it exits (made when
    missing); `FolderInUseError` naming the folder and the holder's pid when another live
    process is. Once per process and folder."""
    path = (folder / FOLDER_LOCK).absolute()
    if str(path) in _HELD:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise StorageURLError(f"--out {folder}: cannot write there: {why}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        who = holder_name(path)
        raise FolderInUseError(
            f"--out {folder}: another run ({who}) is writing there; wait for it to end, "
            "stop it, or give another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[str(path)] = fd


def holder_name(path: Path) -> str:
    """Who holds a lock on `path`, for an error line: "pid 12, 34" or "another process"."""
    pids = lock_holders(path)
    return f"pid {', '.join(map(str, pids))}" if pids else "another process"


def lock_holders(path: Path) -> list[int]:
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


# --- advisory locks: transaction-scoped, waited for outside the server ------------------
#
# Why not `pg_advisory_lock` (a session lock), as before: behind a transaction-mode pooler
# (PgBouncer, `pool_mode = transaction`, how a fleet of more pods than PostgreSQL's
# max_connections reaches one server) a client has a server connection only for the
# length of one transaction. A session lock stays on that server connection after the
# statement: the next client handed the same connection "holds" it too (advisory locks
# are re-entrant within a session), so two workers count and ask at once, and the unlock
# may run on another server connection and release nothing. A transaction lock lives and
# dies with the transaction that pins the server connection to this client, so it means
# the same through a pooler as on a direct connection, and a crash mid-claim (ROLLBACK,
# or the connection dropped) releases it.
#
# Why the wait is ours (try, roll back, sleep, look, try again) and not the server's: a
# client blocked in `pg_advisory_xact_lock` holds a pooled server connection while it
# waits. With as many waiters as the pool has connections (every pod starts at once and
# takes the schema lock; many workers claim together), the holder's own queries, which go
# through the same pool on other connections (Optuna's engine), queue behind the waiters
# for ever: a deadlock that only the pooler's query_wait_timeout breaks. And between two
# tries a waiter looks with one statement outside any transaction (autocommit: the lock
# is taken and dropped within it), so a waiter never keeps a transaction open, and
# through PgBouncer holds no server connection, while it sleeps or waits for a CPU; three
# round trips per look (BEGIN, try, ROLLBACK) on a loaded client kept transactions open
# for tens of milliseconds each and filled the pool with waiters (bench/fleet.py).

TRY = "SELECT pg_try_advisory_xact_lock(%s)"
_FIRST_PAUSE_S = 0.002  # after the first failed try; doubles per look, jittered
# A waiter looks at least 5 times a second. Many waiters look often enough between them
# (256 waiters: one look every ~1 ms); at a 50 ms cap their looks took the CPU the
# holder needed (bench/fleet.py, 256 workers on 2 cores: 3.5 trials/s, 7.8 at 0.2 s).
_LONGEST_PAUSE_S = 0.2


@functools.cache
def _lock_engine(url: str) -> sqlalchemy.Engine:
    """One small engine per URL and process for advisory locks, apart from Optuna's own
    pool (a `Store` carries it: `Store.engine`; the URL-only entry points find the same
    one here). Locks nest (research's lock, then the one that creates a study), one
    connection each."""
    return sqlalchemy.create_engine(url, pool_pre_ping=True, pool_size=1, max_overflow=3)


def lock_engine(url: str) -> sqlalchemy.Engine | None:
    """The advisory locks' engine of a PostgreSQL URL; None for any other storage."""
    return _lock_engine(url) if url.startswith("postgresql") else None


def lock_key(name: str) -> int:
    """The advisory lock key of `name`: a stable, non-negative bigint (crc32)."""
    return zlib.crc32(f"small-model-search:{name}".encode())


def _take(conn: sqlalchemy.Connection, key: int) -> sqlalchemy.RootTransaction:
    """Begin a transaction on `conn` that holds the advisory lock `key`. While another
    transaction holds it: roll back, then sleep (2 ms at first, doubling to 200 ms,
    jittered so that waiters do not look in step) and look (`_looks_free`) until it looks
    free, and try again."""
    pause = _FIRST_PAUSE_S
    while True:
        transaction = conn.begin()
        if conn.exec_driver_sql(TRY, (key,)).scalar():
            return transaction
        transaction.rollback()
        while True:
            time.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(2 * pause, _LONGEST_PAUSE_S)
            if _looks_free(conn, key):
                break


def _looks_free(conn: sqlalchemy.Connection, key: int) -> bool:
    """Whether no transaction holds the lock `key` right now: one statement in autocommit,
    which takes the lock and lets it go at once; `conn` is transactional again after."""
    raw: Any = conn.connection.dbapi_connection  # psycopg2's: its autocommit is client-side
    try:
        raw.autocommit = True
    except Exception as exc:  # closed under us (a restart): an outage `persist` rides out
        conn.invalidate()
        raise sqlalchemy.exc.InterfaceError("autocommit", None, exc) from exc
    try:
        return bool(conn.exec_driver_sql(TRY, (key,)).scalar())
    finally:
        with contextlib.suppress(Exception):  # its bookkeeping: nothing goes on the wire
            conn.rollback()
        try:
            raw.autocommit = False
        except Exception:  # never reused in autocommit: a "lock" there would hold nothing
            conn.invalidate()


@contextmanager
def database_lock(url: str, name: str, engine: sqlalchemy.Engine | None = None) -> Iterator[None]:
    """A PostgreSQL advisory lock named `name`, held by an open transaction on a
    connection of its own until the block ends (COMMIT; ROLLBACK when it raises); a no-op
    on other databases (SQLite serialises writers itself). Transaction-scoped and waited
    for by retrying, never inside the server: it holds through a transaction-mode pooler
    such as PgBouncer (the comment above says why both). Blocks of one process nest, each
    lock on its own connection; taking a lock this thread already holds waits for ever.
    `engine`: the URL's lock engine when the caller has it (`Store.engine`)."""
    if not url.startswith("postgresql"):
        yield
        return
    with (engine or _lock_engine(url)).connect() as conn:
        transaction = _take(conn, lock_key(name))
        try:
            yield
        except BaseException:
            # the block's error is the one to see; a dead connection released the lock
            with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                transaction.rollback()
            raise
        transaction.commit()  # ends the transaction: the lock is released


@contextmanager
def budget_lock(
    storage_url: str, study_name: str, engine: sqlalchemy.Engine | None = None
) -> Iterator[None]:
    """Serialise count-and-ask among all workers of one study: a transaction-scoped
    advisory lock in PostgreSQL (workers on many machines, directly or through a
    transaction-mode PgBouncer: `database_lock`), a file lock beside a journal (one
    machine)."""
    if not storage_url.startswith(JOURNAL):
        with database_lock(storage_url, f"budget:{study_name}", engine):
            yield
        return
    # not "<journal>.lock": that name is the journal backend's own lock file
    with open(storage_url[len(JOURNAL) :] + ".budget-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
