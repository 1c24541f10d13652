"""Storage basics: the URL forms, the errors every storage function raises, and
`persist`, which rides out a database restart up to a deadline."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import TypeVar

import optuna
import sqlalchemy

from job.runtime import redact

# Heartbeats, their retry callback and grouped TPE are marked experimental in Optuna
# (some since 2.8); the version is pinned, and the warnings say nothing a user can act on.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# Our workers ask and tell themselves and beat with `Heartbeat`, not in optimize().
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


JOURNAL = "journal://"
DEFAULT_JOURNAL = "study.journal"


SUPPORTED = (
    "journal:///abs/path/study.journal, postgresql+psycopg2://user:password@host:port/db "
    "or sqlite:///abs/path/study.db"
)


class StorageError(ValueError):
    """The storage, or the study in it, cannot be used as named: exit 2 with one line
    (a URL in it redacted). Not an outage: that is `StorageDownError`, exit 1."""


class StorageURLError(StorageError):
    """A storage URL that is not one, or names a storage that refuses us for good: an
    unsupported scheme or missing driver, a bad port, a wrong password or unknown
    database, an unwritable journal path."""


class StudyNotFoundError(StorageError):
    """`status`, `collect`: the study is not in the storage (nothing was created)."""


class StudyInUseError(StorageError):
    """`run --fresh` on a journal study that a live process holds."""


class StorageDownError(RuntimeError):
    """The database stayed unreachable past the deadline; the message has no password."""


T = TypeVar("T")
_TRANSIENT = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    optuna.exceptions.StorageInternalError,
)


def persist(call: Callable[[], T], deadline_s: float, what: str, url: str) -> T:
    """`call()`, retried with exponential backoff while the database is unreachable (a
    restart, a failover); past `deadline_s` a `StorageDownError` naming the redacted URL."""
    give_up, wait = time.monotonic() + deadline_s, 0.5
    while True:
        try:
            return call()
        except _TRANSIENT as exc:
            if time.monotonic() + wait > give_up:
                cause = redact(str(exc).splitlines()[0], url) if str(exc) else type(exc).__name__
                raise StorageDownError(
                    f"storage {redact(url)} unreachable for {deadline_s:.0f}s while {what}: {cause}"
                ) from None
            time.sleep(wait)
            wait = min(wait * 2, 10.0)


def _rdb(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage | None:
    """The RDBStorage behind a study's storage (create_study wraps it in a cache), or None."""
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None
