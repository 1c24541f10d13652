"""job.search.prune: the rung decision, on hand-made rung tables and fed from a study;
TPE, NSGA-II and GP on studies full of PRUNED trials; job.search.budget's epochs."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState, create_trial

from job.config import Config
from job.search import budget, prune
from job.search.prune import Entrant, crowding, fronts, goes_on, ranked, rung_epochs
from job.search.worker import open_study
from tests.support.configs import tiny
from tests.support.proc import journal_url
from tests.support.studies import ask_past_pruned_trials


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
        (
            {"study.pruning": {"enabled": True}, "train.warmup_epochs": 1},
            "study.pruning.min_epochs",
        ),
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
    ask_past_pruned_trials(study)  # on PostgreSQL: tests/integration/test_pruning.py


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


def test_a_study_that_spent_its_epochs_is_done_everywhere_it_is_shown() -> None:
    from job.search.view import summarise
    from job.serve.exporter import eta_seconds

    config = Config.model_validate(
        tiny(**{"train.epochs": 4, "study.budget": 10, "study.budget_epochs": 6})
    )
    spent_all = [_trial(0, {1: 0.1, 2: 0.2, 3: 0.2}, 10, state=TrialState.PRUNED)]
    summary = summarise(spent_all, config)
    assert summary.finished and summary.eta == "done" and eta_seconds(summary) == 0.0
    assert not summarise([], config).finished  # nothing spent yet


def test_the_run_bar_counts_epochs_where_an_epoch_budget_ends_the_search() -> None:
    from job.search.view import progress_text, summarise

    config = Config.model_validate(
        tiny(**{"train.epochs": 4, "study.budget": 10, "study.budget_epochs": 6})
    )
    trials = [
        _trial(0, {1: 0.1, 2: 0.2}, 10, state=TrialState.PRUNED),
        _trial(1, {1: 0.3, 2: 0.5, 3: 0.6, 4: 0.7}, 20, state=TrialState.COMPLETE),
    ]
    summary = summarise(trials, config)
    assert budget.progress(summary.spent, config) == (6, 6, "epoch")
    assert budget.budget_text(config) == "10 trials or 6 epochs"
    assert progress_text(summary).startswith("1 COMPLETE, best acc 0.7000")
    by_trials = Config.model_validate(tiny(**{"train.epochs": 4, "study.budget": 3}))
    assert budget.progress(summarise(trials, by_trials).spent, by_trials) == (1, 3, "trial")
    assert budget.budget_text(by_trials) == "3 trials"
    assert progress_text(summarise(trials, by_trials)).startswith("best acc")


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


# --- the pure half: rung tables by hand ------------------------------------------------


def _table(*points: tuple[float, ...]) -> list[Entrant]:
    """Entrants numbered from 0 in the order given."""
    return [Entrant(i, p) for i, p in enumerate(points)]


def _going_on(entrants: list[Entrant], eta: int) -> set[int]:
    return {e.number for e in entrants if goes_on(e.number, entrants, eta)}


@pytest.mark.parametrize(
    ("min_epochs", "eta", "epochs", "expected"),
    [
        (1, 3, 27, (1, 3, 9)),
        (1, 3, 28, (1, 3, 9, 27)),
        (2, 2, 16, (2, 4, 8)),
        (1, 2, 1, ()),  # one epoch: its result is all there is
        (5, 3, 5, ()),
        (4, 4, 200, (4, 16, 64)),
    ],
)
def test_rungs_are_min_epochs_times_powers_of_eta_below_the_last_epoch(
    min_epochs: int, eta: int, epochs: int, expected: tuple[int, ...]
) -> None:
    assert rung_epochs(min_epochs, eta, epochs) == expected


@pytest.mark.parametrize(("min_epochs", "eta"), [(0, 3), (1, 1), (-2, 2)])
def test_rungs_refuse_a_schedule_that_never_grows(min_epochs: int, eta: int) -> None:
    with pytest.raises(ValueError, match="min_epochs >= 1 and eta >= 2"):
        rung_epochs(min_epochs, eta, 10)


def test_fronts_two_objectives() -> None:
    # (-accuracy, params): 0 and 1 trade off; 2 is beaten by 0; 3 by 2 (and 0)
    points = [(-0.9, 100.0), (-0.8, 50.0), (-0.85, 120.0), (-0.7, 130.0)]
    assert fronts(points) == [0, 0, 1, 2]


def test_fronts_three_objectives() -> None:
    # (-accuracy, params, latency): each of the first three is best at one objective
    points = [(-0.9, 300.0, 3.0), (-0.8, 100.0, 2.0), (-0.7, 200.0, 1.0), (-0.7, 300.0, 3.0)]
    assert fronts(points) == [0, 0, 0, 1]


def test_equal_points_share_a_front_behind_its_extremes_in_one_order() -> None:
    entrants = _table((-0.8, 10.0), (-0.8, 10.0), (-0.9, 20.0), (-0.7, 5.0))
    assert fronts([e.point for e in entrants]) == [0, 0, 0, 0]
    # extremes (2: most accurate, 3: smallest) have infinite distance; 0 and 1 sit between
    order = [e.number for e in ranked(entrants)]
    assert order[:2] == [2, 3] and set(order[2:]) == {0, 1}
    assert order == [e.number for e in ranked(list(reversed(entrants)))]  # input order aside


def test_crowding_keeps_a_fronts_extremes_and_favours_the_lonely() -> None:
    points = [(0.0, 10.0), (1.0, 9.0), (5.0, 5.0), (9.0, 1.0), (10.0, 0.0)]
    distance = crowding(points)
    assert math.isinf(distance[0]) and math.isinf(distance[4])
    assert distance[2] > distance[1] and distance[2] > distance[3]  # far from both neighbours
    assert crowding([(1.0, 2.0), (2.0, 1.0)]) == [math.inf, math.inf]


def test_the_top_one_over_eta_go_on() -> None:
    # nine entrants, eta 3: three go on. Front 0: 0, 1, 2 (a trade-off); the rest behind.
    entrants = _table(
        (-0.95, 300.0), (-0.90, 100.0), (-0.80, 50.0),
        (-0.85, 310.0), (-0.75, 120.0), (-0.70, 60.0),
        (-0.60, 400.0), (-0.50, 500.0), (-0.40, 600.0),
    )  # fmt: skip
    assert _going_on(entrants, 3) == {0, 1, 2}
    assert _going_on(entrants, 2) == {0, 1, 2, 3}  # four: the next front's most crowded-out


def test_the_whole_first_front_goes_on_past_the_quota() -> None:
    # six non-dominated entrants, eta 3: the quota is two, yet none is dominated
    entrants = _table(*[(-0.5 - 0.05 * i, 10.0 + 10 * i) for i in range(6)])
    assert set(fronts([e.point for e in entrants])) == {0}
    assert _going_on(entrants, 3) == set(range(6))


def test_a_newcomer_on_the_first_front_goes_on_though_older_trials_hold_the_quota() -> None:
    # four entrants, eta 3: one place, and the ranking gives it to trial 0 (an extreme of
    # the front, as the newcomer 3 is, and earlier); 3 is the smallest, so it goes on too
    entrants = _table((-0.9, 100.0), (-0.8, 50.0), (-0.6, 200.0), (-0.3, 10.0))
    assert [e.number for e in ranked(entrants)][:1] == [0]
    assert _going_on(entrants, 3) == {0, 1, 3}  # 2 is dominated by 0 and 1


def test_the_quota_is_filled_from_the_next_fronts_in_rank_order() -> None:
    # front 0 = {0}; front 1 = {1, 2, 3}, each best at one objective there (all extremes,
    # so the trial number decides); 4 and 5 behind. Six entrants, eta 3: two go on.
    entrants = _table(
        (-0.9, 100.0, 1.0),
        (-0.8, 200.0, 2.0), (-0.7, 150.0, 2.5), (-0.6, 250.0, 1.5),
        (-0.5, 300.0, 3.0), (-0.5, 310.0, 3.5),
    )  # fmt: skip
    assert fronts([e.point for e in entrants]) == [0, 1, 1, 1, 2, 3]
    assert _going_on(entrants, 3) == {0, 1}
    assert _going_on(entrants, 2) == {0, 1, 2}


def test_one_entrant_goes_on() -> None:
    (only,) = _table((-0.1, 1e6))
    assert goes_on(only.number, [only], 3)


def test_fewer_than_eta_entrants_keep_the_first_front() -> None:
    entrants = _table((-0.9, 200.0), (-0.8, 100.0), (-0.7, 250.0))  # 2 is dominated by 0
    assert _going_on(entrants, 4) == {0, 1}
    assert _going_on(entrants[:2], 3) == {0, 1}  # both non-dominated


def test_three_objectives_at_a_rung() -> None:
    # each of the first three is best at one objective: the first front, all go on past
    # a quota of two; the dominated three stop
    entrants = _table(
        (-0.9, 300.0, 3.0), (-0.8, 100.0, 2.0), (-0.7, 200.0, 1.0),
        (-0.7, 300.0, 3.0), (-0.6, 310.0, 3.5), (-0.5, 320.0, 4.0),
    )  # fmt: skip
    assert _going_on(entrants, 3) == {0, 1, 2}
    assert _going_on(entrants, 2) == {0, 1, 2}  # quota three: the first front fills it


def test_every_worker_decides_alike_whatever_order_it_read_the_rung_in() -> None:
    entrants = _table((-0.9, 5.0), (-0.9, 5.0), (-0.8, 3.0), (-0.6, 1.0), (-0.7, 4.0))
    decisions = {frozenset(_going_on(list(order), 2)) for order in itertools.permutations(entrants)}
    assert len(decisions) == 1


def test_a_trial_not_at_the_rung_is_refused() -> None:
    with pytest.raises(ValueError, match="trial 7 is not an entrant"):
        goes_on(7, _table((-0.5, 1.0)), 3)
