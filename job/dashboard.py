"""The dashboard role (`dashboard`): optuna-dashboard on the study's storage.

optuna-dashboard's own WSGI app on the standard library's server, as its `run_server`
does, with two differences that matter in a pod: the storage is opened by
`job.storage.open_storage` (so a dashboard starting with the workers on an empty
PostgreSQL database takes the same schema lock and cannot collide with them creating
Optuna's tables; and a journal file opens, which optuna-dashboard given a URL cannot
do), and SIGTERM stops the server cleanly (exit 0) after the request in flight.

Its API is writable and unauthenticated (a DELETE removes a study), so it is served
read-only: `read_only` answers every request but GET and HEAD with 403, unless the
operator asks for `--allow-writes` (notes, marking trials). It listens on 127.0.0.1
unless told otherwise; the container passes 0.0.0.0 behind its Service, which a
NetworkPolicy (k8s/base/dashboard-networkpolicy.yaml) opens to the namespace only.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import make_server

import optuna_dashboard  # type: ignore[import-untyped]  # no stubs
from optuna.artifacts import FileSystemArtifactStore

from job.runtime import redact
from job.storage import open_storage

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


def serve_dashboard(
    url: str, host: str, port: int, artifacts: Path | None = None, allow_writes: bool = False
) -> None:
    """Serve until SIGTERM or Ctrl-C; prints where, with the storage URL redacted.
    `artifacts`: the collector's artifact store (job.storage.upload_trial_files), so the
    trials' exported models are listed and downloadable. Read-only unless `allow_writes`."""
    store = FileSystemArtifactStore(artifacts) if artifacts is not None else None
    app: App = optuna_dashboard.wsgi(open_storage(url), artifact_store=store)
    if not allow_writes:
        app = read_only(app)
    with make_server(host, port, app) as server:
        # shutdown() from another thread: raising from the handler instead would be
        # swallowed by wsgiref mid-request, and shutdown() in this one would deadlock.
        def stop(signum: int, frame: object) -> None:
            threading.Thread(target=server.shutdown, daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        shown = f"[{host}]" if ":" in host else host
        mode = "read-write" if allow_writes else "read-only"
        print(
            f"optuna-dashboard on http://{shown}:{server.server_port}/ for {redact(url)} ({mode})",
            file=sys.stderr,
            flush=True,
        )
        server.serve_forever()
