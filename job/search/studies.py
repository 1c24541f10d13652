"""Opening a study: its sampler (one seed per worker and study version), creating or
loading it under the storage's lock, the code version every trial records, and the data
its trials train on (fixed by its first worker, checked by every later one).

Every role opens its study here: the workers (`job.search.worker`), `run`, `status`,
`collect` and `research`; where the study lives is `job.storage`'s business (`Store`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

from job import __version__, settings
from job.config import Config, derive_seed
from job.ml.errors import DataError
from job.search.record import STUDY_DATA as STUDY_DATA  # the study's data fingerprint
from job.search.record import STUDY_PREPARATION as STUDY_PREPARATION  # and preparation
from job.search.record import StudyAttrs
from job.search.view import directions
from job.storage import (
    Store,
    StudyNotFoundError,
    budget_lock,
    redact,
    study_exists,
    tpe_reads_pruned_trials,
)

if TYPE_CHECKING:  # torch: `status` opens a study without it
    from job.ml.data import Dataset


def make_sampler(
    config: Config, worker_index: int = 0, version: int = 1
) -> optuna.samplers.BaseSampler:
    """The configured sampler; each worker gets its own seed so workers never propose alike,
    and each study version (job.collect.research) its own too: with the parent's seed a version
    would draw the parent's random start-up trials again, already evaluated."""
    seed = derive_seed(config.study.seed, 1000 * worker_index, 1_000_003 * (version - 1))
    kind = config.study.sampler
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(
            seed=seed, population_size=config.study.nsga2_population
        )
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    # group=True: the space is conditional (a block's params depend on its module)
    tpe_reads_pruned_trials()  # optuna#5260: PRUNED trials of a multi-objective study
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)


def open_study(
    config: Config,
    store: Store | str,
    name: str | None = None,
    worker_index: int = 0,
    create: bool = True,
    verify: bool = False,
) -> optuna.Study:
    """The study `name` (default `study.name`) in the storage (a `Store`, or a URL opened
    here), created when missing; with `create` False (`status`, `collect`) a missing study
    is a `StudyNotFoundError` and nothing is created. A process that may create the study
    holds it (`hold_study`: `run --fresh` elsewhere then refuses to delete it). `verify`:
    a verification study (`job.search.retrain`): one objective, the retrained test
    accuracy, and no sampling."""
    from job.search.versions import version_number

    name = name or config.study.name
    sampler = make_sampler(config, worker_index, version_number(config.study.name, name) or 1)
    wanted = directions(config.objectives)
    if verify:  # its trials are all queued with fixed settings: nothing to sample
        sampler, wanted = optuna.samplers.RandomSampler(derive_seed(worker_index)), ["maximize"]
    if not create:  # asked before the storage is opened: opening a journal creates its file
        url = store if isinstance(store, str) else store.url
        if not study_exists(url, name):
            raise StudyNotFoundError(f"study {name!r} not found in {redact(url)}")
        opened = Store.of(store, config)
        return optuna.load_study(study_name=name, storage=opened.storage, sampler=sampler)
    opened = Store.of(store, config)
    opened.hold()
    with opened.lock("studies"):  # N workers creating one study at once
        study = optuna.create_study(
            storage=opened.storage,
            sampler=sampler,
            study_name=name,
            directions=[StudyDirection[d.upper()] for d in wanted],
            load_if_exists=True,
        )
        # optuna-dashboard labels the objectives by these, not "Objective 0"
        names: list[str] = ["verified_accuracy"] if verify else list(config.objectives)
        if study.metric_names != names:
            study.set_metric_names(names)
        return study


def code_version() -> str:
    """SMS_CODE_VERSION when set, else the git commit of the code when there is one, else
    the package version."""
    if version := settings.current().code_version():
        return version
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{__version__}+{sha}"
    except (OSError, subprocess.SubprocessError):
        return __version__


# The data a study's trials train on, fixed by its first worker (study user attrs): the
# source's content (`Dataset.fingerprint`) and how it is cut and prepared (`data.*` but
# where it lives). A worker, retrainer or collector whose data differs refuses: its
# results would not be comparable (two fingerprints in one summary; a pick verified on
# one data set and exported on another).
PREPARATION_KEYS = ("image_size", "subset", "val_ratio", "test_ratio", "seed")


class DataChanged(DataError):  # noqa: N818 — bad input (exit 2), as DataError is
    """This process's data is not the data its study's trials trained on."""


def data_preparation(config: Config) -> dict[str, Any]:
    """The `data.*` keys that decide which images a trial trains and is tested on."""
    return config.data.model_dump(mode="json", include=set(PREPARATION_KEYS))


def _recorded_data(study: optuna.Study) -> str | None:
    """A study from before STUDY_DATA: its lineage's data fingerprint (job.collect.research),
    else its COMPLETE trials' most common one; None when nothing is recorded."""
    from job.search.versions import recorded

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    found = recorded(StudyAttrs.read(study), complete)
    return found.data if found is not None and found.data != "unknown" else None


def fix_study_data(study: optuna.Study, store: Store | str, data: Dataset, config: Config) -> None:
    """The first worker on a study records its data (or, on an older study, what its trials
    recorded), under the study's budget lock so that workers starting together agree;
    then every worker compares (`check_study_data`)."""
    with budget_lock(store, study.study_name):
        attrs = StudyAttrs.read(study)
        if attrs.data_fingerprint is None:
            fingerprint = _recorded_data(study) or data.fingerprint
            StudyAttrs(data_fingerprint=fingerprint).write(study)
        if attrs.data_preparation is None:
            StudyAttrs(data_preparation=data_preparation(config)).write(study)
    check_study_data(study, data, config)


def check_study_data(study: optuna.Study, data: Dataset, config: Config) -> None:
    """`DataChanged` (one line: both fingerprints, or the `data.*` key, and what to do)
    unless `data` and `config.data` are what the study recorded; reads, never writes."""
    attrs, name = StudyAttrs.read(study), study.study_name
    todo = "start a new study version (`python -m job research`) or another study (--study NEW)"
    theirs = attrs.data_fingerprint
    theirs = theirs if theirs is not None else _recorded_data(study)
    if theirs is not None and theirs != data.fingerprint:
        raise DataChanged(
            f"data: fingerprint {data.fingerprint[:12]} here, {theirs[:12]} in study {name!r} "
            f"(the data changed since its trials ran); {todo}"
        )
    recorded = attrs.data_preparation
    ours = data_preparation(config)
    for key in PREPARATION_KEYS:
        if recorded is not None and key in recorded and recorded[key] != ours.get(key):
            raise DataChanged(
                f"data.{key}: {ours.get(key)} here, {recorded[key]} in study {name!r} "
                f"(its trials trained on other data); {todo}"
            )


def check_existing_study_data(storage_url: str, config: Config, name: str, data: Dataset) -> None:
    """`check_study_data` for study `name` when the storage holds it; nothing is created."""
    if study_exists(storage_url, name):
        storage = Store.open(storage_url, config).storage
        check_study_data(optuna.load_study(study_name=name, storage=storage), data, config)
