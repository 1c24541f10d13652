"""The command line: `python -m job VERB …`, one verb per role.

Exit codes (DESIGN §4): 0 success; 2 bad input (config, data, model YAML, arguments)
with one line naming the key or file and no traceback; 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import optuna
import torch

from job import __version__
from job.config import Config, ConfigError, load_config
from job.data import DataError, load_data
from job.model import ModelError, load_model_spec, model_spec_yaml
from job.storage import StorageDownError, redact
from job.train import EpochRecord, Recipe, TrainError, TrainResult, train

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
    recipe = Recipe.from_config(config.train)
    if args.epochs is not None:
        recipe = replace(recipe, epochs=args.epochs)
    if args.device is not None:
        recipe = replace(recipe, device=args.device)
    data = load_data(config.data)
    print(
        f"data {data.name}: {len(data.train)} train / {len(data.val)} val / "
        f"{len(data.test)} test, {data.num_classes} classes, fingerprint {data.fingerprint[:12]}",
        flush=True,
    )
    try:
        result = train(spec, config.augment.policy(), recipe, data, on_epoch=_print_epoch)
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


def _study(args: argparse.Namespace, config: Config) -> tuple[optuna.Study, str]:
    from job.search import open_study, resolve_storage

    url = resolve_storage(args.storage, config, _out_dir(args, config))
    return open_study(config, url, _study_name(args, config)), url


def cmd_search(args: argparse.Namespace) -> int:
    """One worker: trials until the study's budget is met."""
    from job.metrics import WorkerMetrics, metrics_port
    from job.search import Worker, resolve_storage, stop_on_sigterm, worker_index

    config = load_config(args.config)
    threads = os.environ.get("SMS_TORCH_THREADS", "")
    if threads.isdigit():
        torch.set_num_threads(int(threads))
    data = load_data(config.data)
    url = resolve_storage(args.storage, config, _out_dir(args, config))
    port = metrics_port(config.study.metrics_port)
    checkpoints = config.study.checkpoint_dir or _out_dir(args, config) / "checkpoints"
    worker = Worker(
        config, url, _study_name(args, config), worker_index(), checkpoint_dir=Path(checkpoints)
    )
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
    from job.search import JOURNAL, resolve_storage, stop_on_sigterm

    stop_on_sigterm()  # SIGTERM stops the workers as Ctrl-C does
    config = load_config(args.config)
    if args.workers < 1:
        raise UsageError(f"--workers: must be >= 1, got {args.workers}")
    load_data(config.data)  # bad data fails here, once, not in every worker
    out = _out_dir(args, config)
    url = resolve_storage(args.storage, config, out)
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


def _storage_args(p: argparse.ArgumentParser, out_help: str) -> None:
    p.add_argument("--config", required=True, help="search config YAML")
    p.add_argument(
        "--storage",
        help="Optuna storage URL (default: $OPTUNA_STORAGE, then study.storage, "
        "then a journal file in the output folder)",
    )
    p.add_argument("--study", help="study name (default: study.name)")
    p.add_argument("--out", help=out_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m job",
        description="Search small, accurate image classifiers: architectures and "
        "RandAugment policies as one multi-objective study.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("search", help="one worker: trials until the study budget is met")
    _storage_args(p, "output folder holding the embedded study (default: runs/<study>)")
    p.set_defaults(func=cmd_search)

    p = verbs.add_parser("run", help="local: N worker processes on one study, then collect")
    _storage_args(p, "output folder: study journal, worker logs, results (default: runs/<study>)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument(
        "--metrics-port", type=int, help="serve worker i's metrics on this port + i (default: off)"
    )
    p.add_argument(
        "--fresh", action="store_true", help="delete the embedded study in --out and start over"
    )
    p.set_defaults(func=cmd_run)

    p = verbs.add_parser("collect", help="Pareto front, plot and summary of the study")
    _storage_args(p, "folder for pareto.json, pareto.png, summary.json (default: runs/<study>)")
    p.add_argument("--wait", action="store_true", help="wait until the study budget is met")
    p.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    p.set_defaults(func=cmd_collect)

    p = verbs.add_parser("status", help="trials by state, best values, front size, ETA")
    _storage_args(p, "output folder holding the embedded study (default: runs/<study>)")
    p.set_defaults(func=cmd_status)

    p = verbs.add_parser("train", help="train one architecture from a model YAML")
    p.add_argument("--config", required=True, help="search config YAML (data, augment, train)")
    p.add_argument("--model", required=True, help="model YAML in the seed's format")
    p.add_argument("--out", help="folder for model.yaml and metrics.json (default: none)")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override train.device")
    p.set_defaults(func=cmd_train)

    p = verbs.add_parser(
        "augment-preview", help="PNG grid: every op at three magnitudes on photos and data"
    )
    p.add_argument("--config", required=True, help="search config YAML (data, augment)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--size", type=int, default=96, help="side of each tile in pixels (default 96)")
    p.set_defaults(func=cmd_augment_preview)
    return parser


_BAD_INPUT: tuple[type[BaseException], ...] = (
    ConfigError,
    DataError,
    ModelError,
    UsageError,
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
