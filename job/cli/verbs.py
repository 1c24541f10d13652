"""What each verb does: `cmd_<verb>(args) -> exit code`, and the checks they share.

`job.cli.main` declares the verbs (their arguments, as a table) and maps errors to exit
codes; these functions load the config, check everything that can be checked before
the first trial (folders, ports, device, data), then run the role's module. Exit codes:
0 success; 2 bad input, one line naming the key, flag, file or URL; 1 anything else;
143 a worker stopped by SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import torch

from job import __version__, logs, settings
from job.config import AugmentConfig, Config, TrainConfig, load_config
from job.errors import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_OK, EXIT_STOPPED, UsageError
from job.files import write_atomic
from job.ml.data import Dataset, load_data
from job.ml.model import ModelError, ModelSpec, load_model_spec, model_spec_yaml
from job.ml.train import (
    EpochRecord,
    TrainError,
    TrainResult,
    check_batch,
    check_checkpoint_dir,
    check_fit,
    resolve_device,
    train,
)
from job.search.retrain import model_files
from job.storage import ARTIFACTS, JOURNAL, redact

if TYPE_CHECKING:  # imported where used: `train` and `status` need no Optuna worker
    from job.run.local import RunOptions
    from job.search.worker import Worker


def _print_epoch(record: EpochRecord) -> None:
    print(
        f"epoch {record.epoch:>3}  loss {record.train_loss:.4f}  "
        f"val acc {record.val_accuracy:.4f}  lr {record.lr:.4f}  {record.seconds:.1f}s",
        flush=True,
    )


def _summary(result: TrainResult) -> str:
    return (
        f"test accuracy {result.test_accuracy:.4f}  macro-F1 {result.test_f1:.4f}  "
        f"val accuracy {result.val_accuracy:.4f}\n"
        f"params {result.params:,}  MACs {result.macs:,}  "
        f"latency {result.latency_ms_b1:.3f} ms/img (b1), "
        f"{result.latency_ms_b256:.4f} ms/img (b256)\n"
        f"{result.train_images_per_s:,.0f} train images/s on {result.device}, "
        f"{result.seconds:.1f}s in all"
    )


def check_folder(path: Path, key: str) -> None:
    """`UsageError` naming `key` unless `path` is a folder this process may write into, or
    could be created as one (its nearest existing ancestor is a writable folder). Nothing
    is created: a verb checks its output folders before its first trial or epoch."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    within = "" if probe == path else f" (making {path})"
    if not probe.is_dir():
        raise UsageError(f"{key}: {probe} is not a folder{within}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{key}: {probe} is not writable{within}")


