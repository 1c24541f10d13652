"""A fixed trial that refuses values out of range: the warm start's test of whether a
parent version's params fit the current space (job.collect.research). Here because it
overrides Optuna's private `FixedTrial._suggest` and reads `_params` and
`BaseDistribution._contains`: every Optuna internal stays in this package."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import BaseDistribution


class InRangeTrial(optuna.trial.FixedTrial):
    """A FixedTrial whose value out of its distribution's range is a ValueError, not a
    warning: turning warnings into errors (`warnings.catch_warnings`) is process-wide, and
    raised another thread's harmless warnings (a second research, a heartbeat)."""

    def _suggest(self, name: str, distribution: BaseDistribution) -> Any:
        if name in self._params:
            value = self._params[name]
            if not distribution._contains(distribution.to_internal_repr(value)):
                raise ValueError(f"{name}={value!r} is out of {distribution}")
        return super()._suggest(name, distribution)
