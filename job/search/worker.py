"""The worker role (`search`): ask a trial, build, train, tell — until the budget is spent.

Every worker (a process locally, a pod in Kubernetes) runs this same loop on one shared
Optuna study; where the study lives is `job.storage`'s business.

Exact budget. The study needs `study.budget` COMPLETE trials. A worker takes a new
trial only when COMPLETE + RUNNING trials fall short of the budget, and it counts and
asks under one lock (a PostgreSQL advisory lock per study; a file lock beside a
journal), so two workers can never both take the last slot. A worker that finds every
slot taken but the budget not met (trials still running elsewhere) waits: if one of
those fails, it takes the freed slot.

A failed trial (NaN loss, out of memory, a network that cannot run, any other error
inside the trial) is told FAIL with its reason in the user attrs; the worker goes on,
unless its trials keep failing (`MAX_ERRORS_IN_A_ROW`, `MAX_FAILURES_IN_A_ROW`): then it
stops with `TrialsKeepFailing` (the CLI: exit 2, one line quoting the first failure).

Verification (`job.search.retrain`): once the budget is met, the same loop runs on the study
`<study>-verify` (`Worker(…, retrain=True)`), taking queued retrains of the models
worth keeping until none is left, with the same heartbeats, retries and preemption.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.study import StudyDirection
from optuna.trial import TrialState

from job import __version__, logs, settings
from job.config import Config, config_fingerprint, derive_seed
from job.errors import BadInput
from job.ml.data import DataError, Dataset, load_data
from job.ml.model import model_spec_yaml
from job.ml.train import EpochRecord, Preempted, TrainError, TrainResult, check_fit, train
from job.search.retrain import SPEC_ATTR, Retrain, claim_retrain
from job.search.space import constraint_values, directions, objective_values, sample_candidate
from job.storage import (
    JOURNAL,
    Heartbeat,
    ParamHold,
    StudyNotFoundError,
    budget_lock,
    count_states,
    database_lock,
    fail_stale_trials,
    frozen_trial,
    has_stale_trials,
    hold_study,
    open_storage,
    persist,
    redact,
    resolve_storage,
    save_user_attrs,
    study_exists,
    take_trial,
)

if TYPE_CHECKING:
    from job.serve.metrics import WorkerMetrics

__all__ = [
    "JOURNAL",
    "Worker",
    "claim_trial",
    # claim_trial calls these by these names (bench/storage.py times them)
    "count_states",
    "fail_stale_trials",
    "has_stale_trials",
    "open_study",
    "redact",
    "resolve_storage",
    "take_trial",
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


TrainFn = Callable[..., TrainResult]
T = TypeVar("T")


def make_sampler(
    config: Config, worker_index: int = 0, version: int = 1
) -> optuna.samplers.BaseSampler:
    """The configured sampler; each worker gets its own seed so workers never propose alike,
    and each study version (job.collect.research) its own too: with the parent's seed a version
    would draw the parent's random start-up trials again, already evaluated."""
    seed = derive_seed(config.study.seed, 1000 * worker_index, 1_000_003 * (version - 1))
    kind = config.study.sampler
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    # group=True: the space is conditional (a block's params depend on its module)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)


def open_study(
    config: Config,
    storage_url: str,
    name: str | None = None,
    worker_index: int = 0,
    create: bool = True,
    verify: bool = False,
) -> optuna.Study:
    """The study `name` (default `study.name`) in the storage, created when missing; with
    `create` False (`status`, `collect`) a missing study is a `StudyNotFoundError` and
    nothing is created. A process that may create the study holds it (`hold_study`:
    `run --fresh` elsewhere then refuses to delete it). `verify`: a verification study
    (`job.search.retrain`): one objective, the retrained test accuracy, and no sampling."""
    from job.search.versions import version_number

    name = name or config.study.name
    sampler = make_sampler(config, worker_index, version_number(config.study.name, name) or 1)
    wanted = directions(config.objectives)
    if verify:  # its trials are all queued with fixed settings: nothing to sample
        sampler, wanted = optuna.samplers.RandomSampler(derive_seed(worker_index)), ["maximize"]
    if not create:
        if not study_exists(storage_url, name):
            raise StudyNotFoundError(f"study {name!r} not found in {redact(storage_url)}")
        return optuna.load_study(
            study_name=name, storage=open_storage(storage_url, config), sampler=sampler
        )
    storage = open_storage(storage_url, config)
    hold_study(storage_url)
    with database_lock(storage_url, "studies"):  # N workers creating one study at once
        study = optuna.create_study(
            storage=storage,
            sampler=sampler,
            study_name=name,
            directions=[StudyDirection[d.upper()] for d in wanted],
            load_if_exists=True,
        )
        # optuna-dashboard labels the objectives by these, not "Objective 0"
        names: list[str] = ["verified_accuracy"] if verify else list(config.objectives)
        if study.metric_names != names:
            study.set_metric_names(names)
        return study