def check_port_free(port: int, key: str) -> None:
    """`UsageError` naming `key` when nothing could serve on `port` (0: any free one)
    now: the metrics server binds all addresses, with SO_REUSEADDR as it does."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as exc:
            raise UsageError(f"{key}: port {port} is not free ({exc.strerror})") from None


def read_card(path: str) -> dict[str, Any]:
    """A selected model's card.json (`collect` writes it); `UsageError` naming the file
    when it cannot be read or lacks what retraining needs."""
    from job.files import MAX_INT_DIGITS, json_problem

    try:
        card = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"--card: {path}: cannot read ({exc.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError(f"--card: {path}: not a card (not JSON)") from None
    except RecursionError:
        raise UsageError(f"--card: {path}: not a card (nested too deeply)") from None
    except ValueError:  # Python's limit on an integer's digits
        raise UsageError(
            f"--card: {path}: not a card (an integer of more than {MAX_INT_DIGITS} digits)"
        ) from None
    if (problem := json_problem(card)) is not None:  # deep nesting, Infinity, NaN
        raise UsageError(f"--card: {path}: not a usable card: {problem}")
    need = ("model_yaml", "recipe", "augment", "data_fingerprint")
    missing = [key for key in need if not isinstance(card, dict) or key not in card]
    if missing:
        raise UsageError(f"--card: {path}: not a card (no {', '.join(missing)})")
    return dict(card)


def _from_card(card: dict[str, Any], path: str) -> tuple[ModelSpec, AugmentConfig, TrainConfig]:
    """The card's network, augmentation policy and recipe (seed included): what the
    verification retrain that made its weights trained."""
    import pydantic
    import yaml

    from job.config import describe_errors
    from job.files import yaml_problem
    from job.ml.model import spec_from_yaml
    from job.search.retrain import policy_of

    key = "model_yaml"  # each problem names the card's key at fault, not the config's
    try:
        spec = spec_from_yaml(str(card[key]))
        key = "augment"
        augment = policy_of(card[key])
        key = "recipe"
        recipe = TrainConfig.model_validate(card[key])
    except pydantic.ValidationError as exc:
        problem = describe_errors(exc, key)
    except yaml.YAMLError as exc:
        problem = f"{key}: {yaml_problem(exc)}"
    except (ModelError, ValueError) as exc:
        problem = f"{key}: {(str(exc).splitlines() or ['invalid'])[0]}"
    else:
        return spec, augment, recipe
    raise UsageError(f"--card: {path}: not a usable card: {problem}")


def _card_check(card: dict[str, Any], result: TrainResult) -> str:
    """This run's test accuracy against the card's verified mean ± std."""
    verified = card.get("verified") or {}
    mean, std = verified.get("mean"), verified.get("std")
    if not isinstance(mean, float) or not isinstance(std, float):
        return "card: no verified accuracy to compare with"
    gap = result.test_accuracy - mean
    verdict = "within" if abs(gap) <= std + CARD_TOLERANCE else "OUTSIDE"
    return (
        f"card: verified {mean:.4f} ± {std:.4f}; this run {result.test_accuracy:.4f} "
        f"({gap:+.4f}): {verdict} its std + {CARD_TOLERANCE}"
    )


# How far a rerun may land from the card's mean beyond its std: threads and BLAS builds
# round differently, so a rerun on another machine is close, not bit-identical.
CARD_TOLERANCE = 0.01


def cmd_train(args: argparse.Namespace) -> int:
    """Train one architecture from a model YAML with the config's data and recipe, or
    retrain a selected model from its card (`--card`: its network, augmentation and
    recipe, on train + validation, as verification trained it). Every input is checked
    before the first epoch: config, output folder, model or card, device, data, batch
    size and the network's fit to the data."""
    from job.collect.results import write_json
    from job.search.retrain import retrain_data

    config = load_config(args.config)
    if (args.model is None) == (args.card is None):
        raise UsageError("train: give one of --model or --card")
    if args.out is not None:
        check_folder(Path(args.out), "--out")
    source = args.model or f"--card: {args.card}: model_yaml"
    card = read_card(args.card) if args.card else {}
    if args.card:
        spec, augment, base = _from_card(card, args.card)
    else:
        spec, augment, base = load_model_spec(args.model), config.augment, config.train
    overrides = {"epochs": args.epochs, "device": args.device}
    recipe = base.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    card_key = f"--card: {args.card}: recipe" if args.card else "train"  # where it came from
    resolve_device(recipe.device, "--device" if args.device else f"{card_key}.device")
    data = load_data(config.data)
    if args.card:
        if card["data_fingerprint"] != data.fingerprint:
            print("warning: the data differs from the card's (fingerprint): expect a change")
        data = retrain_data(data)
        print(f"as verification trained it: on train + validation ({len(data.train)} images);")
        print("the epochs' `val acc` is the test split's (nothing is selected on it)")
    check_batch(recipe, data, f"{card_key}.batch_size")
    try:
        measured = check_fit(spec, data)
    except TrainError as exc:
        raise ModelError(f"{source}: {exc.message}") from None
    print(
        f"data {data.name}: {len(data.train)} train / {len(data.val)} val / "
        f"{len(data.test)} test, {data.num_classes} classes, fingerprint {data.fingerprint[:12]}",
        flush=True,
    )
    result = train(spec, augment, recipe, data, on_epoch=_print_epoch, measured=measured)
    print(_summary(result))
    if args.card:
        print(_card_check(card, result))
    if args.out is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        yaml_text = model_spec_yaml(spec)
        write_atomic(out / "model.yaml", lambda tmp: tmp.write_text(yaml_text, encoding="utf-8"))
        metrics = asdict(result) | {"data_fingerprint": data.fingerprint, "version": __version__}
        write_json(out / "metrics.json", metrics)  # strict JSON: an unmeasured latency is null
        print(f"wrote {out / 'model.yaml'} and {out / 'metrics.json'}")
    return EXIT_OK


