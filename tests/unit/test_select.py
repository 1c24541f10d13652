"""job.collect.policies, stage 7: each policy on hand-made fronts (ties, infeasible trials, empty
input), the knee's definition, what to verify, the reference policy and the statistics."""

from __future__ import annotations

import math
from typing import Any

import pytest

from job.collect.policies import (
    Choice,
    Record,
    knee,
    mean_std,
    pick,
    rank_agreement,
    resolve_reference,
    select,
    to_verify,
)
from job.config import Policy

OBJ = ("accuracy", "params")
NAN = float("nan")


def rec(
    number: int,
    accuracy: float,
    params: int,
    *,
    macs: int = 1_000_000,
    latency_ms: float = 1.0,
    feasible: bool = True,
    on_front: bool = True,
    values: tuple[float, ...] | None = None,
) -> Record:
    """A record whose values default to (accuracy, params), the OBJ objectives."""
    vals = (accuracy, float(params)) if values is None else values
    return Record(number, accuracy, params, macs, latency_ms, feasible, on_front, vals)


def policy(raw: Any) -> Policy:
    return Policy.model_validate(raw)


def chosen(raw: Any, records: list[Record], objectives: tuple[str, ...] = OBJ) -> int | None:
    return pick(policy(raw), records, objectives).number


# A small study: trial 0 is the most accurate but infeasible, 9 is dominated.
STUDY = [
    rec(0, 0.99, 500, feasible=False, on_front=False),
    rec(1, 0.90, 1_000),
    rec(2, 0.97, 10_000),
    rec(3, 0.98, 1_000_000),
    rec(9, 0.95, 20_000, on_front=False),
]


# --- empty and infeasible input -----------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    ["best", "knee", {"smallest_within": {"accuracy_drop": 0.01}}, {"budget": {"params": 10}}],
)
@pytest.mark.parametrize("records", [[], [rec(1, 0.9, 100, feasible=False, on_front=False)]])
def test_no_feasible_trial_chooses_none(raw: Any, records: list[Record]) -> None:
    choice = pick(policy(raw), records, OBJ)
    assert choice.number is None and not choice.pending
    assert "no feasible COMPLETE trial" in choice.reason


@pytest.mark.parametrize(
    "raw",
    ["best", "knee", {"smallest_within": {"accuracy_drop": 0.5}}, {"budget": {"params": 10**6}}],
)
def test_an_infeasible_trial_is_never_chosen(raw: Any) -> None:
    # Trial 0 beats everything on accuracy and params, but breaks a constraint; a stale
    # on_front flag on it must not help either.
    flagged = [rec(0, 0.99, 500, feasible=False, on_front=True), *STUDY[1:]]
    assert chosen(raw, flagged) not in (0, None)


# --- best ---------------------------------------------------------------------------


def test_best_is_the_most_accurate_feasible() -> None:
    choice = pick(policy("best"), STUDY, OBJ)
    assert choice == Choice("best", "best", 3, choice.reason)
    assert "0.9800" in choice.reason and "1,000,000" in choice.reason


@pytest.mark.parametrize(
    ("records", "want"),
    [
        ([rec(4, 0.95, 300), rec(5, 0.95, 200)], 5),  # accuracy tie → fewer params
        ([rec(7, 0.95, 200), rec(6, 0.95, 200)], 6),  # and params tie → lower number
    ],
)
def test_best_tie_breaks(records: list[Record], want: int) -> None:
    assert chosen("best", records) == want


# --- smallest_within ----------------------------------------------------------------


@pytest.mark.parametrize(("drop", "want"), [(0.0, 3), (0.01, 2), (0.03, 2), (0.08, 1)])
def test_smallest_within_drop(drop: float, want: int) -> None:
    assert chosen({"smallest_within": {"accuracy_drop": drop}}, STUDY) == want


