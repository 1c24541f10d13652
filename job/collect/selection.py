"""The collector's select step: each policy's choice over the study, and the retrain plan.

Third step of the pipeline (job.collect.pipeline: study -> front -> **select** -> verify
-> picks -> publish -> report -> push). The study's COMPLETE trials become `Record`s,
each selection policy chooses among them (job.collect.policies), and the choices and
the top front members get a plan of retrains (`plan_retrains`: each pick once per
seed, and the baseline networks) that the verify step queues for the workers. A
`reference` policy stays pending until those retrains are in (the picks step resolves
it). Nothing is written here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

from job.collect.policies import Choice, Record
from job.collect.retrains import plan_retrains, records
from job.config import Config
from job.ml.model import ModelSpec
from job.search.budget import budget_met
from job.search.retrain import Retrain


@dataclass(frozen=True)
class Selection:
    """The select step's outcome: the trials it read (one read of the study), their
    records, each policy's first choice, and the retrains that prove them."""

    trials: tuple[FrozenTrial, ...]
    records: tuple[Record, ...]
    choices: tuple[Choice, ...]
    plan: tuple[Retrain, ...]
    complete: int  # COMPLETE search trials
    budget: int
    # The budget is met (`study.budget` COMPLETE, or `study.budget_epochs` spent;
    # job.search.budget): the plan may be queued (before, the picks still move).
    finished: bool


def select(
    trials: Sequence[FrozenTrial], config: Config, models: dict[str, ModelSpec]
) -> Selection:
    """The select step: every policy's choice over `trials`, and the retrain plan
    (`models`: the baseline and reference networks, by path)."""
    found = records(trials, config)
    choices, plan = plan_retrains(trials, config, models, found)
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    return Selection(
        tuple(trials), tuple(found), tuple(choices), tuple(plan), complete,
        config.study.budget, budget_met(trials, config),
    )  # fmt: skip
