"""The storage stage behind a transaction-mode PgBouncer: a real PgBouncer
(job/testing/pgbouncer.py) in front of the suite's PostgreSQL (the component's
manifests: tests/deploy/test_pgbouncer_component.py).

Why the locks are what they are (job/storage/locks.py): a session advisory lock leaks to
the next client of its pooled server connection, and a client waiting for a lock inside
the server starves the holder of the pool; transaction locks waited for by retrying
serialise through the pooler. Then the acceptance run (4 workers, one SIGKILLed, one
preempted, exactly the budget) through PgBouncer.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2  # type: ignore[import-untyped]  # no stubs installed
import pytest
from sqlalchemy.engine import make_url

from job.storage import database_lock
from job.storage.locks import lock_key
from job.testing.pgbouncer import Bouncer, bouncer, find_binary
from job.testing.pgserver import External, Server
from tests.support.scenarios import four_workers_one_killed_one_preempted_exact_budget

# --- a real PgBouncer in front of the suite's PostgreSQL ------------------------------


@pytest.fixture(scope="module")
def server(postgres: Server | External) -> Server:
    if not isinstance(postgres, Server):
        pytest.skip("PgBouncer is started in front of the suite's own throwaway server")
    if find_binary(required=os.environ.get("CI") == "true") is None:
        pytest.skip("no pgbouncer here: apt-get install pgbouncer (under CI=true this fails)")
    return postgres


@pytest.fixture(scope="module")
def pool(server: Server) -> Iterator[Bouncer]:
    """A PgBouncer as the component configures it, but with 2 server connections."""
    with bouncer(server, default_pool_size=2, max_db_connections=2) as running:
        yield running


def _connect(url: str, autocommit: bool = True) -> Any:
    """A psycopg2 connection to the database `url` names; without `autocommit` its first
    statement begins a transaction (pinning a server connection through PgBouncer)."""
    parts = make_url(url)
    conn = psycopg2.connect(
        host=parts.host, port=parts.port, user=parts.username, password=parts.password,
        dbname=parts.database,
    )  # fmt: skip
    conn.autocommit = autocommit
    return conn


def _one(conn: Any, sql: str, *args: object) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()[0]


def test_a_session_lock_leaks_to_the_next_client_through_pgbouncer(server: Server) -> None:
    """Why `pg_advisory_lock` had to go: behind a transaction pool, client B is handed
    the server connection on which client A took the lock, and takes it "again"."""
    with bouncer(server, default_pool_size=1, max_db_connections=1) as one:
        url = one.url(server.new_database())
        a, b = _connect(url), _connect(url)
        try:
            _one(a, "SELECT pg_advisory_lock(%s)", 42)  # held by A's session, A thinks
            assert _one(b, "SELECT pg_try_advisory_lock(%s)", 42) is True  # two holders
            assert _one(a, "SELECT pg_backend_pid()") == _one(b, "SELECT pg_backend_pid()")
        finally:
            a.close()
            b.close()


def test_a_waiter_inside_the_server_starves_the_holder_of_the_pool(
    server: Server, pool: Bouncer
) -> None:
    """Why the wait is ours: with both pooled server connections taken, one by the
    holder's lock transaction and one by a client blocked in `pg_advisory_xact_lock`,
    the holder's own next query (on another client connection, as Optuna's) waits."""
    direct = server.new_database()
    url = pool.url(direct)
    holder, waiter, work = _connect(url, False), _connect(url, False), _connect(url)
    watch = _connect(direct)  # straight to the server, beside the pool
    try:
        assert _one(holder, "SELECT pg_try_advisory_xact_lock(%s)", 7) is True
        wait = (waiter, "SELECT pg_advisory_xact_lock(%s)", 7)
        blocked = threading.Thread(target=_one, args=wait)
        blocked.start()
        waiting = (
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        deadline = time.monotonic() + 120  # a hang guard: the wait is for a state
        while _one(watch, waiting) == 0:  # until the waiter is blocked in the server
            assert time.monotonic() < deadline, "the waiter never blocked in the server"
            time.sleep(0.05)
        answered: list[int] = []
        query = threading.Thread(target=lambda: answered.append(_one(work, "SELECT 1")))
        query.start()
        query.join(1.0)  # however long it is given, it cannot be answered before the commit
        assert not answered  # starved: no server connection for the holder's work
        holder.commit()  # the lock goes; the waiter takes it, commits, frees its connection
        blocked.join(120)
        assert not blocked.is_alive()
        waiter.commit()
        query.join(120)
        assert answered == [1]
    finally:
        for conn in (holder, waiter, work, watch):
            conn.close()


def test_database_lock_serialises_more_waiters_than_server_connections(
    server: Server, pool: Bouncer
) -> None:
    """Six threads (four lock connections at a time, the lock engine's pool) share two
    server connections; each holder queries through the same pool while it holds the
    lock: one holder at a time, nobody starved, every lock released (COMMIT)."""
    url = pool.url(server.new_database())
    inside: list[int] = []
    overlaps, done = [], []

    def claim(i: int) -> None:
        for _ in range(3):
            with database_lock(url, "budget:pooled"):
                inside.append(i)
                if len(inside) > 1:
                    overlaps.append(list(inside))
                work = _connect(url)  # the holder's own queries, as Optuna's engine's
                try:
                    assert _one(work, "SELECT 1") == 1
                finally:
                    work.close()
                time.sleep(0.01)
                inside.remove(i)
        done.append(i)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(done) == list(range(6)) and not overlaps
    check = _connect(url, autocommit=False)
    try:  # released: a fresh transaction takes it at once
        assert _one(check, "SELECT pg_try_advisory_xact_lock(%s)", lock_key("budget:pooled"))
    finally:
        check.close()


class _Pooled:
    """The `postgres` fixture's face for test_postgres' scenarios: each new database
    is reached through PgBouncer."""

    def __init__(self, server: Server, pool: Bouncer) -> None:
        self.server, self.pool = server, pool

    def new_database(self) -> str:
        return self.pool.url(self.server.new_database())


def test_exact_budget_with_a_killed_and_a_preempted_worker_through_pgbouncer(
    server: Server, tmp_path: Path
) -> None:
    """The acceptance run of tests/integration/test_postgres.py, as it is, through a PgBouncer of 4
    server connections for 4 workers' ~12 client connections (and the test's own)."""
    with bouncer(server, default_pool_size=4, max_db_connections=4) as four:
        pooled: Any = _Pooled(server, four)
        four_workers_one_killed_one_preempted_exact_budget(pooled, tmp_path)
