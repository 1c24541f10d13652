"""A trial's reads and batched writes: the only Optuna internals outside Optuna."""

from __future__ import annotations

import copy
import json
import math
from typing import Any, cast

import optuna
from optuna.trial import TrialState

from job.storage.base import _rdb

# ---- a trial's reads and batched writes (the only Optuna internals outside Optuna) ----


def frozen_trial(trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    """The trial as its worker knows it: the record read when it was asked for (params,
    user and system attrs, e.g. the retry link), plus what this worker wrote since. Optuna's
    `Trial` keeps that record, so this is no round trip; read from the storage otherwise."""
    cached = getattr(trial, "_cached_frozen_trial", None)
    if isinstance(cached, optuna.trial.FrozenTrial):
        return copy.deepcopy(cached)
    return trial.study._storage.get_trial(trial._trial_id)


def save_trial_attrs(study: optuna.Study, trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """`trial.set_user_attr(key, value)` for every item, as one write: one transaction on an
    RDB storage (one upsert of all keys on PostgreSQL), so it stores all of them or none
    and may be retried whole; one `set_user_attr` per key on other storages. The stored
    keys and values are exactly those of `set_user_attr`."""
    if not attrs:
        return
    backend = _rdb(study._storage)
    if backend is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    model = models.TrialUserAttributeModel
    trial_id = trial._trial_id
    # ignore_integrity_error as Optuna's own set_trial_user_attr: an upsert has none to ignore
    with _create_scoped_session(backend.scoped_session, True) as session:
        if backend.engine.name == "postgresql":
            from sqlalchemy.dialects import postgresql

            found = models.TrialModel.find_or_raise_by_id(trial_id, session)
            backend.check_trial_is_updatable(trial_id, cast(TrialState, found.state))
            rows = [
                {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                for key, value in attrs.items()
            ]
            insert = postgresql.insert(model).values(rows)
            session.execute(
                insert.on_conflict_do_update(
                    index_elements=[model.trial_id, model.key],
                    set_={"value_json": insert.excluded.value_json},
                )
            )
        else:  # SQLite, MySQL: Optuna's own per-key statement, all in this one transaction
            for key, value in attrs.items():
                backend._set_trial_attr_without_commit(session, model, trial_id, key, value)
    trial._cached_frozen_trial.user_attrs.update(attrs)  # as set_user_attr keeps trial.user_attrs


def save_curve(trial: optuna.Trial, points: dict[int, float]) -> None:
    """Points of the trial's learning curve, {epoch: value}: Optuna's intermediate values,
    which optuna-dashboard draws. Written through the storage, as `Trial.report` refuses
    multi-objective studies; a step written again is overwritten, never duplicated."""
    for step, value in points.items():
        trial.study._storage.set_trial_intermediate_value(trial._trial_id, step, value)
        trial._cached_frozen_trial.intermediate_values[step] = value  # as report() keeps it


def tell_pruned(study: optuna.Study, trial: optuna.Trial) -> TrialState:
    """`study.tell(trial, state=PRUNED, skip_if_finished=True)`, but with no values:
    Optuna stores a pruned trial's last intermediate value as its value, which in a
    multi-objective study is one value for several objectives. Returns the stored state
    (another, when the trial was finished elsewhere first)."""
    study._thread_local.cached_all_trials = None  # as tell: the cache is one trial's
    frozen = study._storage.get_trial(trial._trial_id)
    if frozen.state.is_finished():
        return frozen.state
    try:
        study.sampler.after_trial(study, frozen, TrialState.PRUNED, None)
    finally:
        study._storage.set_trial_state_values(trial._trial_id, TrialState.PRUNED, None)
    return TrialState.PRUNED


def tpe_reads_pruned_trials() -> None:
    """Mend optuna#5260 (still in Optuna 5.0): TPE orders PRUNED trials by their last
    intermediate value in `study.direction`, which a multi-objective study refuses
    (RuntimeError), so TPE fails once a study with pruning has any. Here a pruned trial
    of a multi-objective study ranks by how far it got, then by its last point, larger
    first: our curves are validation accuracy (job.search.prune). Single-objective
    studies keep Optuna's own. Called by `job.search.studies.make_sampler`;
    tests/unit/test_prune.py fails when Optuna changes this."""
    from optuna.samplers._tpe import sampler as tpe

    original = getattr(tpe._get_pruned_trial_score, "__wrapped__", tpe._get_pruned_trial_score)

    def score(trial: optuna.trial.FrozenTrial, study: optuna.Study) -> tuple[float, float]:
        if len(study.directions) == 1 or not trial.intermediate_values:
            return original(trial, study)
        step, value = max(trial.intermediate_values.items())
        return -step, math.inf if math.isnan(value) else -value

    score.__wrapped__ = original  # type: ignore[attr-defined]
    tpe._get_pruned_trial_score = score


class ParamHold:
    """Hold back a trial's parameter writes while it samples, then write them in one
    transaction: Optuna writes each `suggest_*` at once, one transaction per parameter.

        hold = ParamHold(trial)          # from here, suggest_* writes nothing
        try:
            candidate = sample_candidate(trial, ...)
        finally:
            persist(hold.write, ...)     # all of them, or none; the trial's storage back

    Only on an RDB storage; elsewhere it holds nothing. Safe for the retry of a dead
    worker's trial (the trial has all its parameters or none, and a retry without them
    samples afresh) and for other workers (their samplers read RUNNING trials only to
    avoid them; these parameters reach them a sampling's time later, milliseconds)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self._trial, self._storage = trial, trial.storage
        self._backend = _rdb(trial.storage)
        self._held: list[tuple[int, str, float, optuna.distributions.BaseDistribution]] = []
        if self._backend is not None:
            trial.storage = cast(optuna.storages.BaseStorage, self)  # Trial._suggest's writer

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: optuna.distributions.BaseDistribution,
    ) -> None:
        self._held.append((trial_id, param_name, param_value_internal, distribution))

    def __getattr__(self, name: str) -> Any:  # every other call: the storage's own
        return getattr(self._storage, name)

    def write(self) -> None:
        """Write what was held in one transaction (retry it whole on failure); stop holding."""
        self._trial.storage = self._storage
        if self._backend is None or not self._held:
            return
        from optuna.storages._rdb.storage import _create_scoped_session

        backend, cache = self._backend, self._storage
        # the distributions the study's cache knows: Optuna's check of compatibility with
        # earlier trials then needs no query per parameter (as _CachedStorage passes them)
        known: dict[str, Any] = {}
        if cache is not backend:
            with cache._lock:  # type: ignore[attr-defined]
                study_id, _ = cache._trial_id_to_study_id_and_number[self._held[0][0]]  # type: ignore[attr-defined]
                known = cache._studies[study_id].param_distribution  # type: ignore[attr-defined]
        with _create_scoped_session(backend.scoped_session, True) as session:
            for trial_id, name, value, distribution in self._held:
                previous = known.get(name)
                backend._set_trial_param_without_commit(
                    session, trial_id, name, value, distribution, previous
                )
        if cache is not backend:
            with cache._lock:  # type: ignore[attr-defined]
                for _, name, _, distribution in self._held:
                    known.setdefault(name, distribution)
        self._held = []
