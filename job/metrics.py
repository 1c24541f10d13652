"""Worker metrics: what one `search` worker exposes to Prometheus over HTTP.

Every name starts with `sms_` and follows Prometheus naming: counters end in `_total`,
durations are in seconds (`_seconds`), sizes are plain counts. Labels carry only the
study name, the data fingerprint, the worker id (host:pid), the code version, the
objectives and trial state names — never a storage URL, a password or the environment.

Per trial (this worker):

- `sms_trials_total{state}` (counter): trials this worker finished, by final state
  (`COMPLETE`, `FAIL`, `PRUNED`); `COMPLETE` and `FAIL` exist at 0 from the start, so a
  rate or an alert on failures works before the first trial ends.
- `sms_trial_duration_seconds` (histogram): wall time of each finished trial,
  buckets from 1 s to 4 h.
- `sms_trial_running` (gauge): 1 while a trial runs on this worker, else 0.
- `sms_trial_number` (gauge): the running trial's number, -1 when none.
- `sms_trial_epoch` (gauge): epochs done in the running trial (1-based), 0 between trials.
- `sms_trial_epochs` (gauge): epochs planned for the running (or last) trial.
- `sms_train_images_per_second` (gauge): training throughput of the last epoch or
  trial that reported one (NaN until then).

Study-wide (as this worker saw it at its last refresh, after each of its trials). Every
figure is `job.study`'s summary of the study, the same one summary.json and `status`
show, so they always agree: only feasible COMPLETE trials are ranked.

- `sms_study_best_accuracy` (gauge): best validation accuracy of any feasible COMPLETE
  trial in the study, in [0, 1] (summary.json's `best_accuracy`); NaN until one is known.
- `sms_study_pareto_front_size` (gauge): trials on the study's Pareto front.
- `sms_study_hypervolume` (gauge): the front's hypervolume, normalised: each objective
  mapped to a loss in [0, 1] (accuracy/f1: 1 - value; params: log10(p)/8; MACs:
  log10(m)/11; latency: (log10(ms) + 3)/7; clipped), reference point 1 per objective,
  so it is the dominated fraction of the unit box, in [0, 1]; NaN until a front exists.
- `sms_study_trials{state}` (gauge): the study's trials by state (every Optuna state
  is present, 0 when none).
- `sms_study_budget` (gauge): the study's trial budget (0 until the first refresh).

Identity:

- `sms_worker_info{study, data_fingerprint, worker, version, objectives}` (gauge, 1):
  which study, data and code this worker runs; join on it in PromQL.

Process (prometheus_client's process collector, Linux only, namespaced `sms_`):
`sms_process_cpu_seconds_total`, `sms_process_resident_memory_bytes`,
`sms_process_virtual_memory_bytes`, `sms_process_open_fds`, `sms_process_max_fds`,
`sms_process_start_time_seconds` — a worker's memory growth is the first sign of a
leak across trials, and these come from /proc/self only (no host details).

Each `WorkerMetrics` owns a private `CollectorRegistry`: tests can build several in one
process without "Duplicated timeseries" errors, and the default registry's platform
collector (Python build, OS details) never reaches the endpoint.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
    start_http_server,
)

from job import __version__
from job.runtime import SMS_METRICS_PORT, metrics_port

if TYPE_CHECKING:
    from job.study import StudySummary

__all__ = ["ENV_PORT", "FINAL_STATES", "STUDY_STATES", "WorkerMetrics", "metrics_port"]

ENV_PORT = SMS_METRICS_PORT  # parsed by job.runtime.metrics_port, re-exported here

# The states a trial can end in; anything else passed to `trial_finished` is a caller
# bug, and rejecting it keeps the `state` label's cardinality bounded.
FINAL_STATES = ("COMPLETE", "FAIL", "PRUNED")
# Optuna's TrialState names; all are exported so a state's series never disappears
# (a vanished series reads as "no data" in Grafana, not as 0).
STUDY_STATES = ("RUNNING", "WAITING", "COMPLETE", "PRUNED", "FAIL")

# A trial on the digits quickstart takes seconds; a full CIFAR-10 trial on a small GPU
# can take hours. Roughly 2-3x steps keep the quantile error bounded across that range.
DURATION_BUCKETS = (
    1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1200.0, 1800.0, 3600.0, 7200.0, 14400.0, math.inf,
)  # fmt: skip


def _usable(value: float | None) -> bool:
    # A throughput of None (a failed trial) or NaN/negative (a broken timer) must not
    # overwrite the last good reading.
    return value is not None and math.isfinite(value) and value >= 0


class WorkerMetrics:
    """The metrics of one worker process, on a private registry; see the module doc."""

    def __init__(
        self, study: str, data_fingerprint: str, worker: str, objectives: tuple[str, ...]
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # serve/shutdown may race (signal handler, main)

        self._declare_trial_metrics(reg)
        self._declare_study_metrics(reg)
        self.info = Info("sms_worker", "Which study, data and code this worker runs.", registry=reg)
        ProcessCollector(namespace="sms", registry=reg)

        # Starting values: "nothing running", "nothing known yet".
        self.trial_number.set(-1)
        self.images_per_second.set(math.nan)
        self.best_accuracy.set(math.nan)
        self.hypervolume.set(math.nan)
        for state in STUDY_STATES:
            self.study_trials.labels(state=state).set(0)
        # Only identifiers go here: the storage URL (which may hold a password) has no
        # parameter at all, so it cannot leak through this class.
        self.info.info(
            {
                "study": study,
                "data_fingerprint": data_fingerprint,
                "worker": worker,
                "version": __version__,
                "objectives": ",".join(objectives),
            }
        )

    def _declare_trial_metrics(self, reg: CollectorRegistry) -> None:
        """This worker's own: its trials, the running one, its throughput."""
        self.trials = Counter(
            "sms_trials",
            "Trials this worker finished, by final state.",
            ["state"],
            registry=reg,
        )
        for state in ("COMPLETE", "FAIL"):
            self.trials.labels(state=state)  # present at 0 before the first trial
        self.trial_duration = Histogram(
            "sms_trial_duration_seconds",
            "Wall time of each trial this worker finished.",
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self.trial_running = Gauge(
            "sms_trial_running", "1 while a trial runs on this worker, else 0.", registry=reg
        )
        self.trial_number = Gauge(
            "sms_trial_number", "Number of the running trial; -1 when none.", registry=reg
        )
        self.trial_epoch = Gauge(
            "sms_trial_epoch",
            "Epochs done in the running trial (1-based); 0 between trials.",
            registry=reg,
        )
        self.trial_epochs = Gauge(
            "sms_trial_epochs", "Epochs planned for the running or last trial.", registry=reg
        )
        self.images_per_second = Gauge(
            "sms_train_images_per_second",
            "Training throughput of the last epoch or trial that reported one.",
            registry=reg,
        )

    def _declare_study_metrics(self, reg: CollectorRegistry) -> None:
        """The study as this worker last read it (job.study's summary)."""
        self.best_accuracy = Gauge(
            "sms_study_best_accuracy",
            "Best validation accuracy of any feasible COMPLETE trial in the study "
            "(NaN until known).",
            registry=reg,
        )
        self.front_size = Gauge(
            "sms_study_pareto_front_size",
            "Trials on the study's Pareto front at this worker's last refresh.",
            registry=reg,
        )
        self.hypervolume = Gauge(
            "sms_study_hypervolume",
            "Hypervolume of the study's Pareto front in [0, 1]: objectives normalised to "
            "losses in [0, 1] (1 - accuracy or f1; log10(params)/8; log10(MACs)/11; "
            "(log10(latency ms) + 3)/7), reference point 1 each; NaN until a front exists.",
            registry=reg,
        )
        self.study_trials = Gauge(
            "sms_study_trials",
            "The study's trials by state at this worker's last refresh.",
            ["state"],
            registry=reg,
        )
        self.budget = Gauge("sms_study_budget", "The study's trial budget.", registry=reg)

    # -- the trial loop ------------------------------------------------------------

    def trial_started(self, number: int, epochs: int) -> None:
        """A trial began on this worker."""
        self.trial_running.set(1)
        self.trial_number.set(number)
        self.trial_epoch.set(0)
        self.trial_epochs.set(epochs)

    def epoch_done(self, epoch: int, images_per_s: float | None = None) -> None:
        """The running trial finished `epoch` (1-based); optionally its throughput."""
        self.trial_epoch.set(epoch)
        if _usable(images_per_s):
            assert images_per_s is not None  # for mypy; _usable checked it
            self.images_per_second.set(images_per_s)

    def trial_finished(self, state: str, seconds: float, images_per_s: float | None) -> None:
        """The running trial ended in `state` (a final Optuna state name) after `seconds`."""
        name = state.upper()
        if name not in FINAL_STATES:
            raise ValueError(f"trial state must be one of {', '.join(FINAL_STATES)}, got {state!r}")
        self.trials.labels(state=name).inc()
        self.trial_duration.observe(max(0.0, seconds))
        if _usable(images_per_s):
            assert images_per_s is not None
            self.images_per_second.set(images_per_s)
        # Between trials: reset so a dashboard never shows a stale trial as running.
        self.trial_running.set(0)
        self.trial_number.set(-1)
        self.trial_epoch.set(0)

    def study_refreshed(self, summary: StudySummary) -> None:
        """The study as this worker just read it (`job.study.study_summary`): trials by
        state, best validation accuracy, Pareto front size and hypervolume, budget."""
        counts = summary.counts
        for state in STUDY_STATES:
            self.study_trials.labels(state=state).set(counts.get(state, 0))
        for state, count in counts.items():
            if state not in STUDY_STATES:  # a future Optuna state; still worth showing
                self.study_trials.labels(state=state).set(count)
        best = summary.best_accuracy
        self.best_accuracy.set(math.nan if best is None else best)
        self.front_size.set(len(summary.front))
        self.hypervolume.set(summary.hypervolume if summary.front else math.nan)
        self.budget.set(summary.budget)

    # -- serving -------------------------------------------------------------------

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve `/metrics` (any path, in fact) from a daemon thread; return the bound
        port, which is a free one when `port` is 0. One server per instance."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError(f"metrics already served on port {self.port}")
            # In 0.26.0 start_http_server is start_wsgi_server and returns the
            # (WSGIServer, Thread) pair; the server knows the port it actually bound.
            server, thread = start_http_server(port, addr=addr, registry=self.registry)
            self._server, self._thread = server, thread
            return int(server.server_address[1])

    @property
    def port(self) -> int | None:
        """The port being served, or None when not serving."""
        server = self._server
        return None if server is None else int(server.server_address[1])

    def shutdown(self) -> None:
        """Stop serving and release the port; a no-op when not serving."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        server.shutdown()  # ends serve_forever (polls every 0.5 s)
        server.server_close()  # closes the listening socket: the port is free again
        if thread is not None:
            thread.join(timeout=5)

    def exposition(self) -> str:
        """The current metrics in Prometheus text format (what a scrape returns)."""
        return generate_latest(self.registry).decode("utf-8")
