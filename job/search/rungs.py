"""Search layer — the decision at a rung of multi-objective asynchronous successive halving
(MO-ASHA, Schmucker et al. 2021): pure functions, no Optuna, no torch.

A trial is judged at epochs `min_epochs * eta**k` (its rungs). At a rung, every trial that
reached it so far is an entrant, with its objectives there: the validation accuracy after
that epoch, and the size and latency objectives known before training. Entrants are
ordered by non-dominated sorting (NSGA-II's fronts: a trial on front 0 is dominated by
none), within a front by crowding distance (larger first), then by trial number. A trial
goes on while it is among the first `floor(n / eta)` of the `n` entrants; as in ASHA, it
never waits for the rung to fill.

Why crowding distance breaks ties within a front, not hypervolume contribution: it is
defined the same for any number of objectives and costs O(n log n) per objective; it keeps
a front's extremes (infinite distance), so the smallest and the most accurate networks
both go on, which is what a size-versus-accuracy search wants to learn; and it is what
NSGA-II, one of the samplers beside it, orders by. Hypervolume contribution needs a
reference point (which moves as the search learns) and is exponential in the number of
objectives. The trial number last makes the order the same on every worker.

With fewer than `eta` entrants there is nothing yet to halve: a trial on the first front
goes on (the multi-objective form of the single-objective rule of Optuna's
SuccessiveHalvingPruner, which keeps the best so far).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Point = tuple[float, ...]  # one value per objective, each to be minimised


def rung_epochs(min_epochs: int, eta: int, epochs: int) -> tuple[int, ...]:
    """The epochs at which a trial of `epochs` epochs is judged: `min_epochs * eta**k`
    below its last epoch (the last one is its result, not a rung)."""
    if min_epochs < 1 or eta < 2:
        raise ValueError(f"need min_epochs >= 1 and eta >= 2, got {min_epochs} and {eta}")
    rungs, epoch = [], min_epochs
    while epoch < epochs:
        rungs.append(epoch)
        epoch *= eta
    return tuple(rungs)


@dataclass(frozen=True)
class Entrant:
    """A trial at one rung: its number and its objectives there, each to be minimised
    (the caller negates what is maximised, such as accuracy)."""

    number: int
    point: Point


def dominates(a: Point, b: Point) -> bool:
    """`a` is no worse than `b` in every objective and better in one."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


def fronts(points: Sequence[Point]) -> list[int]:
    """Each point's non-dominated front: 0 for points no other dominates, 1 for those only
    front 0 dominates, and so on (NSGA-II's fast non-dominated sort)."""
    n = len(points)
    beaten_by = [0] * n  # how many points dominate point i
    beats: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(points[i], points[j]):
                beats[i].append(j)
                beaten_by[j] += 1
            elif dominates(points[j], points[i]):
                beats[j].append(i)
                beaten_by[i] += 1
    front = [-1] * n
    current = [i for i in range(n) if beaten_by[i] == 0]
    level = 0
    while current:
        following = []
        for i in current:
            front[i] = level
            for j in beats[i]:
                beaten_by[j] -= 1
                if beaten_by[j] == 0:
                    following.append(j)
        current, level = following, level + 1
    return front


def crowding(points: Sequence[Point]) -> list[float]:
    """NSGA-II's crowding distance of each point within its front: per objective, the gap
    between its two neighbours over the objective's range, summed; a front's extremes
    (and every point of a front of two or fewer) get infinity."""
    n = len(points)
    if n <= 2:
        return [math.inf] * n
    distance = [0.0] * n
    for m in range(len(points[0])):
        order = sorted(range(n), key=lambda i: (points[i][m], i))
        low, high = points[order[0]][m], points[order[-1]][m]
        distance[order[0]] = distance[order[-1]] = math.inf
        if high == low:
            continue
        for k in range(1, n - 1):
            gap = points[order[k + 1]][m] - points[order[k - 1]][m]
            distance[order[k]] += gap / (high - low)
    return distance


def ranked(entrants: Sequence[Entrant]) -> list[Entrant]:
    """The entrants best first: by front, then crowding distance (larger first), then
    trial number (earlier first), so every worker orders a rung alike, whatever order it
    read the entrants in (the distances of equal points depend on it otherwise)."""
    entrants = sorted(entrants, key=lambda e: e.number)
    front = fronts([e.point for e in entrants])
    distance = [0.0] * len(entrants)
    for level in set(front):
        members = [i for i, f in enumerate(front) if f == level]
        for i, d in zip(members, crowding([entrants[i].point for i in members]), strict=True):
            distance[i] = d
    order = sorted(range(len(entrants)), key=lambda i: (front[i], -distance[i], entrants[i].number))
    return [entrants[i] for i in order]


def goes_on(number: int, entrants: Sequence[Entrant], eta: int) -> bool:
    """Whether trial `number` (one of `entrants`, every trial at this rung so far, itself
    included) goes on past the rung: among the first `floor(n / eta)` of the ranked
    entrants, or on the first front while there are fewer than `eta` of them."""
    if eta < 2:
        raise ValueError(f"eta must be >= 2, got {eta}")
    if number not in {e.number for e in entrants}:
        raise ValueError(f"trial {number} is not an entrant of this rung")
    keep = len(entrants) // eta
    if keep == 0:
        front = fronts([e.point for e in entrants])
        return front[[e.number for e in entrants].index(number)] == 0
    return number in {e.number for e in ranked(entrants)[:keep]}
