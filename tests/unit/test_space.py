"""job/search/space.py: the seed's space as data, its stride rules, constraints, objectives."""

from __future__ import annotations

import math

import optuna
import pytest

from job.config import Config, ConstraintsConfig, parse_config
from job.ml.latency import Latency
from job.ml.train import TrainResult
from job.search.space import (
    constraint_values,
    directions,
    objective_values,
    sample_augment,
    sample_candidate,
    sample_model,
    sample_recipe,
)
from tests.support.data import blank_dataset
from tests.support.studies import random_study

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _strides(spec) -> list[int]:  # type: ignore[no-untyped-def]
    """Stride of each sampled block (the head's 1x1 conv excluded)."""
    out = []
    for layer in spec.backbone[:-3]:
        out.append(int(layer.args[-1] if layer.module.startswith("Inverted") else layer.args[2]))
    return out


def test_stride_rules_hold_for_many_samples() -> None:
    config, study = Config(), random_study(seed=1)
    for _ in range(300):
        trial = study.ask()
        spec = sample_model(trial, config, num_classes=10)
        strides = _strides(spec)
        assert strides.count(2) <= config.space.max_stride2
        # The first downsampling happens by block 2 whenever block 2 is not skipped.
        if trial.params["m2"] != "Pass":
            assert 2 in strides[:2]
        assert spec.backbone[-1].module == "FixedConv" and spec.backbone[-1].args[0] == 10
        study.tell(trial, [0.0, 0.0])


def test_narrowed_space_is_respected() -> None:
    config = parse_config(
        {
            "space": {
                "blocks": [
                    {"modules": ["Conv"], "repeat": [2, 2], "channels": [24, 24, 8], "kernel": [5]},
                    {"modules": ["InvertedResidualv3"], "ir_channels": [32, 32, 8]},
                ],
                "head_channels": [256, 256, 128],
            }
        }
    )
    trial = random_study().ask()
    spec = sample_model(trial, config, num_classes=3)
    first, second = spec.backbone[0], spec.backbone[1]
    assert (first.repeat, first.module, first.args[:3]) == (2, "Conv", (24, 5, first.args[2]))
    assert second.module == "InvertedResidualv3" and second.args[2] == 32
    assert spec.backbone[2].args[0] == 256 and spec.backbone[-1].args[0] == 3


def test_policy_fixed_or_searched() -> None:
    fixed = parse_config({"space": {"augment": None}})
    policy = sample_augment(random_study().ask(), fixed)
    assert policy is fixed.augment and (policy.n_select, policy.level) == (2, 15)
    off = parse_config({"augment": {"enabled": False}})
    assert sample_augment(random_study().ask(), off) is off.augment
    searched = Config()
    seen_random = seen_fixed = False
    for seed in range(20):
        p = sample_augment(random_study(seed).ask(), searched)
        assert p.enabled and 0 <= p.n_select <= 3 and p.ops == searched.augment.ops
        seen_random |= p.level is None
        seen_fixed |= p.level is not None
    assert seen_random and seen_fixed


def test_recipe_knobs_and_per_trial_seed() -> None:
    config = parse_config({"space": {"train": {"lr": [0.01, 0.2], "label_smoothing": [0.0, 0.1]}}})
    study = random_study()
    a, b = study.ask(), study.ask()
    ra, rb = sample_recipe(a, config), sample_recipe(b, config)
    assert 0.01 <= ra.lr <= 0.2 and ra.label_smoothing in (0.0, 0.1)
    assert ra.seed != rb.seed and ra.epochs == config.train.epochs
    assert type(ra) is type(config.train)  # the config section itself, per trial


def test_constraints_are_recorded_on_the_trial() -> None:
    config = parse_config({"constraints": {"max_params": 1000}})
    trial = random_study().ask()
    candidate = sample_candidate(trial, blank_dataset(), config, timed=False)
    params = candidate.measured.params
    assert params > 1000
    assert trial.constraints == {"params": pytest.approx(params / 1000 - 1.0)}
    values = constraint_values(ConstraintsConfig(max_macs=100, max_latency_ms=2.0), 5, 50, 3.0)
    assert values == {"macs": -0.5, "latency": 0.5}


def test_objectives_map_results_and_directions() -> None:
    result = TrainResult(
        val_accuracy=0.9,
        test_accuracy=0.8,
        val_f1=0.85,
        test_f1=0.8,
        params=1234,
        macs=5678,
        train_images_per_s=1.0,
        seconds=1.0,
        device="cpu",
    )
    names = ("accuracy", "params", "macs", "latency", "f1")
    timed = Latency("onnxruntime", "fp32", 0.5)  # timed before training, not by it
    assert objective_values(result, names, timed) == [0.9, 1234.0, 5678.0, 0.5, 0.85]
    assert math.isnan(objective_values(result, names)[3])  # not timed: NaN
    assert directions(names) == ["maximize", "minimize", "minimize", "minimize", "maximize"]
