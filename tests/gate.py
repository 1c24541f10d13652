"""A gate for fault tests: a worker's trial waits, mid-trial, until the test lets it go.

Fault tests (kill a worker mid-trial, preempt it, cut its database off) used to poll the
study for a RUNNING trial and then act, racing the trial: a tiny trial is over in a
fraction of a second, and the machine's speed decided whether the poll ever saw it
(`make test` failed so once in 969 runs). Here the trial waits for the test instead, and
the test waits for a state (this worker is blocked in its trial), never for a moment.

Test-only, in this module only: the product has no test code path. Run

    python -m tests.gate VERB ARGS…     (instead of `python -m job VERB ARGS…`)

and, in that process only, before the verb runs:

- every `job.search.worker.Worker` is a `GatedWorker`, whose training passes a gate when the
  environment names one (`TESTS_GATE`, a folder): the trial, RUNNING with its
  parameters saved and its heartbeat beating, writes `blocked-<pid>` there and waits
  until `open` appears there or the worker is told to stop (SIGTERM: it then goes on and
  checkpoints at the next step, as a real preemption does). It waits before training,
  or after epoch `TESTS_GATE_AFTER_EPOCH` (then a checkpoint has epochs in it), and only
  for the trials `TESTS_GATE_ON` names: `all` (default), `search`, `retrain` or
  `baseline` (baseline retrains only). A storage call of a gated worker that raises
  (the database is down) writes `outage-<pid>` before `job.storage.persist` retries it;
- worker processes that this process starts (`run`'s workers, a pod's children, all
  `python -m job …`) are started as `python -m tests.gate …` instead, so they are gated
  alike; they inherit the environment.

Once `open` exists no trial waits: the gate is one-shot. The test side is `Gate`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import job.search.worker
from job.search.retrain import Retrain
from job.search.worker import Worker

__all__ = ["Gate", "GatedWorker", "install", "main"]

GATE = "TESTS_GATE"  # the gate's folder; unset: no gate
AFTER_EPOCH = "TESTS_GATE_AFTER_EPOCH"  # 0 (default): before training
ON = "TESTS_GATE_ON"  # all | search | retrain | baseline
KINDS = ("all", "search", "retrain", "baseline")
OPEN = "open"
POLL_S = 0.02  # how often a blocked trial looks for `open` (it waits; nothing races it)

T = TypeVar("T")


# --- in the gated worker process ------------------------------------------------------


def _mark(name: str, info: Mapping[str, Any]) -> None:
    """`name` in the gate's folder, whole or absent (a test reads it at any moment)."""
    folder = Path(os.environ[GATE])
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(dict(info)), encoding="utf-8")
    os.replace(tmp, folder / name)


def _wait_at_gate(stop: threading.Event | None, where: str) -> None:
    """Blocks until the gate is open or `stop` is set (SIGTERM)."""
    folder = Path(os.environ[GATE])
    if (folder / OPEN).exists():
        return
    index = os.environ.get("SMS_WORKER_INDEX", "")
    _mark(f"blocked-{os.getpid()}", {"pid": os.getpid(), "index": index, "where": where})
    while not (folder / OPEN).exists():
        if stop is not None and stop.wait(POLL_S):
            return  # preempted: training goes on to its next step, which checkpoints
        if stop is None:
            time.sleep(POLL_S)


def _gated_train(inner: Callable[..., Any], kind: str, *args: Any, **kwargs: Any) -> Any:
    """`inner(*args, **kwargs)` (job.ml.train.train's call), past the gate when one applies."""
    on = os.environ.get(ON, "all")
    applies = on in ("all", kind) or (on == "retrain" and kind == "baseline")
    if not os.environ.get(GATE) or not applies:
        return inner(*args, **kwargs)
    stop = kwargs.get("stop")
    after = int(os.environ.get(AFTER_EPOCH, "0"))
    if after <= 0:
        _wait_at_gate(stop, "before training")
        return inner(*args, **kwargs)
    on_epoch = kwargs.get("on_epoch")

    def gated_on_epoch(record: Any) -> None:
        if on_epoch is not None:
            on_epoch(record)
        if record.epoch == after:  # not again in a retry resumed past it
            _wait_at_gate(stop, f"after epoch {after}")

    return inner(*args, **{**kwargs, "on_epoch": gated_on_epoch})


