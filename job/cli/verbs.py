"""The verbs of `python -m job`, as a table: name -> (the function that runs it, as
"module:function", imported only when that verb runs; its help; its arguments).

A verb's module is imported after its arguments parse, so `VERB --help` and the light
verbs (status, dashboard, exporter) never load torch. Adding a verb is adding a row here
and a `cmd_<verb>(args) -> exit code` in one of job/cli/{model,search,study}.py.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from job.config import study_name_problem
from job.settings import MAX_WORKERS_PER_POD

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


# `--set KEY=VALUE`, added to every verb that takes --config (job/cli/main.py)
SET_ARG: dict[str, Any] = {
    "action": "append",
    "default": [],
    "metavar": "KEY=VALUE",
    "help": "override a key of the config file, validated as the file is, e.g. "
    "--set train.epochs=3 --set study.budget=40 (repeatable; the last wins)",
}

# name -> ("module:function", help, arguments)
VERBS: dict[str, tuple[str, str, list[Arg]]] = {
    "search": (
        "job.cli.search:cmd_search",
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
        "job.cli.search:cmd_run",
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
        "job.cli.search:cmd_collect",
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
        "job.cli.study:cmd_status",
        "trials by state, best values, front size, hypervolume, ETA",
        _storage_args(HOLDS_STUDY),
    ),
    "dashboard": (
        "job.cli.study:cmd_dashboard",
        "optuna-dashboard on the study's storage (http://127.0.0.1:8080/)",
        [
            *_storage_args(HOLDS_STUDY, {"help": "search config YAML (storage, study name)"}),
            (("--host",), {"default": "127.0.0.1", "help": "address (container: 0.0.0.0)"}),
            (
                ("--artifacts",),
                {
                    "help": "the collector's artifact store (default: artifacts/ in the "
                    "study's output folder, runs/<study> or --out, if there)"
                },
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
        "job.cli.study:cmd_exporter",
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
        "job.cli.model:cmd_train",
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
        "job.cli.study:cmd_research",
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
        "job.cli.study:cmd_repair_journal",
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
        "job.cli.model:cmd_augment_preview",
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
    "config": (
        "job.cli.study:cmd_config",
        "show the effective config: defaults filled, --set and the environment applied, "
        "secrets masked",
        [
            (("action",), {"choices": ["show"], "help": "show: print it as YAML"}),
            (("--config",), {"required": True, "help": "search config YAML"}),
        ],
    ),
}
