"""Search layer — multi-objective asynchronous successive halving (MO-ASHA, Schmucker et
al. 2021) on a shared study: the decision at a rung (pure functions: `rung_epochs`,
`fronts`, `crowding`, `ranked`, `goes_on`), fed from the study every worker shares
(`judge`).

When a search trial finishes an epoch that is one of its rungs (`study.pruning`:
`min_epochs * eta**k` below `train.epochs`), its worker judges it (`judge`):

1. With its point at that epoch written (the worker writes each epoch's), it reads every
   trial of the study that has reached that epoch: RUNNING, COMPLETE or PRUNED trials
   with a point of their learning curve there. FAILed trials are left out: a preempted
   or stale trial's retry carries its curve on (job.storage.save_curve), and would
   otherwise stand twice.
2. Each entrant's objectives at the rung: its validation accuracy after that epoch (for
   `f1` too: the curve holds accuracy), and its size objectives (`params`, `macs`),
   known before training, and `latency`, timed before training too (job.ml.latency);
   an objective some entrant lacks (an older trial's) is left out of this rung's
   ranking for all.
3. `goes_on`: the trial goes on while no entrant dominates it (the rung's first front),
   or while it ranks in the first `floor(n / eta)` of the `n` entrants (non-dominated
   sorting, then crowding distance, then trial number); else
   `Pruned` is raised from the epoch callback, through training, to the worker, which
   records where and how it ranked and tells the study PRUNED.

Every trial writes its point before it reads the rung, so a trial judged after another
always sees it: on N workers no decision misses an earlier one, and two trials that reach
a rung together may each see the other, as if they had arrived at once. No lock is
needed (a decision changes only its own trial), so judging never queues with the claims
for the budget lock. A trial is judged only at the epochs it trains (never in
`on_resume`), so a resumed trial is judged at its next rung, never twice at one.

The decision itself (the pure half, below: no Optuna, no torch; as in ASHA, a trial never
waits for its rung to fill).

Why crowding distance breaks ties within a front, not hypervolume contribution: it is
defined the same for any number of objectives and costs O(n log n) per objective; it keeps
a front's extremes (infinite distance), so the smallest and the most accurate networks
both go on, which is what a size-versus-accuracy search wants to learn; and it is what
NSGA-II, one of the samplers beside it, orders by. Hypervolume contribution needs a
reference point (which moves as the search learns) and is exponential in the number of
objectives. The trial number last makes the order the same on every worker.

Why the whole first front goes on, even where it is larger than `n / eta`: the search
returns a front, and a trial no entrant dominates is a candidate for it. Cutting the
first front at `n / eta` by crowding distance and trial number stops a newcomer on the
front only because older trials hold the quota (with 4 entrants and eta 3, one goes on);
on the quickstart (bench/pruning.py, replayed on 2 searches of 40 trials) that cut
stopped every small network of one search and lost a quarter of its hypervolume. It is
the multi-objective form of single-objective successive halving's rule that the best so
far always goes on (Optuna's SuccessiveHalvingPruner keeps it, too); with one objective
the first front is the best alone. The quota halves the dominated: with more objectives
the first front grows, and pruning saves less (say so where it is turned on).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from job.config import Config
from job.search.record import TrialAttrs
from job.search.view import OBJECTIVES, search_latency_key
from job.storage import frozen_trial

# --- the rung decision (pure) -------------------------------------------------------------

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
    included) goes on past the rung: on the rung's first front (no entrant dominates it),
    or among the first `floor(n / eta)` of the ranked entrants."""
    if eta < 2:
        raise ValueError(f"eta must be >= 2, got {eta}")
    numbers = [e.number for e in entrants]
    if number not in numbers:
        raise ValueError(f"trial {number} is not an entrant of this rung")
    if fronts([e.point for e in entrants])[numbers.index(number)] == 0:
        return True
    return number in {e.number for e in ranked(entrants)[: len(entrants) // eta]}


# --- the rung fed from the study ----------------------------------------------------------

# The curve holds validation accuracy: what stands for these objectives before the end.
CURVE_OBJECTIVES = frozenset({"accuracy", "f1"})
ENTRANT_STATES = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)


class Pruned(Exception):  # noqa: N818 — a verdict, not an error
    """The trial stops at a rung: it ranked `rank` of `entrants` there (module doc)."""

    def __init__(self, epoch: int, rank: int, entrants: int, keep: int) -> None:
        super().__init__(f"PRUNED at epoch {epoch}: rank {rank} of {entrants}, {keep} go on")
        self.epoch, self.rank, self.entrants = epoch, rank, entrants

    @property
    def attrs(self) -> TrialAttrs:
        return TrialAttrs(pruned_epoch=self.epoch, pruned_rank=self.rank, rung_size=self.entrants)


def rungs(config: Config) -> tuple[int, ...]:
    """The epochs at which a search trial is judged; none with pruning off."""
    pruning = config.study.pruning
    if not pruning.enabled:
        return ()
    return rung_epochs(pruning.min_epochs, pruning.eta, config.train.epochs)


def rung_values(
    trial: FrozenTrial, epoch: int, objectives: Sequence[str], latency_key: str
) -> dict[str, float]:
    """The trial's objectives at the rung, as stored (accuracy from its curve; latency,
    timed before training, by its name `latency_key`), those known only; {} when it has
    not reached the rung."""
    if epoch not in trial.intermediate_values:
        return {}
    attrs = TrialAttrs.read(trial)
    found: dict[str, float] = {}
    for name in objectives:
        if name in CURVE_OBJECTIVES:
            found[name] = trial.intermediate_values[epoch]
        elif name == "latency":
            if (ms := attrs.latency(latency_key)) is not None:
                found[name] = ms
        elif (value := getattr(attrs, OBJECTIVES[name].field, None)) is not None:
            found[name] = float(value)
    return found


def entrants(trials: Sequence[FrozenTrial], epoch: int, config: Config) -> list[Entrant]:
    """The trials at the rung, each as a point to minimise over the objectives that every
    one of them has (module doc, 2)."""
    objectives, key = config.objectives, search_latency_key(config)
    values = {t.number: rung_values(t, epoch, objectives, key) for t in trials}
    values = {number: found for number, found in values.items() if found}
    shared = [name for name in objectives if all(name in v for v in values.values())]
    sign = {name: -1.0 if OBJECTIVES[name].direction == "maximize" else 1.0 for name in shared}
    return [
        Entrant(number, tuple(sign[name] * found[name] for name in shared))
        for number, found in sorted(values.items())
    ]


def decide(number: int, trials: Sequence[FrozenTrial], epoch: int, config: Config) -> None:
    """`Pruned` unless trial `number` (one of `trials`, at `epoch`) goes on past the rung."""
    at_rung = entrants(trials, epoch, config)
    eta = config.study.pruning.eta
    if goes_on(number, at_rung, eta):
        return
    rank = 1 + [e.number for e in ranked(at_rung)].index(number)
    raise Pruned(epoch, rank, len(at_rung), len(at_rung) // eta)


def judge(study: optuna.Study, trial: optuna.Trial, epoch: int, config: Config) -> None:
    """Judge `trial` at `epoch`, its point there already written by its worker (module
    doc); raises `Pruned`."""
    trials = study.get_trials(deepcopy=False, states=ENTRANT_STATES)
    others = [t for t in trials if t.number != trial.number]
    own = frozen_trial(trial)  # its attrs and curve as this worker wrote them
    decide(trial.number, [*others, own], epoch, config)
