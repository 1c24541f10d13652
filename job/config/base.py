"""The config's building blocks, below its sections: strict number and flag types, the
frozen `Section` base that rejects unknown keys, `ConfigError`, seeds, study names, and
the marks that say which fields change a trial's result (`RESULTS`, `NO_RESULTS`).
"""

from __future__ import annotations

import re
from typing import Annotated, NamedTuple

from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
)

from job.errors import BadInput

# YAML's `true` is not 1 and `2.0` is not an int: numbers and flags are taken as written.
# No float is infinite or NaN (`.inf`, `.nan`): no consumer of one has a use for either.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), AllowInfNan(False)]
Bool = Annotated[bool, Strict()]
# Every seed, as numpy and Optuna's samplers take it; one derived at run time from a
# worker's index or a trial's number is folded into the same range (`derive_seed`).
SEED_SPAN = 2**32
Seed = Annotated[int, Strict(), Field(ge=0, le=SEED_SPAN - 1)]


def derive_seed(base: int, *offsets: int) -> int:
    """A configured seed plus run-time offsets (a worker's index, a study version, a
    trial's number), folded into 0..2**32-1: unchanged while the sum is in range."""
    return (base + sum(offsets)) % SEED_SPAN


class ConfigError(BadInput, ValueError):
    """A config that cannot be used; the message names the key or the file."""


class Section(BaseModel):
    """Base of every section: frozen, and an unknown key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _require(ok: bool, message: str) -> None:
    """A validator's check; the message starts with the failing key ("ops: …")."""
    if not ok:
        raise ValueError(message)


# A study name (study.name, and `--study` on the command line): it names folders too.
STUDY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
STUDY_NAME_MAX = 120


def study_name_problem(name: str) -> str | None:
    """Why `name` cannot be a study's name, or None when it can."""
    if len(name) > STUDY_NAME_MAX:
        return f"must be at most {STUDY_NAME_MAX} characters, got {len(name)}"
    if not re.match(STUDY_NAME_PATTERN, name):
        return f"must be letters, digits, '_', '.' or '-' (not first), got {name!r}"
    return None


class Affects(NamedTuple):
    """A field's mark: whether it changes a trial's result. Marked fields decide the
    config fingerprint, and so whether `research` makes a new study version; an unmarked
    field inherits its section's mark (Config's unmarked sections count for nothing)."""

    results: bool


RESULTS = Affects(True)  # part of the fingerprint: a change makes trials incomparable
NO_RESULTS = Affects(False)  # inside a counted section, left out (where, not what)
