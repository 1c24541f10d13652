"""Trials as a search leaves them, for selection and verification without training."""

from __future__ import annotations

from typing import Any

from optuna.distributions import IntDistribution
from optuna.trial import create_trial

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
            "latency_ms_b1": 0.1,
            "model_yaml": model_spec_yaml(fit_classes(spec, 10)) + f"# trial {number}\n",
            "augment": None,
            "recipe": {"epochs": 1, "batch_size": 32, "lr": 0.05, "device": "cpu", "seed": number},
            "data_fingerprint": "f" * 64,
            "code_version": "test",
        },
        system_attrs={"constraints": [0.0 if feasible else 1.0]},
    )


ROWS = [(0.90, 1_000, True), (0.97, 10_000, True), (0.99, 1_000_000, False), (0.96, 50_000, True)]
