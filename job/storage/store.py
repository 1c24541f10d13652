"""Where the study lives: the URL by precedence, its checks, opening it, waiting for the
database and for the study."""

from __future__ import annotations

import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

from job import settings
from job.config import Config
from job.storage.base import (
    DEFAULT_JOURNAL,
    JOURNAL,
    SUPPORTED,
    StorageDownError,
    StorageError,
    StorageURLError,
)
from job.storage.heartbeat import BeatingJournalStorage, _retry
from job.storage.journal import check_journal
from job.storage.locks import _lock_engine, database_lock
from job.urls import ambiguous_url, redact


def resolve_storage(flag: str | None, config: Config, out_dir: Path) -> str:
    """The storage URL by precedence: flag, the environment (OPTUNA_STORAGE, else built
    from POSTGRES_*: `job.settings.storage_url`), config, embedded journal file."""
    if flag:
        return flag
    for url in (settings.current().storage_url(), config.study.storage):
        if url:
            return url
    return JOURNAL + str((out_dir / DEFAULT_JOURNAL).resolve())


def check_storage_url(url: str) -> None:
    """`StorageURLError` unless `url` names a supported storage: a journal file, a
    PostgreSQL database through psycopg2, or an SQLite file; nothing is opened. An
    unparsable URL is not shown (its password could not be masked)."""
    if url.startswith(JOURNAL):
        if not url[len(JOURNAL) :].strip():
            raise StorageURLError(f"storage {url}: no journal file named; use {SUPPORTED}")
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    scheme = url.split("://", 1)[0] if "://" in url else ""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        shown = f" ({scheme}://…)" if scheme.replace("+", "").isalnum() else ""
        raise StorageURLError(f"the storage is not a valid database URL{shown}") from None
    shown = redact(url)
    if ambiguous_url(url):  # SQLAlchemy would connect to another host or with another password
        raise StorageURLError(
            f"storage {shown}: its user, password or database holds a character that a URL "
            "reserves (@ / ? #): percent-encode it (@ as %40, / as %2F, ? as %3F, # as %23), "
            "or set POSTGRES_* instead"
        )
    backend = parsed.get_backend_name()
    if backend not in ("postgresql", "sqlite"):
        raise StorageURLError(f"storage {shown}: {backend!r} is not supported; use {SUPPORTED}")
    try:
        parsed.get_dialect().import_dbapi()
    except (NoSuchModuleError, ImportError):
        # plain postgresql:// means psycopg 3 to SQLAlchemy 2.1; psycopg2 is what is installed
        hint = " (write postgresql+psycopg2://)" if parsed.drivername == "postgresql" else ""
        raise StorageURLError(
            f"storage {shown}: no driver {parsed.drivername!r} installed{hint}; use {SUPPORTED}"
        ) from None
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise StorageURLError(f"storage {shown}: port {parsed.port} is not in 1-65535")
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise StorageURLError(
            f"storage {shown}: an in-memory SQLite database is no shared storage; "
            "name a file: sqlite:///abs/path/study.db"
        )


# libpq's reasons that no retry changes: the server answered and said no (or the URL's
# options are wrong). Anything else (refused, timed out, unknown host, starting up, too
# many clients) may pass and is waited out.
_REFUSED = (
    "password authentication failed",
    "authentication failed",
    "no password supplied",
    "does not exist",  # the role or the database
    "no pg_hba.conf entry",
    "permission denied",
    "invalid port number",
    "invalid connection option",
    "invalid sslmode",
    "invalid integer value",
)


def refused(reason: str) -> bool:
    """Whether a connection failure's reason is final (a wrong password, an unknown
    database or role), not an outage to wait out."""
    lowered = reason.lower()
    return any(marker in lowered for marker in _REFUSED)


def _storage_failure(url: str, exc: BaseException) -> StorageError | StorageDownError:
    """One line for an error raised while opening an RDB storage: final (exit 2) or an
    outage (exit 1); the password masked."""
    cause = getattr(exc, "orig", None) or exc
    reason = redact(" ".join(str(cause).split()) or type(cause).__name__, url)[:200]
    shown = redact(url)
    transient = isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError))
    if url.startswith("sqlite") or refused(reason) or not transient:  # no wait changes it
        return StorageURLError(f"storage {shown}: {reason}")
    return StorageDownError(f"database {shown} not reachable: {reason}")


