"""job/search/rungs.py: rung epochs and the decision at a rung, on hand-made rung tables."""

from __future__ import annotations

import itertools
import math

import pytest

from job.search.rungs import Entrant, crowding, fronts, goes_on, ranked, rung_epochs


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


def test_a_front_larger_than_the_quota_keeps_its_extremes_first() -> None:
    # six non-dominated entrants, eta 3: two go on, the front's two extremes
    entrants = _table(*[(-0.5 - 0.05 * i, 10.0 + 10 * i) for i in range(6)])
    assert set(fronts([e.point for e in entrants])) == {0}
    assert _going_on(entrants, 3) == {0, 5}


def test_one_entrant_goes_on() -> None:
    (only,) = _table((-0.1, 1e6))
    assert goes_on(only.number, [only], 3)


def test_fewer_than_eta_entrants_keep_the_first_front() -> None:
    entrants = _table((-0.9, 200.0), (-0.8, 100.0), (-0.7, 250.0))  # 2 is dominated by 0
    assert _going_on(entrants, 4) == {0, 1}
    assert _going_on(entrants[:2], 3) == {0, 1}  # both non-dominated


def test_three_objectives_at_a_rung() -> None:
    entrants = _table(
        (-0.9, 300.0, 3.0), (-0.8, 100.0, 2.0), (-0.7, 200.0, 1.0),
        (-0.7, 300.0, 3.0), (-0.6, 310.0, 3.5), (-0.5, 320.0, 4.0),
    )  # fmt: skip
    assert _going_on(entrants, 3) == {0, 1, 2} - {_third(entrants)}
    assert len(_going_on(entrants, 3)) == 2


def _third(entrants: list[Entrant]) -> int:
    """Of a front of three, the one ranked last (the two others go on)."""
    return [e.number for e in ranked(entrants)][2]


def test_every_worker_decides_alike_whatever_order_it_read_the_rung_in() -> None:
    entrants = _table((-0.9, 5.0), (-0.9, 5.0), (-0.8, 3.0), (-0.6, 1.0), (-0.7, 4.0))
    decisions = {frozenset(_going_on(list(order), 2)) for order in itertools.permutations(entrants)}
    assert len(decisions) == 1


def test_a_trial_not_at_the_rung_is_refused() -> None:
    with pytest.raises(ValueError, match="trial 7 is not an entrant"):
        goes_on(7, _table((-0.5, 1.0)), 3)
