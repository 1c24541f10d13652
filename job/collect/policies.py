"""Stage 7 of the data path, select: named policies pick the trials worth keeping.

A pure module: `Record`s in (one per COMPLETE search trial: the view of its
`job.search.record.TrialRecord` that the policies rank, `Record.of`), `Choice`s out; no
Optuna calls and no I/O, so every rule below is tested on hand-made fronts. Only a *feasible*
record (every constraint satisfied) is ever chosen. "Accuracy" is the proxy accuracy
(the search trial's validation accuracy) except in `resolve_reference`.

The policies (`job.config.Policy`):

- ``best``: the most accurate feasible trial.
- ``smallest_within: {accuracy_drop: d}``: the fewest params among feasible trials with
  accuracy >= (best feasible accuracy - d); d = 0 keeps only the best's accuracy.
- ``knee``: the front's knee. Among the records on the Pareto front, each objective's
  values become losses by `job.search.view.normalised_losses` (1 - accuracy,
  log10(params) / 8, …), then each objective's losses are min-max scaled over the front
  to [0, 1] (an objective constant over the front contributes 0). The knee is the member
  nearest (Euclidean) to the ideal point (0, …, 0); a front of one is its own knee. Any
  number of objectives.
- ``budget: {params, macs, latency_ms}`` (any subset): the most accurate feasible trial
  within every given limit (<=). A trial whose latency was not measured (nan) never
  meets a latency limit.
- ``reference: model.yaml``: pending until verification; then `resolve_reference`
  picks the fewest params among verified trials whose verified accuracy (retrained,
  test split) is >= the reference network's, trained alike.

Tie-breaks, all deterministic: accuracy ties → fewer params → lower trial number
(best, budget, the top-k to verify); params ties → higher accuracy → lower number
(smallest_within, reference); knee distance ties → fewer params → lower number.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from job.config import Policy
from job.search.record import TrialRecord
from job.search.view import normalised_losses

# A trial exactly `accuracy_drop` below the best must not be lost to float rounding.
_EPS = 1e-12


@dataclass(frozen=True)
class Record:
    """One COMPLETE search trial as the policies see it."""

    number: int
    accuracy: float  # proxy accuracy: the search trial's validation accuracy
    params: int
    macs: int
    latency_ms: float  # the search's latency (`train.latency`), batch 1; nan: not measured
    feasible: bool  # every constraint satisfied
    on_front: bool  # on the study's Pareto front (feasible, non-dominated)
    values: tuple[float, ...]  # the objective values, in `objectives` order

    @classmethod
    def of(cls, trial: TrialRecord, on_front: bool, latency_key: str) -> Record:
        """A COMPLETE trial's record as the policies see it (`on_front`: whether the
        study's front holds it; `latency_key`: the latency figure the search timed, by its
        name in LATENCY_KEYS); what it did not record reads as 0 or nan."""
        latency = trial.latency(latency_key)
        return cls(
            number=trial.number,
            accuracy=math.nan if trial.val_accuracy is None else trial.val_accuracy,
            params=trial.params or 0,
            macs=trial.macs or 0,
            latency_ms=math.nan if latency is None else latency,
            feasible=trial.feasible,
            on_front=on_front,
            values=trial.values or (),
        )


@dataclass(frozen=True)
class Choice:
    policy: str  # the policy's name
    kind: str  # its kind
    number: int | None  # the chosen trial; None: nothing satisfied it (or pending)
    reason: str  # one line: why this trial, or why none
    pending: bool = False  # a `reference` policy before verification


# --- orders and formatting ------------------------------------------------------------


def _by_accuracy(r: Record) -> tuple[float, int, int]:
    """Sort key, best first: higher accuracy, then fewer params, then lower number."""
    return (-r.accuracy, r.params, r.number)


def _by_params(r: Record) -> tuple[int, float, int]:
    """Sort key, best first: fewer params, then higher accuracy, then lower number."""
    return (r.params, -r.accuracy, r.number)


def _acc(value: float) -> str:
    return f"{value:.4f}"


def _count(value: float) -> str:
    return f"{int(value):,}"


def _ms(value: float) -> str:
    return f"{value:g} ms"


def _facts(r: Record) -> str:
    return f"trial {r.number}: accuracy {_acc(r.accuracy)}, params {_count(r.params)}"


def _feasible(records: Sequence[Record]) -> list[Record]:
    return [r for r in records if r.feasible]


def _front(records: Sequence[Record]) -> list[Record]:
    # `feasible` too: a stale on_front flag must not let an infeasible trial through.
    return [r for r in records if r.on_front and r.feasible]


# --- the policies -------------------------------------------------------------------


def _best(feasible: list[Record]) -> tuple[Record | None, str]:
    top = min(feasible, key=_by_accuracy)
    return top, f"most accurate of {len(feasible)} feasible trials ({_facts(top)})"


def _smallest_within(policy: Policy, feasible: list[Record]) -> tuple[Record | None, str]:
    assert policy.smallest_within is not None
    drop = policy.smallest_within.accuracy_drop
    best = max(r.accuracy for r in feasible)
    floor = best - drop
    near = [r for r in feasible if r.accuracy >= floor - _EPS]
    top = min(near, key=_by_params)
    return top, (
        f"fewest params of {len(near)} feasible trials with accuracy >= {_acc(floor)} "
        f"(best {_acc(best)} - {_acc(drop)}) ({_facts(top)})"
    )


def _knee(feasible: list[Record], objectives: Sequence[str]) -> tuple[Record | None, str]:
    front = _front(feasible)
    top = knee(front, objectives)
    if top is None:
        return None, "no feasible trial is on the Pareto front"
    dist = _knee_distances(front, objectives)[front.index(top)]
    return top, (
        f"the knee of {len(front)} front members: distance {dist:.4f} to the ideal point "
        f"({_facts(top)})"
    )


# A budget key → (the record's value, how a value is shown).
_LIMITS: dict[str, tuple[Callable[[Record], float], Callable[[float], str]]] = {
    "params": (lambda r: r.params, _count),
    "macs": (lambda r: r.macs, _count),
    "latency_ms": (lambda r: r.latency_ms, _ms),
}


def _budget(policy: Policy, feasible: list[Record]) -> tuple[Record | None, str]:
    assert policy.budget is not None
    limits = {k: v for k, v in policy.budget.model_dump().items() if v is not None}
    shown = " and ".join(f"{k} <= {_LIMITS[k][1](v)}" for k, v in limits.items())
    # nan <= limit is False, so an unmeasured latency fails a latency limit by itself.
    within = [r for r in feasible if all(_LIMITS[k][0](r) <= v for k, v in limits.items())]
    unmeasured = sum(math.isnan(r.latency_ms) for r in feasible)
    note = ""
    if "latency_ms" in limits and unmeasured:
        note = f"; {unmeasured} without measured latency excluded (nan never meets a limit)"
    if not within:
        return None, f"no feasible trial has {shown}; {_smallest(feasible, limits)}{note}"
    top = min(within, key=_by_accuracy)
    return top, f"most accurate of {len(within)} feasible trials with {shown} ({_facts(top)}){note}"


def _smallest(feasible: list[Record], limits: Mapping[str, float]) -> str:
    """What the feasible trials come closest to, per limited key."""
    parts = []
    for key in limits:
        get, show = _LIMITS[key]
        measured = [get(r) for r in feasible if not math.isnan(get(r))]
        parts.append(f"{key} {show(min(measured))}" if measured else f"{key} not measured")
    return "the smallest has " + ", ".join(parts)


def pick(policy: Policy, records: Sequence[Record], objectives: Sequence[str]) -> Choice:
    """One policy's choice over the search trials (the module doc's definitions)."""
    kind = policy.kind
    if kind == "reference":
        reason = f"resolved after verification: fewest params as accurate as {policy.reference}"
        return Choice(policy.name, kind, None, reason, pending=True)
    feasible = _feasible(records)
    if not feasible:
        return Choice(policy.name, kind, None, f"no feasible COMPLETE trial (of {len(records)})")
    if kind == "best":
        top, reason = _best(feasible)
    elif kind == "smallest_within":
        top, reason = _smallest_within(policy, feasible)
    elif kind == "knee":
        top, reason = _knee(feasible, objectives)
    else:
        top, reason = _budget(policy, feasible)
    return Choice(policy.name, kind, None if top is None else top.number, reason)


def select(
    policies: Sequence[Policy], records: Sequence[Record], objectives: Sequence[str]
) -> list[Choice]:
    """Every policy's choice, in policy order."""
    return [pick(p, records, objectives) for p in policies]


