"""The command line: `python -m job VERB …` — parse (the table in job/cli/verbs.py), call
the verb's function, and map what it raised to an exit code and one line.

Exit codes (job/errors.py): 0 success; 2 bad input (config, data, model YAML, arguments)
with one line naming the key or file and no traceback; 1 anything else; 143 stopped.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import signal
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from job import __version__, logs
from job.cli.verbs import SET_ARG, VERBS
from job.errors import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_STOPPED, BadInput, Failure
from job.settings import EnvError


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
        if any("--config" in flags for flags, _ in arguments):  # every verb that reads one
            p.add_argument("--set", **SET_ARG)
        p.set_defaults(func=func)  # "module:function", imported once the arguments parse
    return parser


# The last guard on what an error prints: one line of at most this many characters, cut
# in the middle (the start names the key or file, the end often the value), so a message
# that quotes a huge input can never flood stderr (job.files.short keeps most far under).
# Long enough for two long paths whole: a torn journal's error names the file and then the
# command to repair it, which must survive to be copied (300 cut it for an 85-character
# path, measured).
MAX_ERROR_LINE = 1000


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
    func = _resolve(args.func)
    # As PID 1 in a pod, Python ignores a SIGTERM it has no handler for, and the pod would
    # linger until killed: stop at once (search and run install their own, gentler ones).
    signal.signal(signal.SIGTERM, _exit_stopped)
    try:
        return func(args)
    except BadInput as exc:
        _say(f"error: {exc}")
        return EXIT_BAD_INPUT
    except Failure as exc:  # training, a full disk (job.collect.outputs), a storage outage
        _say(f"error: {exc.prefix}{exc}")  # the storage's messages are already redacted
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # the machine, not the input: a full disk, a quota, an I/O error
        _say(f"error: {os_problem(exc)}")
        return EXIT_ERROR
    except Exception as exc:
        if type(exc).__name__ != "OutOfMemoryError" or "torch" not in sys.modules:
            raise  # a bug: its traceback is what a report needs
        _say(f"error: out of memory: {str(exc).splitlines()[0]}")  # torch.OutOfMemoryError
        return EXIT_ERROR


def _resolve(target: str) -> Callable[[argparse.Namespace], int]:
    """The verb's function from its "module:function" (the verb's module is imported now,
    with the optuna logging level our own lines rely on)."""
    module, name = target.split(":")
    func: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), name)
    import optuna  # after the verb's module: status and the exporter import it anyway

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what happened
    return func


def os_problem(exc: OSError) -> str:
    """`path: reason (ENOSPC)` for an OSError that reached the top (a study journal's
    write on a full disk, say): what and where, without the traceback."""
    where = f"{exc.filename}: " if exc.filename else ""
    code = errno.errorcode.get(exc.errno or 0)
    return f"{where}{exc.strerror or exc}" + (f" ({code})" if code else "")
