"""Heartbeats and stale trials: one behaviour on PostgreSQL and on the embedded journal."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalStorage
from optuna.trial import FrozenTrial, TrialState

from job.config import Config
from job.storage.base import BEATS, _rdb
from job.storage.journal import JournalBackend


def _retry(max_retry: int) -> Any:
    return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)


# --- heartbeats and stale trials: one behaviour on PostgreSQL and on the journal -------
#
# Optuna keeps heartbeats only in an RDB storage. The embedded journal gets the same
# interface (`BaseHeartbeat`) from `BeatingJournalStorage`, kept in files: a running
# trial's beat is the mtime of `<journal>.beats/<trial id>`. So `Heartbeat` beats,
# `fail_stale_trials` (inside the budget lock) fails a silent trial and Optuna's own
# `RetryHeartbeatStaleTrialCallback` queues its retry on both storages alike.


class BeatingJournalStorage(JournalStorage, BaseHeartbeat):
    """A journal file storage with heartbeats in beat files beside it (one machine).

    A RUNNING trial is stale when its last beat, or its start when it has not beaten yet
    (a worker killed between `ask` and its first beat), is older than the grace period:
    a trial that never beat goes stale too (on PostgreSQL as well: `_rdb_silences`).
    Without a config heartbeats are off, as for `RDBStorage` without `heartbeat_interval`."""

    def __init__(self, path: Path, config: Config | None = None) -> None:
        super().__init__(JournalBackend(str(path)))  # never appends onto a torn record
        self.beats = Path(str(path) + BEATS)
        study = config.study if config is not None else None
        self._interval = study.heartbeat_interval_s if study is not None else None
        self.grace = study.grace_period_s if study is not None else 0
        self._callback = _retry(study.max_retry) if study is not None else None

    def record_heartbeat(self, trial_id: int) -> None:
        beat = self.beats / str(trial_id)
        try:
            os.utime(beat)  # the common case: one syscall
        except FileNotFoundError:
            self.beats.mkdir(parents=True, exist_ok=True)
            beat.touch()

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        """Optuna's, and a finished trial's beat file goes with its last write (its
        heartbeat stopped before its tell; `_sweep` catches a file left by a crash)."""
        changed = super().set_trial_state_values(trial_id, state, values)
        if changed and state.is_finished():
            (self.beats / str(trial_id)).unlink(missing_ok=True)
        return changed

    def silences(
        self, study_id: int, trials: list[FrozenTrial] | None = None
    ) -> dict[int, tuple[int, float]]:
        """Trial id → (number, seconds since its last beat or start) of RUNNING trials
        (of `trials` when the caller has read them already)."""
        now = time.time()
        found = {}
        if trials is None:
            trials = self.get_all_trials(study_id, deepcopy=False)
        for trial in (t for t in trials if t.state == TrialState.RUNNING):
            # Optuna's journal keeps naive local times: timestamp() reads them as such
            last = trial.datetime_start.timestamp() if trial.datetime_start else now
            with contextlib.suppress(FileNotFoundError):
                last = max(last, (self.beats / str(trial._trial_id)).stat().st_mtime)
            found[trial._trial_id] = (trial.number, now - last)
        return found

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        trials = self.get_all_trials(study_id, deepcopy=False)  # one read for both
        self._sweep(trials)
        silent = self.silences(study_id, trials)
        return [trial_id for trial_id, (_, s) in silent.items() if s > self.grace]

    def _sweep(self, trials: list[FrozenTrial]) -> None:
        """Remove the beat files of the study's finished trials (a trial's last act is
        its tell, after its heartbeat stopped; the next claim clears its file)."""
        if not self.beats.is_dir():
            return
        by_id = {t._trial_id: t for t in trials}
        for beat in self.beats.iterdir():
            trial = by_id.get(int(beat.name)) if beat.name.isdigit() else None
            if trial is not None and trial.state.is_finished():
                beat.unlink(missing_ok=True)

    def get_heartbeat_interval(self) -> int | None:
        return self._interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, Any], None] | None:
        return self._callback


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Optuna's `fail_stale_trials` for either storage, with the reason recorded: each
    RUNNING trial silent for longer than the grace period gets `fail_reason: stale` and a
    `fail_message`, is failed, and the storage's stale-trial callback (Optuna's
    `RetryHeartbeatStaleTrialCallback`: a WAITING copy with its params, system attr
    `failed_trial`, up to `max_retry`) runs. Call it under the budget lock; returns the
    numbers of the trials it failed. Does nothing on a storage without heartbeats."""
    storage = study._storage
    if not isinstance(storage, BaseHeartbeat) or storage.get_heartbeat_interval() is None:
        return []
    grace = _grace_s(storage)
    message = f"no heartbeat for over {grace:g} s: its worker died (killed, or its machine lost)"
    failed = []
    if isinstance(storage, BeatingJournalStorage):  # one read to sweep and to check
        stale = storage._get_stale_trial_ids(study._study_id)
    else:  # not Optuna's RDB check: that one never fails a trial that never beat
        stale = [i for i, (_, silent) in _silences(study).items() if silent > grace]
    for trial_id in stale:
        try:  # the reason first: a finished trial takes no more attrs
            storage.set_trial_user_attr(trial_id, "fail_reason", "stale")
            storage.set_trial_user_attr(trial_id, "fail_message", message)
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:  # finished meanwhile
            pass
    callback = storage.get_heartbeat_stale_trial_callback()
    numbers = []
    for trial_id in failed:
        trial = copy.deepcopy(storage.get_trial(trial_id))
        numbers.append(trial.number)
        if callback is not None:
            callback(study, trial)
    return numbers


