"""The local driver role (`run`): N `search` processes on one study, then `collect`.

On a laptop this is the whole product: it opens the study (the embedded journal file
under `--out` unless a storage is given), starts N separate worker processes — just as
N pods would be — shows one progress bar for the whole study and a line per finished
trial (with its failure's reason), then a line per verification retrain (job.search.retrain: the
workers run them once the budget is met), and when the workers are done, the collector.
A worker that dies (killed, or a non-zero exit) is reported at once with its log's last
lines; the others go on, retry its trial once it has gone stale and meet the budget, and
`run` exits 1 after collecting. Ctrl-C (or SIGTERM) stops every worker cleanly: each
fails its running trial with the reason `interrupted` (Ctrl-C) or hands it back (SIGTERM);
`run` then exits 130 for Ctrl-C, 143 for SIGTERM, as a worker does.

One run per output folder (`job.storage.hold_run_folder`: `<out>/run.lock`): a second
`run` there is refused at once, naming the first's pid. A database outage is ridden out
as the workers ride it out (`study.db_outage_deadline_s`): the progress says so in one
line, and the collector runs once the database answers again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from job import settings
from job.config import Config
from job.errors import EXIT_STOPPED
from job.search.budget import budget_text, progress, spent
from job.search.record import SEARCH_TEST_LABEL, TrialRecord
from job.search.retrain import Retrain, verify_study_name
from job.search.studies import open_study
from job.search.view import is_feasible, progress_text, snapshot, summarise
from job.storage import (
    JOURNAL,
    TRANSIENT,
    StorageDownError,
    Store,
    hold_run_folder,
    persist,
    redact,
)
from job.urls import url_secrets

STOP_GRACE_S = 30.0  # matches a pod's terminationGracePeriodSeconds


class Terminated(KeyboardInterrupt):
    """SIGTERM to `run`: stop the workers as Ctrl-C does, then exit 143 (not 130)."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def password_on_command_line(flag: str | None) -> str | None:
    """The warning for a `--storage` URL that holds a password: every user of the
    machine reads a process's command line (`ps`). None without one."""
    if not flag or not url_secrets(flag):
        return None
    return (
        "warning: --storage puts its password in this process's command line, which every "
        "user of this machine can read (ps); set OPTUNA_STORAGE instead"
    )


@dataclass(frozen=True)
class RunOptions:
    config_path: Path
    workers: int
    out_dir: Path
    storage: str
    study_name: str
    metrics_port: int | None = None  # worker i serves on metrics_port + i
    home: Path | None = None  # the workers' --out when not out_dir: a version's home
    overrides: tuple[str, ...] = ()  # --set KEY=VALUE: passed on to every worker
    poll_s: float = 1.0


