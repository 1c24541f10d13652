"""Worker processes of one pod (stage: search): `search` with SMS_WORKERS_PER_POD=K > 1.

A search of small networks leaves most of a GPU idle with one trial at a time, so a pod
may run K `search` workers (`--procs K`, or SMS_WORKERS_PER_POD) as child processes that
share its device; the Job's parallelism and completions keep their meaning (K workers
per index). The parent trains nothing. It gives each child:

- its own worker index, `pod index * K + i` (JOB_COMPLETION_INDEX dropped,
  SMS_WORKER_INDEX set): the sampler's seed and the Pushgateway group's `index` differ
  across every worker of every pod, as with one worker per pod;
- its share of the pod's CPU threads (SMS_TORCH_THREADS, else the machine's cores, / K);
- a metrics server on a free loopback port (`--metrics-port-file`: the child writes the
  port it bound there); the parent serves the pod's ONE endpoint on the pod's port and,
  at each scrape, reads every child's exposition and serves them merged, each series
  labelled `proc="i"`, with `sms_pod_proc_up{proc}` (1: that child answered). Merged
  here rather than with prometheus_client's multiprocess mode: that mode has no Info
  metric (sms_worker_info), needs a per-metric mode for every Gauge and a shared folder
  set before the import, and reports no per-process series (the process collector's);
  a merge changes nothing in job.serve.metrics and keeps every child's series as it is.

The children run in their own session: Ctrl-C in a terminal reaches the parent only, and
SIGTERM or Ctrl-C alike stop every child the way a pod's SIGTERM stops one worker (each
checkpoints its trial and hands it back, exit 143); a child outliving the grace period
is killed, and a parent killed outright takes its children with it (Linux: the parent's
death signals them SIGTERM). The parent exits 143 if any child was stopped, else the
worst child's code (2: bad input; a child killed counts as 1).
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from job import logs
from job.errors import EXIT_STOPPED, UsageError
from job.run.local import (
    STOP_GRACE_S,
    lost_worker,
    search_command,
    spawn,
    stop_workers,
    threads_per_worker,
    worker_env,
)
from job.serve.metrics import serve_registry

PROC_LABEL = "proc"  # the child's position in the pod, 0..K-1, on every merged series
SCRAPE_TIMEOUT_S = 2.0
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
PR_SET_PDEATHSIG, TERM = 1, int(signal.SIGTERM)  # linux/prctl.h; the signal it sends

Children = list[subprocess.Popen[bytes]]


@dataclass(frozen=True)
class PodOptions:
    config_path: Path
    procs: int  # K, >= 2
    pod_index: int  # JOB_COMPLETION_INDEX (or SMS_WORKER_INDEX, or 0)
    threads: int | None  # the pod's CPU threads (SMS_TORCH_THREADS); None: the machine's
    metrics_port: int | None  # the pod's one endpoint; None: off (children push only)
    args: tuple[str, ...] = ()  # --study, --out: passed on to every child
    storage: str | None = None  # --storage: passed in the environment, never argv
    grace_s: float = STOP_GRACE_S
    poll_s: float = 0.5


def proc_index(options: PodOptions, i: int) -> int:
    """Child `i`'s worker index: distinct across the pods of an Indexed Job."""
    return options.pod_index * options.procs + i


def child_command(
    options: PodOptions, i: int, port_file: Path | None
) -> tuple[list[str], dict[str, str]]:
    """Child `i`'s command line (one worker: `--procs 1`) and environment."""
    args = [*options.args, "--procs", "1"]
    if port_file is not None:
        args += ["--metrics-port-file", str(port_file)]
    threads = threads_per_worker(options.procs, options.threads)
    port = "off" if port_file is None else "0"  # 0: a free port, on loopback
    env = worker_env(proc_index(options, i), threads, port, options.storage)
    return search_command(options.config_path, *args), env


def _die_with_parent() -> Callable[[], None] | None:
    """Linux: what a child runs before its exec to get SIGTERM when its parent dies, even
    by SIGKILL (no orphans); looked up here, so the child only calls it."""
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:  # pragma: no cover — runs in the child
        prctl(PR_SET_PDEATHSIG, TERM)

    return preexec


def start_children(options: PodOptions, port_files: list[Path] | None, into: Children) -> None:
    """The K children, into `into` as each starts (so that a failed start stops those
    before it), each in its own session: Ctrl-C reaches the parent only."""
    preexec = _die_with_parent()
    for i in range(options.procs):
        cmd, env = child_command(options, i, port_files[i] if port_files else None)
        into.append(spawn(cmd, env, own_session=True, preexec=preexec))


# --- the pod's one metrics endpoint ------------------------------------------------------


