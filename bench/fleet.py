"""Bench (the storage stage at fleet scale): W workers on one study, straight to
PostgreSQL and through PgBouncer, 10% of them killed mid-trial.

Each simulated worker is a thread with its own storage, as a pod has: ``open_study``
(its own RDBStorage and pool; its own lock engine, one per thread here), then the
product's protocol: ``job.search.tasks.claim_trial`` (budget lock, stale-trial check, count,
``ask``), ``job.storage.Heartbeat`` around a trial that sleeps 0.2-1 s (``--sleep``)
instead of training, ``study.tell``. Storage calls go through ``job.storage.persist``
as a worker's do; a worker that cannot open the study ("too many clients") is refused,
as a pod would exit 1. The threads share ``--processes`` spawned processes. A tenth of
the workers die in their first trial (the heartbeat stops, no tell, their connections
close): with ``heartbeat_interval_s`` 1 (``--heartbeat S``; the product's default is 10)
and ``grace_period_s`` 3 (3 S) a live worker's claim fails the trial as stale and
Optuna's retry callback queues a copy for the next claim.

PostgreSQL: a throwaway server (``job.testing.pgserver``, ``max_connections`` 100, its default).
PgBouncer (``job/testing/pgbouncer.py``) as ``k8s/components/pgbouncer`` sets it: transaction
pool mode, 40 pooled and at most 50 server connections, 1,000 clients. Per W and way
in, a fresh database; the clock runs from all workers open (or refused) to the last
done. Reported: trials/s; ms of the ``claim_trial`` calls that got a trial (p50/p99),
also of "later" ones only (after the worker's first: the start-up burst left out) and of
"wait" answers (every slot taken; a worker then polls every 2 s, as ``Worker.run``);
peak server connections (``pg_stat_activity``, polled every 0.1 s on a side connection);
workers refused, or given up mid-run; trials lost (budget not met, or left RUNNING) and
duplicated (COMPLETE past the budget, or a trial and its retries completing twice);
seconds from a kill to its retry being claimed.

    .venv/bin/python bench/fleet.py [--workers 16,64,256] [--processes 4]
        [--trials-per-worker 2] [--sleep 0.2,1.0] [--heartbeat 1] [--via direct,pgbouncer]
        [--deadline 240] [--lock-pause-max S] [--direct-waits-in-server]

One ``FLEET`` line per run, a markdown table, and last ``RESULT workers=<max W> lost=…
duplicated=… p99_claim_ms=… peak_connections=…`` for the largest W through PgBouncer.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import random
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from job.config import Config, parse_config
from job.search import tasks as search
from job.search.studies import open_study
from job.search.tasks import claim_trial
from job.storage import (
    Heartbeat,
    StorageDownError,
    close_study,
    frozen_trial,
    locks,
    open_storage,
    persist,
)
from job.testing.pgbouncer import bouncer
from job.testing.pgserver import PASSWORD, USER, Server, throwaway_server

optuna.logging.set_verbosity(optuna.logging.ERROR)

KILLED = 0.1  # the share of workers that die mid-trial
SLEEP_S = "0.2,1.0"  # a trial's length, uniform between the two (--sleep)
POLL_S = 2.0  # a worker's pause when every open slot runs elsewhere (Worker.run's)


def fleet_config(budget: int, heartbeat_s: int = 1) -> Config:
    """The study: a beat every `heartbeat_s` (the product's default is 10), stale after
    three missed (the default grace is 60 s: kills would take a minute to retry)."""
    study = {
        "name": "fleet", "budget": budget, "sampler": "random",
        "heartbeat_interval_s": heartbeat_s, "grace_period_s": 3 * heartbeat_s,
        "max_retry": 3, "db_outage_deadline_s": 20,
    }  # fmt: skip
    return parse_config({"study": study, "objectives": ["accuracy"]})


# ---- the worker side: threads in a spawned process -----------------------------------


def worker(i: int, task: dict[str, Any], out: dict[str, Any], ready: Any, go: Any) -> None:
    """One worker: open, say ready, wait for go, claim / beat / sleep / tell until done."""
    config = Config.model_validate(task["config"])
    url = task["url"]
    deadline = config.study.db_outage_deadline_s
    rng = random.Random(i)
    try:
        study = persist(lambda: open_study(config, url, worker_index=i), deadline, "open", url)
    except Exception as exc:  # refused for good (too many clients): this pod never starts
        out["refused"].append(f"{type(exc).__name__}: …{' '.join(str(exc).split())[-120:]}")
        ready.wait()
        return
    ready.wait()
    go.wait()
    dies_on = 1 if i in task["victims"] else 0  # its first trial, at a random point
    ran, claim = 0, functools.partial(claim_trial, study, config.study.budget, url)
    try:
        while True:
            t0 = time.perf_counter()
            claimed = persist(claim, deadline, "claim", url)
            ms = (time.perf_counter() - t0) * 1000
            if claimed == "done":
                break
            if claimed == "wait":
                out["waits"].append(ms)
                time.sleep(POLL_S)
                continue
            assert isinstance(claimed, optuna.Trial)
            out["claims" if ran else "first_claims"].append(ms)
            trial, ran = claimed, ran + 1
            history = RetryHeartbeatStaleTrialCallback.retry_history(frozen_trial(trial))
            if history:  # a retry: of history[-1], itself maybe a retry of history[-2]…
                out["retries"].append((history[-1], time.time()))
            seconds = rng.uniform(*task["sleep"])
            with Heartbeat(study, trial):
                if ran == dies_on:  # killed mid-trial: no more beats, no tell
                    time.sleep(seconds * rng.uniform(0.2, 0.8))
                    out["kills"].append((trial.number, time.time()))
                    break
                time.sleep(seconds)
            try:
                tell = functools.partial(study.tell, trial, [rng.random()])
                persist(tell, deadline, "tell", url)
            except optuna.exceptions.UpdateFinishedTrialError:
                out["told_stale"] += 1  # failed as stale meanwhile; its retry counts
    except StorageDownError as exc:
        out["gave_up"].append(f"…{' '.join(str(exc).split())[-120:]}")
    # done, killed or gave up: a pod's connections close when it ends
    close_study(study)
    locks._lock_engine(url).dispose()


def wait_in_server(conn: Any, key: int) -> Any:
    """`job.storage.locks._take` as a blocking wait inside PostgreSQL, for comparison:
    straight to the server only (through a transaction pool it can deadlock)."""
    transaction = conn.begin()
    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (key,))
    return transaction


def serve(task: dict[str, Any], results: Any, go: Any) -> None:
    """A spawned process: its share of the workers as threads; ("ready", (n refused,
    seconds to open)) once all have opened the study, then ("done", figures)."""
    out: dict[str, Any] = {
        "first_claims": [], "claims": [], "waits": [], "kills": [], "retries": [], "refused": [],
        "gave_up": [], "told_stale": 0, "held": [], "lock_waits": [],
    }  # fmt: skip
    if task["pause"]:  # a cap other than the product's, to see what it costs
        locks._LONGEST_PAUSE_S = task["pause"]
    if task["lock_wait"] == "server":  # the wait before this issue: blocked in the server
        locks._take = wait_in_server
    # each worker its own lock engine, as each pod has (the product's is one per URL and
    # process); not a URL of its own: PgBouncer would SET application_name at every hand-over
    mine_engine = threading.local()
    product_engine = locks._lock_engine.__wrapped__

    def lock_engine(url: str) -> Any:
        if not hasattr(mine_engine, "engine"):
            mine_engine.engine = product_engine(url)
        return mine_engine.engine

    locks._lock_engine = lock_engine  # type: ignore[assignment]
    product_lock = search.budget_lock

    @contextmanager
    def timed_lock(url: str, name: str) -> Iterator[None]:
        """The product's budget lock, timed: its wait, and the work done holding it."""
        t0 = time.perf_counter()
        with product_lock(url, name):
            t1 = time.perf_counter()
            try:
                yield
            finally:
                out["held"].append((time.perf_counter() - t1) * 1000)
                out["lock_waits"].append((t1 - t0) * 1000)

    search.budget_lock = timed_lock  # type: ignore[assignment]  # claim_trial's, by name
    mine = task["workers"]
    ready = threading.Barrier(len(mine) + 1)
    started = threading.Event()
    opening = time.time()
    threads = [
        threading.Thread(target=worker, args=(i, task, out, ready, started), daemon=True)
        for i in mine
    ]
    for thread in threads:
        thread.start()
    ready.wait()
    results.put(("ready", (len(out["refused"]), time.time() - opening)))
    go.wait()
    started.set()
    for thread in threads:
        thread.join(task["deadline"])
    out["unfinished"] = sum(thread.is_alive() for thread in threads)
    results.put(("done", out))


# ---- the parent side -------------------------------------------------------------------


def connect(server: Server, database: str) -> Any:
    """A psycopg2 connection (autocommit) straight to the server's `database`."""
    import psycopg2  # type: ignore[import-untyped]  # no stubs installed

    conn = psycopg2.connect(
        host="127.0.0.1", port=server.port, user=USER, password=PASSWORD, dbname=database
    )
    conn.autocommit = True
    return conn


def max_connections(server: Server, fix: bool = True) -> int:
    """The server's max_connections, made 100 (PostgreSQL's default, which the issue's
    sizes assume; initdb picks less where memory is short) with a restart if need be."""
    conn = connect(server, "postgres")
    with conn.cursor() as cur:
        cur.execute("SHOW max_connections")
        value = int(cur.fetchone()[0])
        if value != 100 and fix:
            cur.execute("ALTER SYSTEM SET max_connections = 100")
    conn.close()
    if value == 100 or not fix:
        return value
    server.stop()
    server.start()
    return max_connections(server, fix=False)


class Peak:
    """The most connections PostgreSQL had to one database, polled every 0.1 s from a
    side connection (opened first, so a full server cannot refuse it)."""

    QUERY = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"

    def __init__(self, server: Server, database: str) -> None:
        self.conn = connect(server, database)
        self.database, self.peak, self.stop = database, 0, threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()

    def poll(self) -> None:
        while not self.stop.wait(0.1):
            with self.conn.cursor() as cur:
                cur.execute(self.QUERY, (self.database,))
                self.peak = max(self.peak, int(cur.fetchone()[0]))

    def close(self) -> int:
        self.stop.set()
        self.thread.join()
        self.conn.close()
        return self.peak


def audit(url: str, budget: int, killed: set[int]) -> dict[str, Any]:
    """What the finished study holds: COMPLETE, left RUNNING or WAITING, duplicates
    (COMPLETE past the budget, or a trial and its retries completing more than once), and
    the killed trials that have no retry (with their states)."""
    try:
        study = optuna.load_study(study_name="fleet", storage=open_storage(url))
    except KeyError:  # no worker ever created it (every one refused)
        return {"complete": 0, "running": 0, "waiting": 0, "duplicated": 0, "unretried": []}
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    states = [t.state for t in trials]
    lineage: dict[int, int] = {}  # the original of each COMPLETE trial → how many
    for trial in trials:
        if trial.state != TrialState.COMPLETE:
            continue
        root = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)  # the first
        root = trial.number if root is None else root
        lineage[root] = lineage.get(root, 0) + 1
    complete = states.count(TrialState.COMPLETE)
    retried = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    unretried = [(n, by_number[n].state.name) for n in sorted(killed - retried)]
    return {
        "complete": complete,
        "running": states.count(TrialState.RUNNING),
        "waiting": states.count(TrialState.WAITING),
        "duplicated": max(0, complete - budget) + sum(n - 1 for n in lineage.values()),
        "unretried": unretried,
    }


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run(
    server: Server, via: str, url: str, workers: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One configuration: W workers on a fresh study through `url`; its figures."""
    budget = max(32, args.trials_per_worker * workers)
    database = url.rsplit("/", 1)[1]
    config = fleet_config(budget, args.heartbeat)
    victims = set(random.Random(workers).sample(range(workers), round(KILLED * workers)))
    ctx = mp.get_context("spawn")
    results, go = ctx.Queue(), ctx.Event()
    task = {"config": config.model_dump(mode="json"), "url": url, "victims": victims}
    task |= {"deadline": args.deadline, "pause": args.lock_pause_max}
    task["sleep"] = tuple(float(x) for x in args.sleep.split(","))
    task["lock_wait"] = "server" if via == "direct" and args.direct_waits_in_server else "ours"
    shares = [list(range(p, workers, args.processes)) for p in range(args.processes)]
    procs = [
        ctx.Process(target=serve, args=({**task, "workers": share}, results, go))
        for share in shares
        if share
    ]
    peak = Peak(server, database)
    opening = time.time()
    for proc in procs:
        proc.start()
    readies = [results.get(timeout=900)[1] for _ in procs]
    refused = sum(n for n, _ in readies)
    open_study_s = max(s for _, s in readies)
    start = time.time()
    go.set()
    outs = [results.get(timeout=args.deadline + 300)[1] for _ in procs]
    wall = time.time() - start
    for proc in procs:
        proc.join(30)
        if proc.is_alive():
            proc.terminate()
    peaked = peak.close()
    later = sorted(c for out in outs for c in out["claims"])  # once a worker has run a trial
    claims = sorted(later + [c for out in outs for c in out["first_claims"]])
    waits = sorted(c for out in outs for c in out["waits"])
    held = sorted(c for out in outs for c in out["held"])
    lock_waits = sorted(c for out in outs for c in out["lock_waits"])
    kills = dict(k for out in outs for k in out["kills"])
    retried: dict[int, float] = {}
    for number, at in (r for out in outs for r in out["retries"]):
        retried[number] = min(at, retried.get(number, at))
    delays = [retried[n] - at for n, at in kills.items() if n in retried]
    found = audit(server.url(database), budget, set(kills))
    return {
        "via": via, "workers": workers, "budget": budget,
        "open_s": open_study_s, "start_s": start - opening,
        "wall_s": wall, "trials_per_s": found["complete"] / wall,
        "claim_p50_ms": percentile(claims, 0.5),
        "claim_p99_ms": percentile(claims, 0.99),
        "later_p50_ms": percentile(later, 0.5), "later_p99_ms": percentile(later, 0.99),
        "waits": len(waits), "wait_p99_ms": percentile(waits, 0.99),
        "locked": len(held), "lock_wait_p99_ms": percentile(lock_waits, 0.99),
        "held_p50_ms": percentile(held, 0.5), "held_p99_ms": percentile(held, 0.99),
        "peak_connections": peaked, "refused": refused,
        "gave_up": sum(len(out["gave_up"]) for out in outs),
        "unfinished": sum(out["unfinished"] for out in outs),
        "lost": max(0, budget - found["complete"]) + found["running"],
        "duplicated": found["duplicated"], "killed": len(kills), "retried": len(delays),
        "retry_s": sum(delays) / len(delays) if delays else float("nan"),
        "retry_s_max": max(delays) if delays else float("nan"),
        "told_stale": sum(out["told_stale"] for out in outs), "unretried": found["unretried"],
        "why": (next((r for out in outs for r in out["refused"]), "") or
                next((g for out in outs for g in out["gave_up"]), "")),
    }  # fmt: skip


COLUMNS = (
    ("via", "{}"), ("workers", "{}"), ("budget", "{}"), ("trials_per_s", "{:.1f}"),
    ("claim_p50_ms", "{:.0f}"), ("claim_p99_ms", "{:.0f}"), ("later_p50_ms", "{:.0f}"),
    ("later_p99_ms", "{:.0f}"), ("waits", "{}"), ("wait_p99_ms", "{:.0f}"),
    ("locked", "{}"), ("lock_wait_p99_ms", "{:.0f}"), ("held_p50_ms", "{:.1f}"),
    ("held_p99_ms", "{:.1f}"),
    ("peak_connections", "{}"),
    ("refused", "{}"), ("gave_up", "{}"), ("lost", "{}"), ("duplicated", "{}"),
    ("killed", "{}"), ("retried", "{}"), ("retry_s", "{:.1f}"), ("retry_s_max", "{:.1f}"),
    ("open_s", "{:.1f}"), ("start_s", "{:.0f}"), ("wall_s", "{:.0f}"),
)  # fmt: skip


def line(row: dict[str, Any]) -> str:
    return "FLEET " + " ".join(f"{key}={fmt.format(row[key])}" for key, fmt in COLUMNS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="16,64,256", help="worker counts, comma-separated")
    parser.add_argument("--processes", type=int, default=4, help="processes the threads share")
    parser.add_argument("--sleep", default=SLEEP_S, help="a trial's seconds: min,max")
    parser.add_argument("--heartbeat", type=int, default=1, help="heartbeat interval, s")
    parser.add_argument("--trials-per-worker", type=int, default=2, help="budget = this x W")
    parser.add_argument("--deadline", type=float, default=240, help="seconds a run may take")
    parser.add_argument("--lock-pause-max", type=float, help="the lock's longest pause, s")
    parser.add_argument("--direct-waits-in-server", action="store_true", help="as before")
    parser.add_argument("--via", default="direct,pgbouncer", help="direct, pgbouncer or both")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",") if w.strip()]
    rows = []
    with ExitStack() as stack:
        server = stack.enter_context(throwaway_server(required=True))
        assert server is not None
        print(f"PostgreSQL max_connections={max_connections(server)}", flush=True)
        pool = stack.enter_context(bouncer(server))
        print(f"PgBouncer {pool.settings}", flush=True)
        for workers in counts:
            for via in args.via.split(","):
                direct = server.new_database()
                url = direct if via == "direct" else pool.url(direct)
                rows.append(run(server, via, url, workers, args))
                print(line(rows[-1]), flush=True)
                if rows[-1]["why"]:
                    print(f"  first refusal: {rows[-1]['why']}", flush=True)
                if rows[-1]["unretried"]:
                    print(f"  killed, never retried: {rows[-1]['unretried']}", flush=True)
    print("\n| " + " | ".join(key for key, _ in COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(fmt.format(row[key]) for key, fmt in COLUMNS) + " |")
    last = [r for r in rows if r["via"] == "pgbouncer" and r["workers"] == max(counts)]
    if last:
        r = last[-1]
        print(
            f"RESULT workers={r['workers']} lost={r['lost']} duplicated={r['duplicated']} "
            f"p99_claim_ms={r['claim_p99_ms']:.0f} p99_later_claim_ms={r['later_p99_ms']:.0f} "
            f"peak_connections={r['peak_connections']} "
            f"trials_per_s={r['trials_per_s']:.1f} retry_s={r['retry_s']:.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
