"""Research, after the collector: when the data, the search config or the code changed,
the next study version, warm-started from the last one (`python -m job research`).

What a search's results depend on has three fingerprints: the data's content
(`Dataset.fingerprint`), the config's result sections (`job.config.config_fingerprint`)
and the code version (`job.search.studies.code_version`). Every trial records all three; a
version that `research` made also records them (and its lineage) in the study's user
attr `research`.

Versions are studies in one storage: version 1 is `study.name` itself (what `run` and
its first Jobs make), version N >= 2 is `<study.name>-v<N>`. `research` compares the
current fingerprints with the latest version's:

- the same, and that version has met its budget: **unchanged**. Nothing is created and
  nothing is launched: no GPU-second is spent.
- the same, budget not met: **in_progress**. That version is run (locally) or its Jobs
  are created again (`--launch`; a Job already there is fine), so a research that died
  half-way is finished by the next.
- different (or no version yet): **new_version** `<name>-v<N+1>`, its lineage in the
  study's user attr `research` (version, parent, what changed, both sets of
  fingerprints), warm-started by enqueueing the parent's picks, then its Pareto front
  (at most half the budget; parameters the current space cannot take are left out).
  Enqueued trials are trained again on the current data: no old value becomes a result.

The decision and the creation run under one lock in the storage (PostgreSQL advisory
lock; a file lock beside a journal), so two `research` at once make one version.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import optuna
from optuna.trial import FrozenTrial

from job.collect.policies import select
from job.config import Config, config_fingerprint
from job.ml.errors import TrainError
from job.search.record import RESULTS_DIR as RESULTS_DIR  # where its collector wrote
from job.search.record import WARM_START as WARM_START  # a warm-start trial's attr
from job.search.record import StudyAttrs, TrialAttrs, TrialRecord, WarmStart, enqueue
from job.search.versions import (
    Fingerprints,
    Version,
    latest_version,
    version_name,
)
from job.search.view import pareto_trials
from job.storage import InRangeTrial, budget_lock, open_storage

if TYPE_CHECKING:  # torch: `status` reads versions without it
    from job.ml.data import Dataset

RESEARCH_JSON = "research.json"
UNCHANGED, IN_PROGRESS, NEW_VERSION = "unchanged", "in_progress", "new_version"


def current(config: Config, data: Dataset) -> Fingerprints:
    from job.search.studies import code_version

    return Fingerprints(data.fingerprint, config_fingerprint(config), code_version())


# --- versions ----------------------------------------------------------------------


# --- the decision ------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What research decided; `study` is the version to run (or, unchanged, the latest)."""

    decision: str
    study: str
    version: int
    parent: str | None
    changed: tuple[str, ...]
    fingerprints: Fingerprints
    parent_fingerprints: Fingerprints | None
    warm_start_trials: int = 0

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["changed"] = list(self.changed)
        return out

    def line(self) -> str:
        if self.decision == UNCHANGED:
            return (
                f"unchanged: data, config and code are those of {self.study} "
                f"(version {self.version}, complete); nothing to do"
            )
        if self.decision == IN_PROGRESS:
            return f"in progress: {self.study} (version {self.version}) has not met its budget"
        if self.parent is None:
            return f"new version {self.study} (version {self.version}: the first)"
        what = ", ".join(self.changed)
        return (
            f"new version {self.study} (version {self.version}; {what} changed since {self.parent})"
        )


def decide(latest: Version | None, base: str, budget: int, now: Fingerprints) -> Decision:
    """The module doc's rules; pure."""
    if latest is None:
        return Decision(NEW_VERSION, base, 1, None, (), now, None)
    before = latest.fingerprints
    if before is None or not now.changed(before):
        state = UNCHANGED if latest.finished or latest.complete >= budget else IN_PROGRESS
        parent = latest.lineage.get("parent")
        changed = tuple(latest.lineage.get("changed", ()))
        warm = int(latest.lineage.get("warm_start_trials", 0))
        return Decision(state, latest.name, latest.number, parent, changed, now, before, warm)
    number = latest.number + 1
    changed = tuple(now.changed(before))
    name = version_name(base, number)
    return Decision(NEW_VERSION, name, number, latest.name, changed, now, before)


# --- the warm start ----------------------------------------------------------------


def _fits(params: dict[str, Any], config: Config, data: Dataset) -> dict[str, Any] | None:
    """The params the current space takes from `params` (a trial of another version), or
    None when it cannot take them: a value out of its range, a parameter missing, a
    network that no longer fits the images."""
    from job.search.space import sample_candidate  # torch: only a warm start needs it

    fixed = InRangeTrial(params)  # a value out of range: ValueError
    try:
        sample_candidate(cast(optuna.Trial, fixed), data, config, timed=False)
    except (ValueError, TypeError, TrainError):
        return None
    return dict(fixed.params)


