"""The local driver role (`run`): N `search` processes on one study, then `collect`.

On a laptop this is the whole product: it opens the study (the embedded journal file
under `--out` unless a storage is given), starts N separate worker processes — just as
N pods would be — shows one progress bar for the whole study and a line per finished
trial, and when the workers are done runs the collector. Ctrl-C (or SIGTERM) stops every
worker cleanly: each fails its running trial with the reason `interrupted`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from job import runtime
from job.config import Config
from job.search import open_study
from job.storage import redact
from job.study import is_feasible, progress_text, snapshot, summarise

STOP_GRACE_S = 30.0  # matches a pod's terminationGracePeriodSeconds


@dataclass(frozen=True)
class RunOptions:
    config_path: Path
    workers: int
    out_dir: Path
    storage: str
    study_name: str
    metrics_port: int | None = None  # worker i serves on metrics_port + i
    poll_s: float = 1.0


def threads_per_worker(workers: int) -> int:
    """Split the machine's cores among the workers: oversubscribed BLAS threads thrash."""
    return max(1, (os.cpu_count() or 1) // workers)


def worker_command(options: RunOptions, index: int) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of local worker `index` (as a pod would get).

    The storage URL travels in the environment (OPTUNA_STORAGE), not on the command
    line, which every process on the machine can read (`ps`): it may hold a password."""
    cmd = [sys.executable, "-m", "job", "search", "--config", str(options.config_path)]
    # --out: the worker's checkpoints go under the run's folder, not runs/<study>
    cmd += ["--study", options.study_name, "--out", str(options.out_dir)]
    threads = str(threads_per_worker(options.workers))
    port = str(options.metrics_port + index) if options.metrics_port is not None else "off"
    env = runtime.child_env(
        {
            runtime.OPTUNA_STORAGE: options.storage,
            runtime.SMS_WORKER_INDEX: str(index),
            runtime.OMP_NUM_THREADS: threads,
            runtime.SMS_TORCH_THREADS: threads,
            runtime.SMS_METRICS_PORT: port,
        },
        drop=(runtime.JOB_COMPLETION_INDEX,),  # it would win over SMS_WORKER_INDEX
    )
    return cmd, env


def start_workers(options: RunOptions) -> list[subprocess.Popen[bytes]]:
    """Each worker logs to out_dir/worker-<i>.log; the console keeps the progress bar."""
    procs = []
    for index in range(options.workers):
        cmd, env = worker_command(options, index)
        log = open(options.out_dir / f"worker-{index}.log", "ab")  # noqa: SIM115 — the child owns it
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        log.close()  # the child holds its own descriptor
    return procs


def describe(trial: FrozenTrial, objectives: tuple[str, ...]) -> str:
    """One line per finished trial for the console."""
    if trial.state == TrialState.COMPLETE and trial.values is not None:
        values = "  ".join(
            f"{name} {value:,.4f}" if abs(value) < 1000 else f"{name} {value:,.0f}"
            for name, value in zip(objectives, trial.values, strict=True)
        )
        acc = trial.user_attrs.get("test_accuracy")
        extra = f"  test acc {acc:.4f}" if isinstance(acc, float) else ""
        extra += "" if is_feasible(trial) else "  infeasible"
        return f"trial {trial.number:>4}  COMPLETE  {values}{extra}"
    reason = trial.user_attrs.get("fail_reason", "")
    return f"trial {trial.number:>4}  {trial.state.name:<8}  {reason}"


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every live worker, then wait; kill what outlives the grace period."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def watch(
    study: optuna.Study, config: Config, procs: list[subprocess.Popen[bytes]], poll_s: float
) -> None:
    """Progress bar over COMPLETE trials and a line per finished trial, until workers exit.

    The bar's figures (best accuracy, front size, hypervolume) are `job.study`'s summary
    of the same read of the study: what `status`, summary.json and the metrics show."""
    seen: set[int] = set()
    finished = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    with tqdm(total=config.study.budget, unit="trial", dynamic_ncols=True) as bar:
        while True:
            running = any(proc.poll() is None for proc in procs)
            trials = snapshot(study, config)
            for trial in sorted(trials, key=lambda t: t.number):
                if trial.state in finished and trial.number not in seen:
                    seen.add(trial.number)
                    bar.write(describe(trial, config.objectives))
            summary = summarise(trials, config)
            bar.set_postfix_str(progress_text(summary), refresh=False)
            bar.update(min(summary.complete, config.study.budget) - bar.n)
            bar.refresh()
            if not running:
                return
            time.sleep(poll_s)


def run_local(config: Config, options: RunOptions) -> int:
    """Start the workers, watch them, stop them on Ctrl-C; returns the worst exit code."""
    options.out_dir.mkdir(parents=True, exist_ok=True)
    # Create the study once before the workers start: a bad storage fails here, once.
    study = open_study(config, options.storage, options.study_name)
    print(
        f"study {study.study_name} on {redact(options.storage)}: budget "
        f"{config.study.budget}, {options.workers} workers, "
        f"{threads_per_worker(options.workers)} thread(s) each; logs in {options.out_dir}"
    )
    procs = start_workers(options)
    try:
        watch(study, config, procs, options.poll_s)
    except KeyboardInterrupt:
        print("stopping workers…")
        stop_workers(procs)
        raise
    codes = [proc.wait() for proc in procs]
    return max(codes, default=0)
