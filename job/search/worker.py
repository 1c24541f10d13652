"""The worker role (`search`): claim a trial, run it, record it, tell — until the task is done.

Every worker (a process locally, a pod in Kubernetes) runs this same loop on one shared
Optuna study; where the study lives is `job.storage`'s business (a `Store`). The loop
runs one task (`job.search.tasks.Task`: claim, run, hand back): the search task by
default, the retrain task (`job.search.retrain.RetrainTask`) for verification.

Exact budget. The study needs `study.budget` COMPLETE trials. A worker takes a new
trial only when COMPLETE + RUNNING trials fall short of the budget, and it counts and
asks under one lock (a PostgreSQL advisory lock per study; a file lock beside a
journal), so two workers can never both take the last slot. A worker that finds every
slot taken but the budget not met (trials still running elsewhere) waits: if one of
those fails, it takes the freed slot.

Pruning (`study.pruning`, job.search.prune): after each epoch the task judges the trial
(`Task.judge`); one stopped at a rung raises `Pruned` through training, records where
and how it ranked, and is told PRUNED (no values, no retry). Budgets: job.search.budget.

A failed trial (NaN loss, out of memory, a network that cannot run, any other error
inside the trial) is told FAIL with its reason in the user attrs; the worker goes on,
unless its trials keep failing (`MAX_ERRORS_IN_A_ROW`, `MAX_FAILURES_IN_A_ROW`): then it
stops with `TrialsKeepFailing` (the CLI: exit 2, one line quoting the first failure).

Verification (`job.search.retrain`): once the budget is met, the same loop runs on the
study `<study>-verify` (`Worker(…, task=RetrainTask.opener(weights_dir))`), taking
queued retrains of the models worth keeping until none is left, with the same
heartbeats, retries and preemption.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from job import logs
from job.config import Config, config_fingerprint
from job.errors import BadInput
from job.ml.data import Dataset, load_data
from job.ml.train import EpochRecord, Preempted, TrainError, train
from job.search.prune import Pruned
from job.search.record import STUDY_DATA, STUDY_PREPARATION, TrialAttrs, enqueue, save
from job.search.retrain import RetrainTask
from job.search.studies import (
    DataChanged,
    check_existing_study_data,
    check_study_data,
    code_version,
    fix_study_data,
    make_sampler,
    open_study,
)
from job.search.tasks import SearchTask, Task, TaskOpener, TrainFn, TrialRun, claim_trial
from job.storage import (
    JOURNAL,
    Heartbeat,
    Store,
    count_states,
    frozen_trial,
    redact,
    resolve_storage,
    save_curve,
    tell_pruned,
)

if TYPE_CHECKING:
    from job.serve.metrics import WorkerMetrics

__all__ = [
    "JOURNAL",
    "MAX_ERRORS_IN_A_ROW",
    "MAX_FAILURES_IN_A_ROW",
    # the names callers (the CLI, `run`, benchmarks, tests) have imported from here
    "STUDY_DATA",
    "STUDY_PREPARATION",
    "DataChanged",
    "RetrainTask",
    "SearchTask",
    "Store",
    "TrialsKeepFailing",
    "Worker",
    "check_existing_study_data",
    "check_study_data",
    "claim_trial",
    "code_version",
    "count_states",
    "fix_study_data",
    "make_sampler",
    "open_study",
    "redact",
    "resolve_storage",
    "stop_on_sigterm",
]

# A worker whose trials keep failing stops (exit 2, one line quoting the first failure
# of the streak) instead of spinning: after MAX_ERRORS_IN_A_ROW failing with `error` (an
# exception no sampled network explains: a bug, a device gone, a recipe that cannot run),
# or MAX_FAILURES_IN_A_ROW failing for any reason (a space whose networks never fit,
# a recipe whose loss is always NaN). A COMPLETE trial starts the count again.
MAX_ERRORS_IN_A_ROW = 3
MAX_FAILURES_IN_A_ROW = 25


class TrialsKeepFailing(BadInput):
    """Every trial of a streak failed; the message quotes the first one's reason."""


