"""Study exporter (stage: metrics): the study's figures for Prometheus, read at scrape time.

One long-lived process (`python -m job exporter`; in a cluster the `exporter` container
of the dashboard pod) is the ONE source of every study-level series. Workers serve only
what is theirs (job.serve.metrics): when each worker served its own last view of the study, two
workers disagreed at the same instant and a finished worker's view went stale.

At each scrape `StudyCollector` reads the study once, through `job.search.view`'s one view
(the figures equal summary.json's and `status`'s), at most every `min_interval_s` (a
second Prometheus replica costs no second read). Every series carries `study`, the
latest version of the configured study (`<name>`, `<name>-v2`, ...; job.collect.research) unless
one is named. Series (gauges unless said):

- `sms_storage_up{study}`: 1 when this scrape's read of the storage succeeded, 0 when the
  database was unreachable (then no `sms_study_*` series: unknown is not zero).
- `sms_study_trials{study,state}`: trials by state; every Optuna state, 0 when none.
- `sms_study_budget{study}`; `sms_study_finished{study}`: 1 once either budget is met.
- The best value of each objective over feasible COMPLETE trials, a family per unit
  (`BEST_FAMILIES`): `sms_study_best_accuracy_ratio`, `sms_study_best_params`, ...,
  `sms_study_best_latency_seconds` (NaN until known). Deprecated for one release:
  `sms_study_best{study,objective}` (three units in one family) and
  `sms_study_best_accuracy` (a duplicate). `sms_study_pareto_front_size{study}`;
  `sms_study_hypervolume{study}`: the front's normalised hypervolume in [0, 1]
  (job.search.view), NaN without a front.
- `sms_study_trials_per_hour{study}`, `sms_study_eta_seconds{study}` (0 once the budget
  is met; NaN while unknown; no sample while no worker beats: `workers_beat`).
- `sms_study_last_progress_timestamp_seconds{study}`: when the latest trial completed,
  or the first trial started while none has (no series without trials).
- `sms_study_stall_after_seconds{study}`: `study.stall_after_s`, the SmsStudyStalled
  threshold: in the series, so one rules file serves studies of any pace.
- `sms_study_stale_trials{study}`: RUNNING trials silent past `study.grace_period_s`.
- `sms_study_retried_trials_total{study}` (a counter): trials that retry a stale one;
  deprecated for one release: the gauge `sms_study_retried_trials`.
- While the study has no trial (or does not exist yet):
  `sms_study_waiting_since_timestamp_seconds{study}`, `sms_study_start_within_seconds{study}`
  (`study.start_within_s`) and `sms_study_budget{study}`: the SmsStudyNotStarted alert.
- `sms_study_epochs_trained_total{study}`: epochs trained by every trial, any state;
  `sms_study_epochs_saved_total{study}`: epochs pruned trials did not train (counters,
  job.search.budget); `sms_study_budget_epochs{study}`: `study.budget_epochs` (NaN: none).
  Pruned trials are `sms_study_trials{state="PRUNED"}`.
- `sms_study_read_duration_seconds{study}`: how long the read took.

The collector pushes the same families (job.serve.metrics.push_final), so the final figures
outlive the search; the rules take `max by (study)` over both sources.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime

import optuna
import sqlalchemy
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from job.config import Config, ConfigError
from job.search.versions import versions
from job.search.view import StudySummary, snapshot, summarise
from job.serve.metrics import STUDY_STATES
from job.storage import StorageDownError, StorageError, open_storage, silent_trials
from job.urls import redact

# What an unreachable database raises on the way through Optuna and SQLAlchemy.
_DOWN = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    optuna.exceptions.StorageInternalError,
    StorageDownError,
    StorageError,
    OSError,
)


def _timestamp(when: datetime | None) -> float | None:
    # Optuna hands back naive local times (RDB and journal alike): timestamp() reads them so
    return None if when is None else when.timestamp()


def last_progress(trials: list[FrozenTrial]) -> float | None:
    """Unix time the latest trial completed, else the first start; None with no trials."""
    done = [_timestamp(t.datetime_complete) for t in trials if t.state == TrialState.COMPLETE]
    if found := [d for d in done if d is not None]:
        return max(found)
    starts = [s for t in trials if (s := _timestamp(t.datetime_start)) is not None]
    return min(starts) if starts else None


def eta_seconds(summary: StudySummary) -> float:
    """Seconds to the budget at the current rate: 0 once met (either budget), NaN while
    unknown."""
    if summary.finished:
        return 0.0
    rate = summary.trials_per_hour
    return math.nan if not rate else (summary.budget - summary.complete) / rate * 3600.0


def workers_beat(trials: list[FrozenTrial], summary: StudySummary, grace_s: float) -> bool:
    """Whether a worker is alive on the study: a RUNNING trial whose heartbeat is not
    silent past the grace period, or a trial finished within it (a worker between two
    trials). Without one an ETA would be a guess about workers that are gone."""
    if summary.counts.get(TrialState.RUNNING.name, 0) > len(summary.stale):
        return True
    ends = [e for t in trials if (e := _timestamp(t.datetime_complete)) is not None]
    return bool(ends) and time.time() - max(ends) <= grace_s


def _retried(trials: list[FrozenTrial]) -> int:
    return sum(RetryHeartbeatStaleTrialCallback.retried_trial_number(t) is not None for t in trials)


# Each objective's best value in a family of its own unit (Prometheus' base units: a
# ratio, a count, seconds), instead of the deprecated sms_study_best{objective}.
BEST_FAMILIES: dict[str, tuple[str, str, float]] = {
    "accuracy": ("sms_study_best_accuracy_ratio", "validation accuracy, 0-1", 1.0),
    "f1": ("sms_study_best_f1_ratio", "validation macro F1, 0-1", 1.0),
    "params": ("sms_study_best_params", "parameters, fewest", 1.0),
    "macs": ("sms_study_best_macs", "multiply-accumulates per image, fewest", 1.0),
    "latency": ("sms_study_best_latency_seconds", "latency per image, batch 1", 1e-3),
}
DEPRECATED = "DEPRECATED, removed in the next release: use "
BUDGET_DOC = "The study's trial budget."


def study_families(
    name: str, config: Config, trials: list[FrozenTrial], summary: StudySummary
) -> list[Metric]:
    """The `sms_study_*` families of one read (the module doc names them)."""
    ids = {"study": name}

    def gauge(metric: str, doc: str, value: float | None, **labels: str) -> GaugeMetricFamily:
        family = GaugeMetricFamily(metric, doc, labels=[*ids, *labels])
        if value is not None:
            family.add_metric([*ids.values(), *labels.values()], value)
        return family

    def counter(metric: str, doc: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(metric, doc, labels=list(ids))
        family.add_metric(list(ids.values()), value)
        return family

    states = GaugeMetricFamily(
        "sms_study_trials", "The study's trials by state.", labels=["study", "state"]
    )
    for state in (*STUDY_STATES, *(s for s in summary.counts if s not in STUDY_STATES)):
        states.add_metric([name, state], summary.counts.get(state, 0))
    best = GaugeMetricFamily(
        "sms_study_best",
        DEPRECATED + "sms_study_best_<objective>_<unit>. Best value of each objective.",
        labels=["study", "objective"],
    )
    for objective, value in summary.best.items():
        best.add_metric([name, objective], value)
    bests = []
    for objective in config.objectives:
        metric, what, scale = BEST_FAMILIES[objective]
        known = summary.best.get(objective)
        doc = f"Best {what}, over the feasible COMPLETE trials (NaN until known)."
        bests.append(gauge(metric, doc, math.nan if known is None else known * scale))
    accuracy, rate = summary.best_accuracy, summary.trials_per_hour
    live = workers_beat(trials, summary, config.study.grace_period_s)
    retried = _retried(trials)  # served twice this release: the counter and the old gauge
    return [
        states,
        gauge("sms_study_budget", BUDGET_DOC, summary.budget),
        gauge(
            "sms_study_finished",
            "1 once the study met its budget (study.budget COMPLETE trials, or "
            "study.budget_epochs spent), else 0.",
            float(summary.finished),
        ),
        *bests,
        best,
        gauge(
            "sms_study_best_accuracy",
            DEPRECATED + "sms_study_best_accuracy_ratio. Best validation accuracy.",
            math.nan if accuracy is None else accuracy,
        ),
        gauge("sms_study_pareto_front_size", "Trials on the Pareto front.", len(summary.front)),
        gauge(
            "sms_study_hypervolume",
            "Hypervolume of the Pareto front, objectives normalised to losses in [0, 1] "
            "(job.search.view), reference point 1 each; NaN without a front.",
            summary.hypervolume if summary.front else math.nan,
        ),
        gauge(
            "sms_study_trials_per_hour",
            "COMPLETE trials per hour since the first trial started (NaN until known).",
            math.nan if rate is None else rate,
        ),
        gauge(
            "sms_study_eta_seconds",
            "Seconds until the budget is met at the current rate (0 when met, NaN unknown; "
            "no sample while no worker beats).",
            eta_seconds(summary) if live or summary.finished else None,
        ),
        gauge(
            "sms_study_last_progress_timestamp_seconds",
            "Unix time the latest trial completed, or the first started while none has.",
            last_progress(trials),
        ),
        gauge(
            "sms_study_stall_after_seconds",
            "study.stall_after_s: no progress for this long while budget remains is a stall.",
            config.study.stall_after_s,
        ),
        gauge(
            "sms_study_stale_trials",
            "RUNNING trials whose heartbeat is silent past the grace period.",
            len(summary.stale),
        ),
        counter(
            "sms_study_retried_trials",
            "Trials that retry a trial whose worker stopped beating.",
            retried,
        ),
        gauge(
            "sms_study_retried_trials",
            DEPRECATED + "sms_study_retried_trials_total (a counter).",
            retried,
        ),
        counter(
            "sms_study_epochs_trained",
            "Epochs trained by every trial of the study, in any state.",
            summary.spent.epochs_trained,
        ),
        counter(
            "sms_study_epochs_saved",
            "Epochs that pruned trials did not train (their recipes' epochs less trained).",
            summary.spent.epochs_saved,
        ),
        gauge(
            "sms_study_budget_epochs",
            "study.budget_epochs: epochs all trials may train (NaN: no such budget).",
            math.nan if summary.budget_epochs is None else summary.budget_epochs,
        ),
    ]


class StudyCollector(Collector):
    """A prometheus_client collector that reads the study when scraped (module doc)."""

    def __init__(
        self,
        config: Config,
        url: str,
        study: str | None = None,
        min_interval_s: float = 5.0,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.config, self.url, self.fixed = config, url, study
        self.min_interval_s = min_interval_s
        self.warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
        self._storage: optuna.storages.BaseStorage | None = None
        self._lock = threading.Lock()  # one read at a time; scrapes may overlap
        self._cached: tuple[float, list[Metric]] | None = None
        self._said: str | None = None  # the last warning, said once until it changes
        self._waiting: dict[str, float] = {}  # study -> when first seen with no trial

    def describe(self) -> list[Metric]:
        return []  # read nothing when registered: the database may not be up yet

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self.min_interval_s:
                self._cached = (now, self.read())
            families = self._cached[1]
        yield from families

    def study_name(self, storage: optuna.storages.BaseStorage) -> str:
        """The named study, else the latest version of the configured one."""
        if self.fixed:
            return self.fixed
        found = versions(storage, self.config.study.name)
        return found[-1][1] if found else self.config.study.name

    def read(self) -> list[Metric]:
        """One read of the study: its families, or `sms_storage_up 0` when unreachable."""
        start = time.perf_counter()
        name = self.fixed or self.config.study.name
        try:
            if self._storage is None:
                self._storage = open_storage(self.url, self.config)
            name = self.study_name(self._storage)
            families = self._study(self._storage, name)
        except _DOWN as exc:
            self._say(f"warning: storage {redact(self.url)}: {redact(_first_line(exc))}")
            return [_up(name, 0)]
        except ConfigError as exc:  # a study made for other objectives: not an outage
            self._say(f"warning: {exc}")
            return [_up(name, 1)]
        self._said = None
        took = GaugeMetricFamily(
            "sms_study_read_duration_seconds", "How long reading the study took.", labels=["study"]
        )
        took.add_metric([name], time.perf_counter() - start)
        return [_up(name, 1), *families, took]

    def _study(self, storage: optuna.storages.BaseStorage, name: str) -> list[Metric]:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:  # not created yet: the workers have not started
            budget = _gauge("sms_study_budget", BUDGET_DOC, name, self.config.study.budget)
            return [budget, *self._still_waiting(name)]
        trials = snapshot(study, self.config)
        summary = summarise(trials, self.config, silent=silent_trials(study))
        families = study_families(name, self.config, trials, summary)
        if trials:
            self._waiting.pop(name, None)
            return families
        return [*families, *self._still_waiting(name)]

    def _still_waiting(self, name: str) -> list[Metric]:
        """While the study has no trial (or does not exist yet): since when this exporter
        has seen it so, and how long that may last (`study.start_within_s`), for the
        SmsStudyNotStarted alert: a study whose Job never starts (Pending pods, quota)
        would otherwise have no series to alert on."""
        since = self._waiting.setdefault(name, time.time())
        return [
            _gauge(
                "sms_study_waiting_since_timestamp_seconds",
                "Unix time this exporter first saw the study with no trial started (no "
                "sample once one has).",
                name,
                since,
            ),
            _gauge(
                "sms_study_start_within_seconds",
                "study.start_within_s: a study with no trial started for this long alerts.",
                name,
                self.config.study.start_within_s,
            ),
        ]

    def _say(self, line: str) -> None:
        if line != self._said:
            self._said = line
            self.warn(line)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _gauge(metric: str, doc: str, study: str, value: float) -> GaugeMetricFamily:
    """A one-sample gauge of `study`."""
    family = GaugeMetricFamily(metric, doc, labels=["study"])
    family.add_metric([study], value)
    return family


def _up(name: str, value: int) -> GaugeMetricFamily:
    return _gauge(
        "sms_storage_up",
        "1 when this scrape's read of the study's storage succeeded, 0 when unreachable.",
        name,
        value,
    )


def study_registry(
    config: Config, url: str, study: str | None = None, min_interval_s: float = 5.0
) -> CollectorRegistry:
    """A registry holding one `StudyCollector`: what the exporter serves (reading at most
    every `min_interval_s` however often it is scraped) and the collector pushes."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StudyCollector(config, url, study, min_interval_s))
    return registry