def claim_trial(study: optuna.Study, budget: int, storage_url: str) -> optuna.Trial | str:
    """A new trial, or "done" (budget met) or "wait" (every open slot is running). Only
    the count and the trial's row are made under the budget lock, a few statements
    whatever the study's size: every worker of the fleet queues for it."""
    # First a look without the lock: "done" is final, and "wait" while no trial is stale
    # is what the lock would say too; a fleet's idle workers poll (`Worker.run`) and would
    # otherwise queue for the lock with the workers that have a trial to claim.
    states = count_states(study)
    if states[TrialState.COMPLETE] >= budget:
        return "done"
    if _full(states, budget) and not has_stale_trials(study):
        return "wait"
    with budget_lock(storage_url, study.study_name):
        # Trials whose worker stopped beating fail here (PostgreSQL: Optuna's heartbeat
        # table; the journal: beat files, job.storage.BeatingJournalStorage); the retry
        # callback queues a WAITING copy with the same params, which take_trial takes.
        fail_stale_trials(study)
        states = count_states(study)
        if states[TrialState.COMPLETE] >= budget:
            return "done"
        if _full(states, budget):
            return "wait"
        trial_id = take_trial(study, states[TrialState.WAITING])
    # the rest of `study.ask()`, outside the lock: samplers read the study afresh
    study._thread_local.cached_all_trials = None
    return optuna.Trial(study, trial_id)


def _full(states: Counter[TrialState], budget: int) -> bool:
    """Every slot of the budget is complete or running (a WAITING retry needs a slot)."""
    return states[TrialState.COMPLETE] + states[TrialState.RUNNING] >= budget


def code_version() -> str:
    """SMS_CODE_VERSION when set, else the git commit of the code when there is one, else
    the package version."""
    if version := settings.code_version():
        return version
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{__version__}+{sha}"
    except (OSError, subprocess.SubprocessError):
        return __version__


_RESULT_ATTRS = (
    "val_accuracy",
    "test_accuracy",
    "val_f1",
    "test_f1",
    "latency_ms_b1",
    "latency_ms_b256",
    "train_images_per_s",
    "device",
    "resumed_epoch",
)


def _result_attrs(result: TrainResult) -> dict[str, Any]:
    attrs = {key: getattr(result, key) for key in _RESULT_ATTRS}
    if result.checkpoint_refused is not None:  # damaged or planted: the trial started over
        attrs["checkpoint_refused"] = result.checkpoint_refused
    return attrs


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


# The data a study's trials train on, fixed by its first worker (study user attrs): the
# source's content (`Dataset.fingerprint`) and how it is cut and prepared (`data.*` but
# where it lives). A worker, retrainer or collector whose data differs refuses: its
# results would not be comparable (two fingerprints in one summary; a pick verified on
# one data set and exported on another).
STUDY_DATA = "data_fingerprint"
STUDY_PREPARATION = "data_preparation"
PREPARATION_KEYS = ("image_size", "subset", "val_ratio", "test_ratio", "seed")


class DataChanged(DataError):  # noqa: N818 — bad input (exit 2), as DataError is
    """This process's data is not the data its study's trials trained on."""


def data_preparation(config: Config) -> dict[str, Any]:
    """The `data.*` keys that decide which images a trial trains and is tested on."""
    return config.data.model_dump(mode="json", include=set(PREPARATION_KEYS))


def _recorded_data(study: optuna.Study) -> str | None:
    """A study from before STUDY_DATA: its lineage's data fingerprint (job.collect.research),
    else its COMPLETE trials' most common one; None when nothing is recorded."""
    from job.search.versions import recorded

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    found = recorded(study.user_attrs, complete)
    return found.data if found is not None and found.data != "unknown" else None


def fix_study_data(study: optuna.Study, storage_url: str, data: Dataset, config: Config) -> None:
    """The first worker on a study records its data (or, on an older study, what its trials
    recorded), under the study's budget lock so that workers starting together agree;
    then every worker compares (`check_study_data`)."""
    with budget_lock(storage_url, study.study_name):
        attrs = study.user_attrs
        if not isinstance(attrs.get(STUDY_DATA), str):
            study.set_user_attr(STUDY_DATA, _recorded_data(study) or data.fingerprint)
        if not isinstance(attrs.get(STUDY_PREPARATION), dict):
            study.set_user_attr(STUDY_PREPARATION, data_preparation(config))
    check_study_data(study, data, config)


