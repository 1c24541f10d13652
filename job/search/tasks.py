"""What a worker runs, one trial at a time: a `Task` (the search task here, the retrain
task in `job.search.retrain`), and `TrialRun`, one claimed trial as a task sees it.

The worker loop (`job.search.worker.Worker`) is the same for every task:

    claim      `Task.claim()`: a trial, "wait" (every open slot is running elsewhere) or
               "done"; under the study's budget lock, stale trials failed and retried first
    run        `Task.run(run, data)`: build and train; the objective values and a summary
    record     `TrialRun.record(attrs)`: the trial's user attrs, held back and written in
               two transactions per trial; then the loop tells the study
    hand back  preempted (SIGTERM): the trial fails as `preempted` and a retry is queued
               with its params, its checkpoint and what `Task.hand_back(run)` adds

Heartbeats, retries of stale trials, failure handling, log lines and metrics are the
loop's, alike for every task.

The search task: claim a new trial (`claim_trial`: the exact budget, module doc of
`job.search.worker`), sample a candidate from the space (`job.search.space`), train it,
and record its objective values.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState

from job.config import Config
from job.ml.data import Dataset
from job.ml.model import model_spec_yaml
from job.ml.train import EpochRecord, TrainResult
from job.search import budget as budgets
from job.search import prune
from job.search.record import TrialAttrs, save
from job.search.space import objective_values, sample_candidate
from job.search.studies import open_study
from job.storage import (
    ParamHold,
    Store,
    asked,
    budget_lock,
    count_states,
    fail_stale_trials,
    has_stale_trials,
    take_trial,
)

# With the task's own names, those the search task calls by name from here: bench/storage.py,
# bench/fleet.py and bench/scale.py wrap them in this module to time their parts.
__all__ = [
    "ParamHold",
    "SearchTask",
    "Task",
    "TaskOpener",
    "TrainFn",
    "TrialRun",
    "budget_lock",
    "claim_trial",
    "count_states",
    "fail_stale_trials",
    "has_stale_trials",
    "sample_candidate",
    "take_trial",
]

T = TypeVar("T")
TrainFn = Callable[..., TrainResult]
Persist = Callable[[Callable[[], T], str], T]


class Task(Protocol):
    """One kind of trial a worker runs (module doc): `SearchTask`, `RetrainTask`."""

    study: optuna.Study
    objectives: Sequence[str]  # the names of the values `run` returns, for the log record

    def claim(self) -> optuna.Trial | str:
        """A trial made RUNNING for this worker, or "wait" or "done"."""
        ...

    def epochs(self, frozen: FrozenTrial) -> int:
        """How many epochs the trial trains (the worker's metrics)."""
        ...

    def run(self, run: TrialRun, data: Dataset) -> tuple[list[float], str]:
        """Build and train the trial; its objective values and a summary for the log
        line. Raises as training does (`TrainError`, `Preempted`, anything)."""
        ...

    def hand_back(self, run: TrialRun) -> TrialAttrs:
        """The user attrs a preempted trial's retry needs besides its params and its
        checkpoint (the loop's: `retry_of`, `resume_from`)."""
        ...

    def judge(self, trial: optuna.Trial, record: EpochRecord) -> None:
        """After each epoch the trial trained (its curve written): raise
        `job.search.prune.Pruned` to stop it there."""
        ...


class TaskOpener(Protocol):
    """How a worker opens its task: `SearchTask.open`, `RetrainTask.open`, …"""

    def __call__(
        self, config: Config, store: Store, study_name: str | None, worker_index: int
    ) -> Task: ...


class TrialRun:
    """One claimed trial while its task runs it: its record as claimed (`frozen`), its
    user attrs held back until written (`record`), and its training call (`train`), which
    reports epochs, checkpoints to `checkpoint` and stops on `stop`."""

    def __init__(
        self,
        study: optuna.Study,
        trial: optuna.Trial,
        frozen: FrozenTrial,
        persist: Persist[Any],
        train_fn: TrainFn,
        stop: threading.Event,
        on_epoch: Callable[[EpochRecord], None],
        checkpoint: Path | None = None,
        on_resume: Callable[[tuple[EpochRecord, ...]], None] | None = None,
    ) -> None:
        self.study, self.trial, self.frozen, self.persist = study, trial, frozen, persist
        self.train_fn, self.stop, self.on_epoch = train_fn, stop, on_epoch
        self.checkpoint, self.on_resume = checkpoint, on_resume
        self.unsaved: dict[str, Any] = {}  # user attrs not yet written
        self.losses: dict[int, float] = {}  # epoch -> training loss, resumed epochs too

    @property
    def number(self) -> int:
        return self.trial.number

    def record(self, attrs: TrialAttrs, write: bool = True) -> None:
        """Record user attrs: with `write`, these and all held back so far in one write
        (one transaction on PostgreSQL, retried whole through an outage); else hold them
        back. A trial writes twice: base + candidate attrs before training, the result's
        or the failure's + `seconds` before tell."""
        self.unsaved.update(attrs.to_attrs())
        if not write or not self.unsaved:
            return
        unsaved, self.unsaved = self.unsaved, {}
        self.persist(lambda: save(self.study, self.trial, unsaved), "saving user attrs")

    def train(self, *args: Any, **kwargs: Any) -> TrainResult:
        """`train_fn(model, augment, recipe, data, …)` with this trial's epoch reports (and
        the epochs a resumed trial trained before), checkpoint and stop event."""
        kwargs |= {
            "on_epoch": self._epoch, "on_resume": self._resumed,
            "checkpoint": self.checkpoint, "stop": self.stop,
        }  # fmt: skip
        return self.train_fn(*args, **kwargs)

    @property
    def loss_curve(self) -> list[float]:
        """The training loss of each epoch trained so far, epoch 1 first."""
        return [self.losses[epoch] for epoch in sorted(self.losses)]

    def _epoch(self, record: EpochRecord) -> None:
        self.losses[record.epoch] = record.train_loss
        self.on_epoch(record)

    def _resumed(self, history: tuple[EpochRecord, ...]) -> None:
        self.losses |= {record.epoch: record.train_loss for record in history}
        if self.on_resume is not None:
            self.on_resume(history)


# --- the search task ------------------------------------------------------------------


def claim_trial(
    study: optuna.Study, budget: int, store: Store | str, config: Config | None = None
) -> optuna.Trial | str:
    """A new trial, or "done" (budget met) or "wait" (every open slot is running). Only
    the count and the trial's row are made under the budget lock, a few statements
    whatever the study's size: every worker of the fleet queues for it. With a `config`
    that sets `study.budget_epochs`, the epochs too (job.search.budget): a read of every
    trial, under the lock."""
    # First a look without the lock: "done" is final, and "wait" while no trial is stale
    # is what the lock would say too; a fleet's idle workers poll (`Worker.run`) and would
    # otherwise queue for the lock with the workers that have a trial to claim.
    states = count_states(study)
    if states[TrialState.COMPLETE] >= budget:
        return "done"
    if _full(states, budget) and not has_stale_trials(study):
        return "wait"
    with budget_lock(store, study.study_name):
        # Trials whose worker stopped beating fail here (PostgreSQL: Optuna's heartbeat
        # table; the journal: beat files, job.storage.BeatingJournalStorage); the retry
        # callback queues a WAITING copy with the same params, which take_trial takes.
        fail_stale_trials(study)
        states = count_states(study)
        if states[TrialState.COMPLETE] >= budget:
            return "done"
        if _full(states, budget):
            return "wait"
        if config is not None and config.study.budget_epochs is not None:
            verdict = budgets.claim(study.get_trials(deepcopy=False), config)
            if verdict != "take":
                return verdict
        trial_id = take_trial(study, states[TrialState.WAITING])
    return asked(study, trial_id)  # the rest of `study.ask()`, outside the lock


def _full(states: Counter[TrialState], budget: int) -> bool:
    """Every slot of the budget is complete or running (a WAITING retry needs a slot)."""
    return states[TrialState.COMPLETE] + states[TrialState.RUNNING] >= budget


class SearchTask:
    """The search: new trials until `study.budget` are COMPLETE; each samples a candidate
    (network, augmentation, recipe) and trains it on the search's data."""

    def __init__(self, config: Config, store: Store, study: optuna.Study) -> None:
        self.config, self.store, self.study = config, store, study
        self.objectives: Sequence[str] = config.objectives
        self.rungs = prune.rungs(config)  # the epochs a trial is judged at (none: off)

    @classmethod
    def open(
        cls, config: Config, store: Store, study_name: str | None = None, worker_index: int = 0
    ) -> SearchTask:
        return cls(config, store, open_study(config, store, study_name, worker_index))

    def claim(self) -> optuna.Trial | str:
        return claim_trial(self.study, self.config.study.budget, self.store, self.config)

    def epochs(self, frozen: FrozenTrial) -> int:
        return self.config.train.epochs

    def hand_back(self, run: TrialRun) -> TrialAttrs:
        return TrialAttrs()  # its params are the candidate

    def judge(self, trial: optuna.Trial, record: EpochRecord) -> None:
        if record.epoch in self.rungs:
            prune.judge(self.study, trial, record.epoch, self.config)

    def run(self, run: TrialRun, data: Dataset) -> tuple[list[float], str]:
        trial = run.trial
        hold = ParamHold(trial)  # ~25 suggest_* calls: one write, not one each
        try:
            candidate = sample_candidate(trial, data, self.config)
        finally:
            run.persist(hold.write, "saving the parameters")
        augment, measured = candidate.augment, candidate.measured
        run.record(
            TrialAttrs(
                model_yaml=model_spec_yaml(candidate.model),
                augment=augment.model_dump(mode="json", exclude={"enabled"})
                if augment.enabled
                else None,  # None: no augmentation
                recipe=candidate.recipe.model_dump(mode="json"),
                params=measured.params,
                macs=measured.macs,
            ),
            write=False,
        )
        run.record(TrialAttrs.from_latency(candidate.latency))  # with the candidate's
        test = self.config.train.test_each_trial  # off: the search never sees the test split
        result = run.train(
            candidate.model, augment, candidate.recipe, data, measured=measured, test=test
        )
        run.record(TrialAttrs.from_result(result), write=False)  # written with `seconds`
        values = objective_values(result, self.config.objectives, candidate.latency)
        summary = f"acc {result.val_accuracy:.4f} params {measured.params:,}"
        return values, summary