def cmd_augment_preview(args: argparse.Namespace) -> int:
    """Every op of the policy list at three magnitudes, on real photos and data images."""
    from job.ml.preview import write_preview

    config = load_config(args.config)
    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out: {out} is a folder; give the PNG file to write")
    check_folder(out.parent, "--out")
    path = write_preview(config, out, size=args.size)
    print(f"wrote {path}")
    return EXIT_OK


def _study_name(args: argparse.Namespace, config: Config) -> str:
    """--study, then SMS_STUDY (the Jobs `research --launch` makes), then study.name."""
    from job.config import study_name_problem

    name = getattr(args, "study", None) or settings.study_name()
    if name and not getattr(args, "study", None) and (problem := study_name_problem(name)):
        raise settings.EnvError(f"{settings.SMS_STUDY}: {problem}")
    return str(name or config.study.name)


def _is_version(args: argparse.Namespace, config: Config) -> bool:
    """Whether the study is version >= 2 of the config's (job.collect.research)."""
    from job.search.versions import version_number

    return (version_number(config.study.name, _study_name(args, config)) or 1) > 1


def _home(args: argparse.Namespace, config: Config) -> Path:
    """The folder of the embedded study journal: --out, else runs/<study>, where every
    version of study.name shares study.name's (one journal holds them all)."""
    if getattr(args, "out", None):
        return Path(args.out)
    name = config.study.name if _is_version(args, config) else _study_name(args, config)
    return Path("runs") / name


def _out_dir(args: argparse.Namespace, config: Config) -> Path:
    """The study's own folder (results, checkpoints, retrained weights): job.collect.research's
    `version_folder` of the home."""
    from job.search.versions import version_folder

    return version_folder(_home(args, config), config.study.name, _study_name(args, config))


def _storage_url(args: argparse.Namespace, config: Config) -> str:
    """The storage URL (flag, environment, config, embedded journal), once the database
    behind it accepts connections: every verb that opens a storage waits here first, up
    to SMS_DB_WAIT_S (pods start before PostgreSQL is ready)."""
    from job.storage import resolve_storage, wait_for_database

    url = resolve_storage(args.storage, config, _home(args, config))
    wait_for_database(url, settings.db_wait_s())
    return url


def _study(
    args: argparse.Namespace, config: Config, create: bool = True
) -> tuple[optuna.Study, str]:
    """The study and its storage URL; with `create` False (status, collect) a study that
    is not there is an error (exit 2) and nothing is created."""
    from job.search.worker import open_study

    url = _storage_url(args, config)
    return open_study(config, url, _study_name(args, config), create=create), url


def _checkpoint_dir(args: argparse.Namespace, config: Config) -> Path:
    """Where a worker checkpoints a preempted trial, once what search and run check before
    any storage is opened passes: that folder writable, the training device there, and
    free space where the study writes (its journal, checkpoints, logs)."""
    from job.storage import check_free_space

    path = Path(config.study.checkpoint_dir or _out_dir(args, config) / "checkpoints")
    key = "study.checkpoint_dir" if config.study.checkpoint_dir else "--out"
    check_folder(path, key)
    check_checkpoint_dir(path, key)  # written for real: permission bits do not tell
    check_free_space(path, key)  # a full disk tears a journal's records and checkpoints
    check_free_space(_home(args, config), "--out")
    resolve_device(config.train.device)
    return path


