"""Stage 8 of the data path, verify: the picks retrained in full, on the workers.

A search trial's accuracy is a proxy (a subset, few epochs, one seed). Once the search
budget is met, the models worth keeping are retrained from scratch with the full
recipe (`select.retrain`: its epochs, train + validation as training data, one run per
seed) and tested on the test split. Each retrain is one trial of a second study,
`<study>-verify`, so the workers run them exactly as they run search trials: claimed
under the same lock, beating, retried when their worker dies, checkpointed and handed
back when preempted. K retrains on N workers take about K/N trial times.

This module is what a retrain is (`Retrain`, a verification trial's user attr) and how a
worker runs one (`RetrainTask`, the worker loop's second task: `job.search.tasks`):
claimed from the queue (`claim_retrain`), trained on train + validation
(`retrain_data`). What to retrain, and queueing it, is the collector's: the plan
(`job.collect.retrains.plan_retrains`), queued by whoever gets there first (a worker whose
search is done, or the collector: `job.collect.retrains.ensure_plan`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from job.config import AugmentConfig, Config, TrainConfig
from job.ml.data import Dataset, Split
from job.ml.latency import measure
from job.ml.model import ModelSpec, spec_from_yaml
from job.ml.train import EpochRecord, check_fit
from job.search.record import SPEC_ATTR as SPEC_ATTR  # a verification trial's `Retrain`
from job.search.record import TrialAttrs
from job.search.studies import open_study
from job.search.tasks import TaskOpener, TrialRun
from job.storage import Store, budget_lock, count_states, fail_stale_trials

VERIFY_SUFFIX = "-verify"


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
        found = TrialAttrs.read(trial).retrain
        return cls(**found) if found is not None else None

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


def claim_retrain(verify: optuna.Study, store: Store | str) -> optuna.Trial | str:
    """A queued retrain, or "wait" (some still run elsewhere) or "done" (none left).
    `ask()` makes a new, empty trial when none is queued: so it is called only under
    the lock and only when a queued one is there for it to take."""
    with budget_lock(store, verify.study_name):
        fail_stale_trials(verify)  # a dead worker's retrain goes back in the queue
        states = count_states(verify)
        if states[TrialState.WAITING]:
            return verify.ask()
        return "wait" if states[TrialState.RUNNING] else "done"


def retrain_data(data: Dataset) -> Dataset:
    """Train + validation as the training split (nothing is selected any more: the test
    split is the only judge), the validation split empty."""
    x = torch.cat([data.train.x, data.val.x])  # (N_train + N_val, C, S, S) uint8
    y = torch.cat([data.train.y, data.val.y])
    empty = Split(data.val.x[:0], data.val.y[:0])
    return replace(data, train=Split(x, y), val=empty)


class RetrainTask:
    """Verification (module doc): the queued retrains of `<study>-verify` until none is
    left. Its value is the test accuracy; the network's weights go to `weights_dir` (a
    folder the collector reads: in Kubernetes, the shared artifacts volume), their path
    into the trial's `weights` user attr."""

    def __init__(
        self, config: Config, store: Store, study: optuna.Study, weights_dir: Path | None = None
    ) -> None:
        self.config, self.store, self.study = config, store, study
        self.weights_dir = weights_dir or Path("verified")
        self.objectives: Sequence[str] = ("verified_accuracy",)  # one value: test accuracy

    @classmethod
    def open(
        cls,
        config: Config,
        store: Store,
        study_name: str | None = None,
        worker_index: int = 0,
        weights_dir: Path | None = None,
    ) -> RetrainTask:
        study = open_study(config, store, study_name, worker_index, verify=True)
        return cls(config, store, study, weights_dir)

    @classmethod
    def opener(cls, weights_dir: Path | None = None) -> TaskOpener:
        """`open` with `weights_dir`, as a worker takes it (`Worker(…, task=…)`)."""

        def open_task(
            config: Config, store: Store, study_name: str | None, worker_index: int
        ) -> RetrainTask:
            return cls.open(config, store, study_name, worker_index, weights_dir)

        return open_task

    def claim(self) -> optuna.Trial | str:
        return claim_retrain(self.study, self.store)

    def epochs(self, frozen: FrozenTrial) -> int:
        spec = Retrain.of(frozen)
        return spec.train_config().epochs if spec is not None else self.config.train.epochs

    def hand_back(self, run: TrialRun) -> TrialAttrs:
        """A retrain's copy must know what it retrains."""
        return TrialAttrs(retrain=TrialAttrs.read(run.trial).retrain)

    def judge(self, trial: optuna.Trial, record: EpochRecord) -> None:
        """A retrain trains to its end: it is judged against its baselines, not its rung."""

    def run(self, run: TrialRun, data: Dataset) -> tuple[list[float], str]:
        spec = Retrain.of(run.frozen)
        if spec is None:
            raise ValueError(f"trial {run.number} of {self.study.study_name} is no queued retrain")
        model = spec.spec()
        measured = check_fit(model, data)
        recipe = spec.train_config()
        # timed as the search times (the study's `train.latency`): picks and baselines alike
        timed = self.config.train.model_copy(update={"seed": recipe.seed, "device": recipe.device})
        latency = measure(model, data, timed) if timed.measure_latency else None
        run.record(TrialAttrs(params=measured.params, macs=measured.macs), write=False)
        run.record(TrialAttrs.from_latency(latency))  # with the sizes: one write
        weights = (self.weights_dir / f"{self.study.study_name}-{spec.key}.pt").resolve()
        result = run.train(
            model,
            spec.augment_config(),
            recipe,
            data,
            measured=measured,
            weights=weights,
            test=True,  # always: the test split is where a verified accuracy comes from
        )
        run.record(TrialAttrs.from_result(result, str(weights)), write=False)
        assert result.test_accuracy is not None
        summary = f"verified {spec.name} seed {spec.seed}: test acc {result.test_accuracy:.4f}"
        return [result.test_accuracy], summary
