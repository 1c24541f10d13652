#!/usr/bin/env bash
# Container entry point: entrypoint.sh ROLE [ARGS...] (-h for the roles).
#
# Builds OPTUNA_STORAGE from POSTGRES_* when it is not set, waits until the database
# accepts a connection (pods start before it is ready), then replaces itself with Python
# (exec), so SIGTERM reaches the worker directly. The database password is never printed
# and never put on a command line (argv is visible to every process on the node).
# Exit codes: 2 bad usage or configuration, 1 database not reachable, else Python's.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: entrypoint.sh ROLE [ARGS...]

roles:
  worker ARGS     python -m job search ARGS: one search worker until the budget is spent
  collect ARGS    python -m job collect ARGS: Pareto front, selection, report
  research ARGS   python -m job research ARGS: a new study version when the data changed
  dashboard       optuna-dashboard on $OPTUNA_STORAGE, 0.0.0.0:${DASHBOARD_PORT:-8080}
  VERB ARGS       any python -m job verb: search, run, collect, status, train, research,
                  augment-preview (python -m job VERB --help for its options)

environment:
  OPTUNA_STORAGE      storage URL; when unset and POSTGRES_HOST is set, it is built from
                      POSTGRES_HOST, POSTGRES_PORT (5432), POSTGRES_USER,
                      POSTGRES_PASSWORD and POSTGRES_DB
  SMS_DB_WAIT_S       seconds to wait for a PostgreSQL storage to accept connections
                      before giving up with exit 1 (default 120; 0: do not wait)
  DASHBOARD_PORT      the dashboard's port (default 8080)
EOF
}

fail() {  # one line on stderr, then exit (2 unless told)
    printf 'entrypoint: %s\n' "$1" >&2
    exit "${2:-2}"
}

role="${1:-}"
case "$role" in
    -h | --help | help)
        usage
        exit 0
        ;;
    worker) verb=search ;;
    dashboard) verb=dashboard ;;
    search | run | collect | status | train | research | augment-preview) verb="$role" ;;
    *) fail "unknown role '$role' (expected worker, collect, research, dashboard or a python -m job verb)" ;;
esac
shift

# `python -m job` and `import job` work from any working directory: the package sits
# beside this script (/app in the image, the repository root in a checkout).
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"

