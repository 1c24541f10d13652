"""Worker metrics (stage: metrics): what one `search` worker exposes to Prometheus.

Every name starts with `sms_` and follows Prometheus naming: counters end in `_total`,
durations are in seconds (`_seconds`), sizes are plain counts. Labels carry only the
study name, the data fingerprint, the worker id (host:pid), the code version, the
objectives and trial state names — never a storage URL, a password or the environment.
prometheus_client's `_created` series are off (`disable_created_metrics`): they double
every counter's series and no rule here reads them.

A worker serves only what is its own. The study's figures (trials by state, best, front,
hypervolume, ETA) come from ONE source, the study exporter (job.serve.exporter), which reads
the study at scrape time: served by every worker, each from its own last view, they
disagreed at the same instant and went stale when the worker finished.

- `sms_trials_total{state}` (counter): trials this worker finished, by final state
  (`COMPLETE`, `FAIL`, `PRUNED`); `COMPLETE` and `FAIL` exist at 0 from the start, so a
  rate or an alert on failures works before the first trial ends.
- `sms_trial_retries_total` (counter): trials this worker ran that retry a trial whose
  worker stopped beating.
- `sms_trial_duration_seconds` (histogram): wall time of each finished trial,
  buckets from 1 s to 4 h.
- `sms_trial_running` (gauge): 1 while a trial runs on this worker, else 0.
- `sms_trial_number` (gauge): the running trial's number, -1 when none.
- `sms_trial_epoch` (gauge): epochs done in the running trial (1-based), 0 between trials.
- `sms_trial_epochs` (gauge): epochs planned for the running (or last) trial.
- `sms_train_images_per_second` (gauge): training throughput of the last epoch or
  trial that reported one (NaN until then).
- `sms_worker_info{study, data_fingerprint, worker, version, objectives}` (gauge, 1):
  which study, data and code this worker runs; join on it in PromQL.
- Process (prometheus_client's process collector, Linux only, namespaced `sms_`):
  `sms_process_cpu_seconds_total`, `sms_process_resident_memory_bytes`,
  `sms_process_virtual_memory_bytes`, `sms_process_open_fds`, `sms_process_max_fds`,
  `sms_process_start_time_seconds` — a worker's memory growth is the first sign of a
  leak across trials, and these come from /proc/self only (no host details).

Final values: a worker serves `study.metrics_linger_s` (30 s) past its last trial, so
Prometheus scrapes the last values; with `SMS_PUSHGATEWAY` set, `push_final` also puts
them to a Pushgateway, grouped by role, study (and a worker's index), so a rerun replaces
its group instead of adding one (PUT). The collector and `research` push theirs alike.

Each `WorkerMetrics` owns a private `CollectorRegistry`: tests can build several in one
process without "Duplicated timeseries" errors, and the default registry's platform
collector (Python build, OS details) never reaches the endpoint.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    push_to_gateway,
    start_http_server,
)
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from job import __version__, settings
from job.settings import SMS_METRICS_PORT
from job.urls import redact

__all__ = [
    "ENV_PORT",
    "FINAL_STATES",
    "PUSH_JOB",
    "STUDY_STATES",
    "WorkerMetrics",
    "push_final",
    "serve_registry",
]

disable_created_metrics()  # type: ignore[no-untyped-call]  # process-wide: every registry of ours, served or pushed

ENV_PORT = SMS_METRICS_PORT  # parsed by job.settings.Settings.metrics_port, re-exported here

# The states a trial can end in; anything else passed to `trial_finished` is a caller
# bug, and rejecting it keeps the `state` label's cardinality bounded.
FINAL_STATES = ("COMPLETE", "FAIL", "PRUNED")
PUSH_JOB = "small-model-search"  # the Pushgateway's `job` label for every group of ours

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
        self.info = Info("sms_worker", "Which study, data and code this worker runs.", registry=reg)
        ProcessCollector(namespace="sms", registry=reg)

        # Starting values: "nothing running", "nothing known yet".
        self.trial_number.set(-1)
        self.images_per_second.set(math.nan)
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
        self.retries = Counter(
            "sms_trial_retries",
            "Trials this worker ran that retry a trial whose worker stopped beating.",
            registry=reg,
        )
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

    # -- the trial loop ------------------------------------------------------------

    def trial_started(self, number: int, epochs: int, retry: bool = False) -> None:
        """A trial began on this worker (`retry`: it retries a stale one)."""
        if retry:
            self.retries.inc()
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

    # -- serving -------------------------------------------------------------------

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve `/metrics` (any path, in fact) from a daemon thread; return the bound
        port, which is a free one when `port` is 0. One server per instance."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError(f"metrics already served on port {self.port}")
            server, thread = serve_registry(self.registry, port, addr)
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


def serve_registry(
    registry: CollectorRegistry, port: int, addr: str = "0.0.0.0"
) -> tuple[WSGIServer, threading.Thread]:
    """Serve `registry` on `addr:port` from a daemon thread. In 0.26.0 start_http_server
    is start_wsgi_server and returns the (WSGIServer, Thread) pair; the server knows the
    port it actually bound (a free one for port 0)."""
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return server, thread


class Together(Collector):
    """Several registries as one, for one push (research: its decision and its drift)."""

    def __init__(self, *parts: Collector) -> None:
        self.parts = parts

    def collect(self) -> Iterator[Metric]:
        for part in self.parts:
            yield from part.collect()


def push_final(
    registry: Collector,
    role: str,
    study: str,
    index: str | None = None,
    say: Callable[[str], None] = print,
) -> bool:
    """Put `registry` to the Pushgateway of SMS_PUSHGATEWAY, if set, as the group
    {job=small-model-search, role, study[, index]}: a PUT, so a rerun replaces the group
    (never adds beside it). `index`: a worker's index (an Indexed Job's completion index,
    which its rerun keeps); not `worker`, the info metric's label (host:pid) it would
    overwrite. A failed push is one warning line, never a failed job: the
    job's own result stands. True when pushed."""
    gateway = settings.current().pushgateway()
    if gateway is None:
        return False
    group = {"role": role, "study": study} | ({"index": index} if index is not None else {})
    try:
        push_to_gateway(gateway, job=PUSH_JOB, registry=registry, grouping_key=group, timeout=10)
    except OSError as exc:  # URLError, HTTPError, a refused or timed-out connection
        reason = getattr(exc, "reason", None) or exc
        say(f"warning: metrics push to {redact(gateway)} failed: {redact(str(reason))}")
        return False
    return True