def cmd_search(args: argparse.Namespace) -> int:
    """One worker: trials until the study's budget is met. With K > 1 worker processes
    per pod (--procs, else SMS_WORKERS_PER_POD) the pod's K workers, as child processes of
    this one (job.run.pod), once what can be checked here passes."""
    from job.search.worker import Worker, stop_on_sigterm
    from job.serve.metrics import WorkerMetrics, push_final

    procs = getattr(args, "procs", None) or settings.workers_per_pod()  # the flag wins
    config = load_config(args.config)
    gateway = settings.pushgateway()  # a bad SMS_PUSHGATEWAY fails now, not after the search
    checkpoints = _checkpoint_dir(args, config)
    threads = settings.torch_threads()
    port = settings.metrics_port(config.study.metrics_port)
    if port is not None:
        from_env = settings.metrics_port(None) == port
        check_port_free(port, settings.SMS_METRICS_PORT if from_env else "study.metrics_port")
    index = settings.worker_index()
    if procs > 1:
        from job.run.pod import PodOptions, run_pod

        _study_name(args, config)  # a bad SMS_STUDY fails here, once
        given = [("--study", args.study), ("--out", args.out)]  # passed on to each child
        words = tuple(word for flag, value in given if value for word in (flag, value))
        pod = PodOptions(Path(args.config), procs, index, threads, port, words, args.storage)
        return run_pod(pod)
    if threads is not None:
        torch.set_num_threads(threads)
    port_file = getattr(args, "metrics_port_file", None)  # a child of job.run.pod
    url = _storage_url(args, config)  # waits for the database first, as pods start with it
    data = load_data(config.data)
    check_batch(config.train, data)
    models = model_files(config, data)  # baselines and references: a bad file fails now
    worker = Worker(config, url, _study_name(args, config), index, checkpoint_dir=checkpoints)
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
        ran += _run_retrains(worker, models, data, _out_dir(args, config) / "verified")
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
    from job.search.retrain import ensure_plan, plan_retrains, retrain_data, verify_study_name
    from job.search.worker import Worker
    from job.storage import persist

    config, url = worker.config, worker.storage_url
    name = verify_study_name(worker.study.study_name)
    index = settings.worker_index()
    retrainer = Worker(
        config, url, name, index, worker.metrics, worker.train_fn, worker.log,
        worker.checkpoint_dir, retrain=True, weights_dir=weights_dir,
    )  # fmt: skip
    retrainer.stop = worker.stop  # one SIGTERM stops either loop
    deadline = config.study.db_outage_deadline_s
    trials = persist(lambda: worker.study.get_trials(deepcopy=False), deadline, "reading", url)
    _, plan = plan_retrains(trials, config, models)
    queued = persist(lambda: ensure_plan(retrainer.study, url, plan), deadline, "queueing", url)
    print(f"verification: {len(plan)} retrains in the plan, {queued} queued here", flush=True)
    return retrainer.run(retrain_data(data))


def cmd_run(args: argparse.Namespace) -> int:
    """Local: N worker processes on one study, then collect."""
    from job.run.local import RunOptions, password_on_command_line
    from job.storage import check_storage, fresh_study, hold_run_folder

    # SIGTERM: exit 143 (job.cli.main); once the workers run, they are stopped first (job.run.local)
    config = load_config(args.config)
    settings.pushgateway()  # the workers' and the collector's push: a bad one fails now
    _checkpoint_dir(args, config)
    if args.metrics_port is not None:  # worker i serves on --metrics-port + i
        last = args.metrics_port + args.workers - 1
        if last > 65535:
            raise UsageError(f"--metrics-port: {args.workers} workers need ports up to {last}")
        for port in range(args.metrics_port, last + 1):
            check_port_free(port, "--metrics-port")
    data = load_data(config.data)
    check_batch(config.train, data)  # bad data fails here, once
    models = model_files(config, data)
    out = _out_dir(args, config)
    url = _storage_url(args, config)
    if warning := password_on_command_line(args.storage):
        print(warning, file=sys.stderr, flush=True)
    check_storage(url)  # a damaged journal, a foreign schema: refused before anything is made
    hold_run_folder(_home(args, config))  # one run per --out: a second one is refused here
    if args.fresh and _is_version(args, config):
        raise UsageError(
            f"--fresh: {_study_name(args, config)} is a version of {config.study.name}, whose "
            "journal holds every version: it is not deleted (delete its folder yourself)"
        )
    if args.fresh and url.startswith(JOURNAL):  # refused while another process holds it
        later = _later_versions(url, config)
        fresh_study(url)
        clear_outputs(out)
        for name in later:  # the journal held them too: their folders go with it
            shutil.rmtree(out / name, ignore_errors=True)
        if later:
            print(f"--fresh: deleted the later versions too: {', '.join(later)}", flush=True)
    elif args.fresh:
        print(f"--fresh: {redact(url)} is no embedded journal; its study is kept", flush=True)
    from job.search.worker import check_existing_study_data

    check_existing_study_data(url, config, _study_name(args, config), data)  # data changed?
    logs.bind(study=_study_name(args, config))
    options = RunOptions(
        Path(args.config), args.workers, out, url, _study_name(args, config), args.metrics_port,
        home=_home(args, config),
    )  # fmt: skip
    return _run_and_collect(config, options, models, data)


