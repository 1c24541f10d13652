"""Bench helper: worker processes on one PostgreSQL, shared by bench/scale.py and storage.py.

The scaling and storage benches time several runs (1, 2, 4, ... workers) each; starting
fresh interpreters and importing torch and optuna per run would dwarf what they measure,
so the processes are spawned once. A worker process runs ``serve(index, tasks, go,
results)``: for each task it opens the study, puts ``("ready", index)``, blocks on ``go``,
runs, and puts ``("done", figures)`` or ``("error", traceback)``; None ends it. Also here:
the command-line options both benches take, the server they run on, and phase timing.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any


class Pool:
    """`size` processes running `serve` ("spawn": fresh interpreters), reused for every run."""

    def __init__(self, size: int, serve: Callable[[int, Any, Any, Any], None]) -> None:
        ctx = mp.get_context("spawn")
        self.results = ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(size)]
        self.gos = [ctx.Queue() for _ in range(size)]
        self.procs = [
            ctx.Process(target=serve, args=(i, self.tasks[i], self.gos[i], self.results))
            for i in range(size)
        ]
        for proc in self.procs:
            proc.start()

    def _get(self, timeout: float = 1800.0) -> Any:
        kind, payload = self.results.get(timeout=timeout)
        if kind == "error":
            raise RuntimeError(payload)
        return payload

    def run(self, task: dict[str, Any], workers: int) -> tuple[float, list[dict[str, Any]]]:
        """The first `workers` processes run `task`: the go time (time.time()), their figures."""
        for i in range(workers):
            self.tasks[i].put(task)
        for _ in range(workers):
            self._get()  # ready: the study is open in every worker, start-up is not timed
        start = time.time()
        for i in range(workers):
            self.gos[i].put("go")
        return start, [self._get() for _ in range(workers)]

    def close(self) -> None:
        for queue in self.tasks:
            queue.put(None)
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()


def add_run_args(parser: argparse.ArgumentParser, workers: str) -> None:
    """--workers (counts, default `workers`) and --database-url."""
    parser.add_argument("--workers", default=workers, help="worker counts, comma-separated")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="a PostgreSQL server (role with CREATEDB); default DATABASE_URL, else a "
        "throwaway server",
    )


def worker_counts(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[int]:
    """--workers as integers; a usage error (exit 2) unless all are positive."""
    counts = [int(w) for w in args.workers.split(",") if w.strip()]
    if not counts or min(counts) < 1:
        parser.error(f"--workers: positive integers, e.g. {parser.get_default('workers')}")
    return counts


def postgres_server(stack: ExitStack, url: str | None) -> Any:
    """The server `url` names, else a throwaway one from the local binaries (as the test
    suite starts), removed when `stack` closes; missing binaries are an error. Either makes a fresh
    database per run (`new_database()`)."""
    from job.testing.pgserver import External, throwaway_server

    return External(url) if url else stack.enter_context(throwaway_server(required=True))


def timed(sums: dict[str, float], phase: str, call: Any) -> Any:
    """`call`, adding the seconds each call takes to sums[phase]."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            sums[phase] += time.perf_counter() - start

    return wrapper