# OPTUNA_STORAGE from POSTGRES_*: user, password and database are percent-encoded, so
# any password works (SQLAlchemy decodes them). The password travels in the environment
# only: it is read by Python from there, never passed as an argument.
if [[ -z "${OPTUNA_STORAGE:-}" && -n "${POSTGRES_HOST:-}" ]]; then
    for name in POSTGRES_USER POSTGRES_PASSWORD POSTGRES_DB; do
        [[ -n "${!name:-}" ]] || fail "$name is not set (needed with POSTGRES_HOST to build OPTUNA_STORAGE)"
    done
    port="${POSTGRES_PORT:-5432}"
    # Kubernetes' service links set POSTGRES_PORT=tcp://IP:PORT for a Service named
    # "postgres" when the Secret does not set it: take the port from that form.
    if [[ "$port" == tcp://* ]]; then port="${port##*:}"; fi
    [[ "$port" =~ ^[0-9]+$ ]] || fail "POSTGRES_PORT must be a port number, got '$port'"
    OPTUNA_STORAGE="$(SMS_PORT="$port" python -c '
import os
from urllib.parse import quote

env = os.environ
host, port = env["POSTGRES_HOST"], env["SMS_PORT"]
host = f"[{host}]" if ":" in host and not host.startswith("[") else host  # IPv6
user, password, db = (quote(env[k], safe="") for k in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"))
print(f"postgresql+psycopg2://{user}:{password}@{host}:{port}/{db}")
')"
    export OPTUNA_STORAGE
fi

if [[ "$verb" == dashboard ]]; then
    [[ $# == 0 ]] || fail "dashboard takes no arguments (it reads OPTUNA_STORAGE and DASHBOARD_PORT)"
    [[ -n "${OPTUNA_STORAGE:-}" ]] || fail "dashboard needs OPTUNA_STORAGE, or POSTGRES_HOST, POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB"
    [[ "${DASHBOARD_PORT:-8080}" =~ ^[0-9]+$ ]] || fail "DASHBOARD_PORT must be a port number, got '${DASHBOARD_PORT}'"
fi

wait_s="${SMS_DB_WAIT_S:-120}"
[[ "$wait_s" =~ ^[0-9]+([.][0-9]+)?$ ]] || fail "SMS_DB_WAIT_S must be a number of seconds, got '$wait_s'"
asks_help=0
for arg in "$@"; do
    if [[ "$arg" == -h || "$arg" == --help ]]; then asks_help=1; fi
done

# Wait for PostgreSQL: a real connection and SELECT 1 every 2 s, until it works or
# SMS_DB_WAIT_S pass. The URL is parsed by SQLAlchemy, as Optuna will parse it, and shown
# with the password masked; libpq's errors name host and port, never the password, and
# any trace of it is masked all the same. Until the exec, bash is PID 1 in a pod, and
# PID 1 ignores signals it does not trap: the wait runs in the background so that
# SIGTERM (the pod deleted while it waits) ends it at once.
if [[ "${OPTUNA_STORAGE:-}" == postgresql* && ! "$wait_s" =~ ^0*([.]0*)?$ && $asks_help == 0 ]]; then
    trap 'kill "$waiter" 2>/dev/null; exit 143' TERM INT
    SMS_WAIT_S="$wait_s" python - <<'EOF' &
import math
import os
import sys
import time
from urllib.parse import quote

import psycopg2
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

try:
    url = make_url(os.environ["OPTUNA_STORAGE"])
except (ArgumentError, ValueError):
    print("entrypoint: OPTUNA_STORAGE is not a valid database URL", file=sys.stderr)
    sys.exit(2)
shown = url.render_as_string(hide_password=True)
secrets = [s for s in {url.password, quote(url.password or "", safe="")} if s]
args = {
    "host": url.host, "port": url.port, "user": url.username,
    "password": url.password, "dbname": url.database,
}
args = {k: v for k, v in args.items() if v is not None} | dict(url.query)
wait_s = float(os.environ["SMS_WAIT_S"])
deadline = time.monotonic() + wait_s
waiting = False
while True:
    left = deadline - time.monotonic()
    try:
        conn = psycopg2.connect(connect_timeout=max(2, min(5, math.ceil(left))), **args)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
        finally:
            conn.close()
        sys.exit(0)
    except psycopg2.Error as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        for secret in secrets:
            reason = reason.replace(secret, "***")
    left = deadline - time.monotonic()
    if left <= 0:
        sys.exit(f"entrypoint: database {shown} not reachable after {wait_s:g} s: {reason}")
    if not waiting:
        print(f"entrypoint: waiting for database {shown}", file=sys.stderr, flush=True)
        waiting = True
    time.sleep(min(2.0, left))
EOF
    waiter=$!
    wait "$waiter"  # its status: 1 when the database stayed unreachable
    trap - TERM INT
fi

if [[ "$verb" == dashboard ]]; then
    # The storage URL is read from the environment, not argv. job.storage.open_storage
    # takes the schema lock, as the workers do, so a dashboard starting with them on an
    # empty database cannot collide with them creating Optuna's tables. optuna-dashboard's
    # own app on wsgiref's server, as its run_server does, but stopped cleanly: SIGTERM
    # (which Python as PID 1 would ignore unhandled) ends serve_forever after the request
    # in flight; raising from the handler instead is swallowed by wsgiref mid-request.
    exec python -c '
import os
import signal
import sys
import threading
from wsgiref.simple_server import make_server

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # while starting up

import optuna_dashboard
from job.storage import open_storage

app = optuna_dashboard.wsgi(open_storage(os.environ["OPTUNA_STORAGE"]))
port = int(os.environ.get("DASHBOARD_PORT") or 8080)
with make_server("0.0.0.0", port, app) as server:
    stop = lambda *_: threading.Thread(target=server.shutdown, daemon=True).start()  # noqa: E731
    signal.signal(signal.SIGTERM, stop)
    print(f"entrypoint: optuna-dashboard on http://0.0.0.0:{port}/", file=sys.stderr, flush=True)
    server.serve_forever()
'
fi

exec python -m job "$verb" "$@"