# --- the knee -------------------------------------------------------------------------


def _knee_distances(front: Sequence[Record], objectives: Sequence[str]) -> list[float]:
    """Each member's distance to the ideal point after the module doc's scaling."""
    losses = normalised_losses([r.values for r in front], objectives)
    scaled: list[list[float]] = [[] for _ in front]
    for column in zip(*losses, strict=True):
        low, span = min(column), max(column) - min(column)
        for row, value in zip(scaled, column, strict=True):
            row.append((value - low) / span if span > 0 else 0.0)
    return [math.hypot(*row) for row in scaled]


def knee(records: Sequence[Record], objectives: Sequence[str]) -> Record | None:
    """The knee of the front among `records` (on_front and feasible); None for no front."""
    front = _front(records)
    if not front:
        return None
    dists = _knee_distances(front, objectives)
    ranked = zip(dists, front, strict=True)
    return min(ranked, key=lambda dr: (dr[0], dr[1].params, dr[1].number))[1]


# --- verification -------------------------------------------------------------------


def top_front(records: Sequence[Record], top_k: int) -> list[Record]:
    """The `top_k` most accurate feasible front members, best first."""
    return sorted(_front(records), key=_by_accuracy)[:top_k]


def to_verify(choices: Sequence[Choice], records: Sequence[Record], top_k: int) -> list[int]:
    """Trials to retrain: the chosen ones in policy order, then those of the `top_k` most
    accurate front members not already listed (so at most len(choices) + top_k)."""
    chosen = [c.number for c in choices if c.number is not None]
    top = [r.number for r in top_front(records, top_k)]
    return list(dict.fromkeys([*chosen, *top]))  # dict keeps first-seen order