def check_study_data(study: optuna.Study, data: Dataset, config: Config) -> None:
    """`DataChanged` (one line: both fingerprints, or the `data.*` key, and what to do)
    unless `data` and `config.data` are what the study recorded; reads, never writes."""
    attrs, name = study.user_attrs, study.study_name
    todo = "start a new study version (`python -m job research`) or another study (--study NEW)"
    theirs = attrs.get(STUDY_DATA)
    theirs = theirs if isinstance(theirs, str) else _recorded_data(study)
    if theirs is not None and theirs != data.fingerprint:
        raise DataChanged(
            f"data: fingerprint {data.fingerprint[:12]} here, {theirs[:12]} in study {name!r} "
            f"(the data changed since its trials ran); {todo}"
        )
    recorded = attrs.get(STUDY_PREPARATION)
    ours = data_preparation(config)
    for key in PREPARATION_KEYS:
        if isinstance(recorded, dict) and key in recorded and recorded[key] != ours.get(key):
            raise DataChanged(
                f"data.{key}: {ours.get(key)} here, {recorded[key]} in study {name!r} "
                f"(its trials trained on other data); {todo}"
            )


def check_existing_study_data(storage_url: str, config: Config, name: str, data: Dataset) -> None:
    """`check_study_data` for study `name` when the storage holds it; nothing is created."""
    if study_exists(storage_url, name):
        storage = open_storage(storage_url, config)
        check_study_data(optuna.load_study(study_name=name, storage=storage), data, config)