def test_smallest_within_drop_zero_keeps_the_best_accuracy() -> None:
    records = [rec(1, 0.96, 900), rec(2, 0.97, 800), rec(3, 0.97, 700), rec(4, 0.95, 10)]
    best = chosen("best", records)
    within = chosen({"smallest_within": {"accuracy_drop": 0.0}}, records)
    by_number = {r.number: r for r in records}
    assert best is not None and within is not None
    assert by_number[within].accuracy == by_number[best].accuracy
    assert within == 3


def test_smallest_within_params_tie_prefers_accuracy_then_number() -> None:
    records = [rec(5, 0.96, 100), rec(4, 0.97, 100), rec(3, 0.97, 100), rec(1, 0.975, 900)]
    assert chosen({"smallest_within": {"accuracy_drop": 0.02}}, records) == 3


def test_smallest_within_keeps_a_trial_exactly_drop_below_the_best() -> None:
    assert 0.5006 - 0.01 > 0.4906  # float rounding
    records = [rec(1, 0.5006, 900), rec(2, 0.4906, 100)]
    assert chosen({"smallest_within": {"accuracy_drop": 0.01}}, records) == 2


# --- budget -------------------------------------------------------------------------

BUDGET_STUDY = [
    rec(0, 0.99, 1_000, macs=1_000, latency_ms=0.1, feasible=False, on_front=False),
    rec(1, 0.96, 50_000, macs=9_000_000, latency_ms=0.5),
    rec(2, 0.94, 20_000, macs=2_000_000, latency_ms=3.0),
    rec(3, 0.92, 90_000, macs=1_000_000, latency_ms=0.4),
    rec(4, 0.90, 5_000, macs=500_000, latency_ms=NAN),
]


@pytest.mark.parametrize(
    ("limits", "want"),
    [
        ({"params": 50_000}, 1),
        ({"params": 49_999}, 2),
        ({"macs": 2_000_000}, 2),
        ({"latency_ms": 1.0}, 1),
        ({"params": 30_000, "macs": 10**7}, 2),
        ({"params": 100_000, "latency_ms": 0.45}, 3),
        ({"macs": 1_500_000, "latency_ms": 10.0}, 3),
        ({"params": 10_000, "macs": 10**6, "latency_ms": 10.0}, None),  # 4: no latency
        ({"params": 10_000, "macs": 10**6}, 4),
        ({"params": 1_000}, None),
    ],
)
def test_budget_subsets(limits: dict[str, float], want: int | None) -> None:
    assert chosen({"budget": limits}, BUDGET_STUDY) == want


def test_budget_none_says_how_close_it_came() -> None:
    choice = pick(policy({"budget": {"params": 1_000}}), BUDGET_STUDY, OBJ)
    assert choice.reason == "no feasible trial has params <= 1,000; the smallest has params 5,000"


def test_budget_reason_names_unmeasured_latency() -> None:
    records = [rec(1, 0.9, 100, latency_ms=NAN), rec(2, 0.8, 100, latency_ms=NAN)]
    choice = pick(policy({"budget": {"latency_ms": 100.0}}), records, OBJ)
    assert choice.number is None
    assert "latency_ms not measured" in choice.reason
    assert "2 without measured latency excluded (nan never meets" in choice.reason
    # Without a latency limit, nan does not matter and is not mentioned.
    choice = pick(policy({"budget": {"params": 100}}), records, OBJ)
    assert choice.number == 1 and "nan" not in choice.reason


def test_budget_accuracy_tie_prefers_fewer_params() -> None:
    records = [rec(3, 0.9, 400), rec(2, 0.9, 300), rec(1, 0.9, 300), rec(0, 0.95, 9_000)]
    assert chosen({"budget": {"params": 500}}, records) == 1


# --- knee ---------------------------------------------------------------------------


def test_knee_two_objectives_is_the_obvious_middle() -> None:
    # Scaled losses: (1, 0), (0.125, 1/3), (0, 1): the middle is far nearer (0, 0).
    assert knee(STUDY, OBJ) == STUDY[2]
    choice = pick(policy("knee"), STUDY, OBJ)
    assert choice.number == 2 and "3 front members" in choice.reason


