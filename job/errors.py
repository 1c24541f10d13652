"""Exit codes and the two kinds of error the command line maps to them, below every stage.

0 success; 2 bad input (config, data, model file, arguments, environment, storage URL)
with one line naming the key or file; 1 anything else; 143 a worker stopped by SIGTERM.

Each stage raises its own error class (`ConfigError`, `DataError`, `StorageError`, …)
derived from `BadInput` or `Failure` as well as its usual base; `job.cli.main` maps the
two bases to exit codes without importing the stages that raise them (so `status --help`
never loads torch for the sake of an except clause).
"""

from __future__ import annotations

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2
# A worker stopped by SIGTERM before the budget was spent: 128 + 15, as a shell reports it,
# so a Kubernetes Job reruns that pod's index instead of counting it as finished.
EXIT_STOPPED = 143


class BadInput(Exception):  # noqa: N818 — a kind of error, named by what it means
    """Input a person must fix (exit 2): the message names the key, flag, file or value."""


class Failure(Exception):  # noqa: N818
    """The run failed, not its input (exit 1): a full disk, a storage outage, a network
    that could not be trained. `prefix` starts its one line."""

    prefix = ""


class UsageError(BadInput, ValueError):
    """Bad command-line input; exit 2."""
