"""The verification plan, the collector's side of stage 8 (`job.search.retrain` is the
workers' side: what a retrain is and how one runs).

The plan (`plan_retrains`): `job.collect.policies` picks per policy over the finished
study; the picks and the top `select.verify_top_k` front members, each once per seed,
plus every baseline and reference network (`select.baselines`, `reference:` policies:
model YAMLs, checked at start-up by `model_files`) trained alike. Whoever gets there
first — a worker whose search is done, or the collector — enqueues it (`ensure_plan`),
each retrain keyed by what it trains (model, augmentation, recipe, seed), under the
study's claim lock: a second caller, or a rerun of `collect`, finds every key there and
retrains nothing twice. `collect --wait` then waits for them (`wait_for_retrains`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from job.collect.policies import Choice, Record, select, to_verify
from job.config import Config, derive_seed
from job.ml.data import Dataset
from job.ml.model import LayerSpec, ModelError, ModelSpec, load_model_spec, model_spec_yaml
from job.ml.train import TrainError, check_fit
from job.search.record import TrialAttrs, TrialRecord, enqueue
from job.search.retrain import Retrain
from job.search.view import pareto_trials, search_latency_key
from job.storage import Store, budget_lock, fail_stale_trials

CLASSIFIERS = ("Linear", "FixedConv")  # a last layer whose first arg is the class count


def _digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def retrain_seeds(config: Config) -> list[int]:
    return [derive_seed(config.train.seed, i) for i in range(config.select.retrain.seeds)]


def _runs(
    role: Literal["search", "baseline"],
    name: str,
    trial: int | None,
    path: str | None,
    model_yaml: str,
    augment: dict[str, Any] | None,
    recipe: dict[str, Any],
    config: Config,
) -> list[Retrain]:
    """One `Retrain` per seed; the recipe takes select.retrain's epochs. The search's
    recipe is kept otherwise (its searched lr, say): a trial is retrained as found."""
    epochs = config.select.retrain.epochs or config.train.epochs
    base = {**recipe, "epochs": epochs}
    model_key = _digest(model_yaml, augment, {k: v for k, v in base.items() if k != "seed"})
    return [
        Retrain(
            f"{model_key}-s{seed}",
            model_key,
            role,
            name,
            trial,
            path,
            model_yaml,
            augment,
            {**base, "seed": seed},
            seed,
        )
        for seed in retrain_seeds(config)
    ]


def records(trials: Sequence[FrozenTrial], config: Config) -> list[Record]:
    """The COMPLETE search trials as `job.collect.policies` sees them."""
    front = {t.number for t in pareto_trials(trials, config.objectives)}
    key = search_latency_key(config)
    return [
        Record.of(r, r.number in front, key)
        for t in trials
        if t.state == TrialState.COMPLETE and t.values is not None
        for r in [TrialRecord.from_trial(t)]
    ]


def fit_classes(spec: ModelSpec, num_classes: int) -> ModelSpec:
    """A baseline written for CIFAR-10's 10 classes, its classifier resized to the
    data's: the last layer's output count is the class count (docs/ARCHITECTURE.md)."""
    last = spec.backbone[-1] if spec.backbone else None
    if last is None or last.module not in CLASSIFIERS or not last.args:
        return spec
    if last.args[0] == num_classes:
        return spec
    resized = LayerSpec(last.repeat, last.module, (num_classes, *last.args[1:]))
    return replace(spec, backbone=(*spec.backbone[:-1], resized))


def model_file(path: str, data: Dataset) -> ModelSpec:
    """A baseline or reference model YAML, checked against the data before any trial:
    `ModelError` naming the file when it cannot be read or cannot run on the images."""
    if not Path(path).is_file():  # relative paths start where the verb runs, as data.path
        raise ModelError(f"{path}: no such model YAML (in select; from {Path.cwd()})")
    spec = fit_classes(load_model_spec(path), data.num_classes)
    try:
        check_fit(spec, data)
    except TrainError as exc:
        raise ModelError(f"{path}: {exc.message}") from None
    return spec


def model_files(config: Config, data: Dataset) -> dict[str, ModelSpec]:
    """Every baseline and reference YAML of `select`, checked (the verbs call this at
    start-up, so a typo in a path fails before the first trial, exit 2)."""
    if not config.select.verify:
        return {}
    return {path: model_file(path, data) for path in config.select.model_files()}


def plan_retrains(
    trials: Sequence[FrozenTrial],
    config: Config,
    models: dict[str, ModelSpec],
    found: Sequence[Record] | None = None,
) -> tuple[list[Choice], list[Retrain]]:
    """The choices of every policy over the finished study, and what to retrain:
    picks and top front members (as their trials were trained), then baselines and
    references (with the config's augmentation and recipe). `found`: the trials'
    `records`, when the caller has them."""
    found = records(trials, config) if found is None else found
    choices = select(config.select.policies, found, config.objectives)
    if not config.select.verify:
        return choices, []
    by_number = {t.number: t for t in trials}
    plan: list[Retrain] = []
    for number in to_verify(choices, found, config.select.verify_top_k):
        attrs = TrialRecord.from_trial(by_number[number])
        recipe = attrs.recipe or config.train.model_dump(mode="json")
        augment = attrs.augment
        yaml_text = attrs.model_yaml
        if yaml_text is None:  # a search trial records its network before it trains
            raise KeyError(f"trial {number} has no model YAML")
        plan += _runs("search", f"trial {number}", number, None, yaml_text, augment, recipe, config)
    augment = config.augment.model_dump(mode="json") if config.augment.enabled else None
    recipe = config.train.model_dump(mode="json")
    for path, spec in models.items():
        name = Path(path).stem
        plan += _runs("baseline", name, None, path, model_spec_yaml(spec), augment, recipe, config)
    return choices, plan


# A retrain that failed (not stale: the heartbeat retries those) is queued again this
# many times in all by a later `ensure_plan`; a network that cannot train stays failed.
MAX_RUNS_PER_KEY = 2


def ensure_plan(verify: optuna.Study, store: Store | str, plan: Sequence[Retrain]) -> int:
    """Enqueue every retrain of `plan` not yet there; returns how many were queued.
    Under the verification study's claim lock: two callers never queue one key twice."""
    with budget_lock(store, verify.study_name):
        runs: dict[str, list[TrialState]] = {}
        for trial in verify.get_trials(deepcopy=False):
            spec = Retrain.of(trial)
            if spec is not None:
                runs.setdefault(spec.key, []).append(trial.state)
        queued = 0
        for retrain in plan:
            states = runs.get(retrain.key, [])
            live = any(s != TrialState.FAIL for s in states)
            if live or len(states) >= MAX_RUNS_PER_KEY:
                continue
            enqueue(verify, {}, TrialAttrs(retrain=retrain.attrs()))
            runs[retrain.key] = [*states, TrialState.WAITING]
            queued += 1
        return queued


def unfinished(verify: optuna.Study) -> int:
    """Retrains queued or running."""
    states = (TrialState.WAITING, TrialState.RUNNING)
    return len(verify.get_trials(deepcopy=False, states=states))


def wait_for_retrains(
    verify: optuna.Study, store: Store | str, poll_s: float = 5.0, timeout_s: float | None = None
) -> bool:
    """Poll until no retrain is queued or running (True) or `timeout_s` passes (False).
    A retrain whose worker died is failed here too, and its retry queued, so a collector
    never waits on a trial nobody runs any more."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        with budget_lock(store, verify.study_name):
            fail_stale_trials(verify)
        if not unfinished(verify):
            return True
        left = math.inf if deadline is None else deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(poll_s, left))