def _schema_problem(conn: sqlalchemy.Connection) -> str | None:
    """Why the database behind `conn` cannot hold Optuna's studies, or None: a `studies`
    table of another application (Optuna would add its tables beside it, then fail)."""
    inspector = sqlalchemy.inspect(conn)
    if not inspector.has_table("studies"):
        return None  # empty, or other applications' tables only: Optuna adds its own
    columns = {column["name"] for column in inspector.get_columns("studies")}
    if {"study_id", "study_name"} <= columns and inspector.has_table("version_info"):
        return None
    return (
        "its `studies` table is not Optuna's (another application's schema); "
        "name a database of its own"
    )


def check_schema(url: str) -> None:
    """`StorageURLError` naming the URL when its database is no database (an SQLite URL
    naming another kind of file) or holds a foreign `studies` table; creates nothing (an
    SQLite file that is not there is left so). `StorageDownError` for an outage."""
    from sqlalchemy.engine import make_url

    if url.startswith(JOURNAL):
        return
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(str(parsed.database)).is_file():
        return  # connecting would create it
    try:
        with _lock_engine(url).connect() as conn:
            problem = _schema_problem(conn)
    except sqlalchemy.exc.DBAPIError as exc:
        raise _storage_failure(url, exc) from None
    if problem is not None:
        raise StorageURLError(f"storage {redact(url)}: {problem}")


def check_storage(url: str) -> None:
    """Everything about the storage at `url` that can be checked without writing to it:
    the URL (`check_storage_url`), a journal's records (`check_journal`: no damaged line,
    no other kind of file), a database's schema (`check_schema`). `run` calls it before it
    takes its folder; the database must answer (`wait_for_database` first)."""
    check_storage_url(url)
    if url.startswith(JOURNAL):
        check_journal(Path(url[len(JOURNAL) :]))
    else:
        check_schema(url)


def open_storage(url: str, config: Config | None = None) -> optuna.storages.BaseStorage:
    """The storage behind `url`, ready for `create_study`/`load_study`. A bad URL, an
    unwritable journal path or a database that refuses us: `StorageURLError`; a database
    that does not answer: `StorageDownError` (`wait_for_database` waits for it first)."""
    check_storage_url(url)
    if url.startswith(JOURNAL):
        path = Path(url[len(JOURNAL) :])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return BeatingJournalStorage(path, config)  # heartbeats in beat files beside it
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            raise StorageURLError(f"journal {path}: cannot write there: {why}") from None
    # Pods start together: creating Optuna's schema from several processes at once on an
    # empty PostgreSQL database fails with a unique violation, so creation is serialised.
    beats: dict[str, Any] = {}
    if config is not None:  # heartbeats: a killed worker's trial goes stale, then is retried
        beats = {
            "heartbeat_interval": config.study.heartbeat_interval_s,
            "grace_period": config.study.grace_period_s,
            "heartbeat_stale_trial_callback": _retry(config.study.max_retry),
        }
    try:
        with database_lock(url, "schema"):  # no half-made schema is seen as a foreign one
            check_schema(url)  # a foreign `studies` table: refused before Optuna adds a table
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **beats)
    except sqlalchemy.exc.DBAPIError as exc:
        raise _storage_failure(url, exc) from None


def study_exists(url: str, name: str) -> bool:
    """Whether the storage holds study `name`; creates nothing (no folder, file, table),
    so `status` and `collect` on a mistyped name or folder leave no empty study behind."""
    check_storage_url(url)
    if url.startswith(JOURNAL):
        if not Path(url[len(JOURNAL) :]).is_file():
            return False
        return any(s.study_name == name for s in open_storage(url).get_all_studies())
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(str(parsed.database)).is_file():
        return False  # connecting would create the file
    try:
        with _lock_engine(url).connect() as conn:
            if not sqlalchemy.inspect(conn).has_table("studies"):
                return False
            if (problem := _schema_problem(conn)) is not None:
                raise StorageURLError(f"storage {redact(url)}: {problem}")
            query = sqlalchemy.text("SELECT 1 FROM studies WHERE study_name = :name")
            return conn.execute(query, {"name": name}).first() is not None
    except sqlalchemy.exc.DBAPIError as exc:
        raise _storage_failure(url, exc) from None