def _later_versions(url: str, config: Config) -> list[str]:
    """The versions >= 2 of study.name in the journal `run --fresh` is about to delete."""
    from job.collect.research import versions
    from job.storage import open_storage, study_exists

    if not study_exists(url, config.study.name):
        return []
    return [name for n, name in versions(open_storage(url, config), config.study.name) if n > 1]


def _run_and_collect(
    config: Config, options: RunOptions, models: dict[str, ModelSpec], data: Dataset
) -> int:
    """`run`'s work once everything is checked: the workers, then the collector."""
    from job.collect.results import collect
    from job.run.local import run_local, study_after_run

    code = run_local(config, options)
    # one read for every file of the collector, once the database answers (an outage)
    study, trials = study_after_run(config, options)
    out = options.out_dir
    logs.event("collected", _collect_line(collect(study, config, out, trials), out))
    selected = _select(study, trials, config, options.storage, models, data, out)
    if code == EXIT_OK and not selected:
        code = EXIT_ERROR
    # a worker's bad input (every trial failing alike: exit 2) is the run's bad input too
    return code if code in (EXIT_OK, EXIT_BAD_INPUT) else EXIT_ERROR


# What a run's study leaves in its folder besides the journal: the picks, the retrained
# weights, the artifact store, the checkpoints. `run --fresh` deletes them with the study,
# so that nothing of the old study is read as the new one's.
STUDY_OUTPUTS = ("selected", "verified", ARTIFACTS, "checkpoints")


def clear_outputs(out: Path) -> None:
    """Delete the folders of STUDY_OUTPUTS in `out` (only those: `out` may be any folder)."""
    for name in STUDY_OUTPUTS:
        shutil.rmtree(out / name, ignore_errors=True)


def _select(
    study: optuna.Study,
    trials: list[optuna.trial.FrozenTrial],
    config: Config,
    url: str,
    models: dict[str, ModelSpec],
    data: Dataset,
    out: Path,
    wait: bool = False,
    timeout_s: float | None = None,
) -> bool:
    """The selection files (job.collect.picks) of `trials`; False when something asked for
    is missing (a retrain failed, weights not found). Once the budget is met the
    verification plan is queued for the workers; with `wait`, waited for (`timeout_s`:
    None for ever). Then each pick is exported and verified, uploaded, and the report
    written (job.collect.publish)."""
    from job.collect.picks import selection_text, write_selection
    from job.collect.publish import export_text, publish
    from job.search.retrain import ensure_plan, plan_retrains, verify_study_name, wait_for_retrains
    from job.search.worker import open_study

    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    finished = complete >= config.study.budget
    planned = plan_retrains(trials, config, models)
    verify_trials: list[optuna.trial.FrozenTrial] = []
    if config.select.verify and finished:
        name = verify_study_name(study.study_name)
        verify = open_study(config, url, name, verify=True)
        ensure_plan(verify, url, planned[1])
        if wait and not wait_for_retrains(verify, url, timeout_s=timeout_s):
            print(f"error: the retrains did not finish within {timeout_s}s", file=sys.stderr)
            return False
        verify_trials = verify.get_trials(deepcopy=False)
    report = write_selection(trials, verify_trials, planned, config, study.study_name, out)
    drift = _drift(study, trials, config, data, out)
    report["problems"] += publish(out, study, trials, config, data, report)
    print(selection_text(report))
    if exported := export_text(out, report["picks"]):
        print(exported)
    if config.select.verify and not finished:
        print(f"verification waits for the budget ({complete}/{config.study.budget} COMPLETE)")
    elif report["pending"]:
        print(
            "the retrains run on the workers (`python -m job search`); collect again, "
            "or `collect --wait`, for their results"
        )
    ok = not report["problems"] and not report["failed"]
    _push_collect(config, url, study.study_name, ok, len(report["picks"]), drift)
    return ok