def test_knee_three_objectives() -> None:
    objectives = ("accuracy", "params", "latency")
    records = [
        rec(1, 0.98, 10**6, values=(0.98, 1e6, 5.0)),
        rec(2, 0.97, 2_000, values=(0.97, 2e3, 0.2)),
        rec(3, 0.70, 1_000, values=(0.70, 1e3, 0.1)),
    ]
    found = knee(records, objectives)
    assert found is not None and found.number == 2


def test_knee_ignores_an_objective_constant_over_the_front() -> None:
    objectives = ("accuracy", "macs")
    records = [rec(1, 0.9, 10, values=(0.9, 5e5)), rec(2, 0.8, 10, values=(0.8, 5e5))]
    found = knee(records, objectives)
    assert found is not None and found.number == 1  # distance 0: macs adds nothing


def test_knee_front_of_one_and_no_front() -> None:
    only = rec(4, 0.5, 10**7)
    assert knee([only, rec(5, 0.9, 10, on_front=False)], OBJ) == only
    assert knee([rec(5, 0.9, 10, on_front=False)], OBJ) is None
    assert knee([], OBJ) is None


def test_knee_without_a_front_member_chooses_none() -> None:
    choice = pick(policy("knee"), [rec(1, 0.9, 10, on_front=False)], OBJ)
    assert choice.number is None and "Pareto front" in choice.reason


@pytest.mark.parametrize(
    ("records", "want"),
    [
        ([rec(1, 0.98, 10**6), rec(2, 0.90, 1_000)], 2),  # both at distance 1: fewer params
        ([rec(5, 0.9, 100), rec(3, 0.9, 100)], 3),  # identical: lower number
    ],
)
def test_knee_ties(records: list[Record], want: int) -> None:
    found = knee(records, OBJ)
    assert found is not None and found.number == want


# --- select and to_verify -----------------------------------------------------------


def test_select_keeps_policy_order_and_names() -> None:
    policies = [policy("knee"), policy({"budget": {"params": 5_000}, "name": "tiny"})]
    policies.append(policy("best"))
    choices = select(policies, STUDY, OBJ)
    assert [(c.policy, c.kind, c.number) for c in choices] == [
        ("knee", "knee", 2),
        ("tiny", "budget", 1),
        ("best", "best", 3),
    ]


def test_reference_is_pending_before_verification() -> None:
    choice = pick(policy({"reference": "models/resnet.yaml"}), STUDY, OBJ)
    assert choice.pending and choice.number is None and choice.kind == "reference"
    assert choice.reason.startswith("resolved after verification: ")


@pytest.mark.parametrize(
    ("numbers", "top_k", "want"),
    [
        ([3, 2, 3, None], 0, [3, 2]),
        ([3, None], 2, [3, 2]),  # top 2 by accuracy: 3, 2; 3 already listed
        ([9], 3, [9, 3, 2, 1]),  # 9 is chosen though off the front; 0 is infeasible
        ([], 10, [3, 2, 1]),
    ],
)
def test_to_verify(numbers: list[int | None], top_k: int, want: list[int]) -> None:
    choices = [Choice(f"p{i}", "best", n, "") for i, n in enumerate(numbers)]
    assert to_verify(choices, STUDY, top_k) == want


def test_to_verify_top_k_tie_breaks() -> None:
    records = [rec(4, 0.9, 300), rec(3, 0.9, 200), rec(2, 0.9, 200), rec(1, 0.8, 1)]
    assert to_verify([], records, 2) == [2, 3]


# --- resolve_reference --------------------------------------------------------------

REF = policy({"reference": "models/ref.yaml", "name": "as_good"})


def test_resolve_reference_smallest_qualifying() -> None:
    verified = {1: 0.91, 2: 0.955, 3: 0.97, 9: 0.96, 0: 0.99}
    choice = resolve_reference(REF, 0.95, verified, STUDY)
    # 1 falls short, 0 is infeasible; of 2, 9 and 3 trial 2 has the fewest params.
    assert choice == Choice("as_good", "reference", 2, choice.reason)
    assert "0.9500" in choice.reason and "10,000" in choice.reason


