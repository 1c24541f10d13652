"""Exit codes and the command line's own error, below every verb (docs/ARCHITECTURE.md).

0 success; 2 bad input (config, data, arguments) with one line naming the key or file;
1 anything else; 143 a worker stopped by SIGTERM. The verbs (`job.cli.verbs`) and the pod's
process group (`job.run.pod`) both return these, so they live below both.
"""

from __future__ import annotations

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2
# A worker stopped by SIGTERM before the budget was spent: 128 + 15, as a shell reports it,
# so a Kubernetes Job reruns that pod's index instead of counting it as finished.
EXIT_STOPPED = 143


class UsageError(ValueError):
    """Bad command-line input; exit 2."""