def _push_collect(
    config: Config, url: str, name: str, ok: bool, picks: int, drift: dict[str, Any] | None
) -> None:
    """With SMS_PUSHGATEWAY: the study's final figures (the exporter's families, read now),
    the drift gauges and this collect's outcome, as the group {role=collect, study}."""
    from prometheus_client import CollectorRegistry, Gauge

    from job.collect.drift import drift_registry
    from job.serve.exporter import study_registry
    from job.serve.metrics import Together, push_final

    if settings.pushgateway() is None:
        return
    mine, now = CollectorRegistry(), time.time()
    outcome = [
        ("sms_collect_timestamp_seconds", "When this collect ran (Unix time).", now),
        ("sms_collect_success", "1: every pick selected, exported and verified.", float(ok)),
        ("sms_collect_picks", "Models this collect picked.", float(picks)),
    ]
    if ok:  # absent after a failed collect: its group replaced the last good one's
        outcome.append(("sms_collect_last_success_timestamp_seconds", "When it succeeded.", now))
    for metric, doc, value in outcome:
        Gauge(metric, doc, ["study"], registry=mine).labels(study=name).set(value)
    parts = [study_registry(config, url, name, min_interval_s=0.0), mine]
    if drift is not None:
        parts.append(drift_registry(drift))
    push_final(Together(*parts), "collect", name)


def _drift(
    study: optuna.Study,
    trials: list[optuna.trial.FrozenTrial],
    config: Config,
    data: Dataset,
    out: Path,
) -> dict[str, Any] | None:
    """Where this collector writes (a later version's drift report finds the picks there),
    and, for a version `research` made, its drift report against its parent (returned)."""
    from job.collect.drift import drift_report, drift_text, write_drift, write_drift_metrics
    from job.collect.research import RESULTS_DIR

    if study.user_attrs.get(RESULTS_DIR) != str(out.resolve()):  # no write per collect
        study.set_user_attr(RESULTS_DIR, str(out.resolve()))
    report = drift_report(study, trials, config, data, out)
    if report is not None:
        write_drift(out, report)
        write_drift_metrics(out, report)
        print(drift_text(report))
    return report


def _collect_line(summary: dict[str, Any], out: Path) -> str:
    best = summary.get("best_test_accuracy")
    shown = f"{best:.4f}" if isinstance(best, float) else "—"
    counts = ", ".join(f"{n} {state}" for state, n in summary["trials"].items())
    files = ", ".join(str(out / name) for name in summary["files"])
    return (
        f"trials: {counts or 'none'}; Pareto front of {summary['front_size']}; "
        f"best test accuracy {shown}\nwrote {files}"
    )


def cmd_collect(args: argparse.Namespace) -> int:
    """Pareto front, plot and summary of the study."""
    from job.collect.results import collect, wait_for_budget
    from job.search.study import snapshot
    from job.search.worker import check_study_data, open_study
    from job.storage import wait_for_study

    config = load_config(args.config)
    settings.pushgateway()  # a bad SMS_PUSHGATEWAY fails now, not after the selection
    out = _out_dir(args, config)
    check_folder(out, "--out")
    data = load_data(config.data)  # the test split: ONNX exports are verified on it
    models = model_files(config, data)  # a bad baseline file fails now
    url, name = _storage_url(args, config), _study_name(args, config)
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
    trials = snapshot(study, config)  # one read for every file of the collector
    logs.event("collected", _collect_line(collect(study, config, out, trials), out))
    left = None if args.timeout is None else max(0.0, args.timeout - (time.monotonic() - start))
    done = _select(study, trials, config, url, models, data, out, args.wait, left)
    return EXIT_OK if done else EXIT_ERROR


