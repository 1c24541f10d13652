"""Where the study lives: storage URLs, locks, heartbeats, and riding out a database outage.

The storage is named by URL, by precedence: the `--storage` flag, the `OPTUNA_STORAGE`
environment variable, `study.storage` in the config, and the embedded default, a
journal file under the run's output folder (`journal:///abs/path/study.journal`, no
server). PostgreSQL is the cluster's storage: advisory locks make schema creation and
the budget claim race-free across pods, heartbeats let a live worker retry the trial of
a dead one, and `persist` retries a storage call through a database restart, up to a
deadline. `wait_for_database` holds a verb until a PostgreSQL storage accepts
connections. Passwords are masked by `job.runtime.redact` in every message.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import functools
import json
import math
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import optuna
import sqlalchemy
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from job import runtime
from job.config import Config
from job.runtime import redact as redact  # re-exported: job.storage.redact

# Heartbeats, their retry callback and grouped TPE are marked experimental in Optuna
# (some since 2.8); the version is pinned, and the warnings say nothing a user can act on.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# Our workers ask and tell themselves and beat with `Heartbeat` below, not in optimize().
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")

JOURNAL = "journal://"
DEFAULT_JOURNAL = "study.journal"


def resolve_storage(flag: str | None, config: Config, out_dir: Path) -> str:
    """The storage URL by precedence: flag, the environment (OPTUNA_STORAGE, else built
    from POSTGRES_*: `job.runtime.storage_url`), config, embedded journal file."""
    if flag:
        return flag
    for url in (runtime.storage_url(), config.study.storage):
        if url:
            return url
    return JOURNAL + str((out_dir / DEFAULT_JOURNAL).resolve())


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


# --- waiting for the database: pods start before PostgreSQL is ready -------------------


class StorageURLError(ValueError):
    """A storage URL that is not one; exit 2. The message does not show the URL."""


def wait_for_database(url: str, wait_s: float, poll_s: float = 2.0) -> None:
    """Return once a PostgreSQL storage accepts a connection and runs SELECT 1, trying
    every `poll_s` up to `wait_s` seconds; at once for any other storage or `wait_s` 0.

    The URL is parsed by SQLAlchemy, as Optuna parses it (`StorageURLError` when it
    cannot be). At the first failure one line on stderr, "waiting for database <URL>",
    the password masked; past the deadline a `StorageDownError` naming host and port and
    libpq's reason, masked all the same. Each attempt runs on a daemon thread while this
    one waits in short steps, so SIGTERM (the CLI's handler: exit 143) ends the wait at
    once even while a connection attempt hangs.
    """
    if not url.startswith("postgresql") or wait_s <= 0:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise StorageURLError("the storage is not a valid database URL") from None
    shown = redact(url)
    args = {
        "host": parsed.host,
        "port": parsed.port,
        "user": parsed.username,
        "password": parsed.password,
        "dbname": parsed.database,
    }
    params = {k: v for k, v in args.items() if v is not None} | dict(parsed.query)
    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        timeout = max(2, min(5, math.ceil(deadline - time.monotonic())))
        reason = _attempt(params, timeout)
        if reason is None:
            return
        reason = redact(reason, url)
        left = deadline - time.monotonic()
        if left <= 0:
            raise StorageDownError(f"database {shown} not reachable after {wait_s:g} s: {reason}")
        if not waiting:
            print(f"waiting for database {shown}", file=sys.stderr, flush=True)
            waiting = True
        time.sleep(min(poll_s, left))


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
                cause = redact(str(exc).splitlines()[0], url) if str(exc) else type(exc).__name__
                raise StorageDownError(
                    f"storage {redact(url)} unreachable for {deadline_s:.0f}s while {what}: {cause}"
                ) from None
            time.sleep(wait)
            wait = min(wait * 2, 10.0)


# ---- a trial's reads and batched writes (the only Optuna internals outside Optuna) ----


def frozen_trial(trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    """The trial as its worker knows it: the record read when it was asked for (params,
    user and system attrs, e.g. the retry link), plus what this worker wrote since. Optuna's
    `Trial` keeps that record, so this is no round trip; read from the storage otherwise."""
    cached = getattr(trial, "_cached_frozen_trial", None)
    if isinstance(cached, optuna.trial.FrozenTrial):
        return copy.deepcopy(cached)
    return trial.study._storage.get_trial(trial._trial_id)


def _rdb(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage | None:
    """The RDBStorage behind a study's storage (create_study wraps it in a cache), or None."""
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


def save_user_attrs(study: optuna.Study, trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """`trial.set_user_attr(key, value)` for every item, as one write: one transaction on an
    RDB storage (one upsert of all keys on PostgreSQL), so it stores all of them or none
    and may be retried whole; one `set_user_attr` per key on other storages. The stored
    keys and values are exactly those of `set_user_attr`."""
    if not attrs:
        return
    backend = _rdb(study._storage)
    if backend is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    model = models.TrialUserAttributeModel
    trial_id = trial._trial_id
    # ignore_integrity_error as Optuna's own set_trial_user_attr: an upsert has none to ignore
    with _create_scoped_session(backend.scoped_session, True) as session:
        if backend.engine.name == "postgresql":
            from sqlalchemy.dialects import postgresql

            found = models.TrialModel.find_or_raise_by_id(trial_id, session)
            backend.check_trial_is_updatable(trial_id, cast(TrialState, found.state))
            rows = [
                {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                for key, value in attrs.items()
            ]
            insert = postgresql.insert(model).values(rows)
            session.execute(
                insert.on_conflict_do_update(
                    index_elements=[model.trial_id, model.key],
                    set_={"value_json": insert.excluded.value_json},
                )
            )
        else:  # SQLite, MySQL: Optuna's own per-key statement, all in this one transaction
            for key, value in attrs.items():
                backend._set_trial_attr_without_commit(session, model, trial_id, key, value)
    trial._cached_frozen_trial.user_attrs.update(attrs)  # as set_user_attr keeps trial.user_attrs


class ParamHold:
    """Hold back a trial's parameter writes while it samples, then write them in one
    transaction: Optuna writes each `suggest_*` at once, one transaction per parameter.

        hold = ParamHold(trial)          # from here, suggest_* writes nothing
        try:
            candidate = sample_candidate(trial, ...)
        finally:
            persist(hold.write, ...)     # all of them, or none; the trial's storage back

    Only on an RDB storage; elsewhere it holds nothing. Safe for the retry of a dead
    worker's trial (the trial has all its parameters or none, and a retry without them
    samples afresh) and for other workers (their samplers read RUNNING trials only to
    avoid them; these parameters reach them a sampling's time later, milliseconds)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self._trial, self._storage = trial, trial.storage
        self._backend = _rdb(trial.storage)
        self._held: list[tuple[int, str, float, optuna.distributions.BaseDistribution]] = []
        if self._backend is not None:
            trial.storage = cast(optuna.storages.BaseStorage, self)  # Trial._suggest's writer

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: optuna.distributions.BaseDistribution,
    ) -> None:
        self._held.append((trial_id, param_name, param_value_internal, distribution))

    def __getattr__(self, name: str) -> Any:  # every other call: the storage's own
        return getattr(self._storage, name)

    def write(self) -> None:
        """Write what was held in one transaction (retry it whole on failure); stop holding."""
        self._trial.storage = self._storage
        if self._backend is None or not self._held:
            return
        from optuna.storages._rdb.storage import _create_scoped_session

        backend, cache = self._backend, self._storage
        # the distributions the study's cache knows: Optuna's check of compatibility with
        # earlier trials then needs no query per parameter (as _CachedStorage passes them)
        known: dict[str, Any] = {}
        if cache is not backend:
            with cache._lock:  # type: ignore[attr-defined]
                study_id, _ = cache._trial_id_to_study_id_and_number[self._held[0][0]]  # type: ignore[attr-defined]
                known = cache._studies[study_id].param_distribution  # type: ignore[attr-defined]
        with _create_scoped_session(backend.scoped_session, True) as session:
            for trial_id, name, value, distribution in self._held:
                previous = known.get(name)
                backend._set_trial_param_without_commit(
                    session, trial_id, name, value, distribution, previous
                )
        if cache is not backend:
            with cache._lock:  # type: ignore[attr-defined]
                for _, name, _, distribution in self._held:
                    known.setdefault(name, distribution)
        self._held = []
