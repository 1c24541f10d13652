#!/usr/bin/env bash
# Container entry point: entrypoint.sh ROLE [ARGS...] (-h for the roles).
#
# Maps a role to a `python -m job` verb and replaces itself with Python (exec), so that
# SIGTERM reaches Python directly. Everything else is Python's: the storage URL built
# from POSTGRES_*, the wait for the database, the dashboard (job/settings.py lists every
# environment variable). Exit codes: 2 unknown role, else Python's (2 bad input,
# 1 database not reachable, 143 stopped by SIGTERM).
set -euo pipefail

usage() {
    printf '%s\n' \
        'usage: entrypoint.sh ROLE [ARGS...]' \
        '' \
        'roles:' \
        '  worker ARGS     python -m job search ARGS: one search worker until the budget is spent' \
        '  collect ARGS    python -m job collect ARGS: Pareto front, selection, report' \
        '  research ARGS   python -m job research ARGS: a new study version when the data changed' \
        '  dashboard ARGS  python -m job dashboard --host 0.0.0.0 ARGS: optuna-dashboard on' \
        '                  the study, port DASHBOARD_PORT (default 8080)' \
        '  exporter ARGS   python -m job exporter --host 0.0.0.0 ARGS: the study'"'"'s figures for' \
        '                  Prometheus on /metrics, port 9101 unless --port' \
        '  VERB ARGS       any python -m job verb: search, run, collect, status, train, research,' \
        '                  augment-preview, dashboard, exporter (python -m job VERB --help for' \
        '                  its options)' \
        '' \
        'environment (job/settings.py has them all):' \
        '  OPTUNA_STORAGE      storage URL; when unset and POSTGRES_HOST is set, it is built from' \
        '                      POSTGRES_HOST, POSTGRES_PORT (5432), POSTGRES_USER,' \
        '                      POSTGRES_PASSWORD and POSTGRES_DB' \
        '  SMS_DB_WAIT_S       seconds to wait for a PostgreSQL storage to accept connections' \
        '                      before giving up with exit 1 (default 120; 0: do not wait)' \
        '  DASHBOARD_PORT      the dashboard'"'"'s port (default 8080)'
}

role="${1:-}"
case "$role" in
    -h | --help | help)
        usage
        exit 0
        ;;
    worker) verb=search ;;
    dashboard) verb=dashboard ;;
    exporter) verb=exporter ;;
    search | run | collect | status | train | research | augment-preview) verb="$role" ;;
    *)
        printf 'entrypoint: %s\n' "unknown role '$role' (expected worker, collect, research, dashboard or a python -m job verb)" >&2
        exit 2
        ;;
esac
shift

# `python -m job` and `import job` work from any working directory: the package sits
# beside this script (/app in the image, the repository root in a checkout).
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"

# In a pod the dashboard and the exporter must listen on every address (a Service or
# Prometheus reaches them there); `python -m job dashboard|exporter` alone listens on
# 127.0.0.1. A later --host still wins.
if [[ "$role" == dashboard || "$role" == exporter ]]; then
    set -- --host 0.0.0.0 "$@"
fi

exec python -m job "$verb" "$@"