def dashboard_hint(options: RunOptions) -> str:
    """How to watch this run in optuna-dashboard: our verb, read-only, with the storage
    and study the run has; and, for a journal, the file path optuna-dashboard's own CLI
    opens (it cannot open a `journal:///` URL). A database URL is never printed whole:
    its password would be in it."""
    verb = f"python -m job dashboard --config {options.config_path}"
    if options.home is not None or options.storage.startswith(JOURNAL):
        verb += f" --out {options.home or options.out_dir}"
    if options.storage.startswith(JOURNAL):
        return f"dashboard: {verb}  (or: optuna-dashboard {options.storage[len(JOURNAL) :]})"
    return f"dashboard: {verb}  (storage from the same environment)"


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Split `cores` (default: the machine's) among the workers: oversubscribed BLAS
    threads thrash. `run` splits the machine; job.run.pod a pod's SMS_TORCH_THREADS."""
    return max(1, (cores or os.cpu_count() or 1) // workers)


def search_command(config_path: Path, *args: str) -> list[str]:
    """`python -m job search --config CONFIG ARGS…` with this interpreter."""
    return [sys.executable, "-m", "job", "search", "--config", str(config_path), *args]


def worker_env(
    index: int, threads: int, metrics_port: str, storage: str | None = None
) -> dict[str, str]:
    """A worker process's environment, as a pod's would be: its index (SMS_WORKER_INDEX;
    JOB_COMPLETION_INDEX dropped, it would win), its threads, its metrics port (a number
    or `off`) and, when given, the storage URL (OPTUNA_STORAGE).

    The storage URL travels in the environment, not on the command line, which every
    process on the machine can read (`ps`): it may hold a password."""
    updates = {
        settings.SMS_WORKER_INDEX: str(index),
        settings.OMP_NUM_THREADS: str(threads),
        settings.SMS_TORCH_THREADS: str(threads),
        settings.SMS_METRICS_PORT: metrics_port,
    }
    if storage is not None:
        updates[settings.OPTUNA_STORAGE] = storage
    return settings.child_env(updates, drop=(settings.JOB_COMPLETION_INDEX,))


def worker_command(options: RunOptions, index: int) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of local worker `index` (as a pod would get)."""
    # --out: the worker's checkpoints go under the run's folder, not runs/<study>
    home = str(options.home or options.out_dir)
    sets = [word for kv in options.overrides for word in ("--set", kv)]
    cmd = search_command(options.config_path, "--study", options.study_name, "--out", home, *sets)
    port = str(options.metrics_port + index) if options.metrics_port is not None else "off"
    threads = threads_per_worker(options.workers)
    return cmd, worker_env(index, threads, port, options.storage)


def worker_log(options: RunOptions, index: int) -> Path:
    return options.out_dir / f"worker-{index}.log"


def start_workers(options: RunOptions) -> list[subprocess.Popen[bytes]]:
    """Each worker logs to out_dir/worker-<i>.log; the console keeps the progress bar."""
    return [
        spawn(*worker_command(options, index), log=worker_log(options, index))
        for index in range(options.workers)
    ]


def spawn(
    cmd: list[str],
    env: dict[str, str],
    log: Path | None = None,
    own_session: bool = False,
    preexec: Callable[[], None] | None = None,
) -> subprocess.Popen[bytes]:
    """Start one worker process: its output appended to `log`, else this process's own.
    `own_session`: out of the terminal's process group, so that Ctrl-C reaches only the
    parent, which stops it (job.run.pod); `preexec`: run in the child before the exec."""
    out = open(log, "ab") if log is not None else None  # noqa: SIM115 — the child owns it
    try:
        return subprocess.Popen(
            cmd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=own_session,
            preexec_fn=preexec,
        )
    finally:
        if out is not None:
            out.close()  # the child holds its own descriptor


COUNTS = ("params", "macs")  # objectives that count things: shown as whole numbers


def describe(trial: FrozenTrial, objectives: tuple[str, ...]) -> str:
    """One line per finished trial for the console."""
    if trial.state == TrialState.COMPLETE and trial.values is not None:
        values = "  ".join(
            f"{name} {value:,.0f}"
            if name in COUNTS or abs(value) >= 1000
            else f"{name} {value:,.4f}"
            for name, value in zip(objectives, trial.values, strict=True)
        )
        acc = TrialRecord.from_trial(trial).test_accuracy  # train.test_each_trial only
        extra = f"  test acc {acc:.4f} ({SEARCH_TEST_LABEL})" if isinstance(acc, float) else ""
        extra += "" if is_feasible(trial) else "  infeasible"
        extra += _retry_of(trial)
        return f"trial {trial.number:>4}  COMPLETE  {values}{extra}"
    why = _why(trial)
    return f"trial {trial.number:>4}  {trial.state.name:<8}  {why}".rstrip() + _retry_of(trial)


def _why(trial: FrozenTrial) -> str:
    """`reason: message` of a trial that did not complete (either part may be missing);
    where a pruned trial stopped and how it ranked there."""
    record = TrialRecord.from_trial(trial)
    if record.pruned_epoch is not None:
        return f"at epoch {record.pruned_epoch}: rank {record.pruned_rank} of {record.rung_size}"
    reason, message = record.failure
    message = short(message)
    return f"{reason}: {message}" if reason and message else reason or message


def describe_retrain(trial: FrozenTrial) -> str:
    """One line per finished verification retrain (job.search.retrain) for the console."""
    spec = Retrain.of(trial)
    what = f"{spec.name} seed {spec.seed}" if spec is not None else "?"
    if trial.state == TrialState.COMPLETE and trial.values is not None:
        result = f"test acc {trial.values[0]:.4f}"
    else:
        result = f"{trial.state.name} {_why(trial)}".rstrip()
    return f"verify {trial.number:>3}  {what}: {result}{_retry_of(trial)}"


def _retry_of(trial: FrozenTrial) -> str:
    retry_of = TrialRecord.from_trial(trial).retry_of
    return f"  (retry of trial {retry_of})" if isinstance(retry_of, int) else ""


def short(text: str, width: int = 160) -> str:
    """One line of at most `width` characters: a fail_message may hold a long error."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


LOG_TAIL_LINES = 5


def lost_worker(index: int, proc: subprocess.Popen[bytes], log: Path | None) -> str:
    """What `run` prints once for a worker that ended badly: one line saying how, then the
    last lines of its log (the reason is usually there), indented."""
    code = proc.returncode
    if code is not None and code < 0:
        try:
            how = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"killed by signal {-code}"
    else:
        how = f"exited {code}"
    line = f"worker {index} (pid {proc.pid}) lost: {how}; the others go on"
    tail = log_tail(log) if log is not None else []
    if not tail:
        return line
    lines = "".join(f"\n    {redact(text)}" for text in tail)
    return f"{line}; last lines of {log}:{lines}"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last non-empty lines of a worker's log (its last 8 KiB); [] when unreadable."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 8192))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    # a line redrawn with \r (a progress bar) counts as what it shows last
    found = [short(line.split("\r")[-1]) for line in text.split("\n")]
    return [line for line in found if line][-lines:]


def stop_workers(procs: list[subprocess.Popen[bytes]], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM every live worker, then wait; kill what outlives the grace period."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Outage:
    """`run`'s view of a database outage: one line when its reads start failing, one
    when they work again, and a `StorageDownError` past the store's deadline (the
    workers' own, `study.db_outage_deadline_s`: they give up then too)."""

    def __init__(self, store: Store) -> None:
        self.store, self.deadline_s = store, store.deadline_s
        self.since: float | None = None

    def down(self, exc: BaseException) -> str | None:
        """A read failed: the line to print at the first failure, else None."""
        now = time.monotonic()
        cause = redact(" ".join(str(exc).split())[:160], self.store.url) or type(exc).__name__
        if self.since is None:
            self.since = now
            return (
                f"storage {self.store.shown} unreachable ({cause}); the workers ride it out, "
                f"waiting up to {self.deadline_s:g} s"
            )
        if now - self.since > self.deadline_s:
            raise StorageDownError(
                f"storage {self.store.shown} unreachable for {self.deadline_s:g}s while "
                f"watching the run: {cause}"
            )
        return None

    def up(self) -> str | None:
        """A read worked: the line to print when it ends an outage, else None."""
        if self.since is None:
            return None
        seconds, self.since = time.monotonic() - self.since, None
        return f"storage {self.store.shown} reachable again after {seconds:.0f} s"


def watch(
    study: optuna.Study,
    config: Config,
    procs: list[subprocess.Popen[bytes]],
    poll_s: float,
    store: Store,
    logs: Sequence[Path] = (),
    verify: optuna.Study | None = None,
) -> list[int]:
    """Progress bar (over COMPLETE trials, or epochs trained where `study.budget_epochs` is
    set: `job.search.budget.progress`) and a line per finished trial, until workers exit;
    returns the indexes of the workers that ended badly (killed, or a non-zero exit).

    A worker that ends badly is reported at once (`lost_worker`, with the end of its log
    `logs[i]`) and the others go on: its trial stops beating, and one of them fails it
    after `study.grace_period_s` and runs its retry, so the budget is still met.
    The bar's figures (best accuracy, front size, hypervolume) are `job.search.view`'s summary
    of the same read of the study: what `status`, summary.json and the metrics show.
    `verify`: the verification study, whose retrains (run once the budget is met) get a
    line each too. While the database of `store` does not answer, the workers are
    still watched, and the outage is said in one line (`Outage`)."""
    seen: set[int] = set()
    seen_retrains: set[int] = set()
    lost: list[int] = []
    finished = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    outage = Outage(store)
    _, total, unit = progress(spent([], config.train.epochs), config)  # nothing yet
    with tqdm(total=total, unit=unit, dynamic_ncols=True) as bar:
        while True:
            codes = [proc.poll() for proc in procs]  # every one: any() would stop early
            running = None in codes
            for index, (proc, code) in enumerate(zip(procs, codes, strict=True)):
                if code not in (None, 0) and index not in lost:
                    lost.append(index)
                    log = logs[index] if index < len(logs) else None
                    bar.write(lost_worker(index, proc, log))
            try:
                trials = snapshot(study, config)
                retrains = verify.get_trials(deepcopy=False) if verify is not None else []
            except TRANSIENT as exc:  # the database is down: the workers ride it out too
                if not running:
                    return lost  # the collector waits for the database (study_after_run)
                if line := outage.down(exc):
                    bar.write(line)
                time.sleep(poll_s)
                continue
            if line := outage.up():
                bar.write(line)
            for trial in sorted(trials, key=lambda t: t.number):
                if trial.state in finished and trial.number not in seen:
                    seen.add(trial.number)
                    bar.write(describe(trial, config.objectives))
            for trial in retrains:
                if trial.state in finished and trial.number not in seen_retrains:
                    seen_retrains.add(trial.number)
                    bar.write(describe_retrain(trial))
            summary = summarise(trials, config)
            bar.set_postfix_str(progress_text(summary), refresh=False)
            bar.update(progress(summary.spent, config)[0] - bar.n)
            bar.refresh()
            if not running:
                return lost
            time.sleep(poll_s)


def run_local(config: Config, options: RunOptions) -> int:
    """Start the workers, watch them, stop them on Ctrl-C or SIGTERM; returns the worst
    exit code (SIGTERM: `SystemExit(143)` once the workers stopped).

    The output folder is this run's alone (`hold_run_folder`), and opening the study
    holds it (on a journal, `<journal>.run-lock`, as each worker does): `run --fresh`
    elsewhere refuses to delete it while this run lives."""
    hold_run_folder(options.home or options.out_dir)
    # SIGTERM stops the workers as Ctrl-C does, then exits 143; the caller's handler after
    previous = signal.signal(signal.SIGTERM, _terminate)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        return _run(config, options, procs)
    except Terminated:
        if procs:
            print("SIGTERM: stopping workers…", flush=True)
        stop_workers(procs)
        raise SystemExit(EXIT_STOPPED) from None
    except BaseException:  # Ctrl-C, or the database gone past its deadline: no orphans
        if any(proc.poll() is None for proc in procs):
            print("stopping workers…", flush=True)
        stop_workers(procs)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(config: Config, options: RunOptions, procs: list[subprocess.Popen[bytes]]) -> int:
    """`run_local`'s work; each worker started is in `procs` at once, to be stopped."""
    # Create the study once before the workers start: a bad storage fails here, once,
    # before anything is written (an unwritable journal path: exit 2 naming it).
    store = Store.open(options.storage, config)  # this process's one storage for both
    study = open_study(config, store, options.study_name)
    verify = None
    if config.select.verify:  # its retrains start once the budget is met (job.search.retrain)
        name = verify_study_name(options.study_name)
        verify = open_study(config, store, name, verify=True)
    options.out_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"study {study.study_name} on {store.shown}: budget "
        f"{budget_text(config)}, {options.workers} workers, "
        f"{threads_per_worker(options.workers)} thread(s) each; logs in {options.out_dir}"
    )
    print(dashboard_hint(options))
    for index in range(options.workers):
        procs.append(spawn(*worker_command(options, index), log=worker_log(options, index)))
    logs = [worker_log(options, index) for index in range(options.workers)]
    watch(study, config, procs, options.poll_s, store, logs, verify)
    codes = [proc.wait() for proc in procs]
    # a killed worker's code is negative (-9): it is a failure all the same
    return max((1 if code < 0 else code for code in codes), default=0)


def study_after_run(config: Config, options: RunOptions) -> tuple[optuna.Study, list[FrozenTrial]]:
    """The study and one read of its trials for the collector once the workers are done,
    waiting for the database as the workers would (`study.db_outage_deadline_s`)."""

    def read() -> tuple[optuna.Study, list[FrozenTrial]]:
        store = Store.open(options.storage, config)  # opened afresh: it may have been down
        study = open_study(config, store, options.study_name)
        return study, snapshot(study, config)

    deadline = config.study.db_outage_deadline_s
    what = "reading the study to collect it"
    return persist(read, deadline, what, options.storage, also=(StorageDownError,))
