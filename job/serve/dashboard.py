"""The dashboard role (`dashboard`): optuna-dashboard on the study's storage.

optuna-dashboard's own WSGI app, served by the standard library's WSGI server made
threaded (`socketserver.ThreadingMixIn`, one daemon thread per connection), with three
differences from its `run_server` that matter in a pod:

- the address is bound first (`bind`), before the storage is opened, so a bad `--host`
  (unresolvable, not an address of this machine) or a `--port` in use is one line and
  exit 2 at once (`address_problem`, which the exporter's verb shares);
- every connection has a socket timeout (`REQUEST_TIMEOUT_S`, per read or write, so a
  long download is fine): a client that stops sending half-way through its request is
  dropped, and meanwhile it holds only its own thread, never the server; SIGTERM stops
  the server within its poll interval (0.5 s) whatever its clients do, and the process
  exits 0 at once (`_exit_now`: no interpreter teardown, over a second with torch);
- the storage is opened by `job.storage.open_storage` (so a dashboard starting with the
  workers on an empty PostgreSQL database takes the same schema lock and cannot collide
  with them creating Optuna's tables; and a journal file opens, which optuna-dashboard
  given a URL cannot do).

Its API is writable and unauthenticated (a DELETE removes a study), so it is served
read-only: `read_only` answers every request but GET and HEAD with 403, unless the
operator asks for `--allow-writes` (notes, marking trials). It listens on 127.0.0.1
unless told otherwise; the container passes 0.0.0.0 behind its Service, which a
NetworkPolicy (k8s/base/dashboard-networkpolicy.yaml) opens to the namespace only.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, NoReturn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import optuna_dashboard  # type: ignore[import-untyped]  # no stubs
from optuna.artifacts import FileSystemArtifactStore

from job.storage import open_storage
from job.urls import redact

REQUEST_TIMEOUT_S = 30.0  # a connection silent this long (mid-request or idle) is closed
POLL_S = 0.5  # serve_forever's check for shutdown: SIGTERM takes effect within this
READS = ("GET", "HEAD")
REFUSED = b"read-only dashboard: start it with --allow-writes to change the study\n"

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
App = Callable[[Environ, StartResponse], Iterable[bytes]]


def read_only(app: App) -> App:
    """`app` answering 403 to every method that could change the study (DELETE, POST,
    PUT, PATCH, …): only GET and HEAD reach it."""

    def guarded(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET").upper() in READS:
            return app(environ, start_response)
        headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(REFUSED)))]
        start_response("403 Forbidden", headers)
        return [REFUSED]

    return guarded


class _Handler(WSGIRequestHandler):
    """wsgiref's handler with a socket timeout on its connection; a client that times
    out or goes away is dropped without a traceback on stderr."""

    timeout = REQUEST_TIMEOUT_S  # StreamRequestHandler sets it on the connection

    def handle(self) -> None:
        try:
            super().handle()
        except (TimeoutError, ConnectionError):
            self.close_connection = True


class ThreadedWSGIServer(ThreadingMixIn, WSGIServer):
    """One daemon thread per connection: a slow client holds its own thread only, and
    stopping the server waits for none of them."""

    daemon_threads = True


def bind(host: str, port: int, timeout_s: float = REQUEST_TIMEOUT_S) -> ThreadedWSGIServer:
    """A server bound and listening on `host:port` (IPv4 or IPv6, as `host` resolves; port
    0: a free one), with no app yet (`set_app`). OSError (socket.gaierror for a name that
    does not resolve) when it cannot: `address_problem` says it in one line."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except UnicodeError:  # a label over 63 characters: IDNA cannot even encode it
        raise socket.gaierror(socket.EAI_NONAME, "not a valid host name") from None
    family, address = infos[0][0], infos[0][4]
    handler = type("Handler", (_Handler,), {"timeout": timeout_s})
    server_class = type("Server", (ThreadedWSGIServer,), {"address_family": family})
    server: ThreadedWSGIServer = server_class(address, handler)
    return server


def _value(text: str) -> str:
    """A flag's value as one short line: control characters escaped, cut at 80."""
    shown = text if text.isprintable() else repr(text)
    return shown if len(shown) <= 80 else shown[:79] + "…"


def address_problem(exc: OSError | UnicodeError, host: str, port: int) -> str:
    """Why nothing can listen on `host:port`, naming the flag at fault: `--host` for a
    name that does not resolve (UnicodeError: one IDNA cannot encode) or an address this
    machine does not have, `--port` for a port in use or one that needs privileges."""
    if isinstance(exc, UnicodeError):
        return f"--host {_value(host)}: cannot resolve it (not a valid host name)"
    why = exc.strerror or type(exc).__name__
    if isinstance(exc, socket.gaierror):
        return f"--host {_value(host)}: cannot resolve it ({why})"
    if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EPERM):
        return f"--port {port}: {why} (on {_value(host)})"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"--host {_value(host)}: not an address of this machine ({why})"
    return f"--host {_value(host)}: cannot listen there ({why})"


def serve_dashboard(
    server: ThreadedWSGIServer, url: str, artifacts: Path | None = None,
    allow_writes: bool = False,
) -> None:  # fmt: skip
    """Serve on `server` (`bind`) until SIGTERM or Ctrl-C; prints where, with the storage
    URL redacted. `artifacts`: the collector's artifact store
    (job.storage.upload_trial_files), so the trials' exported models are listed and
    downloadable. Read-only unless `allow_writes`. Closes `server` on the way out."""
    terminated = threading.Event()
    with server:
        store = FileSystemArtifactStore(artifacts) if artifacts is not None else None
        storage = open_storage(url)
        app: App = optuna_dashboard.wsgi(storage, artifact_store=store)
        if not allow_writes:
            app = read_only(app)
        server.set_app(app)

        # shutdown() from another thread: shutdown() in this one (the handler runs in the
        # main thread, inside serve_forever) would deadlock.
        def stop(signum: int, frame: object) -> None:
            terminated.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        host = str(server.server_address[0])
        shown = f"[{host}]" if ":" in host else host
        mode = "read-write" if allow_writes else "read-only"
        print(
            f"optuna-dashboard on http://{shown}:{server.server_port}/ for {redact(url)} ({mode})",
            file=sys.stderr,
            flush=True,
        )
        server.serve_forever(poll_interval=POLL_S)
    if terminated.is_set():  # stopped, listening socket closed: leave now (_exit_now)
        _exit_now(storage)


def _exit_now(storage: object) -> NoReturn:
    """Exit 0 at once after SIGTERM: the server has stopped and closed its socket, and
    there is nothing to save (the dashboard only reads), but the interpreter's own
    teardown with torch loaded takes over a second; the database connections are closed
    and the output flushed first."""
    engine = getattr(storage, "engine", None)  # an RDBStorage's connection pool
    if engine is not None:
        engine.dispose()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
