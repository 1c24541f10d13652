"""`Store`: one opened storage and what goes with it, passed where a bare URL used to go.

A worker, its tasks and `run` hold the study's storage as one `Store`: the opened Optuna
storage (heartbeats set from the config), the URL (for engines and locks; never shown),
its redacted form for messages, the advisory locks' engine, and the outage deadline
that `persist` rides a database restart out to. `open_storage(url, config)` and the
URL-taking functions stay for the verbs, whose URL comes from flags.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import optuna
import sqlalchemy

from job.config import Config
from job.storage import locks
from job.storage.base import JOURNAL, persist
from job.storage.store import open_storage, study_exists
from job.urls import redact

T = TypeVar("T")

DEFAULT_DEADLINE_S = 300.0  # study.db_outage_deadline_s's default, for a Store without config


@dataclass(frozen=True, eq=False)
class Store:
    """An opened storage: `Store.open(url, config)`, or `Store.of(url_or_store, config)`
    where a caller may hold either. Its repr shows the URL redacted."""

    url: str = field(repr=False)  # the full URL, password included: for engines only
    storage: optuna.storages.BaseStorage = field(repr=False)
    deadline_s: float = DEFAULT_DEADLINE_S  # how long `persist` rides out an outage
    engine: sqlalchemy.Engine | None = field(default=None, repr=False)  # advisory locks

    @classmethod
    def open(cls, url: str, config: Config | None = None) -> Store:
        """Open the storage at `url` (`open_storage`: `StorageURLError`,
        `StorageDownError`); heartbeats and the deadline from `config` when given."""
        storage = open_storage(url, config)
        deadline = config.study.db_outage_deadline_s if config is not None else DEFAULT_DEADLINE_S
        return cls(url, storage, deadline, locks.lock_engine(url))

    @classmethod
    def of(cls, store: Store | str, config: Config | None = None) -> Store:
        """`store` itself, or the storage at the URL `store` opened."""
        return store if isinstance(store, Store) else cls.open(store, config)

    @property
    def shown(self) -> str:
        """The URL with its password masked, for messages."""
        return redact(self.url)

    @property
    def journal(self) -> bool:
        return self.url.startswith(JOURNAL)

    def __repr__(self) -> str:
        return f"Store({self.shown!r}, deadline_s={self.deadline_s:g})"

    def persist(
        self, call: Callable[[], T], what: str, also: tuple[type[Exception], ...] = ()
    ) -> T:
        """`call()`, retried through an outage up to the deadline (`job.storage.persist`)."""
        return persist(call, self.deadline_s, what, self.url, also)

    def lock(self, name: str) -> AbstractContextManager[None]:
        """The advisory lock `name` (`database_lock`) on this store's lock engine."""
        return locks.database_lock(self.url, name, self.engine)

    def budget_lock(self, study_name: str) -> AbstractContextManager[None]:
        """The claim lock of study `study_name` (`budget_lock`)."""
        return locks.budget_lock(self.url, study_name, self.engine)

    def exists(self, name: str) -> bool:
        """Whether the storage holds study `name` (`study_exists`)."""
        return study_exists(self.url, name)

    def hold(self) -> None:
        """This process uses the store's journal study until it exits (`hold_study`)."""
        locks.hold_study(self.url)


@contextmanager
def budget_lock(store: Store | str, study_name: str) -> Iterator[None]:
    """Serialise count-and-ask among all workers of study `study_name` (a PostgreSQL
    advisory lock; a file lock beside a journal), given a `Store` or a URL."""
    if isinstance(store, Store):
        with store.budget_lock(study_name):
            yield
    else:
        with locks.budget_lock(store, study_name):
            yield
