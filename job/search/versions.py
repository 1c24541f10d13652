"""Study versions and what their results depend on, below the search and research.

A study's versions share a base name (`sms`, `sms-v2`, `sms-v3`, …) and each records the
fingerprints its results depend on: the data's, the result sections of the config, the
code's. The worker (`job.search.worker`) reads them to seed its sampler and check its data;
`job.collect.research` decides and opens the next version from them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from job.search.budget import budget_met
from job.search.record import LINEAGE as LINEAGE  # the study attr of a version research made
from job.search.record import StudyAttrs, TrialRecord

if TYPE_CHECKING:
    from job.config import Config

CHANGES = ("data", "config", "code")


@dataclass(frozen=True)
class Fingerprints:
    """What a search's results depend on (the module doc)."""

    data: str
    config: str
    code: str

    def changed(self, before: Fingerprints) -> list[str]:
        """The names of CHANGES that differ from `before`, in that order."""
        return [name for name in CHANGES if getattr(self, name) != getattr(before, name)]

    @classmethod
    def of(cls, value: object) -> Fingerprints | None:
        """From a lineage's dict; None for anything else."""
        if isinstance(value, dict) and all(isinstance(value.get(n), str) for n in CHANGES):
            return cls(**{n: str(value[n]) for n in CHANGES})
        return None


def recorded(
    attrs: StudyAttrs | Mapping[str, Any], trials: Sequence[FrozenTrial]
) -> Fingerprints | None:
    """A version's fingerprints (`attrs`: its study's, or their stored dict): its lineage's,
    else the most common among its COMPLETE trials (a version `run` made); None when
    nothing is recorded."""
    attrs = attrs if isinstance(attrs, StudyAttrs) else StudyAttrs.of(attrs)
    if (found := Fingerprints.of((attrs.lineage or {}).get("fingerprints"))) is not None:
        return found

    def prints(r: TrialRecord) -> tuple[str, str, str]:
        def known(value: str | None) -> str:
            return "unknown" if value is None else value

        return known(r.data_fingerprint), known(r.config_fingerprint), known(r.code_version)

    seen = Counter(
        prints(TrialRecord.from_trial(t)) for t in trials if t.state == TrialState.COMPLETE
    )
    return Fingerprints(*seen.most_common(1)[0][0]) if seen else None


def version_name(base: str, number: int) -> str:
    return base if number == 1 else f"{base}-v{number}"


def version_folder(home: Path, base: str, name: str) -> Path:
    """A study's own folder: `home` for version 1 (and any other study), `home/<name>` for
    version N >= 2 of `base`, beside the others, never over them."""
    return home / name if (version_number(base, name) or 1) > 1 else home


def version_number(base: str, name: str) -> int | None:
    """N when `name` is version N of `base`, else None."""
    if name == base:
        return 1
    head, sep, tail = name.rpartition("-v")
    if sep and head == base and tail.isascii() and tail.isdigit() and int(tail) >= 2:
        return int(tail) if f"{base}-v{int(tail)}" == name else None
    return None


# --- the versions in a storage (status, the exporter, research) -------------------


def versions(storage: optuna.storages.BaseStorage, base: str) -> list[tuple[int, str]]:
    """(number, study name) of every version of `base` in the storage, oldest first."""
    found = ((version_number(base, s.study_name), s.study_name) for s in storage.get_all_studies())
    return sorted((n, name) for n, name in found if n is not None)


@dataclass(frozen=True)
class Version:
    """What `research` knows of one version."""

    name: str
    number: int
    complete: int
    fingerprints: Fingerprints | None
    lineage: dict[str, Any] = field(default_factory=dict)
    finished: bool = False  # its budget met in any of its terms (job.search.budget)


def read_version(
    storage: optuna.storages.BaseStorage, number: int, name: str, config: Config | None = None
) -> Version:
    """Version `number` (study `name`), its trials read once; `finished` judged by
    `config`'s budgets where given: a version that spent `study.budget_epochs` is done
    with fewer COMPLETE trials than `study.budget`."""
    study_id = storage.get_study_id_from_name(name)
    attrs = StudyAttrs.stored(storage, study_id)
    trials = storage.get_all_trials(study_id, deepcopy=False)
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    finished = config is not None and budget_met(trials, config)
    lineage = dict(attrs.lineage or {})
    return Version(name, number, complete, recorded(attrs, trials), lineage, finished)


def latest_version(
    storage: optuna.storages.BaseStorage, base: str, config: Config | None = None
) -> Version | None:
    found = versions(storage, base)
    return read_version(storage, *found[-1], config) if found else None


def lineage_text(storage: optuna.storages.BaseStorage, found: Sequence[tuple[int, str]]) -> str:
    """For `status`: every version of `found` (`versions`) with its trials, parent and
    what changed; "" for version 1 alone."""
    lines = []
    for number, name in found:
        v = read_version(storage, number, name)
        parent = v.lineage.get("parent")
        line = f"  v{number} {name}: {v.complete} COMPLETE"
        if parent:
            changed = ", ".join(v.lineage.get("changed", [])) or "nothing"
            warm = v.lineage.get("warm_start_trials", 0)
            line += f"; from {parent} ({changed} changed; {warm} warm-start trials)"
        lines.append(line)
    return "versions:\n" + "\n".join(lines) if len(lines) > 1 else ""