class PodMetrics(Collector):
    """Every child's exposition, read at scrape time, as one: each series labelled
    `proc`, each family once; and `sms_pod_proc_up{proc}`."""

    def __init__(self, port_files: list[Path], timeout_s: float = SCRAPE_TIMEOUT_S) -> None:
        self.port_files, self.timeout_s = port_files, timeout_s

    def describe(self) -> list[Metric]:
        return []  # nothing collected at registration: the children may not serve yet

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "sms_pod_proc_up",
            "1 when the pod's worker process answered this scrape, else 0.",
            labels=[PROC_LABEL],
        )
        families: dict[str, Metric] = {}
        for i, path in enumerate(self.port_files):
            text = scrape(path, self.timeout_s)
            if text is not None:
                try:
                    merge(families, text, str(i))
                except ValueError:  # half an exposition: this child counts as down
                    text = None
            up.add_metric([str(i)], 0.0 if text is None else 1.0)
        yield from families.values()
        yield up


def scrape(port_file: Path, timeout_s: float) -> str | None:
    """A child's exposition, or None: not serving yet (no port file), or gone."""
    try:
        port = int(port_file.read_text(encoding="utf-8"))
        url = f"http://127.0.0.1:{port}/metrics"
        with NO_PROXY.open(url, timeout=timeout_s) as response:
            return str(response.read().decode("utf-8"))
    except (OSError, ValueError):
        return None


def merge(families: dict[str, Metric], text: str, proc: str) -> None:
    """Add the exposition `text`'s families to `families`, each sample labelled `proc`."""
    parsed = list(text_string_to_metric_families(text))  # all or nothing: ValueError
    for family in parsed:
        name = family.name
        if name not in families:
            families[name] = Metric(name, family.documentation, family.type, family.unit)
        families[name].samples += [
            sample._replace(labels={**sample.labels, PROC_LABEL: proc}) for sample in family.samples
        ]


def serve_pod_metrics(port: int, port_files: list[Path]) -> Callable[[], None]:
    """Serve the merged endpoint on the pod's port (0: a free one); returns its shutdown."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PodMetrics(port_files))
    try:
        server, thread = serve_registry(registry, port)
    except OSError as exc:  # taken since `search` checked it
        raise UsageError(f"metrics port {port}: not free ({exc.strerror})") from None
    bound = int(server.server_address[1])
    logs.event("metrics_served", f"pod metrics on :{bound}/metrics", port=bound)

    def shutdown() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return shutdown


# --- the parent's life -------------------------------------------------------------------


def on_stop_signals(stop: threading.Event) -> dict[int, Any]:
    """SIGTERM and SIGINT set `stop`; returns the handlers they replace."""

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}


def watch(children: Children, indexes: list[int], stop: threading.Event, poll_s: float) -> None:
    """Until every child has ended or `stop` is set; a child that ends badly is said once
    (by its worker index), and the others go on (its trial is retried once stale)."""
    said: set[int] = set()
    while not stop.is_set():
        codes = [child.poll() for child in children]
        for i, code in enumerate(codes):
            if code not in (None, 0) and i not in said:
                said.add(i)
                line = lost_worker(indexes[i], children[i], None)
                logs.event("proc_lost", line, "warning", proc=i)
        if None not in codes:
            return
        stop.wait(poll_s)


def exit_code(codes: list[int], stopping: bool) -> int:
    """143 if any child was stopped (by SIGTERM, or killed past the grace period after
    the parent was told to stop), else the worst code: 2 bad input, a killed child 1."""
    stopped = (EXIT_STOPPED, -signal.SIGTERM)
    if any(code in stopped or (stopping and code < 0) for code in codes):
        return EXIT_STOPPED
    return max((1 if code < 0 else code for code in codes), default=0)


def run_pod(options: PodOptions) -> int:
    """Start the K children, serve their metrics as one, stop them on SIGTERM or Ctrl-C;
    returns the pod's exit code. No child outlives this function."""
    stop = threading.Event()
    previous = on_stop_signals(stop)
    folder = Path(tempfile.mkdtemp(prefix="sms-pod-"))  # the children's port files
    files = [folder / f"{i}.port" for i in range(options.procs)]
    indexes = [proc_index(options, i) for i in range(options.procs)]
    threads = threads_per_worker(options.procs, options.threads)
    logs.event(
        "pod_started",
        f"pod: {options.procs} worker processes (indexes {indexes[0]}-{indexes[-1]}), "
        f"{threads} thread(s) each",
        procs=options.procs,
    )
    children: Children = []
    shutdown: Callable[[], None] | None = None
    try:
        port = options.metrics_port
        start_children(options, None if port is None else files, children)
        if port is not None:  # after the children: no other thread while they fork
            shutdown = serve_pod_metrics(port, files)
        watch(children, indexes, stop, options.poll_s)
    finally:
        if stop.is_set():
            logs.event("pod_stopping", f"pod: stopping {len(children)} worker processes")
        stop_workers(children, options.grace_s)  # any still running: SIGTERM, wait, kill
        if shutdown is not None:
            shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(folder, ignore_errors=True)
    codes = [child.returncode for child in children]
    code = exit_code(codes, stop.is_set())
    logs.event("pod_finished", f"pod: worker processes exited {codes}: exit {code}", codes=codes)
    return code