def warm_start(
    parent: str, trials: Sequence[FrozenTrial], config: Config, data: Dataset
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(params, user attrs) to enqueue: the parent's picks (policy order), then its Pareto
    front by accuracy, once each, those the current space takes, at most half the budget."""
    from job.collect.retrains import records  # torch: only a warm start needs it

    found = records(trials, config)
    by_number = {t.number: t for t in trials}
    order: list[tuple[int, str]] = [
        (c.number, f"pick:{c.policy}")
        for c in select(config.select.policies, found, config.objectives)
        if c.number is not None
    ]
    front = pareto_trials(trials, config.objectives)
    by_accuracy = sorted(front, key=lambda t: -_val_accuracy(t))
    order += [(t.number, "front") for t in by_accuracy]
    limit = max(1, config.study.budget // 2)
    chosen: list[tuple[dict[str, Any], dict[str, Any]]] = []
    seen: list[dict[str, Any]] = []
    for number, why in order:
        params = _fits(by_number[number].params, config, data)
        if params is None or params in seen:
            continue
        seen.append(params)
        origin = WarmStart(parent=parent, trial=number, why=why)
        chosen.append((params, TrialAttrs(warm_start=origin).to_attrs()))
        if len(chosen) == limit:
            break
    return chosen


def _val_accuracy(trial: FrozenTrial) -> float:
    found = TrialRecord.from_trial(trial).val_accuracy
    return -math.inf if found is None else found


# --- research ----------------------------------------------------------------------


def lineage(decision: Decision, base: str, warm: int) -> dict[str, Any]:
    return {
        "version": decision.version,
        "base": base,
        "parent": decision.parent,
        "changed": list(decision.changed),
        "fingerprints": asdict(decision.fingerprints),
        "parent_fingerprints": (
            asdict(decision.parent_fingerprints) if decision.parent_fingerprints else None
        ),
        "warm_start_trials": warm,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def research(config: Config, url: str, data: Dataset, dry_run: bool = False) -> Decision:
    """Decide, and unless `dry_run` make the new version (lineage, warm start): under the
    research lock, so that concurrent callers agree on one version."""
    from job.search.studies import open_study

    base, now = config.study.name, current(config, data)
    if dry_run:  # reads only: a storage that is not there yet is not made to read it
        latest = (
            latest_version(open_storage(url, config), base, config) if stored(url, base) else None
        )
        return decide(latest, base, config.study.budget, now)
    storage = open_storage(url, config)
    with budget_lock(url, f"research:{base}"):
        decision = decide(latest_version(storage, base, config), base, config.study.budget, now)
        if decision.decision != NEW_VERSION:
            return decision
        study = open_study(config, url, decision.study)
        warm: list[tuple[dict[str, Any], dict[str, Any]]] = []
        if decision.parent is not None:
            parent = optuna.load_study(study_name=decision.parent, storage=storage)
            warm = warm_start(decision.parent, parent.get_trials(deepcopy=False), config, data)
        StudyAttrs(research=lineage(decision, base, len(warm))).write(study)
        for params, attrs in warm:
            enqueue(study, params, TrialAttrs.of(attrs), skip_if_exists=True)
    return replace(decision, warm_start_trials=len(warm))


def stored(url: str, base: str) -> bool:
    """Whether the storage behind `url` is there, so that opening it creates nothing:
    opening makes a missing journal (and its folder), a missing SQLite file, or Optuna's
    tables in an empty database, and `research --dry-run` creates nothing anywhere."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    from job.storage import JOURNAL, study_exists

    if study_exists(url, base):  # creates nothing either
        return True
    if url.startswith(JOURNAL):
        return Path(url[len(JOURNAL) :]).is_file()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(str(parsed.database)).is_file():
        return False  # connecting would create the file
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            return bool(sqlalchemy.inspect(conn).has_table("studies"))
    finally:
        engine.dispose()


def write_research_json(
    folder: Path, decision: Decision, dry_run: bool, launched: list[str] | None
) -> Path:
    """research.json: the decision, the lineage, and what --launch did."""
    from job.collect.results import write_json
    from job.files import writing

    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    body = decision.as_json() | {
        "dry_run": dry_run,
        "launched": launched,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_json(path := folder / RESEARCH_JSON, body)
    return path
