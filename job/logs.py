"""logs: how every role writes its lines.

Text, the default (SMS_LOG_FORMAT unset or `text`), is byte for byte what `print` writes.
With SMS_LOG_FORMAT=json `setup` wraps sys.stdout and sys.stderr, and every line printed
there (ours, logging's and so optuna's, warnings') leaves as one JSON object on the same
stream, always with the eight KEYS in this order:

    {"time":"2025-01-31T12:00:00.123Z","level":"info","role":"search","study":"s1",
     "trial":7,"event":"trial_done","message":"trial 7: accuracy 0.91","fields":{"worker":0}}

`time` RFC 3339 UTC, ms; `level` info, warning or error; `role` setup's verb; `study`,
`trial` from bound or event fields, else null; `event` event()'s name, for a wrapped line
`error`/`warning` by its prefix, else `message`; `message` the human line; `fields` all
other fields, nested (a field named `time` cannot clobber a key), `{}` when none.

A wrapped line's level is its prefix's, any case (`error:`/`critical:`, `warning:`,
`info:`, logging's `WARNING:root:…`, optuna's `[W …]`), else info on stdout and warning
on stderr, where diagnostics go unprefixed (tracebacks, warnings). `\\r` redraws (progress
bars) collapse: a line is what it shows last, written at its `\\n`. Blank lines are
dropped. What bypasses sys.stdout (a child process, a write to the fd) stays plain.

Secrets: messages and string fields pass through `job.urls.redact` (so does any URL in
them) and POSTGRES_PASSWORD's value (4+ characters), raw or percent-encoded, becomes `***`:
through `event()` in both formats, and on every wrapped line in json mode.
"""

from __future__ import annotations

import atexit
import io
import json
import logging
import math
import numbers
import re
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Literal, TextIO, cast
from urllib.parse import quote

from job import settings, urls

SMS_LOG_FORMAT = settings.SMS_LOG_FORMAT
FORMATS = settings.LOG_FORMATS
KEYS = ("time", "level", "role", "study", "trial", "event", "message", "fields")
Level = Literal["info", "warning", "error"]

# One re-entrant lock for the context and every write: a signal handler that prints runs
# in the main thread, maybe while it is inside a write, where a plain Lock would deadlock.
_lock = threading.RLock()


class _State:
    def __init__(self) -> None:
        self.role = ""
        self.json = False
        self.secrets: tuple[str, ...] | None = None  # None: not read yet (no setup)
        self.context: dict[str, object] = {}
        self.wrappers: tuple[_JsonLines, _JsonLines] | None = None  # stdout's, stderr's
        self.handlers: list[tuple[logging.StreamHandler[TextIO], TextIO]] = []


_state = _State()
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+")
_LINE_END = re.compile(r"([\r\n])")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Our `error: …`, Python logging's `WARNING:root:…`, optuna's `[W 2025-… ] …`, any case.
_PREFIX = re.compile(r"(?i)(?:(error|critical|warning|info|debug):|\[([ecwid]) )")
_LEVEL_OF: dict[str, Level] = {"e": "error", "c": "error", "w": "warning", "i": "info", "d": "info"}


def _read_format(env: Mapping[str, str] | None) -> str:
    return (
        settings.current() if env is None else settings.Settings(env)
    ).log_format()  # runtime alone reads the environment


def _read_secrets(env: Mapping[str, str] | None) -> tuple[str, ...]:
    password = (settings.current() if env is None else settings.Settings(env)).postgres_password()
    # Masking "ab" everywhere would mangle lines, hiding nothing; URLs hold it encoded.
    spellings = {password, quote(password, safe="")} if len(password) >= 4 else set()
    return tuple(sorted(spellings, key=len, reverse=True))


def mask(text: str) -> str:
    """`text` as it may be logged: URL passwords and the POSTGRES_PASSWORD value as ***."""
    text = _URL.sub(lambda m: urls.redact(m.group()), urls.redact(text))
    if _state.secrets is None:
        _state.secrets = _read_secrets(None)
    for secret in _state.secrets:
        text = text.replace(secret, "***")
    return text