def cmd_status(args: argparse.Namespace) -> int:
    """Trials by state, best values, front size, rate and ETA; of the latest version of
    study.name unless --study or SMS_STUDY names one, with the versions' lineage."""
    from job.collect.research import lineage_text, versions
    from job.collect.results import status_report
    from job.storage import open_storage, study_exists

    config = load_config(args.config)
    url, base = _storage_url(args, config), config.study.name
    lineage = ""
    if study_exists(url, base):  # else nothing is opened: a wrong folder leaves no file
        storage = open_storage(url, config)
        found = versions(storage, base)
        lineage = lineage_text(storage, found)
        if not args.study and not settings.study_name():
            args.study = found[-1][1]  # the latest version
    study, url = _study(args, config, create=False)  # a missing study: exit 2, nothing made
    print(f"storage {redact(url)}")
    print(status_report(study, config))
    if lineage:
        print(lineage)
    return EXIT_OK


def cmd_research(args: argparse.Namespace) -> int:
    """A new study version when the data, config or code changed (job.collect.research); run here
    like `run`, or launched as Jobs (--launch); unchanged: nothing at all."""
    from job.collect.drift import decision_registry, write_decision_metrics
    from job.collect.research import (
        NEW_VERSION,
        UNCHANGED,
        research,
        write_research_json,
    )
    from job.run.local import RunOptions
    from job.search.versions import version_folder
    from job.search.worker import stop_on_sigterm
    from job.serve.metrics import push_final
    from job.storage import resolve_storage, wait_for_database

    stop_on_sigterm()
    if getattr(args, "study", None):  # accepted by the parser only to say this
        raise UsageError(
            f"--study {args.study}: research picks its study itself, the next version of "
            "the config's study.name; to research another study, set study.name"
        )
    config = load_config(args.config)
    settings.pushgateway()  # a bad SMS_PUSHGATEWAY fails now
    home = Path(args.out) if args.out else Path("runs") / config.study.name
    check_folder(home, "--out")
    url = resolve_storage(args.storage, config, home)
    if args.launch and not url.startswith("postgresql"):  # pods cannot open this machine's file
        raise UsageError(
            f"--launch: the version's pods need the cluster's PostgreSQL (OPTUNA_STORAGE or "
            f"POSTGRES_*), not {redact(url)}"
        )
    data = load_data(config.data)  # its fingerprint decides; bad data fails here
    check_batch(config.train, data)
    models = model_files(config, data)
    wait_for_database(url, settings.db_wait_s())
    logs.bind(study=config.study.name)
    decision = research(config, url, data, dry_run=args.dry_run)
    logs.event(
        "research_decided", decision.line(), decision=decision.decision,
        version=decision.version, version_study=decision.study,
    )  # fmt: skip
    if args.dry_run:
        print("--dry-run: nothing created, launched or written")
        return EXIT_OK
    out = version_folder(home, config.study.name, decision.study)
    launched = None
    if args.launch and decision.decision != UNCHANGED:
        launched = _launch(decision.study, decision.version)
    if decision.decision != UNCHANGED and launched is None:
        print(f"running {decision.study} here; its results go to {out}", flush=True)
    # the latest decision in the home; a new version's own in its folder, for good
    for folder in {home, out} if decision.decision == NEW_VERSION else {home}:
        write_research_json(folder, decision, args.dry_run, launched)
    write_decision_metrics(
        home, config.study.name, decision.study, decision.version, decision.decision
    )
    decided = decision_registry(
        config.study.name, decision.study, decision.version, decision.decision
    )
    push_final(decided, "research", config.study.name)
    if decision.decision == UNCHANGED or launched is not None:
        return EXIT_OK
    options = RunOptions(
        Path(args.config), args.workers, out, url, decision.study, args.metrics_port, home=home
    )
    return _run_and_collect(config, options, models, data)