T = TypeVar("T")


def _stop_if_failing(streak: list[tuple[int, str, str]]) -> None:
    """`TrialsKeepFailing` when the failures in a row say the config cannot work."""
    errors = len(list(itertools.takewhile(lambda f: f[1] == "error", reversed(streak))))
    if errors >= MAX_ERRORS_IN_A_ROW:
        count = errors
    elif len(streak) >= MAX_FAILURES_IN_A_ROW:
        count = len(streak)
    else:
        return
    number, reason, message = streak[-count]  # the first of the run that stops it
    shown = message if message.startswith(f"{reason}:") else f"{reason}: {message}"
    shown = (shown.splitlines() or [reason])[0]  # one line, as the CLI prints it
    raise TrialsKeepFailing(
        f"{count} trials in a row failed, stopping; the first (trial {number}) failed with {shown}"
    )


class Worker:
    """One worker's loop over its task's study (module doc); `metrics` is optional
    (job.serve.metrics). `store`: a `Store`, or a storage URL opened here. `task`: how
    the task is opened (`SearchTask.open`, `RetrainTask.opener(weights_dir)`)."""

    last_failure: tuple[str, str] | None = None  # (reason, message) of the last trial run
    run_type: type[TrialRun] = TrialRun  # one claimed trial's record and writes

    def __init__(
        self,
        config: Config,
        store: Store | str,
        study_name: str | None = None,
        worker_index: int = 0,
        metrics: WorkerMetrics | None = None,
        train_fn: TrainFn = train,
        log: Callable[[str], None] | None = None,
        checkpoint_dir: Path | None = None,
        task: TaskOpener = SearchTask.open,
    ) -> None:
        self.config, self.metrics = config, metrics
        self.train_fn, self.log, self.checkpoint_dir = train_fn, log, checkpoint_dir
        self.stop = threading.Event()  # set on SIGTERM: checkpoint, hand back, exit
        self.store = Store.of(store, config)
        self.task: Task = task(config, self.store, study_name, worker_index)
        self.study = self.task.study
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.version = code_version()
        self.config_fingerprint = config_fingerprint(config)  # with the data's: research

    def run(self, data: Dataset | None = None, poll_s: float = 2.0) -> int:
        """Trials until the task is done (the search: the study's budget is met); returns
        how many this worker ran. `DataChanged` before the first trial when `data` is
        not the study's (fixed by its first worker: `fix_study_data`)."""
        data = data if data is not None else load_data(self.config.data)
        self._persist(
            lambda: fix_study_data(self.study, self.store, data, self.config),
            "checking the study's data",
        )
        ran = 0
        streak: list[tuple[int, str, str]] = []  # failed in a row: (trial, reason, message)
        while not self.stop.is_set():
            claimed = self._persist(self.task.claim, "claiming a trial")
            if claimed == "done":
                return ran
            if claimed == "wait":
                self.stop.wait(poll_s)
                continue
            assert isinstance(claimed, optuna.Trial)
            self.last_failure = None
            state = self.run_trial(claimed, data)
            ran += 1
            if state == TrialState.COMPLETE:
                streak = []
            elif self.last_failure is not None:  # not preempted, not failed by another worker
                streak.append((claimed.number, *self.last_failure))
                _stop_if_failing(streak)
        return ran

    def run_trial(self, trial: optuna.Trial, data: Dataset) -> TrialState:
        """Run one claimed trial; tell the study what came of it, never raise (but for an
        interruption, which fails the trial and then stops the worker). Every line logged
        meanwhile carries the trial's number (job.logs)."""
        with logs.bound(trial=trial.number):
            return self._run_trial(trial, data)

    def _run_trial(self, trial: optuna.Trial, data: Dataset) -> TrialState:
        start = time.perf_counter()
        frozen = self._persist(lambda: frozen_trial(trial), "reading the trial")
        retry_of = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        claimed = TrialAttrs.read(frozen)
        checkpoint = self._checkpoint(trial, claimed.resume_from)
        run = self.run_type(
            self.study, trial, frozen, self._persist, self.train_fn, self.stop,
            functools.partial(self._on_epoch, trial), checkpoint,
            on_resume=functools.partial(self._on_resume, trial),
        )  # fmt: skip
        base = TrialAttrs(
            worker=self.worker,
            code_version=self.version,
            data_fingerprint=data.fingerprint,
            config_fingerprint=self.config_fingerprint,
            retry_of=retry_of,  # a copy of a trial whose worker stopped beating
        )
        run.record(base, write=False)  # written with the candidate's, one transaction
        if self.metrics is not None:
            epochs = self.task.epochs(frozen)
            self.metrics.trial_started(trial.number, epochs, retry=retry_of is not None)
        state, values, summary = TrialState.FAIL, None, ""
        try:
            with Heartbeat(self.study, trial):
                values, summary = self._run(run, data)
            state = TrialState.COMPLETE
            if checkpoint is not None:
                checkpoint.unlink(missing_ok=True)  # the result is in; the state is not needed
        except Preempted as exc:
            summary = self._hand_back(run, exc)
        except Pruned as exc:  # stopped at a rung (job.search.prune): no result, no retry
            state, summary = TrialState.PRUNED, str(exc)
            run.record(exc.attrs, write=False)  # written with `seconds`
            if checkpoint is not None:
                checkpoint.unlink(missing_ok=True)
        except TrainError as exc:
            self._fail(run, exc.reason, str(exc))
            summary = f"FAIL {exc.reason}"
        except KeyboardInterrupt:
            self._fail(run, "interrupted", "the worker was stopped")
            run.record(TrialAttrs())  # the reason (and anything else unwritten), then tell
            self._tell(trial, None, TrialState.FAIL)
            raise
        except Exception as exc:  # a failed trial never kills the worker
            self._fail(run, "error", f"{type(exc).__name__}: {redact(str(exc))}")
            summary = f"FAIL error {type(exc).__name__}"
        seconds = time.perf_counter() - start
        try:
            losses = run.loss_curve or None
            run.record(TrialAttrs(train_loss=losses, seconds=seconds))  # with the result: one write
            self._tell(trial, values, state)
        except optuna.exceptions.UpdateFinishedTrialError:
            # silent past the grace period (a stalled or suspended machine): another worker
            # failed it as stale and queued its retry, which will record the result
            state, summary = TrialState.FAIL, "FAIL stale: failed by another worker, retried"
        self._finished(trial, state, values, summary, seconds)
        return state

    def _run(self, run: TrialRun, data: Dataset) -> tuple[list[float], str]:
        """The task's part of a trial (tests/gate.py holds a trial here)."""
        return self.task.run(run, data)

    def _finished(
        self,
        trial: optuna.Trial,
        state: TrialState,
        values: list[float] | None,
        summary: str,
        seconds: float,
    ) -> None:
        """The trial's log line (and, in json mode, its record) and its metrics."""
        line = f"trial {trial.number:>4} {summary} ({seconds:.1f}s)"
        if self.log is not None:  # a caller's own (tests, `run`'s progress)
            self.log(line)
        else:  # a record of its own in json mode (job.logs), the same line in text
            scores = dict(zip(self.task.objectives, values or (), strict=False))
            logs.event(
                "trial_finished", line, trial=trial.number, state=state.name,
                seconds=round(seconds, 3), worker=self.worker, values=scores,
            )  # fmt: skip
        if self.metrics is not None:
            ips = TrialAttrs.read(trial).train_images_per_s
            self.metrics.trial_finished(state.name, seconds, ips)

    def _checkpoint(self, trial: optuna.Trial, resume_from: str | None) -> Path | None:
        """A retry resumes from its original's checkpoint; a fresh trial gets its own."""
        if resume_from is not None:
            return Path(resume_from)
        if self.checkpoint_dir is None:
            return None
        return self.checkpoint_dir / f"{self.study.study_name}-trial-{trial.number}.pt"

    def _hand_back(self, run: TrialRun, exc: Preempted) -> str:
        """Preempted: fail this trial, queue a retry with the same params that resumes
        from the checkpoint (and what the task adds: `Task.hand_back`); the result is
        recorded once, by the retry. A checkpoint that could not be written (`exc.path`
        None, the OSError as its cause) is said so, on the trial and in the log: the
        retry starts over, with no `resume_from`."""
        where = TrialAttrs(checkpoint_epoch=exc.epoch, checkpoint_step=exc.step)
        message, saved = str(exc), ""
        if exc.path is None:
            cause = exc.__cause__
            why = f": {cause.strerror or cause}" if isinstance(cause, OSError) else ""
            message += f"; checkpoint not saved{why}"
            saved = f"; checkpoint NOT saved{why}; the retry starts over"
            where = TrialAttrs(checkpoint_saved=False)  # no checkpoint_epoch: there is none
        run.record(TrialAttrs(fail_reason="preempted", fail_message=message), write=False)
        run.record(where)  # one write, with the reason
        path = str(exc.path) if exc.path else None
        resume = TrialAttrs(retry_of=run.number, resume_from=path).to_attrs()
        resume |= self.task.hand_back(run).to_attrs()
        params = run.trial.params
        self._persist(
            lambda: enqueue(self.study, params, TrialAttrs.of(resume)), "queueing a retry"
        )
        return f"PREEMPTED at epoch {exc.epoch} step {exc.step}{saved}; queued for retry"

    def _on_epoch(self, trial: optuna.Trial, record: EpochRecord) -> None:
        """After each epoch of the trial: its learning curve gets the validation accuracy
        at that epoch, the pod's metrics the epoch. The curve is Optuna's intermediate
        values, drawn by optuna-dashboard."""
        point = {record.epoch: record.val_accuracy}
        self._persist(lambda: save_curve(trial, point), "writing the learning curve")
        if self.metrics is not None:
            self.metrics.epoch_done(record.epoch)
        self._persist(lambda: self.task.judge(trial, record), "judging the trial at its rung")

    def _on_resume(self, trial: optuna.Trial, history: tuple[EpochRecord, ...]) -> None:
        """A trial resumed from its checkpoint: its curve starts with the epochs trained
        before (its predecessor's points), so it reads whole, each epoch once."""
        points = {record.epoch: record.val_accuracy for record in history}
        self._persist(lambda: save_curve(trial, points), "writing the learning curve")
        # known now, not only with the result: the epoch budget counts inherited epochs once
        resumed = TrialAttrs(resumed_epoch=len(history) + 1)
        self._persist(lambda: save(self.study, trial, resumed), "saving user attrs")

    def _fail(self, run: TrialRun, reason: str, message: str) -> None:
        """The failure's reason, written with `seconds` (and the base attrs, if unwritten)."""
        self.last_failure = (reason, message)
        run.record(TrialAttrs(fail_reason=reason, fail_message=message[:1000]), write=False)

    def _persist(self, call: Callable[[], T], what: str) -> T:
        return self.store.persist(call, what)

    def _tell(self, trial: optuna.Trial, values: list[float] | None, state: TrialState) -> None:
        """Tell once, through outages: a try whose write landed before its connection
        dropped is not told again (Optuna raises on a finished trial unless told to
        skip). Finished in another state (failed as stale by another worker while this
        one's beats lagged): UpdateFinishedTrialError, as from any write to it."""

        def tell() -> TrialState | None:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # a race
                if state == TrialState.PRUNED:
                    return tell_pruned(self.study, trial)
                return self.study.tell(trial, values, state=state, skip_if_finished=True).state
            return None

        stored = self._persist(tell, "telling the result")
        if stored != state:
            raise optuna.exceptions.UpdateFinishedTrialError(
                f"trial {trial.number} was finished elsewhere ({stored and stored.name})"
            )


def stop_on_sigterm(stop: threading.Event | None = None) -> None:
    """SIGTERM (a pod being stopped, `run` shutting down): with `stop`, a worker
    checkpoints its trial, hands it back and exits 143; without, it is an interruption."""

    def handler(signum: int, frame: object) -> None:
        if stop is None:
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGTERM, handler)