def _clean(value: object) -> object:
    """A JSON-safe copy: strings masked, NaN and infinities null (bare NaN is not JSON)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Mapping):
        return {mask(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(v) for v in value]
    return mask(str(value))


def _record(level: str, name: str, message: str, fields: Mapping[str, object]) -> str:
    with _lock:
        merged = {**_state.context, **fields}
    study, trial = merged.pop("study", None), merged.pop("trial", None)
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    values = (now, level, _state.role, _clean(study), _clean(trial), name, mask(message))
    record = dict(zip(KEYS, (*values, _clean(merged)), strict=True))
    line = json.dumps(record, ensure_ascii=False, default=str, separators=(",", ":"))
    # Unescaped, these three split a line for str.splitlines() and some log shippers.
    return line.replace("\x85", "\\u0085").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


class _JsonLines(io.TextIOBase):
    """A stand-in for sys.stdout or sys.stderr: each complete line written becomes one
    record on the original stream. Partial lines wait per thread, so two threads printing
    at once (print writes the text and its newline separately) never mix their lines."""

    line_buffering = True
    encoding: str = "utf-8"  # plain attributes shadow io's read-only ones
    errors: str | None = None

    def __init__(self, original: TextIO, default: Level) -> None:
        super().__init__()
        self.original = original
        self.encoding = getattr(original, "encoding", None) or "utf-8"
        self.errors = getattr(original, "errors", None)
        self._default: Level = default
        self._pending: dict[int, tuple[str, str]] = {}  # thread → (shown, being written)

    def isatty(self) -> bool:
        return False  # nobody should draw colours or progress bars into JSON

    def fileno(self) -> int:
        return self.original.fileno()

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        with _lock:
            shown, current = self._pending.pop(threading.get_ident(), ("", ""))
            for piece in _LINE_END.split(s):
                if piece == "\n":
                    self._line(current if current.strip() else shown)
                    shown = current = ""
                elif piece == "\r":  # a redraw: what it showed is kept until replaced
                    shown, current = (current, "") if current.strip() else (shown, "")
                else:
                    current += piece
            if shown or current:
                self._pending[threading.get_ident()] = (shown, current)
        return len(s)

    def flush(self) -> None:
        with _lock:  # complete lines only: partial ones wait for their newline
            self.original.flush()

    def drain(self) -> None:
        with _lock:  # the original may be closed by now (at exit, after a test): skip it
            pending, self._pending = list(self._pending.values()), {}
            for shown, current in pending if not self.original.closed else ():
                self._line(current if current.strip() else shown)

    def _line(self, line: str) -> None:
        line = _ANSI.sub("", line).rstrip()
        if not line:
            return
        level, name = self._default, "message"
        if found := _PREFIX.match(line):
            level = _LEVEL_OF[(found[1] or found[2])[0].lower()]
            name = "message" if level == "info" else level
        self.emit(_record(level, name, line, {}))

    def emit(self, record: str) -> None:
        with _lock:  # one write per record, flushed: a pod's stdout is a block-buffered pipe
            self.original.write(record + "\n")
            self.original.flush()


def setup(role: str, env: Mapping[str, str] | None = None) -> None:
    """Read SMS_LOG_FORMAT and POSTGRES_PASSWORD from `env` (else the environment); for
    json wrap sys.stdout and sys.stderr as they are now. Again: starts over. Bad: ConfigError."""
    fmt, secrets = _read_format(env), _read_secrets(env)
    with _lock:
        _unwrap()
        _state.role, _state.secrets, _state.json = role, secrets, fmt == "json"
        if not _state.json:
            return
        out = _JsonLines(sys.stdout, "info")
        err = out if sys.stderr is sys.stdout else _JsonLines(sys.stderr, "warning")
        _state.wrappers = (out, err)
        # optuna (imported before any role starts) made its handler with the stderr of the
        # time: point such handlers at the wrappers, or their lines would stay plain.
        ours = {id(wrapper.original): wrapper for wrapper in (err, out)}
        for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
            for handler in getattr(logger, "handlers", ()):
                wrapper = ours.get(id(getattr(handler, "stream", None)))
                if isinstance(handler, logging.StreamHandler) and wrapper is not None:
                    _state.handlers.append((handler, handler.stream))
                    handler.setStream(cast(TextIO, wrapper))
        sys.stdout, sys.stderr = cast(TextIO, out), cast(TextIO, err)
        atexit.unregister(_drain)  # once: sys flushes at exit, but flush() keeps partials
        atexit.register(_drain)


def _drain() -> None:
    for wrapper in _state.wrappers or ():
        wrapper.drain()


def _unwrap() -> None:  # under _lock
    _drain()
    for wrapper in _state.wrappers or ():  # only ours: what replaced them since stays
        if sys.stdout is wrapper:
            sys.stdout = wrapper.original
        if sys.stderr is wrapper:
            sys.stderr = wrapper.original
    for handler, stream in _state.handlers:
        if isinstance(handler.stream, _JsonLines):
            handler.setStream(stream)
    _state.wrappers, _state.handlers = None, []


def reset() -> None:
    """Back to before `setup` (for tests): streams and handlers restored, text mode, no
    role, no bound fields, POSTGRES_PASSWORD read again when next needed."""
    with _lock:
        _unwrap()
        _state.role, _state.json, _state.secrets = "", False, None
        _state.context.clear()


def json_enabled() -> bool:
    """Whether `setup` chose json: for callers that would otherwise draw for a human."""
    return _state.json


def bind(**fields: object) -> None:
    """Add fields (study, trial, worker, …) to every record from now on, in all threads."""
    with _lock:
        _state.context.update(fields)


def unbind(*names: str) -> None:
    """Drop bound fields; names not bound are ignored."""
    with _lock:
        for name in names:
            _state.context.pop(name, None)


@contextmanager
def bound(**fields: object) -> Iterator[None]:
    """`bind` for the block, then the previous values (or none) again. Process-wide, not
    per thread: a worker's heartbeat thread's lines belong to its one running trial too."""
    with _lock:
        saved = {name: _state.context[name] for name in fields if name in _state.context}
        _state.context.update(fields)
    try:
        yield
    finally:
        with _lock:
            unbind(*fields)
            bind(**saved)


def event(name: str, message: str, level: Level = "info", **fields: object) -> None:
    """One line with a stable snake_case `name`: in text mode `message` (masked) as print
    writes it, on stdout for info and stderr otherwise, flushed, fields unused (so the
    message must say everything a person needs); in json mode one record with `fields`."""
    stream = sys.stdout if level == "info" else sys.stderr
    if not _state.json:
        print(mask(message), file=stream, flush=True)
        return
    record = _record(level, name, message, fields)
    if isinstance(stream, _JsonLines):
        stream.emit(record)
    else:  # redirected since setup (contextlib.redirect_stdout): follow the redirection
        print(record, file=stream, flush=True)
