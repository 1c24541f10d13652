"""Bench helper: worker processes started once and reused for every run of a bench.

The scaling and storage benches time several runs (1, 2, 4, ... workers) each; starting
fresh interpreters and importing torch and optuna per run would dwarf what they measure,
so the processes are spawned once. A worker process runs ``serve(index, tasks, go,
results)``: for each task it opens the study, puts ``("ready", index)``, blocks on ``go``,
runs, and puts ``("done", figures)`` or ``("error", traceback)``; None ends it.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
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
