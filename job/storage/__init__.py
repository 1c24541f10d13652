"""Where the study lives: storage URLs, locks, heartbeats, and riding out a database outage.

The storage is named by URL, by precedence: the `--storage` flag, the `OPTUNA_STORAGE`
environment variable, `study.storage` in the config, and the embedded default, a
journal file under the run's output folder (`journal:///abs/path/study.journal`, no
server). PostgreSQL is the cluster's storage: advisory locks make schema creation and
the budget claim race-free across pods, heartbeats let a live worker retry the trial of
a dead one (on the embedded journal too: `BeatingJournalStorage`, beat files), and
`persist` retries a storage call through a database restart, up to a deadline.
`wait_for_database` holds a verb until a PostgreSQL storage accepts
connections. Passwords are masked by `job.urls.redact` in every message.

One package, so that Optuna's internals stay inside it: `base` (URL forms, errors,
`persist`, claiming a trial), `heartbeat` (heartbeats and stale trials on every storage),
`locks` (run, advisory and budget locks), `writes` (a trial's batched writes), `artifacts`
(a trial's files as Optuna artifacts), `journal` (the embedded journal file: torn records
cut off, damaged lines named and repaired; free space), `store` (resolving, checking and
opening a storage, waiting for it), `handle` (`Store`: one opened storage with its
redacted URL, lock engine and outage deadline, what workers pass around), `fixed` (a
fixed trial that refuses values out of range). Import from `job.storage`; the Optuna
internals these use are listed, with why, in docs/DEPENDENCIES.md.
"""

from __future__ import annotations

from job.storage.artifacts import ARTIFACTS, upload_trial_files
from job.storage.base import (
    BEATS,
    DEFAULT_JOURNAL,
    JOURNAL,
    SUPPORTED,
    TRANSIENT,
    StorageDownError,
    StorageError,
    StorageURLError,
    StudyInUseError,
    StudyNotFoundError,
    asked,
    close_study,
    count_states,
    persist,
    study_beside,
    take_trial,
)
from job.storage.fixed import InRangeTrial
from job.storage.handle import Store, budget_lock
from job.storage.heartbeat import (
    BeatingJournalStorage,
    Heartbeat,
    fail_stale_trials,
    has_stale_trials,
    silent_trials,
)
from job.storage.journal import (
    JournalDamagedError,
    check_free_space,
    check_journal,
    repair_journal,
)
from job.storage.locks import (
    FolderInUseError,
    database_lock,
    fresh_study,
    hold_run_folder,
    hold_study,
)
from job.storage.store import (
    check_storage,
    check_storage_url,
    open_storage,
    refused,
    resolve_storage,
    study_exists,
    wait_for_database,
    wait_for_study,
)
from job.storage.writes import (
    ParamHold,
    frozen_trial,
    save_curve,
    save_trial_attrs,
    tell_pruned,
    tpe_reads_pruned_trials,
)
from job.urls import redact

__all__ = [
    "ARTIFACTS",
    "BEATS",
    "DEFAULT_JOURNAL",
    "JOURNAL",
    "SUPPORTED",
    "TRANSIENT",
    "BeatingJournalStorage",
    "FolderInUseError",
    "Heartbeat",
    "InRangeTrial",
    "JournalDamagedError",
    "ParamHold",
    "StorageDownError",
    "StorageError",
    "StorageURLError",
    "Store",
    "StudyInUseError",
    "StudyNotFoundError",
    "asked",
    "budget_lock",
    "check_free_space",
    "check_journal",
    "check_storage",
    "check_storage_url",
    "close_study",
    "count_states",
    "database_lock",
    "fail_stale_trials",
    "fresh_study",
    "frozen_trial",
    "has_stale_trials",
    "hold_run_folder",
    "hold_study",
    "open_storage",
    "persist",
    "redact",
    "refused",
    "repair_journal",
    "resolve_storage",
    "save_curve",
    "save_trial_attrs",
    "silent_trials",
    "study_beside",
    "study_exists",
    "take_trial",
    "tell_pruned",
    "tpe_reads_pruned_trials",
    "upload_trial_files",
    "wait_for_database",
    "wait_for_study",
]
