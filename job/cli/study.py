"""Verbs that read or serve a study: `status`, `research`, `dashboard`, `exporter`,
`repair-journal`. None imports torch unless it trains (research without --dry-run warm-starts
from the data)."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from job import logs, settings
from job.cli.common import (
    arg_study_name,
    check_folder,
    home_of,
    out_dir_of,
    storage_url_of,
    study_of,
)
from job.config import Config, config_fingerprint, load_config
from job.errors import EXIT_ERROR, EXIT_OK, UsageError
from job.storage import ARTIFACTS, JOURNAL, redact
from job.urls import redact_url


def cmd_status(args: argparse.Namespace) -> int:
    """Trials by state, best values, front size, rate and ETA; of the latest version of
    study.name unless --study or SMS_STUDY names one, with the versions' lineage."""
    from job.collect.results import status_report
    from job.search.versions import lineage_text, versions
    from job.storage import open_storage, study_exists

    config = load_config(args.config, args.set)
    url, base = storage_url_of(args, config), config.study.name
    lineage = ""
    if study_exists(url, base):  # else nothing is opened: a wrong folder leaves no file
        storage = open_storage(url, config)
        found = versions(storage, base)
        lineage = lineage_text(storage, found)
        if not args.study and not settings.current().study_name():
            args.study = found[-1][1]  # the latest version
    study, url = study_of(args, config, create=False)  # a missing study: exit 2, nothing made
    print(f"storage {redact(url)}")
    print(status_report(study, config))
    if lineage:
        print(lineage)
    return EXIT_OK


def cmd_research(args: argparse.Namespace) -> int:
    """A new study version when the data, config or code changed (job.collect.research); run here
    like `run`, or launched as Jobs (--launch); unchanged: nothing at all."""
    from job.cli.search import run_and_collect
    from job.collect.drift import decision_registry, write_decision_metrics
    from job.collect.research import (
        NEW_VERSION,
        UNCHANGED,
        research,
        write_research_json,
    )
    from job.collect.retrains import model_files
    from job.ml.data import load_data
    from job.ml.train import check_batch
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
    config = load_config(args.config, args.set)
    settings.current().pushgateway()  # a bad SMS_PUSHGATEWAY fails now
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
    wait_for_database(url, settings.current().db_wait_s())
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
        launched = _launch(decision.study, decision.version, config)
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
        Path(args.config), args.workers, out, url, decision.study, args.metrics_port, home=home,
        overrides=tuple(args.set),
    )  # fmt: skip
    return run_and_collect(config, options, models, data)


def _launch(study: str, version: int, config: Config) -> list[str]:
    """The version's worker and collector Jobs (job.run.launch); a setup problem (no Role,
    no template CronJob) is bad input, exit 2."""
    from job.run.launch import LaunchDownError, LaunchError, job_deadlines, launch

    try:
        lines = launch(study, version, job_deadlines(config))
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
        url = storage_url_of(args, load_config(args.config, args.set))
    else:
        url = args.storage or settings.current().storage_url() or ""
        if not url and args.out:
            url = JOURNAL + str((Path(args.out) / DEFAULT_JOURNAL).resolve())
        if not url:
            raise UsageError(
                "dashboard: no storage: give --storage, --config or --out, "
                "or set OPTUNA_STORAGE or POSTGRES_HOST and its POSTGRES_* companions"
            )
        wait_for_database(url, settings.current().db_wait_s())
    if url.startswith(JOURNAL) and not Path(url[len(JOURNAL) :]).is_file():
        raise UsageError(f"dashboard: no study journal at {url[len(JOURNAL) :]}")
    return url


def cmd_dashboard(args: argparse.Namespace) -> int:
    """optuna-dashboard on the study's storage until SIGTERM (exit 0) or Ctrl-C."""
    from job.serve.dashboard import address_problem, bind, serve_dashboard

    port = settings.current().dashboard_port() if args.port is None else args.port
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

    config = load_config(args.config, args.set)
    url = resolve_storage(args.storage, config, home_of(args, config))
    check_storage_url(url)  # a malformed URL is bad input; an unreachable one is a reading
    if url.startswith(JOURNAL) and not Path(url[len(JOURNAL) :]).parent.is_dir():
        raise UsageError(f"exporter: no folder {Path(url[len(JOURNAL) :]).parent} for the journal")
    study = arg_study_name(args, config) if args.study or settings.current().study_name() else None
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
    """The artifact store the dashboard serves: --artifacts, else `artifacts/` in the
    folder `collect` writes to when it has written one there: the study's own output
    folder with --config (`runs/<study>` by default, as `run` and `collect` use it: `make
    dashboard`), else --out. A given folder that is not there yet (a pod starting before
    the collector) is fine; a file is not."""
    if args.artifacts is None:
        if args.config:
            folder: Path | None = out_dir_of(args, load_config(args.config, args.set))
        else:
            folder = Path(args.out) if args.out else None
        found = folder / ARTIFACTS if folder is not None else None
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


def effective_config(config: Config) -> tuple[dict[str, Any], list[str]]:
    """`config` as the verbs run it, as JSON-able data: the environment's overrides
    applied (storage URL, study name, metrics port), every storage URL redacted; and the
    names of the environment variables that changed something."""
    doc = config.model_dump(mode="json")
    study, changed = doc["study"], list[str]()
    env_url = settings.current().storage_url()
    if env_url is not None:
        study["storage"], changed = env_url, [*changed, "storage (OPTUNA_STORAGE/POSTGRES_*)"]
    if (name := settings.current().study_name()) is not None:
        study["name"], changed = name, [*changed, settings.SMS_STUDY]
    port = settings.current().metrics_port(config.study.metrics_port)
    if port != config.study.metrics_port:
        study["metrics_port"], changed = port, [*changed, settings.SMS_METRICS_PORT]
    if study["storage"] is not None:
        study["storage"] = redact_url(study["storage"])
    return doc, changed


def cmd_config(args: argparse.Namespace) -> int:
    """`config show`: the effective config as YAML, with what set it."""
    import yaml

    config = load_config(args.config, args.set)
    doc, changed = effective_config(config)
    print(f"# {args.config}: every default filled in")
    for assignment in args.set:
        print(f"# --set {assignment.partition('=')[0]}")
    for name in changed:
        print(f"# from the environment: {name}")
    print(f"# fingerprint of what changes results: {config_fingerprint(config)}")
    print(yaml.safe_dump(doc, sort_keys=False), end="")
    return EXIT_OK
