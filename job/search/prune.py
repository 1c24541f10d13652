"""Search layer — multi-objective asynchronous successive halving (MO-ASHA) on a shared
study: the rung decision (job.search.rungs) fed from the study that every worker shares.

When a search trial finishes an epoch that is one of its rungs (`study.pruning`:
`min_epochs * eta**k` below `train.epochs`), its worker judges it (`judge`):

1. Under the study's budget lock (the one that serialises claims), it reads every trial
   that has reached that epoch: RUNNING, COMPLETE or PRUNED trials with a point of their
   learning curve there. FAILed trials are left out: a preempted or stale trial's retry
   carries its curve on (job.storage.save_curve), and would otherwise stand twice.
2. Each entrant's objectives at the rung: its validation accuracy after that epoch (for
   `f1` too: the curve holds accuracy), and its size objectives (`params`, `macs`),
   known before training, and `latency`, timed before training too (job.ml.latency);
   an objective some entrant lacks (an older trial's) is left out of this rung's
   ranking for all.
3. `rungs.goes_on`: the trial goes on while it ranks in the first `floor(n / eta)` of the
   `n` entrants (non-dominated sorting, then crowding distance, then trial number); else
   `Pruned` is raised from the epoch callback, through training, to the worker, which
   records where and how it ranked and tells the study PRUNED.

The lock makes the decisions one sequence: two trials that reach a rung together are
judged one after the other, the second seeing the first, so on N workers a rung's
decisions are those of one worker judging them in that order. A trial is judged only at
the epochs it trains (never in `on_resume`), so a resumed trial is judged at its next
rung, never twice at one.
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from job.config import Config
from job.search.record import TrialAttrs
from job.search.rungs import Entrant, goes_on, ranked, rung_epochs
from job.search.view import OBJECTIVES, search_latency_key
from job.storage import Store, budget_lock, save_curve

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


def judge(
    study: optuna.Study, store: Store, trial: optuna.Trial, epoch: int, value: float,
    config: Config,
) -> None:  # fmt: skip
    """Judge `trial` at `epoch`, where its validation accuracy is `value` (module doc);
    raises `Pruned`. Its point is written (again: the worker wrote its curve) and the
    rung read under the study's budget lock, so that rung decisions form one sequence."""
    with budget_lock(store, study.study_name):
        save_curve(trial, {epoch: value})
        trials = study.get_trials(deepcopy=False, states=ENTRANT_STATES)
    others = [t for t in trials if t.number != trial.number]
    own = trial._cached_frozen_trial  # its attrs and curve as this worker wrote them
    decide(trial.number, [*others, own], epoch, config)
