"""Trials as a search leaves them, and seeded in-memory studies: for selection,
verification, the exporter and the space without training."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import optuna
from optuna.distributions import IntDistribution
from optuna.trial import FrozenTrial, create_trial

from job.collect.retrains import fit_classes
from job.ml.model import load_model_spec
from tests.support.configs import RESNET8


def search_trial(number: int, acc: float, params: int, feasible: bool = True) -> Any:
    """A COMPLETE search trial as a worker leaves it (the attrs verification reads)."""
    spec = load_model_spec(RESNET8)
    from job.ml.model import model_spec_yaml

    return create_trial(
        params={"x": number},
        distributions={"x": IntDistribution(0, 1000)},
        values=[acc, float(params)],
        user_attrs={
            "val_accuracy": acc,
            "params": params,
            "macs": params * 10,
            "latency_ms_ort_fp32": 0.1,
            "model_yaml": model_spec_yaml(fit_classes(spec, 10)) + f"# trial {number}\n",
            "augment": None,
            "recipe": {"epochs": 1, "batch_size": 32, "lr": 0.05, "device": "cpu", "seed": number},
            "data_fingerprint": "f" * 64,
            "code_version": "test",
        },
        system_attrs={"constraints": [0.0 if feasible else 1.0]},
    )


def finished_trial(acc: float, params: float, start: datetime, minutes: int) -> FrozenTrial:
    """A COMPLETE trial of (accuracy, params), from `start` for `minutes`."""
    done = create_trial(values=[acc, params], user_attrs={"val_accuracy": acc})
    done.datetime_start, done.datetime_complete = start, start + timedelta(minutes=minutes)
    return done


def random_study(seed: int = 0, n_objectives: int = 2) -> optuna.Study:
    """An in-memory study (accuracy up, params down) with a seeded random sampler."""
    return optuna.create_study(
        directions=["maximize", "minimize"][:n_objectives],
        sampler=optuna.samplers.RandomSampler(seed=seed),
    )


ROWS = [(0.90, 1_000, True), (0.97, 10_000, True), (0.99, 1_000_000, False), (0.96, 50_000, True)]


def ask_past_pruned_trials(study: optuna.Study, n: int = 24) -> None:
    """Ask `n` trials of a two-objective study, two in three of them pruned with a
    learning curve (as job.search.prune leaves them), each after the sampler saw the
    others: past TPE's 10 start-up trials and NSGA-II's first generation. Pruned trials
    carry no values (`tell_pruned`)."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    from job.storage import save_curve, tell_pruned

    for i in range(n):
        trial = study.ask({"x": FloatDistribution(0.0, 1.0)})
        x = trial.params["x"]
        if i % 3:
            save_curve(trial, {1: x / 2, 2: x})
            assert tell_pruned(study, trial) == TrialState.PRUNED
        else:
            study.tell(trial, [x, 1000 * (1 - x)])
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert len(pruned) == n - (n + 2) // 3 and all(t.values is None for t in pruned)
