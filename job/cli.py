"""The command line: `python -m job VERB …`, one verb per role.

Exit codes (docs/ARCHITECTURE.md): 0 success; 2 bad input (config, data, model YAML, arguments)
with one line naming the key or file and no traceback; 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
import torch

from job import __version__, runtime
from job.config import Config, ConfigError, load_config
from job.data import DataError, load_data
from job.model import ModelError, load_model_spec, model_spec_yaml
from job.runtime import EnvError
from job.storage import JOURNAL, StorageDownError, StorageURLError, redact
from job.train import EpochRecord, TrainError, TrainResult, train

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2
# A worker stopped by SIGTERM before the budget was spent: 128 + 15, as a shell reports it,
# so a Kubernetes Job reruns that pod's index instead of counting it as finished.
EXIT_STOPPED = 143


class UsageError(ValueError):
    """Bad command-line input; exit 2."""


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


def cmd_train(args: argparse.Namespace) -> int:
    """Train one architecture from a model YAML with the config's data and recipe."""
    config = load_config(args.config)
    spec = load_model_spec(args.model)
    if args.epochs is not None and args.epochs < 1:
        raise UsageError(f"--epochs: must be >= 1, got {args.epochs}")
    overrides = {"epochs": args.epochs, "device": args.device}
    recipe = config.train.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    data = load_data(config.data)
    print(
        f"data {data.name}: {len(data.train)} train / {len(data.val)} val / "
        f"{len(data.test)} test, {data.num_classes} classes, fingerprint {data.fingerprint[:12]}",
        flush=True,
    )
    try:
        result = train(spec, config.augment, recipe, data, on_epoch=_print_epoch)
    except TrainError as exc:
        if exc.reason == "invalid_network":
            raise ModelError(f"{args.model}: {exc}") from None
        raise
    print(_summary(result))
    if args.out is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.yaml").write_text(model_spec_yaml(spec), encoding="utf-8")
        metrics = asdict(result) | {"data_fingerprint": data.fingerprint, "version": __version__}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        print(f"wrote {out / 'model.yaml'} and {out / 'metrics.json'}")
    return EXIT_OK


def cmd_augment_preview(args: argparse.Namespace) -> int:
    """Every op of the policy list at three magnitudes, on real photos and data images."""
    from job.preview import write_preview

    config = load_config(args.config)
    path = write_preview(config, Path(args.out), size=args.size)
    print(f"wrote {path}")
    return EXIT_OK


def _out_dir(args: argparse.Namespace, config: Config) -> Path:
    return (
        Path(args.out) if getattr(args, "out", None) else Path("runs") / _study_name(args, config)
    )


def _study_name(args: argparse.Namespace, config: Config) -> str:
    return str(getattr(args, "study", None) or config.study.name)


def _storage_url(args: argparse.Namespace, config: Config) -> str:
    """The storage URL (flag, environment, config, embedded journal), once the database
    behind it accepts connections: every verb that opens a storage waits here first, up
    to SMS_DB_WAIT_S (pods start before PostgreSQL is ready)."""
    from job.storage import resolve_storage, wait_for_database

    url = resolve_storage(args.storage, config, _out_dir(args, config))
    wait_for_database(url, runtime.db_wait_s())
    return url


def _study(args: argparse.Namespace, config: Config) -> tuple[optuna.Study, str]:
    from job.search import open_study

    url = _storage_url(args, config)
    return open_study(config, url, _study_name(args, config)), url


