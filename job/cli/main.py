"""The command line: `python -m job VERB …`, one verb per role (declared as a table;
what each does is in `job.cli.verbs`).

Exit codes (docs/ARCHITECTURE.md): 0 success; 2 bad input (config, data, model YAML, arguments)
with one line naming the key or file and no traceback; 1 anything else.
"""

from __future__ import annotations

import argparse
import errno
import math
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import optuna
import torch

from job import __version__, logs
from job.cli.verbs import (
    cmd_augment_preview,
    cmd_collect,
    cmd_dashboard,
    cmd_exporter,
    cmd_repair_journal,
    cmd_research,
    cmd_run,
    cmd_search,
    cmd_status,
    cmd_train,
)
from job.collect.outputs import OutputError, OutputFolderError
from job.config import ConfigError, study_name_problem
from job.errors import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_STOPPED, UsageError
from job.ml.data import DataError
from job.ml.model import ModelError
from job.ml.train import (
    TrainError,
)
from job.search.worker import TrialsKeepFailing
from job.settings import MAX_WORKERS_PER_POD, EnvError
from job.storage import StorageDownError, StorageError, StorageURLError

# --- argument types: a number out of range is argparse's one-line error, exit 2 ----------


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An int in low..high (high None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f">= {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    """A finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return value


def _study_arg(text: str) -> str:
    """`--study`: the same rule as study.name (job.config.STUDY_NAME_PATTERN)."""
    problem = study_name_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


# The verbs as data: name → (handler, help, its arguments as (flags, add_argument kwargs)).
Arg = tuple[tuple[str, ...], dict[str, Any]]
STORAGE_HELP = (
    "Optuna storage URL (default: $OPTUNA_STORAGE, else one built from $POSTGRES_*, "
    "then study.storage, then a journal file in the output folder). A password given "
    "here stays in this process's command line, which every user of the machine can "
    "read (ps): give such a URL in $OPTUNA_STORAGE instead"
)
HOLDS_STUDY = "output folder holding the embedded study (default: runs/<study>)"


def _storage_args(out_help: str, config: dict[str, Any] | None = None) -> list[Arg]:
    return [
        (("--config",), config or {"required": True, "help": "search config YAML"}),
        (("--storage",), {"help": STORAGE_HELP}),
        (("--study",), {"type": _study_arg, "help": "study name (default: study.name)"}),
        (("--out",), {"help": out_help}),
    ]


VERBS: dict[str, tuple[Callable[[argparse.Namespace], int], str, list[Arg]]] = {
    "search": (
        cmd_search,
        "one worker: trials until the study budget is met",
        [
            *_storage_args(HOLDS_STUDY),
            (
                ("--procs",),
                {
                    "type": _int_in(1, MAX_WORKERS_PER_POD),
                    "metavar": "K",
                    "help": "K worker processes in this pod, sharing its device and CPU "
                    "(default: $SMS_WORKERS_PER_POD, else 1)",
                },
            ),
            # job.run.pod' children: serve metrics on loopback, write the bound port there
            (("--metrics-port-file",), {"help": argparse.SUPPRESS}),
        ],
    ),
    "run": (
        cmd_run,
        "local: N worker processes on one study, then collect",
        [
            *_storage_args("output folder: study journal, worker logs, results (runs/<study>)"),
            (
                ("--workers",),
                {"type": _int_in(1), "default": 2, "help": "worker processes (default 2)"},
            ),
            (
                ("--metrics-port",),
                {"type": _int_in(1, 65535), "help": "serve worker i's metrics on port + i"},
            ),
            (
                ("--fresh",),
                {
                    "action": "store_true",
                    "help": "delete the embedded study first, with its picks, retrained "
                    "weights, artifacts and checkpoints in the output folder, and the "
                    "later versions (`research`) its journal held",
                },
            ),
        ],
    ),
    "collect": (
        cmd_collect,
        "Pareto front, selection, verification against baselines: the study's results",
        [
            *_storage_args("folder for pareto.json, pareto.png, summary.json (runs/<study>)"),
            (("--wait",), {"action": "store_true", "help": "wait until the budget is met"}),
            (
                ("--timeout",),
                {"type": _seconds, "help": "with --wait: give up after this many s"},
            ),
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
            (
                ("--artifacts",),
                {"help": "the collector's artifact store (default: <out>/artifacts if there)"},
            ),
            (
                ("--port",),
                {"type": _int_in(0, 65535), "help": "port (default: $DASHBOARD_PORT, else 8080)"},
            ),
            (
                ("--allow-writes",),
                {
                    "action": "store_true",
                    "help": "let the dashboard change the study (notes, marks, DELETE); "
                    "default: read-only, every other method than GET and HEAD is 403",
                },
            ),
        ],
    ),
    "exporter": (
        cmd_exporter,
        "the study's figures for Prometheus, read at each scrape (http://127.0.0.1:9101/)",
        [
            *_storage_args(HOLDS_STUDY),
            (("--host",), {"default": "127.0.0.1", "help": "address (container: 0.0.0.0)"}),
            (
                ("--port",),
                {"type": _int_in(0, 65535), "default": 9101, "help": "port (default 9101)"},
            ),
        ],
    ),
    "train": (
        cmd_train,
        "train one architecture from a model YAML, or a selected model from its card",
        [
            (
                ("--config",),
                {"required": True, "help": "search config YAML (data, augment, train)"},
            ),
            (("--model",), {"help": "model YAML in the seed's format"}),
            (
                ("--card",),
                {"help": "a selected model's card.json: retrain it as verification did"},
            ),
            (("--out",), {"help": "folder for model.yaml and metrics.json (default: none)"}),
            (("--epochs",), {"type": _int_in(1), "help": "override train.epochs"}),
            (("--device",), {"choices": ["auto", "cpu", "cuda"], "help": "override train.device"}),
        ],
    ),
    "research": (
        cmd_research,
        "a new study version when the data, config or code changed, warm-started",
        [
            (("--config",), {"required": True, "help": "search config YAML"}),
            (("--storage",), {"help": STORAGE_HELP}),
            # research decides its study (the next version of study.name): --study is
            # taken only to refuse it with that reason (README "Re-search")
            (("--study",), {"type": _study_arg, "help": argparse.SUPPRESS}),
            (
                ("--out",),
                {
                    "help": "folder of the embedded journal and research.json; version N >= 2 "
                    "writes its results in <out>/<study>-v<N> (default runs/<study>)"
                },
            ),
            (
                ("--launch",),
                {
                    "action": "store_true",
                    "help": "create the version's worker and collector Jobs (Kubernetes) "
                    "instead of running it here",
                },
            ),
            (
                ("--dry-run",),
                {"action": "store_true", "help": "decide and print; change nothing"},
            ),
            (
                ("--workers",),
                {"type": _int_in(1), "default": 2, "help": "local worker processes (default 2)"},
            ),
            (
                ("--metrics-port",),
                {"type": _int_in(1, 65535), "help": "serve local worker i's metrics on port + i"},
            ),
        ],
    ),
    "repair-journal": (
        cmd_repair_journal,
        "keep every intact record of a damaged study journal; the rest to a backup file",
        [
            (
                ("journal",),
                {
                    "metavar": "JOURNAL",
                    "help": "the journal file (the error that named it gives the path); "
                    "stop every run and search on it first",
                },
            ),
        ],
    ),
    "augment-preview": (
        cmd_augment_preview,
        "PNG grid: every op at three magnitudes on photos and data",
        [
            (("--config",), {"required": True, "help": "search config YAML (data, augment)"}),
            (("--out",), {"required": True, "help": "PNG file to write"}),
            (
                ("--size",),
                {"type": _int_in(8, 512), "default": 96, "help": "tile side, px (default 96)"},
            ),
        ],
    ),
}


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, as every other bad input's (exit 2)."""

    def error(self, message: str) -> NoReturn:
        line = " ".join(message.split())
        line = error_line(f"error: {self.prog}: {line} (see {self.prog} --help)")
        self.exit(EXIT_BAD_INPUT, line + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
    StorageError,  # a bad storage URL, a refused login, a missing or busy study
    OutputFolderError,  # an output folder that cannot be made where --out says
    TrialsKeepFailing,
)


# The last guard on what an error prints: one line of at most this many characters, cut
# in the middle (the start names the key or file, the end often the value), so a message
# that quotes a huge input can never flood stderr (job.files.short keeps most far under).
MAX_ERROR_LINE = 300


def error_line(text: str, limit: int = MAX_ERROR_LINE) -> str:
    """`text` as one line of at most `limit` characters: line breaks become spaces and
    an overlong middle becomes " … "."""
    line = " ".join(text.splitlines())
    if len(line) <= limit:
        return line
    head = (limit - 3) * 2 // 3
    return f"{line[:head]} … {line[len(line) - (limit - 3 - head) :]}"


def _say(text: str) -> None:
    print(error_line(text), file=sys.stderr)


def _exit_stopped(signum: int, frame: object) -> None:
    raise SystemExit(EXIT_STOPPED)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    try:  # first: in json mode argparse's own error line is a record too
        logs.setup(next((w for w in words if w in VERBS), "job"))
    except EnvError as exc:  # a bad SMS_LOG_FORMAT: said plainly, as nothing else can be
        _say(f"error: {exc}")
        return EXIT_BAD_INPUT
    args = build_parser().parse_args(argv)  # argparse itself exits 2 on bad arguments
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what happened
    func: Callable[[argparse.Namespace], int] = args.func
    # As PID 1 in a pod, Python ignores a SIGTERM it has no handler for, and the pod would
    # linger until killed: stop at once (search and run install their own, gentler ones).
    signal.signal(signal.SIGTERM, _exit_stopped)
    try:
        return func(args)
    except _BAD_INPUT as exc:
        _say(f"error: {exc}")
        return EXIT_BAD_INPUT
    except TrainError as exc:
        _say(f"error: training failed: {exc}")
        return EXIT_ERROR
    except OutputError as exc:  # disk full, quota, read-only: names the file (job.collect.outputs)
        _say(f"error: {exc}")
        return EXIT_ERROR
    except StorageDownError as exc:  # its message is already redacted
        _say(f"error: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except torch.OutOfMemoryError as exc:
        _say(f"error: out of memory: {str(exc).splitlines()[0]}")
        return EXIT_ERROR
    except OSError as exc:  # the machine, not the input: a full disk, a quota, an I/O error
        _say(f"error: {os_problem(exc)}")
        return EXIT_ERROR


def os_problem(exc: OSError) -> str:
    """`path: reason (ENOSPC)` for an OSError that reached the top (a study journal's
    write on a full disk, say): what and where, without the traceback."""
    where = f"{exc.filename}: " if exc.filename else ""
    code = errno.errorcode.get(exc.errno or 0)
    return f"{where}{exc.strerror or exc}" + (f" ({code})" if code else "")
