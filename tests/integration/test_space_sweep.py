"""job/search/space.py over the whole seed space: 500 sampled networks each run for real on
32x32 or are rejected up front (in-process, but minutes of CPU: the rest of the space's
tests are tests/unit/test_space.py)."""

from __future__ import annotations

import optuna
import torch

from job.config import Config
from job.ml.data import Dataset, Split
from job.ml.model import build_model
from job.ml.train import TrainError
from job.search.space import sample_candidate

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(seed: int = 0, n_objectives: int = 2) -> optuna.Study:
    return optuna.create_study(
        directions=["maximize", "minimize"][:n_objectives],
        sampler=optuna.samplers.RandomSampler(seed=seed),
    )


def _data(size: int = 32, classes: int = 10) -> Dataset:
    """Images of the given size and a class count: all sample_candidate reads of data."""
    x = torch.zeros(classes, 3, size, size, dtype=torch.uint8)
    split = Split(x, torch.arange(classes))
    names = tuple(str(i) for i in range(classes))
    return Dataset("t", split, split, split, names, (0.5,) * 3, (0.25,) * 3, "-")


def test_500_networks_run_on_32x32_or_are_rejected_up_front() -> None:
    config, study = Config(), _study()
    ran = rejected = 0
    x = torch.randn(1, 3, 32, 32)
    for _ in range(500):
        trial = study.ask()
        try:
            candidate = sample_candidate(trial, _data(), config)
        except TrainError as exc:
            assert exc.reason == "invalid_network"
            rejected += 1
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        with torch.inference_mode():
            logits = build_model(candidate.model).eval()(x)
        assert logits.shape == (1, 10)
        ran += 1
        study.tell(trial, [0.5, float(candidate.measured.params)])
    assert ran + rejected == 500
    assert ran > 400  # the seed's rules make almost every network fit 32x32