class GatedWorker(Worker):
    """A `Worker` whose training passes the gate (the module's docstring says when)."""

    _gate_kind = "search"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        inner = getattr(self.train_fn, "gate_inner", self.train_fn)  # a retrainer gets ours

        def gated(*args: Any, **kwargs: Any) -> Any:
            return _gated_train(inner, self._gate_kind, *args, **kwargs)

        gated.gate_inner = inner  # type: ignore[attr-defined]
        self.train_fn = gated

    def _run(self, run: Any, data: Any) -> Any:
        spec = Retrain.of(run.frozen)  # None: a search trial
        self._gate_kind = "search" if spec is None else "retrain"
        if spec is not None and spec.role == "baseline":
            self._gate_kind = "baseline"
        return super()._run(run, data)

    def _persist(self, call: Callable[[], T], what: str) -> T:
        def noted() -> T:
            try:
                return call()
            except Exception:
                if os.environ.get(GATE):
                    _mark(f"outage-{os.getpid()}", {"pid": os.getpid(), "while": what})
                raise

        return super()._persist(noted, what)


class _GatedPopen(subprocess.Popen):  # type: ignore[type-arg]
    """`python -m job …` started from a gated process is gated too."""

    def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
        if isinstance(args, (list, tuple)) and list(args[1:3]) == ["-m", "job"]:
            args = [args[0], "-m", "tests.gate", *args[3:]]
        super().__init__(args, *rest, **kwargs)


def install() -> None:
    """This process's workers are gated, and so are the worker processes it starts."""
    for name in ("_run", "_persist"):  # what GatedWorker hooks into
        if not hasattr(Worker, name):
            raise RuntimeError(f"tests/gate.py: job.search.worker.Worker has no {name} any more")
    job.search.worker.Worker = GatedWorker  # type: ignore[misc]
    subprocess.Popen = _GatedPopen  # type: ignore[misc]


def main(argv: Sequence[str] | None = None) -> int:
    install()
    from job.cli.main import main as job_main  # after install: it finds GatedWorker

    return job_main(list(argv) if argv is not None else None)


# --- in the test ----------------------------------------------------------------------


@dataclass(frozen=True)
class Gate:
    """A closed gate in `folder`: `env()` and `command()` start gated workers, `wait_*`
    waits for a state they are in, `open()` lets every trial go on."""

    folder: Path
    after_epoch: int = 0
    on: str = "all"
    timeout_s: float = 300.0  # a hang guard, not a speed assumption: each wait is a state

    def __post_init__(self) -> None:
        assert self.on in KINDS, self.on
        self.folder.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        return {GATE: str(self.folder), AFTER_EPOCH: str(self.after_epoch), ON: self.on}

    @staticmethod
    def command(*args: str) -> list[str]:
        """`python -m tests.gate ARGS…`: `python -m job ARGS…`, gated (run it in ROOT)."""
        return [sys.executable, "-m", "tests.gate", *args]

    def open(self) -> None:
        (self.folder / OPEN).touch()

    def markers(self, kind: str = "blocked") -> dict[int, dict[str, Any]]:
        """pid → what the process wrote, for every `kind-<pid>` marker there now."""
        found = {}
        for path in self.folder.glob(f"{kind}-*"):
            found[int(path.name.rsplit("-", 1)[1])] = json.loads(path.read_text())
        return found

    def wait(
        self,
        what: str,
        found: Callable[[], T | None],
        watch: Sequence[subprocess.Popen[Any]] = (),
        poll_s: float = 0.05,
    ) -> T:
        """`found()`'s first answer that is not None; a process of `watch` that ends
        first, or `timeout_s` without one, fails the test naming `what`."""
        give_up = time.monotonic() + self.timeout_s
        while True:
            if (result := found()) is not None:
                return result
            for proc in watch:
                if proc.poll() is not None:
                    raise AssertionError(f"pid {proc.pid} exited {proc.returncode} before {what}")
            if time.monotonic() > give_up:
                raise AssertionError(f"not seen in {self.timeout_s:.0f} s: {what}")
            time.sleep(poll_s)

    def wait_blocked(
        self, procs: Sequence[subprocess.Popen[Any]], watch: Sequence[subprocess.Popen[Any]] = ()
    ) -> None:
        """Until every process of `procs` is blocked in a trial at the gate."""
        pids = {proc.pid for proc in procs}
        self.wait(
            f"pids {sorted(pids)} blocked at the gate",
            lambda: True if pids <= set(self.markers()) else None,
            [*procs, *watch],
        )

    def wait_index(self, index: int, watch: Sequence[subprocess.Popen[Any]] = ()) -> int:
        """The pid of the worker with SMS_WORKER_INDEX `index`, once it is blocked."""
        return self.wait(
            f"worker {index} blocked at the gate",
            lambda: next(
                (pid for pid, info in self.markers().items() if info["index"] == str(index)),
                None,
            ),
            watch,
        )


if __name__ == "__main__":
    sys.exit(main())
