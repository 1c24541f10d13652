"""Storage basics: the URL forms, the errors every storage function raises, and
`persist`, which rides out a database restart up to a deadline."""

from __future__ import annotations

import time
import warnings
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

import optuna
import sqlalchemy
from optuna.trial import TrialState

from job.errors import BadInput, Failure
from job.urls import redact

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


BEATS = ".beats"  # <journal>.beats/<trial id>; its mtime is the trial's last heartbeat


class StorageError(BadInput, ValueError):
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


class StorageDownError(Failure, RuntimeError):
    """The database stayed unreachable past the deadline; the message has no password."""


T = TypeVar("T")
# What a database outage raises from a storage call: retried by `persist`, waited out by
# `run`'s progress (job.run.local).
TRANSIENT: tuple[type[Exception], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    optuna.exceptions.StorageInternalError,
)


def persist(
    call: Callable[[], T],
    deadline_s: float,
    what: str,
    url: str,
    also: tuple[type[Exception], ...] = (),
) -> T:
    """`call()`, retried with exponential backoff while the database is unreachable (a
    restart, a failover); past `deadline_s` a `StorageDownError` naming the redacted URL.
    `also`: more exceptions that mean an outage here (`StorageDownError` from opening a
    storage)."""
    give_up, wait = time.monotonic() + deadline_s, 0.5
    while True:
        try:
            return call()
        except (*TRANSIENT, *also) as exc:
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


def count_states(study: optuna.Study) -> Counter[TrialState]:
    """The study's trials by state. On a database one `GROUP BY` on the server: a claim
    counts under the budget lock, and reading every trial there (`get_trials`, which
    also re-reads each RUNNING trial's params and attrs) made the locked work, and so
    every claim's wait, grow with the fleet (bench/fleet.py: 9 ms with 16 trials
    running, 28 ms with 256). A journal is read whole anyway."""
    backend = _rdb(study._storage)
    if backend is None:
        return Counter(trial.state for trial in study.get_trials(deepcopy=False))
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    trial = models.TrialModel
    with _create_scoped_session(backend.scoped_session) as session:
        rows = (
            session.query(trial.state, sqlalchemy.func.count(trial.trial_id))
            .filter(trial.study_id == study._study_id)
            .group_by(trial.state)
            .all()
        )
    return Counter({TrialState(state): int(n) for state, n in rows})


def take_trial(study: optuna.Study, waiting: int) -> int:
    """The first half of `study.ask()`, the part that must hold the budget lock: the
    oldest WAITING trial (a stale trial's retry, a queued retrain) made RUNNING, else a
    new RUNNING trial; its id. `waiting`: how many WAITING trials the count saw (none,
    nearly always: then no read of them, which through Optuna's cache also re-reads
    every RUNNING trial)."""
    if waiting:
        popped = study._pop_waiting_trial_id()
        if popped is not None:
            return popped
    return study._storage.create_new_trial(study._study_id)


def asked(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """The second half of `study.ask()`, outside the budget lock: the trial `take_trial`
    made RUNNING, with the study's cached trial list dropped, so that the sampler reads
    the study afresh (as `ask` does)."""
    study._thread_local.cached_all_trials = None
    return optuna.Trial(study, trial_id)


def study_beside(study: optuna.Study, name: str) -> optuna.Study:
    """Study `name` through the storage object `study` holds (no second connection);
    `KeyError` when that storage has no such study."""
    return optuna.load_study(study_name=name, storage=study._storage)


def close_study(study: optuna.Study) -> None:
    """Close the database connections of the storage `study` holds (a pod's close when
    it ends; bench/fleet.py's simulated pods); nothing for a journal."""
    backend = _rdb(study._storage)
    if backend is not None:
        backend.engine.dispose()