def _launch(study: str, version: int) -> list[str]:
    """The version's worker and collector Jobs (job.run.launch); a setup problem (no Role,
    no template Job) is bad input, exit 2."""
    from job.run.launch import LaunchDownError, LaunchError, launch

    try:
        lines = launch(study, version)
    except LaunchError as exc:
        raise UsageError(f"--launch: {exc}") from None
    except LaunchDownError as exc:  # the API server unreachable: try again later, exit 1
        print(f"error: --launch: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_ERROR) from None
    for line in lines:
        print(line, flush=True)
    return lines


def _dashboard_url(args: argparse.Namespace) -> str:
    """The dashboard's storage: as the other verbs' with --config; without one, --storage,
    then the environment, then the journal in --out."""
    from job.storage import DEFAULT_JOURNAL, wait_for_database

    if args.config:
        url = _storage_url(args, load_config(args.config))
    else:
        url = args.storage or settings.storage_url() or ""
        if not url and args.out:
            url = JOURNAL + str((Path(args.out) / DEFAULT_JOURNAL).resolve())
        if not url:
            raise UsageError(
                "dashboard: no storage: give --storage, --config or --out, "
                "or set OPTUNA_STORAGE or POSTGRES_HOST and its POSTGRES_* companions"
            )
        wait_for_database(url, settings.db_wait_s())
    if url.startswith(JOURNAL) and not Path(url[len(JOURNAL) :]).is_file():
        raise UsageError(f"dashboard: no study journal at {url[len(JOURNAL) :]}")
    return url


def cmd_dashboard(args: argparse.Namespace) -> int:
    """optuna-dashboard on the study's storage until SIGTERM (exit 0) or Ctrl-C."""
    from job.serve.dashboard import address_problem, bind, serve_dashboard

    port = settings.dashboard_port() if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise UsageError(f"--port: expected 0-65535, got {port}")
    artifacts = _artifact_dir(args)
    url = _dashboard_url(args)
    try:  # bound before the storage is opened: a bad --host or --port is one line, exit 2
        server = bind(args.host, port)
    except OSError as exc:
        raise UsageError(address_problem(exc, args.host, port)) from None
    with server:
        serve_dashboard(server, url, artifacts, args.allow_writes)
    return EXIT_OK


def cmd_exporter(args: argparse.Namespace) -> int:
    """The study's figures for Prometheus, read at each scrape (job.serve.exporter), until
    SIGTERM (exit 0) or Ctrl-C. The database may be down: it says so in sms_storage_up."""
    from job.serve.exporter import study_registry
    from job.serve.metrics import serve_registry
    from job.storage import check_storage_url, resolve_storage

    config = load_config(args.config)
    url = resolve_storage(args.storage, config, _home(args, config))
    check_storage_url(url)  # a malformed URL is bad input; an unreachable one is a reading
    if url.startswith(JOURNAL) and not Path(url[len(JOURNAL) :]).parent.is_dir():
        raise UsageError(f"exporter: no folder {Path(url[len(JOURNAL) :]).parent} for the journal")
    study = _study_name(args, config) if args.study or settings.study_name() else None
    try:
        server, _ = serve_registry(study_registry(config, url, study), args.port, args.host)
    except (OSError, UnicodeError) as exc:  # UnicodeError: a host name IDNA cannot encode
        from job.serve.dashboard import address_problem

        raise UsageError(address_problem(exc, args.host, args.port)) from None
    shown = f"[{args.host}]" if ":" in args.host else args.host
    named = study or f"the latest version of {config.study.name}"
    logs.bind(study=study or config.study.name)
    logs.event(
        "exporter_started",
        f"study exporter on http://{shown}:{server.server_port}/metrics for {named} "
        f"in {redact(url)}",
        port=server.server_port,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: as SIGTERM, exit 0
        stop.wait()
    server.shutdown()
    server.server_close()
    return EXIT_OK


def _artifact_dir(args: argparse.Namespace) -> Path | None:
    """The artifact store the dashboard serves: --artifacts, else `<out>/artifacts` when
    `collect` has written one there. A given folder that is not there yet (a pod starting
    before the collector) is fine; a file is not."""
    if args.artifacts is None:
        found = Path(args.out) / ARTIFACTS if args.out else None
        return found if found is not None and found.is_dir() else None
    path = Path(args.artifacts)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--artifacts: {path} is not a folder")
    if not path.exists():
        print(f"artifacts: {path} is not there yet; `collect` writes it", file=sys.stderr)
    return path


def cmd_repair_journal(args: argparse.Namespace) -> int:
    """A study journal with a damaged line (a record joined to a torn one): every intact
    record kept in order, the damaged lines moved to `<journal>.damaged-<UTC time>`
    (job.storage.repair_journal); refused while a run or search holds the study."""
    from job.storage import repair_journal

    print(repair_journal(Path(args.journal)))
    return EXIT_OK