def wait_for_study(url: str, name: str, timeout_s: float | None, poll_s: float = 5.0) -> bool:
    """`collect --wait` starts with the workers (a Job beside theirs): poll until study
    `name` is in the storage (True) or `timeout_s` passes (False), creating nothing. One
    line on stderr, "waiting for study …", when it is not there at first."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    waiting = False
    while not study_exists(url, name):
        left = math.inf if deadline is None else deadline - time.monotonic()
        if left <= 0:
            return False
        if not waiting:
            print(f"waiting for study {name!r} in {redact(url)}", file=sys.stderr, flush=True)
            waiting = True
        time.sleep(min(poll_s, left))
    return True


# --- waiting for the database: pods start before PostgreSQL is ready -------------------


def wait_for_database(url: str, wait_s: float, poll_s: float = 2.0) -> None:
    """Return once a PostgreSQL storage accepts a connection and runs SELECT 1, trying
    every `poll_s` up to `wait_s` seconds; at once for any other storage or `wait_s` 0.

    The URL is checked first (`check_storage_url`: `StorageURLError` for a bad or
    unsupported one), and a final refusal (a wrong password, an unknown database) is a
    `StorageURLError` at once, not waited out. At the first other failure one line on
    stderr, "waiting for database <URL>", the password masked; past the deadline a
    `StorageDownError` naming host and port and libpq's reason, masked all the same.
    Each attempt runs on a daemon thread while this one waits in short steps, so SIGTERM
    (the CLI's handler: exit 143) ends the wait at once even while a connection attempt
    hangs.
    """
    check_storage_url(url)
    if not url.startswith("postgresql") or wait_s <= 0:
        return
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    shown = redact(url)
    args = {
        "host": parsed.host,
        "port": parsed.port,
        "user": parsed.username,
        "password": parsed.password,
        "dbname": parsed.database,
    }
    params = {k: v for k, v in args.items() if v is not None} | dict(parsed.query)
    # the URL's own connect_timeout (libpq's option) caps each attempt; ours stays bounded
    # (libpq's 0, "wait for ever", would hold a wait that must end)
    given = params.pop("connect_timeout", None)
    cap = _connect_timeout(given, shown) if given is not None else 5
    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        timeout = max(2, min(cap, math.ceil(deadline - time.monotonic())))
        reason = _attempt(params, timeout)
        if reason is None:
            return
        reason = redact(reason, url)
        if refused(reason):  # a wrong password, an unknown database: no wait changes it
            raise StorageURLError(f"storage {shown}: {reason}")
        left = deadline - time.monotonic()
        if left <= 0:
            raise StorageDownError(f"database {shown} not reachable after {wait_s:g} s: {reason}")
        if not waiting:
            print(f"waiting for database {shown}", file=sys.stderr, flush=True)
            waiting = True
        time.sleep(min(poll_s, left))


def _connect_timeout(given: object, shown: str) -> int:
    """A URL's `connect_timeout` (whole seconds, as libpq reads it), capped at 5 s; 0 or
    less (libpq: no limit) is our 5 s too. `StorageURLError` for anything else."""
    text = given if isinstance(given, str) else str(given)
    digits = text.strip().lstrip("-")
    if not digits.isascii() or not digits.isdigit() or len(digits) > 9:
        raise StorageURLError(
            f"storage {shown}: connect_timeout must be whole seconds, got {text[:20]!r}"
        )
    seconds = int(text)
    return 5 if seconds <= 0 else min(5, seconds)


def _attempt(params: dict[str, Any], timeout: int) -> str | None:
    """One connection and SELECT 1 on a daemon thread: None when it worked, else why not
    (one line). The caller waits in 0.1 s steps, so a signal handler runs meanwhile."""
    import psycopg2  # type: ignore[import-untyped]  # no stubs installed

    outcome: list[str | None] = []

    def connect() -> None:
        try:
            conn = psycopg2.connect(connect_timeout=timeout, **params)
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
            finally:
                conn.close()
            outcome.append(None)
        except psycopg2.Error as exc:
            outcome.append(" ".join(str(exc).split()) or type(exc).__name__)

    done = threading.Thread(target=connect, name="wait-for-database", daemon=True)
    done.start()
    while done.is_alive():
        done.join(0.1)
    return outcome[0] if outcome else "the connection attempt failed"
