"""Search layer — what a study has spent of its two budgets, read from its trials: pure
functions over `FrozenTrial`s, no torch, no storage.

`study.budget` counts COMPLETE trials: a pruned or failed trial is extra. It stays exact
as before (job.search.tasks.claim_trial: COMPLETE + RUNNING under the budget lock).

`study.budget_epochs` (optional) counts epochs trained by every trial, whatever its state,
to compare searches at equal compute (bench/quality.py). An epoch is counted when it is
trained: a trial's count is the last epoch of its learning curve (job.storage.save_curve)
less the epochs it inherited from a preempted predecessor (`resumed_epoch - 1`), so a
preempted trial and its retry count each epoch once; a failed trial counts the epochs it
finished. A new trial is taken only when the epochs trained, plus every RUNNING trial's
epochs still to train at most (its whole recipe less what it inherited), plus the new
trial's whole recipe, fit in the budget; so the total never passes it, even if no trial
is pruned. A pruned trial gives back the epochs it did not train. The study is done when
no new trial fits and none is running.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from optuna.trial import FrozenTrial, TrialState

from job.search.record import TrialAttrs

if TYPE_CHECKING:
    from job.config import Config

Claim = Literal["take", "wait", "done"]


def inherited_epochs(trial: FrozenTrial) -> int:
    """Epochs a resumed trial's predecessor trained (its curve starts with them)."""
    resumed = TrialAttrs.read(trial).resumed_epoch
    return max(0, resumed - 1) if resumed else 0


def _last_epoch(trial: FrozenTrial) -> int:
    """The last epoch of the trial's learning curve (0: none yet)."""
    return max(trial.intermediate_values, default=0)


def trained_epochs(trial: FrozenTrial) -> int:
    """Epochs this trial itself trained (module doc): its curve's last epoch, less those
    it inherited."""
    return max(0, _last_epoch(trial) - inherited_epochs(trial))


@dataclass(frozen=True)
class Spent:
    """What a study's trials have used: trials by outcome and epochs (module doc)."""

    complete: int
    running: int
    pruned: int
    epochs_trained: int  # every trial, any state
    epochs_reserved: int  # RUNNING trials' epochs still to train, at most
    epochs_saved: int  # pruned trials' epochs not trained (their recipes' less trained)


def spent(trials: Sequence[FrozenTrial], epochs: int) -> Spent:
    """What `trials` used; `epochs`: a search trial's recipe (`train.epochs`)."""
    by_state = {state: [t for t in trials if t.state == state] for state in TrialState}
    running, pruned = by_state[TrialState.RUNNING], by_state[TrialState.PRUNED]
    reserved = sum(max(0, epochs - inherited_epochs(t) - trained_epochs(t)) for t in running)
    saved = sum(max(0, epochs - last) for last in map(_last_epoch, pruned))
    return Spent(
        complete=len(by_state[TrialState.COMPLETE]),
        running=len(running),
        pruned=len(pruned),
        epochs_trained=sum(map(trained_epochs, trials)),
        epochs_reserved=reserved,
        epochs_saved=saved,
    )


def claim(trials: Sequence[FrozenTrial], config: Config) -> Claim:
    """May a worker take a new trial ("take"), must it wait for running ones ("wait"),
    or is the study done ("done")? Both budgets (module doc); the caller holds the lock."""
    return verdict(spent(trials, config.train.epochs), config)


def verdict(used: Spent, config: Config) -> Claim:
    """`claim`'s answer from what the trials used."""
    if used.complete >= config.study.budget:
        return "done"
    if used.complete + used.running >= config.study.budget:
        return "wait"  # every slot is complete or running (a WAITING retry needs a slot)
    if not _epochs_fit(used, config):
        return "wait" if used.running else "done"  # a running trial may be pruned
    return "take"


def _epochs_fit(used: Spent, config: Config) -> bool:
    """A new trial's whole recipe fits in `study.budget_epochs` (none set: always)."""
    limit = config.study.budget_epochs
    if limit is None:
        return True
    return used.epochs_trained + used.epochs_reserved + config.train.epochs <= limit


def budget_text(config: Config) -> str:
    """The budgets in words: `40 trials`, or `40 trials or 400 epochs` (whichever is met
    first ends the search)."""
    trials = f"{config.study.budget} trials"
    limit = config.study.budget_epochs
    return trials if limit is None else f"{trials} or {limit} epochs"


def progress(used: Spent, config: Config) -> tuple[int, int, str]:
    """The `run` bar's count, total and unit: epochs trained of `study.budget_epochs`
    where one is set (pruned trials spend it too, and it usually ends the search first),
    else COMPLETE trials of `study.budget`."""
    if config.study.budget_epochs is not None:
        limit = config.study.budget_epochs
        return min(used.epochs_trained, limit), limit, "epoch"
    return min(used.complete, config.study.budget), config.study.budget, "trial"


def budget_met(trials: Sequence[FrozenTrial], config: Config) -> bool:
    """The search is over: `study.budget` trials COMPLETE, or no new trial fits in
    `study.budget_epochs` and none is running."""
    return claim(trials, config) == "done"