def cmd_search(args: argparse.Namespace) -> int:
    """One worker: trials until the study's budget is met."""
    from job.metrics import WorkerMetrics
    from job.search import Worker, stop_on_sigterm

    config = load_config(args.config)
    threads = runtime.torch_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    port = runtime.metrics_port(config.study.metrics_port)
    index = runtime.worker_index()
    url = _storage_url(args, config)  # waits for the database first, as pods start with it
    data = load_data(config.data)
    checkpoints = config.study.checkpoint_dir or _out_dir(args, config) / "checkpoints"
    worker = Worker(config, url, _study_name(args, config), index, checkpoint_dir=Path(checkpoints))
    stop_on_sigterm(worker.stop)  # preempted: checkpoint, hand the trial back, exit 143
    metrics = None
    if port is not None:
        metrics = WorkerMetrics(
            worker.study.study_name, data.fingerprint, worker.worker, config.objectives
        )
        print(f"metrics on :{metrics.serve(port)}/metrics", flush=True)
        worker.metrics = metrics
    print(f"worker {worker.worker} on study {worker.study.study_name}", flush=True)
    ran = worker.run(data)
    done = "stopped" if worker.stop.is_set() else "done"
    print(f"worker {worker.worker} {done}: {ran} trials", flush=True)
    if metrics is not None:
        worker.stop.wait(config.study.metrics_linger_s)  # let Prometheus scrape the last values
        metrics.shutdown()
    return EXIT_STOPPED if worker.stop.is_set() else EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """Local: N worker processes on one study, then collect."""
    from job.collect import collect
    from job.local import RunOptions, run_local
    from job.search import stop_on_sigterm

    stop_on_sigterm()  # SIGTERM stops the workers as Ctrl-C does
    config = load_config(args.config)
    if args.workers < 1:
        raise UsageError(f"--workers: must be >= 1, got {args.workers}")
    load_data(config.data)  # bad data fails here, once, not in every worker
    out = _out_dir(args, config)
    url = _storage_url(args, config)
    if args.fresh and url.startswith(JOURNAL):
        for suffix in ("", ".lock", ".budget-lock"):
            Path(url[len(JOURNAL) :] + suffix).unlink(missing_ok=True)
    options = RunOptions(
        Path(args.config), args.workers, out, url, _study_name(args, config), args.metrics_port
    )
    code = run_local(config, options)
    study, _ = _study(args, config)
    summary = collect(study, config, out)
    print(_collect_line(summary, out))
    return EXIT_OK if code == 0 else EXIT_ERROR


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
    from job.collect import collect, wait_for_budget

    config = load_config(args.config)
    study, _ = _study(args, config)
    if args.wait and not wait_for_budget(study, config, timeout_s=args.timeout):
        print(f"error: the budget was not met within {args.timeout}s", file=sys.stderr)
        return EXIT_ERROR
    out = _out_dir(args, config)
    print(_collect_line(collect(study, config, out), out))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """Trials by state, best values, front size, rate and ETA."""
    from job.collect import status_report

    config = load_config(args.config)
    study, url = _study(args, config)
    print(f"storage {redact(url)}")
    print(status_report(study, config))
    return EXIT_OK


def _dashboard_url(args: argparse.Namespace) -> str:
    """The dashboard's storage: as the other verbs' with --config; without one, --storage,
    then the environment, then the journal in --out."""
    from job.storage import DEFAULT_JOURNAL, wait_for_database

    if args.config:
        url = _storage_url(args, load_config(args.config))
    else:
        url = args.storage or runtime.storage_url() or ""
        if not url and args.out:
            url = JOURNAL + str((Path(args.out) / DEFAULT_JOURNAL).resolve())
        if not url:
            raise UsageError(
                "dashboard: no storage: give --storage, --config or --out, "
                "or set OPTUNA_STORAGE or POSTGRES_HOST and its POSTGRES_* companions"
            )
        wait_for_database(url, runtime.db_wait_s())
    if url.startswith(JOURNAL) and not Path(url[len(JOURNAL) :]).is_file():
        raise UsageError(f"dashboard: no study journal at {url[len(JOURNAL) :]}")
    return url


def cmd_dashboard(args: argparse.Namespace) -> int:
    """optuna-dashboard on the study's storage until SIGTERM (exit 0) or Ctrl-C."""
    from job.dashboard import serve_dashboard

    port = runtime.dashboard_port() if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise UsageError(f"--port: expected 0-65535, got {port}")
    serve_dashboard(_dashboard_url(args), args.host, port)
    return EXIT_OK


# The verbs as data: name → (handler, help, its arguments as (flags, add_argument kwargs)).
Arg = tuple[tuple[str, ...], dict[str, Any]]
STORAGE_HELP = (
    "Optuna storage URL (default: $OPTUNA_STORAGE, else one built from $POSTGRES_*, "
    "then study.storage, then a journal file in the output folder)"
)
HOLDS_STUDY = "output folder holding the embedded study (default: runs/<study>)"