def test_resolve_reference_params_tie_prefers_verified_accuracy() -> None:
    records = [rec(1, 0.9, 100), rec(2, 0.9, 100), rec(3, 0.9, 100)]
    choice = resolve_reference(REF, 0.9, {1: 0.92, 2: 0.95, 3: 0.95}, records)
    assert choice.number == 2


def test_resolve_reference_none_qualifies() -> None:
    choice = resolve_reference(REF, 0.975, {1: 0.91, 2: 0.955, 3: 0.97}, STUDY)
    assert choice.number is None and not choice.pending
    assert "0.9750" in choice.reason and "trial 3 at 0.9700" in choice.reason


@pytest.mark.parametrize("accuracy", [None, NAN])
def test_resolve_reference_missing(accuracy: float | None) -> None:
    choice = resolve_reference(REF, accuracy, {2: 0.97}, STUDY)
    assert choice.number is None
    assert "models/ref.yaml" in choice.reason and "failed or is missing" in choice.reason


def test_resolve_reference_nothing_verified() -> None:
    choice = resolve_reference(REF, 0.9, {}, STUDY)
    assert choice.number is None and "no verified trial" in choice.reason


# --- statistics ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "mean", "std"),
    [([0.5], 0.5, 0.0), ([1.0, 3.0], 2.0, math.sqrt(2.0)), ([2.0, 2.0, 2.0], 2.0, 0.0)],
)
def test_mean_std(values: list[float], mean: float, std: float) -> None:
    assert mean_std(values) == pytest.approx((mean, std))


def test_mean_std_empty() -> None:
    with pytest.raises(ValueError):
        mean_std([])


@pytest.mark.parametrize(
    ("proxy", "verified", "want"),
    [
        ([0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.9], (1.0, 1.0)),
        ([0.1, 0.2, 0.3, 0.4], [0.9, 0.7, 0.6, 0.5], (-1.0, -1.0)),
        ([0.1, 0.2, 0.3], [0.7, 0.7, 0.7], (None, None)),
        ([0.5, 0.5], [0.1, 0.2], (None, None)),
        ([0.5], [0.1], (None, None)),
        ([], [], (None, None)),
    ],
)
def test_rank_agreement(
    proxy: list[float], verified: list[float], want: tuple[float | None, float | None]
) -> None:
    agreement = rank_agreement(proxy, verified)
    tau, rho = agreement.kendall_tau, agreement.spearman_rho
    assert (tau, rho) == pytest.approx(want)
    figures = agreement.fields().values()
    assert not any(isinstance(v, float) and math.isnan(v) for v in figures)
    assert agreement.n == len(proxy) and agreement.too_few  # all of these are under 5
    assert (agreement.kendall_p is None) == (tau is None)


def test_rank_agreement_carries_its_p_values_and_says_when_n_is_too_small() -> None:
    # perfect agreement over 5: Kendall's exact two-sided p is 2/5! (the two orders as
    # extreme, of 120); over 4 it can be no lower than 2/4!, not below 0.05
    five = rank_agreement([1, 2, 3, 4, 5], [10, 20, 30, 40, 50])
    assert five.kendall_tau == pytest.approx(1.0) and five.kendall_p == pytest.approx(2 / 120)
    assert not five.too_few and five.n == 5
    four = rank_agreement([1, 2, 3, 4], [10, 20, 30, 40])
    assert four.kendall_p == pytest.approx(2 / 24) and four.too_few
    assert four.fields(n_key="correlated_over")["correlated_over"] == 4
    unrelated = rank_agreement([1, 2, 3, 4, 5, 6, 7, 8], [3, 8, 1, 6, 2, 7, 5, 4])
    assert unrelated.kendall_p is not None and unrelated.kendall_p > 0.3


def test_rank_agreement_unpaired() -> None:
    with pytest.raises(ValueError):
        rank_agreement([0.1, 0.2], [0.1])
