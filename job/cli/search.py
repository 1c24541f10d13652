"""Verbs of the search: `search` (one worker, or K in a pod), `run` (the local driver:
workers then the collector) and `collect` (the collector's pipeline, job.collect.pipeline)."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from job import logs, settings
from job.collect.retrains import model_files
from job.config import Config, load_config
from job.errors import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_OK, EXIT_STOPPED, UsageError
from job.files import write_atomic
from job.ml.data import Dataset, load_data
from job.ml.model import ModelSpec
from job.ml.train import (
    check_batch,
)
from job.storage import JOURNAL, redact

if TYPE_CHECKING:  # imported where used: `train` and `status` need no Optuna worker
    from job.run.local import RunOptions
    from job.search.worker import Worker


from job.cli.common import (
    arg_study_name,
    check_folder,
    check_port_free,
    checkpoint_dir_of,
    home_of,
    is_version,
    out_dir_of,
    storage_url_of,
)


def cmd_search(args: argparse.Namespace) -> int:
    """One worker: trials until the study's budget is met. With K > 1 worker processes
    per pod (--procs, else SMS_WORKERS_PER_POD) the pod's K workers, as child processes of
    this one (job.run.pod), once what can be checked here passes."""
    from job.search.worker import Worker, stop_on_sigterm
    from job.serve.metrics import WorkerMetrics, push_final

    procs = getattr(args, "procs", None) or settings.current().workers_per_pod()  # the flag wins
    config = load_config(args.config, args.set)
    gateway = (
        settings.current().pushgateway()
    )  # a bad SMS_PUSHGATEWAY fails now, not after the search
    checkpoints = checkpoint_dir_of(args, config)
    threads = settings.current().torch_threads()
    port = settings.current().metrics_port(config.study.metrics_port)
    if port is not None:
        from_env = settings.current().metrics_port(None) == port
        check_port_free(port, settings.SMS_METRICS_PORT if from_env else "study.metrics_port")
    index = settings.current().worker_index()
    if procs > 1:
        from job.run.pod import PodOptions, run_pod

        arg_study_name(args, config)  # a bad SMS_STUDY fails here, once
        given = [("--study", args.study), ("--out", args.out)]  # passed on to each child
        words = tuple(word for flag, value in given if value for word in (flag, value))
        words += tuple(word for kv in args.set for word in ("--set", kv))
        pod = PodOptions(Path(args.config), procs, index, threads, port, words, args.storage)
        return run_pod(pod)
    if threads is not None:
        torch.set_num_threads(threads)
    port_file = getattr(args, "metrics_port_file", None)  # a child of job.run.pod
    url = storage_url_of(args, config)  # waits for the database first, as pods start with it
    data = load_data(config.data)
    check_batch(config.train, data)
    models = model_files(config, data)  # baselines and references: a bad file fails now
    worker = Worker(config, url, arg_study_name(args, config), index, checkpoint_dir=checkpoints)
    stop_on_sigterm(worker.stop)  # preempted: checkpoint, hand the trial back, exit 143
    metrics = None
    if port is not None or gateway is not None:  # served, pushed at the end, or both
        metrics = WorkerMetrics(
            worker.study.study_name, data.fingerprint, worker.worker, config.objectives
        )
        worker.metrics = metrics
    if metrics is not None and port is not None:
        try:
            served = metrics.serve(port, "127.0.0.1" if port_file else "0.0.0.0")
        except OSError as exc:  # taken since the check above
            raise UsageError(f"metrics port {port}: not free ({exc.strerror})") from None
        if port_file:  # the pod's parent merges it into the pod's endpoint
            write_atomic(port_file, lambda tmp: tmp.write_text(str(served), encoding="utf-8"))
        logs.event("metrics_served", f"metrics on :{served}/metrics", port=served)
    logs.bind(study=worker.study.study_name, worker=worker.worker)
    logs.event("worker_started", f"worker {worker.worker} on study {worker.study.study_name}")
    ran = worker.run(data)
    if config.select.verify and not worker.stop.is_set():
        ran += _run_retrains(worker, models, data, out_dir_of(args, config) / "verified")
    done = "stopped" if worker.stop.is_set() else "done"
    line = f"worker {worker.worker} {done}: {ran} trials"
    logs.event("worker_finished", line, trials=ran, stopped=worker.stop.is_set())
    if metrics is not None:
        push_final(metrics.registry, "worker", worker.study.study_name, str(index))
        if metrics.port is not None:  # let Prometheus scrape the last values
            worker.stop.wait(config.study.metrics_linger_s)
        metrics.shutdown()
    return EXIT_STOPPED if worker.stop.is_set() else EXIT_OK


def _run_retrains(
    worker: Worker, models: dict[str, ModelSpec], data: Dataset, weights_dir: Path
) -> int:
    """The search is done: queue the verification plan (unless another worker did) and
    run retrains until none is left (job.search.retrain); returns how many this worker ran."""
    from job.collect.retrains import ensure_plan, plan_retrains
    from job.search.retrain import RetrainTask, retrain_data, verify_study_name
    from job.search.worker import Worker

    config, store = worker.config, worker.store
    name = verify_study_name(worker.study.study_name)
    index = settings.current().worker_index()
    retrainer = Worker(
        config, store, name, index, worker.metrics, worker.train_fn, worker.log,
        worker.checkpoint_dir, task=RetrainTask.opener(weights_dir),
    )  # fmt: skip
    retrainer.stop = worker.stop  # one SIGTERM stops either loop
    trials = store.persist(lambda: worker.study.get_trials(deepcopy=False), "reading")
    _, plan = plan_retrains(trials, config, models)
    queued = store.persist(lambda: ensure_plan(retrainer.study, store, plan), "queueing")
    print(f"verification: {len(plan)} retrains in the plan, {queued} queued here", flush=True)
    return retrainer.run(retrain_data(data))


def cmd_run(args: argparse.Namespace) -> int:
    """Local: N worker processes on one study, then collect."""
    from job.run.local import RunOptions, password_on_command_line
    from job.storage import check_storage, fresh_study, hold_run_folder

    # SIGTERM: exit 143 (job.cli.main); once the workers run, they are stopped first (job.run.local)
    config = load_config(args.config, args.set)
    settings.current().pushgateway()  # the workers' and the collector's push: a bad one fails now
    checkpoint_dir_of(args, config)
    if args.metrics_port is not None:  # worker i serves on --metrics-port + i
        last = args.metrics_port + args.workers - 1
        if last > 65535:
            raise UsageError(f"--metrics-port: {args.workers} workers need ports up to {last}")
        for port in range(args.metrics_port, last + 1):
            check_port_free(port, "--metrics-port")
    data = load_data(config.data)
    check_batch(config.train, data)  # bad data fails here, once
    models = model_files(config, data)
    out = out_dir_of(args, config)
    url = storage_url_of(args, config)
    if warning := password_on_command_line(args.storage):
        print(warning, file=sys.stderr, flush=True)
    check_storage(url)  # a damaged journal, a foreign schema: refused before anything is made
    hold_run_folder(home_of(args, config))  # one run per --out: a second one is refused here
    if args.fresh and is_version(args, config):
        raise UsageError(
            f"--fresh: {arg_study_name(args, config)} is a version of {config.study.name}, whose "
            "journal holds every version: it is not deleted (delete its folder yourself)"
        )
    if args.fresh and url.startswith(JOURNAL):  # refused while another process holds it
        later = _later_versions(url, config)
        fresh_study(url)
        from job.collect.pipeline import clear_outputs  # onnx, matplotlib: not for workers

        clear_outputs(out)
        for name in later:  # the journal held them too: their folders go with it
            shutil.rmtree(out / name, ignore_errors=True)
        if later:
            print(f"--fresh: deleted the later versions too: {', '.join(later)}", flush=True)
    elif args.fresh:
        print(f"--fresh: {redact(url)} is no embedded journal; its study is kept", flush=True)
    from job.search.studies import check_existing_study_data

    check_existing_study_data(url, config, arg_study_name(args, config), data)  # data changed?
    logs.bind(study=arg_study_name(args, config))
    options = RunOptions(
        Path(args.config), args.workers, out, url, arg_study_name(args, config), args.metrics_port,
        home=home_of(args, config), overrides=tuple(args.set),
    )  # fmt: skip
    return run_and_collect(config, options, models, data)


def run_and_collect(
    config: Config, options: RunOptions, models: dict[str, ModelSpec], data: Dataset
) -> int:
    """`run`'s (and `research`'s) work once everything is checked: the workers
    (job.run.local), then the collector (job.collect.pipeline); the exit code of both."""
    from job.collect.pipeline import collect
    from job.run.local import run_local, study_after_run

    code = run_local(config, options)
    # one read for every file of the collector, once the database answers (an outage)
    study, trials = study_after_run(config, options)
    ok = collect(study, config, options.storage, models, data, options.out_dir, trials)
    if code == EXIT_OK and not ok:
        code = EXIT_ERROR
    # a worker's bad input (every trial failing alike: exit 2) is the run's bad input too
    return code if code in (EXIT_OK, EXIT_BAD_INPUT) else EXIT_ERROR


def _later_versions(url: str, config: Config) -> list[str]:
    """The versions >= 2 of study.name in the journal `run --fresh` is about to delete."""
    from job.search.versions import versions
    from job.storage import open_storage, study_exists

    if not study_exists(url, config.study.name):
        return []
    return [name for n, name in versions(open_storage(url, config), config.study.name) if n > 1]


def cmd_collect(args: argparse.Namespace) -> int:
    """The collector's pipeline (job.collect.pipeline) on the study, once it is there,
    checked and (--wait) its budget met."""
    from job.collect.pipeline import collect
    from job.collect.results import wait_for_budget
    from job.search.studies import check_study_data, open_study
    from job.storage import wait_for_study

    config = load_config(args.config, args.set)
    settings.current().pushgateway()  # a bad SMS_PUSHGATEWAY fails now, not after the selection
    out = out_dir_of(args, config)
    check_folder(out, "--out")
    data = load_data(config.data)  # the test split: ONNX exports are verified on it
    models = model_files(config, data)  # a bad baseline file fails now
    url, name = storage_url_of(args, config), arg_study_name(args, config)
    start = time.monotonic()
    # --wait: the workers may not have created the study yet; it is waited for, not made
    if args.wait and not wait_for_study(url, name, args.timeout):
        print(f"error: study {name!r} did not appear within {args.timeout}s", file=sys.stderr)
        return EXIT_ERROR
    study = open_study(config, url, name, create=False)  # a missing study: exit 2
    check_study_data(study, data, config)  # exports verified on other data mean nothing
    logs.bind(study=name)
    left = None if args.timeout is None else max(0.0, args.timeout - (time.monotonic() - start))
    if args.wait and not wait_for_budget(study, config, timeout_s=left):
        print(f"error: the budget was not met within {args.timeout}s", file=sys.stderr)
        return EXIT_ERROR
    if args.wait:  # the first worker may have recorded the study's data only meanwhile
        check_study_data(study, data, config)
    left = None if args.timeout is None else max(0.0, args.timeout - (time.monotonic() - start))
    done = collect(study, config, url, models, data, out, wait=args.wait, timeout_s=left)
    return EXIT_OK if done else EXIT_ERROR