class Worker:
    """One worker's loop over the shared study; `metrics` is optional (job.serve.metrics)."""

    last_failure: tuple[str, str] | None = None  # (reason, message) of the last trial run

    def __init__(
        self,
        config: Config,
        storage_url: str,
        study_name: str | None = None,
        worker_index: int = 0,
        metrics: WorkerMetrics | None = None,
        train_fn: TrainFn = train,
        log: Callable[[str], None] | None = None,
        checkpoint_dir: Path | None = None,
        retrain: bool = False,
        weights_dir: Path | None = None,
    ) -> None:
        self.config, self.storage_url, self.metrics = config, storage_url, metrics
        self.train_fn, self.log, self.checkpoint_dir = train_fn, log, checkpoint_dir
        # retrain: the verification loop (queued retrains; weights kept in weights_dir)
        self.retrain, self.weights_dir = retrain, weights_dir or Path("verified")
        self.stop = threading.Event()  # set on SIGTERM: checkpoint, hand back, exit
        self.study = open_study(config, storage_url, study_name, worker_index, verify=retrain)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.version = code_version()
        self.config_fingerprint = config_fingerprint(
            config
        )  # with the data's: job.collect.research
        self._unsaved: dict[str, Any] = {}  # a trial's user attrs not yet written

    def run(self, data: Dataset | None = None, poll_s: float = 2.0) -> int:
        """Trials until the study's budget is met; returns how many this worker ran.
        `DataChanged` before the first trial when `data` is not the study's (fixed by
        its first worker: `fix_study_data`)."""
        data = data if data is not None else load_data(self.config.data)
        self._persist(
            lambda: fix_study_data(self.study, self.storage_url, data, self.config),
            "checking the study's data",
        )
        ran = 0
        streak: list[tuple[int, str, str]] = []  # failed in a row: (trial, reason, message)
        budget = self.config.study.budget
        claim: Callable[[], optuna.Trial | str] = lambda: claim_trial(  # noqa: E731
            self.study, budget, self.storage_url
        )
        if self.retrain:
            claim = lambda: claim_retrain(self.study, self.storage_url)  # noqa: E731
        while not self.stop.is_set():
            claimed = self._persist(claim, "claiming a trial")
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
        """Build and train one candidate; tell the study what came of it, never raise
        (but for an interruption, which fails the trial and then stops the worker). Every
        line logged meanwhile carries the trial's number (job.logs)."""
        with logs.bound(trial=trial.number):
            return self._run_trial(trial, data)

    def _run_trial(self, trial: optuna.Trial, data: Dataset) -> TrialState:
        start = time.perf_counter()
        base: dict[str, Any] = {"worker": self.worker, "code_version": self.version}
        base["data_fingerprint"] = data.fingerprint
        base["config_fingerprint"] = self.config_fingerprint
        frozen = self._persist(lambda: frozen_trial(trial), "reading the trial")
        retry_of = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        if retry_of is not None:  # a copy of a trial whose worker stopped beating
            base["retry_of"] = retry_of
        self._unsaved = {}
        self._save(trial, base, write=False)  # written with the candidate's, one transaction
        checkpoint = self._checkpoint(trial, frozen.user_attrs.get("resume_from"))
        spec = Retrain.of(frozen) if self.retrain else None
        epochs = spec.train_config().epochs if spec is not None else self.config.train.epochs
        if self.metrics is not None:
            self.metrics.trial_started(trial.number, epochs, retry=retry_of is not None)
        state, values, summary = TrialState.FAIL, None, ""
        try:
            with Heartbeat(self.study, trial):
                if self.retrain:
                    values, summary = self._retrain(trial, spec, data, checkpoint)
                else:
                    values, summary = self._train(trial, data, checkpoint)
            state = TrialState.COMPLETE
            if checkpoint is not None:
                checkpoint.unlink(missing_ok=True)  # the result is in; the state is not needed
        except Preempted as exc:
            summary = self._hand_back(trial, exc)
        except TrainError as exc:
            self._fail(trial, exc.reason, str(exc))
            summary = f"FAIL {exc.reason}"
        except KeyboardInterrupt:
            self._fail(trial, "interrupted", "the worker was stopped")
            self._save(trial, {})  # the reason (and anything else unwritten), then tell
            self._tell(trial, None, TrialState.FAIL)
            raise
        except Exception as exc:  # a failed trial never kills the worker
            self._fail(trial, "error", f"{type(exc).__name__}: {redact(str(exc))}")
            summary = f"FAIL error {type(exc).__name__}"
        seconds = time.perf_counter() - start
        try:
            self._save(trial, {"seconds": seconds})  # with the result or the failure: one write
            self._tell(trial, values, state)
        except optuna.exceptions.UpdateFinishedTrialError:
            # silent past the grace period (a stalled or suspended machine): another worker
            # failed it as stale and queued its retry, which will record the result
            state, summary = TrialState.FAIL, "FAIL stale: failed by another worker, retried"
        line = f"trial {trial.number:>4} {summary} ({seconds:.1f}s)"
        if self.log is not None:  # a caller's own (tests, `run`'s progress)
            self.log(line)
        else:  # a record of its own in json mode (job.logs), the same line in text
            names = ["verified_accuracy"] if self.retrain else self.config.objectives
            scores = dict(zip(names, values or (), strict=False))
            logs.event(
                "trial_finished", line, trial=trial.number, state=state.name,
                seconds=round(seconds, 3), worker=self.worker, values=scores,
            )  # fmt: skip
        if self.metrics is not None:
            ips = trial.user_attrs.get("train_images_per_s")
            self.metrics.trial_finished(state.name, seconds, ips)
        return state

    def _checkpoint(self, trial: optuna.Trial, resume_from: object) -> Path | None:
        """A retry resumes from its original's checkpoint; a fresh trial gets its own."""
        if isinstance(resume_from, str):
            return Path(resume_from)
        if self.checkpoint_dir is None:
            return None
        return self.checkpoint_dir / f"{self.study.study_name}-trial-{trial.number}.pt"

    def _hand_back(self, trial: optuna.Trial, exc: Preempted) -> str:
        """Preempted: fail this trial, queue a retry with the same params that resumes
        from the checkpoint; the result is recorded once, by the retry. A checkpoint that
        could not be written (`exc.path` None, the OSError as its cause) is said so, on
        the trial and in the log: the retry starts over, with no `resume_from`."""
        where = {"checkpoint_epoch": exc.epoch, "checkpoint_step": exc.step}
        message, saved = str(exc), ""
        if exc.path is None:
            cause = exc.__cause__
            why = f": {cause.strerror or cause}" if isinstance(cause, OSError) else ""
            message += f"; checkpoint not saved{why}"
            saved = f"; checkpoint NOT saved{why}; the retry starts over"
            where = {"checkpoint_saved": False}  # no checkpoint_epoch: there is none
        self._save(trial, {"fail_reason": "preempted", "fail_message": message, **where})
        resume = {"retry_of": trial.number} | ({"resume_from": str(exc.path)} if exc.path else {})
        spec = trial.user_attrs.get(SPEC_ATTR)
        if spec is not None:  # a retrain's copy must know what it retrains
            resume[SPEC_ATTR] = spec
        self._persist(
            lambda: self.study.enqueue_trial(trial.params, user_attrs=resume), "queueing a retry"
        )
        return f"PREEMPTED at epoch {exc.epoch} step {exc.step}{saved}; queued for retry"

    def _train(
        self, trial: optuna.Trial, data: Dataset, checkpoint: Path | None
    ) -> tuple[list[float], str]:
        hold = ParamHold(trial)  # ~25 suggest_* calls: one write, not one each
        try:
            candidate = sample_candidate(trial, data, self.config)
        finally:
            self._persist(hold.write, "saving the parameters")
        augment = candidate.augment
        measured = candidate.measured
        self._save(
            trial,
            {
                "model_yaml": model_spec_yaml(candidate.model),
                "augment": augment.model_dump(mode="json", exclude={"enabled"})
                if augment.enabled
                else None,
                "recipe": candidate.recipe.model_dump(mode="json"),
                "params": measured.params,
                "macs": measured.macs,
            },
        )

        result = self.train_fn(
            candidate.model,
            augment,
            candidate.recipe,
            data,
            on_epoch=self._on_epoch,
            checkpoint=checkpoint,
            stop=self.stop,
            measured=measured,
        )
        self._save(trial, _result_attrs(result), write=False)  # written with `seconds`
        limits = self.config.constraints
        latency = constraint_values(limits, measured.params, measured.macs, result.latency_ms_b1)
        if "latency" in latency:  # known only now; params and MACs were set before training
            trial.set_constraint("latency", latency["latency"])
        values = objective_values(result, self.config.objectives)
        summary = f"acc {result.val_accuracy:.4f} params {measured.params:,}"
        return values, summary

    def _retrain(
        self, trial: optuna.Trial, spec: Retrain | None, data: Dataset, checkpoint: Path | None
    ) -> tuple[list[float], str]:
        """One queued verification run; its value is the test accuracy. The network's
        weights go to `weights_dir` (a folder the collector reads: in Kubernetes, the
        shared artifacts volume), their path into the trial's `weights` user attr."""
        if spec is None:
            raise ValueError(
                f"trial {trial.number} of {self.study.study_name} is no queued retrain"
            )
        model = spec.spec()
        measured = check_fit(model, data)
        self._save(trial, {"params": measured.params, "macs": measured.macs})
        weights = (self.weights_dir / f"{self.study.study_name}-{spec.key}.pt").resolve()

        result = self.train_fn(
            model,
            spec.augment_config(),
            spec.train_config(),
            data,
            on_epoch=self._on_epoch,
            checkpoint=checkpoint,
            stop=self.stop,
            measured=measured,
            weights=weights,
        )
        self._save(trial, _result_attrs(result) | {"weights": str(weights)}, write=False)
        summary = f"verified {spec.name} seed {spec.seed}: test acc {result.test_accuracy:.4f}"
        return [result.test_accuracy], summary

    def _on_epoch(self, record: EpochRecord) -> None:
        if self.metrics is not None:
            self.metrics.epoch_done(record.epoch)

    def _fail(self, trial: optuna.Trial, reason: str, message: str) -> None:
        """The failure's reason, written with `seconds` (and the base attrs, if unwritten)."""
        self.last_failure = (reason, message)
        attrs = {"fail_reason": reason, "fail_message": message[:1000]}
        self._save(trial, attrs, write=False)

    def _persist(self, call: Callable[[], T], what: str) -> T:
        deadline = self.config.study.db_outage_deadline_s
        return persist(call, deadline, what, self.storage_url)

    def _save(self, trial: optuna.Trial, attrs: dict[str, Any], write: bool = True) -> None:
        """Record user attrs: with `write`, these and all held back so far in one write
        (one transaction on PostgreSQL, retried whole through an outage); else hold them
        back. A trial writes twice: base + candidate attrs before training, the result's
        or the failure's + `seconds` before tell."""
        self._unsaved.update(attrs)
        if not write or not self._unsaved:
            return
        unsaved, self._unsaved = self._unsaved, {}
        self._persist(lambda: save_user_attrs(self.study, trial, unsaved), "saving user attrs")

    def _tell(self, trial: optuna.Trial, values: list[float] | None, state: TrialState) -> None:
        """Tell once, through outages: a try whose write landed before its connection
        dropped is not told again (Optuna raises on a finished trial unless told to
        skip). Finished in another state (failed as stale by another worker while this
        one's beats lagged): UpdateFinishedTrialError, as from any write to it."""

        def tell() -> TrialState | None:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # a race
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
