"""job.search.prune: the rung decision fed from a study, the worker that stops a trial
there, TPE and NSGA-II on studies full of PRUNED trials, and job.search.budget's epochs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from job.config import Config
from job.search import budget, prune
from job.search.worker import open_study
from job.storage import save_curve, tell_pruned
from tests.support.configs import tiny
from tests.support.proc import journal_url


def _trial(
    number: int, curve: dict[int, float], params: int, state: TrialState = TrialState.RUNNING,
    **attrs: Any,
) -> FrozenTrial:  # fmt: skip
    values = [curve[max(curve)], float(params)] if state == TrialState.COMPLETE else None
    trial = create_trial(
        state=state, values=values, intermediate_values=curve,
        user_attrs={"params": params, **attrs},
    )  # fmt: skip
    trial.number = number
    return trial


def _pruning(**changes: object) -> Config:
    doc = tiny(**{"train.epochs": 9, "study.pruning": {"enabled": True, "eta": 3}, **changes})
    return Config.model_validate(doc)


def test_rungs_follow_min_epochs_and_eta_and_are_none_when_off() -> None:
    assert prune.rungs(_pruning()) == (1, 3)
    assert prune.rungs(_pruning(**{"study.pruning": {"enabled": True, "min_epochs": 2}})) == (2, 6)
    assert prune.rungs(Config.model_validate(tiny(**{"train.epochs": 9}))) == ()


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"study.pruning": {"enabled": True, "min_epochs": 9}}, "study.pruning.min_epochs"),
        ({"study.budget_epochs": 8}, "study.budget_epochs"),
        ({"study.pruning": {"eta": 1}}, "study.pruning.eta"),
        ({"study.pruning": {"enable": True}}, "study.pruning.enable"),
    ],
)
def test_pruning_config_is_refused_naming_the_key(changes: dict[str, object], key: str) -> None:
    from job.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(tiny(**{"train.epochs": 9, **changes}))


def test_a_dominated_trial_stops_at_its_rung_and_says_how_it_ranked() -> None:
    config = _pruning()
    others = [_trial(n, {1: 0.5 + n / 100, 2: 0.6}, 1000 - n) for n in range(5)]
    worst = _trial(9, {1: 0.1}, 5000)
    with pytest.raises(prune.Pruned) as caught:
        prune.decide(9, [*others, worst], 1, config)
    assert (caught.value.epoch, caught.value.rank, caught.value.entrants) == (1, 6, 6)
    assert caught.value.attrs.to_attrs() == {"pruned_epoch": 1, "pruned_rank": 6, "rung_size": 6}
    prune.decide(4, [*others, worst], 1, config)  # the most accurate and smallest goes on


def test_a_rung_counts_only_trials_that_reached_it_and_goes_on_below_eta() -> None:
    config = _pruning()
    early = [_trial(n, {1: 0.9}, 100) for n in range(4)]  # at rung 1 only
    late = _trial(7, {1: 0.2, 2: 0.3, 3: 0.3}, 9000)
    # at rung 3 it is alone: fewer than eta entrants, on the first front, so it goes on
    prune.decide(7, [*early, late], 3, config)
    assert [e.number for e in prune.entrants([*early, late], 3, config)] == [7]


def test_an_objective_not_every_entrant_has_is_left_out_of_the_rung() -> None:
    config = Config.model_validate(
        tiny(**{"objectives": ["accuracy", "latency"], "train.measure_latency": True})
    )
    measured = _trial(1, {1: 0.5}, 10, latency_ms_ort_fp32=0.2)
    also = _trial(3, {1: 0.3}, 10, latency_ms_ort_fp32=0.1)
    assert [e.point for e in prune.entrants([measured, also], 1, config)] == [
        (-0.5, 0.2),
        (-0.3, 0.1),
    ]
    unmeasured = _trial(2, {1: 0.4}, 10)  # an older trial's: no latency of this runtime
    points = prune.entrants([measured, unmeasured], 1, config)
    assert [e.point for e in points] == [(-0.5,), (-0.4,)]


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp"])
def test_samplers_keep_sampling_a_multi_objective_study_full_of_pruned_trials(
    sampler: str, tmp_path: Path
) -> None:
    """optuna#5260: TPE read a pruned trial's curve by `study.direction`, which a
    multi-objective study refuses; `make_sampler` mends it (job.search.studies)."""
    config = Config.model_validate(tiny(**{"study.sampler": sampler}))
    study = open_study(config, journal_url(tmp_path))
    for i in range(24):
        trial = study.ask({"x": FloatDistribution(0.0, 1.0)})
        x = trial.params["x"]
        if i % 3:
            save_curve(trial, {1: x / 2, 2: x})
            assert tell_pruned(study, trial) == TrialState.PRUNED
        else:
            study.tell(trial, [x, 1000 * (1 - x)])
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert len(pruned) == 16 and all(t.values is None for t in pruned)  # no 1-value "values"


def test_optuna_still_has_the_function_the_tpe_mend_wraps() -> None:
    from optuna.samplers._tpe import sampler as tpe

    assert hasattr(tpe._get_pruned_trial_score, "__wrapped__") or callable(
        tpe._get_pruned_trial_score
    )
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = _trial(0, {1: 0.3, 2: 0.4}, 10, state=TrialState.PRUNED)
    from job.search.studies import make_sampler

    make_sampler(Config.model_validate(tiny(**{"study.sampler": "tpe"})))
    assert tpe._get_pruned_trial_score(trial, study) == (-2, -0.4)


# --- the epoch budget ---------------------------------------------------------------------


def test_epochs_count_each_trained_epoch_once_across_a_resume() -> None:
    preempted = _trial(0, {1: 0.2, 2: 0.3}, 10, state=TrialState.FAIL)
    retry = _trial(1, {1: 0.2, 2: 0.3, 3: 0.4, 4: 0.5}, 10, TrialState.COMPLETE, resumed_epoch=3)
    pruned = _trial(2, {1: 0.1}, 10, state=TrialState.PRUNED)
    running = _trial(3, {1: 0.4}, 10)
    used = budget.spent([preempted, retry, pruned, running], epochs=4)
    assert used.epochs_trained == 2 + 2 + 1 + 1
    assert (used.epochs_saved, used.epochs_reserved, used.pruned) == (3, 3, 1)


@pytest.mark.parametrize(
    ("trials", "expected"),
    [
        ([], "take"),
        ([_trial(0, {1: 0.1}, 10, state=TrialState.PRUNED)], "take"),  # 1 + 4 <= 6
        ([_trial(0, {1: 0.1, 2: 0.2}, 10, state=TrialState.PRUNED)], "take"),  # 2 + 4 <= 6
        ([_trial(0, {1: 0.1, 2: 0.2, 3: 0.2}, 10, state=TrialState.PRUNED)], "done"),  # 3 + 4
        ([_trial(0, {1: 0.1}, 10)], "wait"),  # 1 + 3 reserved + 4 > 6: it may be pruned
    ],
)
def test_a_new_trial_is_taken_only_when_its_epochs_fit(
    trials: list[FrozenTrial], expected: str
) -> None:
    config = Config.model_validate(
        tiny(**{"train.epochs": 4, "study.budget": 10, "study.budget_epochs": 6})
    )
    assert budget.claim(trials, config) == expected


def test_the_console_and_the_progress_bar_say_where_a_trial_was_pruned() -> None:
    from job.run.local import describe
    from job.search.view import progress_text, summarise

    config = _pruning()
    pruned = _trial(3, {1: 0.1}, 900, TrialState.PRUNED, pruned_epoch=1, pruned_rank=5)
    pruned.user_attrs["rung_size"] = 6
    assert describe(pruned, config.objectives) == "trial    3  PRUNED    at epoch 1: rank 5 of 6"
    done = _trial(4, {1: 0.5, 9: 0.9}, 800, TrialState.COMPLETE)
    summary = summarise([pruned, done], config)
    assert progress_text(summary).endswith(", pruned 1")
    assert (summary.spent.epochs_trained, summary.spent.epochs_saved) == (1 + 9, 9 - 1)