def _storage_args(out_help: str, config: dict[str, Any] | None = None) -> list[Arg]:
    return [
        (("--config",), config or {"required": True, "help": "search config YAML"}),
        (("--storage",), {"help": STORAGE_HELP}),
        (("--study",), {"help": "study name (default: study.name)"}),
        (("--out",), {"help": out_help}),
    ]


VERBS: dict[str, tuple[Callable[[argparse.Namespace], int], str, list[Arg]]] = {
    "search": (
        cmd_search,
        "one worker: trials until the study budget is met",
        _storage_args(HOLDS_STUDY),
    ),
    "run": (
        cmd_run,
        "local: N worker processes on one study, then collect",
        [
            *_storage_args("output folder: study journal, worker logs, results (runs/<study>)"),
            (("--workers",), {"type": int, "default": 2, "help": "worker processes (default 2)"}),
            (("--metrics-port",), {"type": int, "help": "serve worker i's metrics on port + i"}),
            (("--fresh",), {"action": "store_true", "help": "delete the embedded study first"}),
        ],
    ),
    "collect": (
        cmd_collect,
        "Pareto front, plot and summary of the study",
        [
            *_storage_args("folder for pareto.json, pareto.png, summary.json (runs/<study>)"),
            (("--wait",), {"action": "store_true", "help": "wait until the budget is met"}),
            (("--timeout",), {"type": float, "help": "with --wait: give up after this many s"}),
        ],
    ),
    "status": (
        cmd_status,
        "trials by state, best values, front size, hypervolume, ETA",
        _storage_args(HOLDS_STUDY),
    ),
    "dashboard": (
        cmd_dashboard,
        "optuna-dashboard on the study's storage (http://127.0.0.1:8080/)",
        [
            *_storage_args(HOLDS_STUDY, {"help": "search config YAML (storage, study name)"}),
            (("--host",), {"default": "127.0.0.1", "help": "address (container: 0.0.0.0)"}),
            (("--port",), {"type": int, "help": "port (default: $DASHBOARD_PORT, else 8080)"}),
        ],
    ),
    "train": (
        cmd_train,
        "train one architecture from a model YAML",
        [
            (
                ("--config",),
                {"required": True, "help": "search config YAML (data, augment, train)"},
            ),
            (("--model",), {"required": True, "help": "model YAML in the seed's format"}),
            (("--out",), {"help": "folder for model.yaml and metrics.json (default: none)"}),
            (("--epochs",), {"type": int, "help": "override train.epochs"}),
            (("--device",), {"choices": ["auto", "cpu", "cuda"], "help": "override train.device"}),
        ],
    ),
    "augment-preview": (
        cmd_augment_preview,
        "PNG grid: every op at three magnitudes on photos and data",
        [
            (("--config",), {"required": True, "help": "search config YAML (data, augment)"}),
            (("--out",), {"required": True, "help": "PNG file to write"}),
            (("--size",), {"type": int, "default": 96, "help": "tile side in pixels (default 96)"}),
        ],
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m job",
        description="Search small, accurate image classifiers: architectures and "
        "RandAugment policies as one multi-objective study.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, (func, help_text, arguments) in VERBS.items():
        p = verbs.add_parser(name, help=help_text, description=help_text)
        for flags, kwargs in arguments:
            p.add_argument(*flags, **kwargs)
        p.set_defaults(func=func)
    return parser


_BAD_INPUT: tuple[type[BaseException], ...] = (
    ConfigError,
    DataError,
    ModelError,
    UsageError,
    EnvError,
    StorageURLError,
)


def _exit_stopped(signum: int, frame: object) -> None:
    raise SystemExit(EXIT_STOPPED)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # argparse itself exits 2 on bad arguments
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what happened
    func: Callable[[argparse.Namespace], int] = args.func
    # As PID 1 in a pod, Python ignores a SIGTERM it has no handler for, and the pod would
    # linger until killed: stop at once (search and run install their own, gentler ones).
    signal.signal(signal.SIGTERM, _exit_stopped)
    try:
        return func(args)
    except _BAD_INPUT as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainError as exc:
        print(f"error: training failed: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except StorageDownError as exc:  # its message is already redacted
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except torch.OutOfMemoryError as exc:
        print(f"error: out of memory: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_ERROR
