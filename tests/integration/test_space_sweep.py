"""job/search/space.py over the whole seed space: 500 sampled networks each run for real on
32x32 or are rejected up front, and the meta-device count of each (params, MACs) is the
real network's (in-process, but a minute of CPU: the rest of the space's tests are
tests/unit/test_space.py)."""

from __future__ import annotations

import optuna
import torch

from job.config import Config
from job.ml.model import _macs_and_output, build_model, count_params
from job.ml.train import TrainError
from job.search.space import sample_candidate
from tests.support.data import blank_dataset
from tests.support.studies import random_study

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_500_networks_run_on_32x32_or_are_rejected_up_front() -> None:
    config, study = Config(), random_study()
    ran = rejected = 0
    for _ in range(500):
        trial = study.ask()
        try:
            candidate = sample_candidate(trial, blank_dataset(), config, timed=False)
        except TrainError as exc:
            assert exc.reason == "invalid_network"
            rejected += 1
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        model = build_model(candidate.model).eval()
        with torch.inference_mode():
            macs, logits = _macs_and_output(model, 32, 3)  # a real forward, hooks counting
        assert logits.shape == (1, 10)
        assert (count_params(model), macs) == (candidate.measured.params, candidate.measured.macs)
        ran += 1
        study.tell(trial, [0.5, float(candidate.measured.params)])
    assert ran + rejected == 500
    assert ran > 400  # the seed's rules make almost every network fit 32x32
