"""Where the study lives: storage URLs, locks, heartbeats, and riding out a database outage.

The storage is named by URL, by precedence: the `--storage` flag, the `OPTUNA_STORAGE`
environment variable, `study.storage` in the config, and the embedded default, a
journal file under the run's output folder (`journal:///abs/path/study.journal`, no
server). PostgreSQL is the cluster's storage: advisory locks make schema creation and
the budget claim race-free across pods, heartbeats let a live worker retry the trial of
a dead one, and `persist` retries a storage call through a database restart, up to a
deadline. Passwords never leave this module: `redact` masks them in every message.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import optuna
import sqlalchemy
from optuna.storages.journal import JournalFileBackend, JournalStorage

from job.config import Config

# Heartbeats, their retry callback and grouped TPE are marked experimental in Optuna
# (some since 2.8); the version is pinned, and the warnings say nothing a user can act on.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# Our workers ask and tell themselves and beat with `Heartbeat` below, not in optimize().
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")

JOURNAL = "journal://"
DEFAULT_JOURNAL = "study.journal"


def resolve_storage(flag: str | None, config: Config, out_dir: Path) -> str:
    """The storage URL by precedence: flag, OPTUNA_STORAGE, config, embedded journal file."""
    for url in (flag, os.environ.get("OPTUNA_STORAGE"), config.study.storage):
        if url:
            return url
    return JOURNAL + str((out_dir / DEFAULT_JOURNAL).resolve())


def redact(url: str) -> str:
    """The URL with any password replaced by ***, for logs, reports and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def open_storage(url: str, config: Config | None = None) -> optuna.storages.BaseStorage:
    if url.startswith(JOURNAL):
        path = Path(url[len(JOURNAL) :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    # Pods start together: creating Optuna's schema from several processes at once on an
    # empty PostgreSQL database fails with a unique violation, so creation is serialised.
    beats: dict[str, Any] = {}
    if config is not None:  # heartbeats: a killed worker's trial goes stale, then is retried
        beats = {
            "heartbeat_interval": config.study.heartbeat_interval_s,
            "grace_period": config.study.grace_period_s,
            "heartbeat_stale_trial_callback": _retry(config.study.max_retry),
        }
    with database_lock(url, "schema"):
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **beats)


def _retry(max_retry: int) -> Any:
    return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)


class Heartbeat:
    """Record a running trial's heartbeat every interval from a daemon thread: Optuna
    beats only inside `study.optimize`, and workers here ask and tell themselves."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial) -> None:
        storage = study._storage  # the study's own storage; heartbeat-capable or not
        self._beat = getattr(storage, "record_heartbeat", None)
        self._interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
        self._trial_id = trial._trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            with contextlib.suppress(Exception):  # a missed beat is retried next interval
                self._beat(self._trial_id)  # type: ignore[misc]

    def __enter__(self) -> Heartbeat:
        if self._beat is not None and self._interval:
            self._beat(self._trial_id)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


@functools.cache
def _lock_engine(url: str) -> sqlalchemy.Engine:
    """One small engine per URL for advisory locks, apart from Optuna's own pool."""
    return sqlalchemy.create_engine(url, pool_pre_ping=True, pool_size=1, max_overflow=0)


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


T = TypeVar("T")
_TRANSIENT = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    optuna.exceptions.StorageInternalError,
)


class StorageDownError(RuntimeError):
    """The database stayed unreachable past the deadline; the message has no password."""


def persist(call: Callable[[], T], deadline_s: float, what: str, url: str) -> T:
    """`call()`, retried with exponential backoff while the database is unreachable (a
    restart, a failover); past `deadline_s` a `StorageDownError` naming the redacted URL."""
    give_up, wait = time.monotonic() + deadline_s, 0.5
    while True:
        try:
            return call()
        except _TRANSIENT as exc:
            if time.monotonic() + wait > give_up:
                cause = redact(str(exc).splitlines()[0]) if str(exc) else type(exc).__name__
                raise StorageDownError(
                    f"storage {redact(url)} unreachable for {deadline_s:.0f}s while {what}: {cause}"
                ) from None
            time.sleep(wait)
            wait = min(wait * 2, 10.0)