def has_stale_trials(study: optuna.Study) -> bool:
    """Whether a RUNNING trial has been silent for longer than the grace period: what
    `fail_stale_trials` would fail, read without failing anything (and so without the
    budget lock)."""
    grace = _grace_s(study._storage)
    return any(silent > grace for silent in silent_trials(study).values())


def _grace_s(storage: optuna.storages.BaseStorage) -> float:
    if isinstance(storage, BeatingJournalStorage):
        return storage.grace
    backend = _rdb(storage)
    if backend is None or backend.heartbeat_interval is None:
        return math.inf
    return backend.grace_period or 2 * backend.heartbeat_interval  # Optuna's own default


def silent_trials(study: optuna.Study) -> dict[int, float]:
    """Trial number → seconds since its last heartbeat (or its start, before its first
    beat), for the study's RUNNING trials; {} when its storage has no heartbeats. A trial
    silent for longer than `study.grace_period_s` is stale: the next claim fails it and
    queues its retry."""
    return dict(_silences(study).values())


def _silences(study: optuna.Study) -> dict[int, tuple[int, float]]:
    """Trial id → (number, seconds silent) of RUNNING trials, on either storage."""
    storage = study._storage
    if isinstance(storage, BeatingJournalStorage):
        if storage.get_heartbeat_interval() is None:
            return {}
        return storage.silences(study._study_id)
    backend = _rdb(storage)
    if backend is None or backend.get_heartbeat_interval() is None:
        return {}
    return _rdb_silences(backend, study._study_id)


def _rdb_silences(
    backend: optuna.storages.RDBStorage, study_id: int
) -> dict[int, tuple[int, float]]:
    """As `BeatingJournalStorage.silences`, from Optuna's heartbeat table. Optuna's own
    check skips a trial that never beat, so a trial whose `ask` was committed but whose
    worker never learnt it (the connection dropped mid-claim, then the claim was retried)
    would stay RUNNING for ever and hold a budget slot; here it is silent since its start.
    A beat is the server's clock (`now()`); a start is the asking client's (Optuna 5
    stores it as naive UTC), so it is compared with this client's UTC clock: pods' clocks
    agree to well within a grace period."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    trial, beat = models.TrialModel, models.TrialHeartbeatModel
    with _create_scoped_session(backend.scoped_session) as session:
        server_now = session.execute(sqlalchemy.func.now()).scalar()
        rows = (
            session.query(trial.trial_id, trial.number, trial._datetime_start_utc, beat.heartbeat)
            .outerjoin(beat, beat.trial_id == trial.trial_id)
            .filter(trial.study_id == study_id, trial.state == TrialState.RUNNING)
            .all()
        )
    if server_now is None:
        return {}
    server_now = server_now.replace(tzinfo=None)  # as Optuna's own check: the column is naive
    client_now = datetime.now(UTC).replace(tzinfo=None)
    found = {}
    for trial_id, number, started, beaten in rows:
        if beaten is not None:
            found[trial_id] = (number, (server_now - beaten).total_seconds())
        elif started is not None:
            found[trial_id] = (number, (client_now - started).total_seconds())
    return found


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
