"""Stage 8 of the data path, verify: the picks retrained in full, on the workers.

A search trial's accuracy is a proxy (a subset, few epochs, one seed). Once the search
budget is met, the models worth keeping are retrained from scratch with the full
recipe (`select.retrain`: its epochs, train + validation as training data, one run per
seed) and tested on the test split. Each retrain is one trial of a second study,
`<study>-verify`, so the workers run them exactly as they run search trials: claimed
under the same lock, beating, retried when their worker dies, checkpointed and handed
back when preempted. K retrains on N workers take about K/N trial times.

The plan (`plan_retrains`): `job.collect.policies` picks per policy over the finished study; the
picks and the top `select.verify_top_k` front members, each once per seed, plus every
baseline and reference network (`select.baselines`, `reference:` policies: model YAMLs)
trained alike. Whoever gets there first — a worker whose search is done, or the
collector — enqueues it (`ensure_plan`), each retrain keyed by what it trains (model,
augmentation, recipe, seed), under the study's claim lock: a second caller, or a rerun
of `collect`, finds every key there and retrains nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from job.collect.policies import Choice, Record, select, to_verify
from job.config import AugmentConfig, Config, TrainConfig, derive_seed
from job.ml.data import Dataset, Split
from job.ml.model import (
    LayerSpec,
    ModelError,
    ModelSpec,
    load_model_spec,
    model_spec_yaml,
    spec_from_yaml,
)
from job.ml.train import TrainError, check_fit
from job.search.study import is_feasible, pareto_trials, values_of
from job.storage import budget_lock, count_states, fail_stale_trials

VERIFY_SUFFIX = "-verify"
SPEC_ATTR = "retrain"  # a verification trial's user attr: its `Retrain`, as a dict
CLASSIFIERS = ("Linear", "FixedConv")  # a last layer whose first arg is the class count


def verify_study_name(study_name: str) -> str:
    return study_name + VERIFY_SUFFIX


@dataclass(frozen=True)
class Retrain:
    """One verification run: a network, its augmentation and recipe, and one seed."""

    key: str  # what it trains, seed included: the same key is never enqueued twice
    model_key: str  # the same without the seed: a model's runs share it
    role: Literal["search", "baseline"]
    name: str  # "trial 12", or a baseline's file stem ("resnet8")
    trial: int | None  # the search trial it retrains
    path: str | None  # a baseline's model YAML
    model_yaml: str
    augment: dict[str, Any] | None  # None: no augmentation
    recipe: dict[str, Any]  # a TrainConfig: select.retrain's epochs, this run's seed
    seed: int

    def attrs(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, trial: FrozenTrial) -> Retrain | None:
        found = trial.user_attrs.get(SPEC_ATTR)
        return cls(**found) if isinstance(found, dict) else None

    def spec(self) -> ModelSpec:
        return spec_from_yaml(self.model_yaml)

    def augment_config(self) -> AugmentConfig:
        return policy_of(self.augment)

    def train_config(self) -> TrainConfig:
        return TrainConfig.model_validate(self.recipe)


def policy_of(augment: dict[str, Any] | None) -> AugmentConfig:
    """A trial's or a card's `augment` (None: no augmentation) as training takes it."""
    if augment is None:
        return AugmentConfig(enabled=False)
    return AugmentConfig.model_validate(augment)


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


# --- what to retrain ----------------------------------------------------------------


def records(trials: Sequence[FrozenTrial], config: Config) -> list[Record]:
    """The COMPLETE search trials as `job.collect.policies` sees them."""
    front = {t.number for t in pareto_trials(trials, config.objectives)}

    def number(trial: FrozenTrial, attr: str) -> float:
        value = trial.user_attrs.get(attr)
        return float(value) if isinstance(value, int | float) else math.nan

    return [
        Record(
            number=t.number,
            accuracy=number(t, "val_accuracy"),
            params=int(t.user_attrs.get("params", 0)),
            macs=int(t.user_attrs.get("macs", 0)),
            latency_ms=number(t, "latency_ms_b1"),
            feasible=is_feasible(t),
            on_front=t.number in front,
            values=tuple(values_of(t)),
        )
        for t in trials
        if t.state == TrialState.COMPLETE and t.values is not None
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
        attrs = by_number[number].user_attrs
        recipe = attrs.get("recipe") or config.train.model_dump(mode="json")
        augment = attrs.get("augment")
        yaml_text = str(attrs["model_yaml"])
        plan += _runs("search", f"trial {number}", number, None, yaml_text, augment, recipe, config)
    augment = config.augment.model_dump(mode="json") if config.augment.enabled else None
    recipe = config.train.model_dump(mode="json")
    for path, spec in models.items():
        name = Path(path).stem
        plan += _runs("baseline", name, None, path, model_spec_yaml(spec), augment, recipe, config)
    return choices, plan


# --- the verification study ---------------------------------------------------------

# A retrain that failed (not stale: the heartbeat retries those) is queued again this
# many times in all by a later `ensure_plan`; a network that cannot train stays failed.
MAX_RUNS_PER_KEY = 2


def ensure_plan(verify: optuna.Study, storage_url: str, plan: Sequence[Retrain]) -> int:
    """Enqueue every retrain of `plan` not yet there; returns how many were queued.
    Under the verification study's claim lock: two callers never queue one key twice."""
    with budget_lock(storage_url, verify.study_name):
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
            verify.enqueue_trial({}, user_attrs={SPEC_ATTR: retrain.attrs()})
            runs[retrain.key] = [*states, TrialState.WAITING]
            queued += 1
        return queued


def claim_retrain(verify: optuna.Study, storage_url: str) -> optuna.Trial | str:
    """A queued retrain, or "wait" (some still run elsewhere) or "done" (none left).
    `ask()` makes a new, empty trial when none is queued: so it is called only under
    the lock and only when a queued one is there for it to take."""
    with budget_lock(storage_url, verify.study_name):
        fail_stale_trials(verify)  # a dead worker's retrain goes back in the queue
        states = count_states(verify)
        if states[TrialState.WAITING]:
            return verify.ask()
        return "wait" if states[TrialState.RUNNING] else "done"


def unfinished(verify: optuna.Study) -> int:
    """Retrains queued or running."""
    states = (TrialState.WAITING, TrialState.RUNNING)
    return len(verify.get_trials(deepcopy=False, states=states))


def retrain_data(data: Dataset) -> Dataset:
    """Train + validation as the training split (nothing is selected any more: the test
    split is the only judge), the validation split empty."""
    x = torch.cat([data.train.x, data.val.x])  # (N_train + N_val, C, S, S) uint8
    y = torch.cat([data.train.y, data.val.y])
    empty = Split(data.val.x[:0], data.val.y[:0])
    return replace(data, train=Split(x, y), val=empty)


def wait_for_retrains(
    verify: optuna.Study, storage_url: str, poll_s: float = 5.0, timeout_s: float | None = None
) -> bool:
    """Poll until no retrain is queued or running (True) or `timeout_s` passes (False).
    A retrain whose worker died is failed here too, and its retry queued, so a collector
    never waits on a trial nobody runs any more."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        with budget_lock(storage_url, verify.study_name):
            fail_stale_trials(verify)
        if not unfinished(verify):
            return True
        left = math.inf if deadline is None else deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(poll_s, left))