def resolve_reference(
    policy: Policy,
    reference_accuracy: float | None,
    verified: Mapping[int, float],
    records: Sequence[Record],
) -> Choice:
    """A `reference` policy after verification (`verified`: trial → verified accuracy):
    the fewest params among verified feasible trials at least as accurate as the
    reference; params ties → higher verified accuracy → lower number."""
    name, ref = policy.name, policy.reference
    if reference_accuracy is None or math.isnan(reference_accuracy):
        why = f"the reference {ref} has no verified accuracy (its training failed or is missing)"
        return Choice(name, "reference", None, why)
    # Params come from the search record; a trial without one cannot be ranked.
    known = {r.number: r for r in _feasible(records) if r.number in verified}
    ranked = sorted(known.values(), key=lambda r: (r.params, -verified[r.number], r.number))
    good = [r for r in ranked if verified[r.number] >= reference_accuracy]
    target = f"the reference {ref}'s verified accuracy {_acc(reference_accuracy)}"
    if not good:
        if not known:
            return Choice(name, "reference", None, f"no verified trial to compare with {target}")
        top = max(known.values(), key=lambda r: (verified[r.number], -r.params, -r.number))
        best = f"the best verified is trial {top.number} at {_acc(verified[top.number])}"
        return Choice(name, "reference", None, f"no verified trial reaches {target}; {best}")
    top = good[0]
    return Choice(
        name,
        "reference",
        top.number,
        (
            f"fewest params of {len(good)} verified trials >= {target} (trial {top.number}: "
            f"verified accuracy {_acc(verified[top.number])}, params {_count(top.params)})"
        ),
    )


# --- statistics -----------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
    if not values:
        raise ValueError("mean_std: no values")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


# Below this many pairs no rank correlation reaches p < 0.05, however well the two
# rankings agree: with 4 pairs the smallest two-sided p of Kendall's tau is 2/4! = 0.083.
MIN_PAIRS = 5


@dataclass(frozen=True)
class RankAgreement:
    """How two rankings of the same `n` items agree: Kendall's tau and Spearman's rho, each
    with its two-sided p-value (the chance of agreement at least this strong among
    unrelated rankings); None where undefined (fewer than 2 pairs, or a constant side)."""

    kendall_tau: float | None
    kendall_p: float | None
    spearman_rho: float | None
    spearman_p: float | None
    n: int

    @property
    def too_few(self) -> bool:
        """Fewer than MIN_PAIRS pairs: the figure cannot tell agreement from chance."""
        return self.n < MIN_PAIRS

    def fields(self, n_key: str = "n") -> dict[str, float | int | bool | None]:
        """The figures as the output files name them (`n_key`: the count's own name)."""
        return {
            "kendall_tau": self.kendall_tau,
            "kendall_p": self.kendall_p,
            "spearman_rho": self.spearman_rho,
            "spearman_p": self.spearman_p,
            n_key: self.n,
            "too_few": self.too_few,
        }


def rank_agreement(proxy: Sequence[float], verified: Sequence[float]) -> RankAgreement:
    """Kendall's tau and Spearman's rho of proxy vs verified figures over paired trials,
    with p-values and the count; None where undefined, never nan."""
    if len(proxy) != len(verified):
        raise ValueError(f"rank_agreement: {len(proxy)} proxy vs {len(verified)} verified")
    n = len(proxy)
    # Checked first: scipy would warn (ConstantInputWarning) and return nan.
    if n < 2 or len(set(proxy)) < 2 or len(set(verified)) < 2:
        return RankAgreement(None, None, None, None, n)
    from scipy import stats  # type: ignore[import-untyped]  # 65 MiB: not for the exporter

    tau = stats.kendalltau(proxy, verified)
    rho = stats.spearmanr(proxy, verified)
    return RankAgreement(
        _finite(tau.statistic), _finite(tau.pvalue), _finite(rho.statistic), _finite(rho.pvalue), n
    )
