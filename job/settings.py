"""The runtime contract: every environment variable the product reads, parsed here.

No other module of `job` reads the environment; `job.run.local` writes its children's with
the names below. Each value is parsed when it is needed (a bad SMS_METRICS_PORT does not
stop `status`), and a bad one is an `EnvError`: one line naming the variable, exit 2.
An empty value counts as unset.

    variable              default          meaning
    OPTUNA_STORAGE        unset            the study's storage URL (below --storage, above
                                           study.storage in the config)
    POSTGRES_HOST         unset            with OPTUNA_STORAGE unset: build the URL from
                                           POSTGRES_*; an IPv6 address is bracketed
    POSTGRES_PORT         5432             the server's port; Kubernetes' service-link form
                                           tcp://IP:PORT is accepted
    POSTGRES_USER         (required)       login role, with POSTGRES_HOST
    POSTGRES_PASSWORD     (required)       its password, any characters; never printed;
                                           the example's `change-me` is refused
    POSTGRES_DB           (required)       database name, with POSTGRES_HOST
    SMS_DB_WAIT_S         120              seconds a verb waits for a PostgreSQL storage to
                                           accept connections; 0: no wait
    SMS_METRICS_PORT      the config's     a worker's metrics port (0: any free one) or
                                           `off`; overrides study.metrics_port
    SMS_TORCH_THREADS     torch's default  torch CPU threads of a worker (`run` sets it);
                                           with SMS_WORKERS_PER_POD: the pod's, split
    SMS_WORKERS_PER_POD   1                `search`'s worker processes in one pod, sharing
                                           its device (1-64; `search --procs` wins;
                                           job.run.pod)
    JOB_COMPLETION_INDEX  unset            the worker's index in an Indexed Job (pods)
    SMS_WORKER_INDEX      0                the worker's index without one (`run` sets it)
    SMS_CODE_VERSION      version+git sha  the code version recorded on every trial
    DASHBOARD_PORT        8080             the `dashboard` verb's port (0: any free one)
    SMS_STUDY             study.name       the study (version) a role works on, below
                                           --study: `research --launch` sets it on the
                                           Jobs of each version it starts
    SMS_NAMESPACE         see job.run.launch   the namespace `research --launch` creates Jobs
                                           in (pods: the downward API's metadata.namespace)
    SMS_PUSHGATEWAY       unset            a Pushgateway's http(s)://host:port: workers,
                                           collect and research push their final metrics
    SMS_LOG_FORMAT        text             `text` (plain lines) or `json` (one object per
                                           line; the manifests' default), job.logs

Read by libraries, not here: KUBECONFIG and KUBERNETES_SERVICE_HOST/PORT (the
kubernetes client of `research --launch`, job.run.launch).

Passwords: `postgres_url` is the one place that puts a password into a URL, and `redact`
the one that masks it again, in URLs and in error messages alike.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from job.errors import BadInput
from job.urls import redact

OPTUNA_STORAGE = "OPTUNA_STORAGE"
POSTGRES_HOST = "POSTGRES_HOST"
POSTGRES_PORT = "POSTGRES_PORT"
POSTGRES_USER = "POSTGRES_USER"
POSTGRES_PASSWORD = "POSTGRES_PASSWORD"
POSTGRES_DB = "POSTGRES_DB"
SMS_DB_WAIT_S = "SMS_DB_WAIT_S"
SMS_METRICS_PORT = "SMS_METRICS_PORT"
SMS_TORCH_THREADS = "SMS_TORCH_THREADS"
SMS_WORKERS_PER_POD = "SMS_WORKERS_PER_POD"
JOB_COMPLETION_INDEX = "JOB_COMPLETION_INDEX"
SMS_WORKER_INDEX = "SMS_WORKER_INDEX"
SMS_CODE_VERSION = "SMS_CODE_VERSION"
DASHBOARD_PORT = "DASHBOARD_PORT"
SMS_STUDY = "SMS_STUDY"
SMS_NAMESPACE = "SMS_NAMESPACE"
SMS_PUSHGATEWAY = "SMS_PUSHGATEWAY"
SMS_LOG_FORMAT = "SMS_LOG_FORMAT"
OMP_NUM_THREADS = "OMP_NUM_THREADS"  # not read here: written for `run`'s workers' OpenMP

DEFAULT_POSTGRES_PORT = 5432
EXAMPLE_PASSWORD = "change-me"  # k8s/base/database.env.example's: refused
DEFAULT_DB_WAIT_S = 120.0
DEFAULT_DASHBOARD_PORT = 8080
LOG_FORMATS = ("text", "json")
MAX_WORKERS_PER_POD = 64

VARIABLES: tuple[str, ...] = (
    OPTUNA_STORAGE,
    POSTGRES_HOST,
    POSTGRES_PORT,
    POSTGRES_USER,
    POSTGRES_PASSWORD,
    POSTGRES_DB,
    SMS_DB_WAIT_S,
    SMS_METRICS_PORT,
    SMS_TORCH_THREADS,
    SMS_WORKERS_PER_POD,
    JOB_COMPLETION_INDEX,
    SMS_WORKER_INDEX,
    SMS_CODE_VERSION,
    DASHBOARD_PORT,
    SMS_STUDY,
    SMS_NAMESPACE,
    SMS_PUSHGATEWAY,
    SMS_LOG_FORMAT,
)

Env = Mapping[str, str]


class EnvError(BadInput, ValueError):
    """A bad or missing environment variable; the message names it; exit 2."""


def _port(name: str, raw: str, low: int = 0) -> int:
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= 65535:
        raise EnvError(f"{name}: expected a port number ({low}-65535), got {raw!r}")
    return int(raw)


# A worker's index: an Indexed Job's pods (at most 100,000) times their K workers (at most
# MAX_WORKERS_PER_POD), with room; it offsets the sampler's seed (job.search.worker).
MAX_WORKER_INDEX = 9_999_999


def _index(name: str, raw: str) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 7:
        shown = repr(raw) if len(raw) <= 20 else f"{len(raw)} characters, {raw[:8]!r}…"
        raise EnvError(f"{name}: expected an integer 0..{MAX_WORKER_INDEX}, got {shown}")
    return int(raw)


# --- the storage URL and its password ------------------------------------------------


def postgres_url(host: str, port: int, user: str, password: str, db: str) -> str:
    """The one function that puts a password into a URL: user, password and database
    percent-encoded, so any characters work (SQLAlchemy decodes them), an IPv6 host
    bracketed."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    user, password, db = (quote(s, safe="") for s in (user, password, db))
    return f"postgresql+psycopg2://{user}:{password}@{host}:{port}/{db}"


MAX_DB_WAIT_S = 86400.0


@dataclass(frozen=True)
class Settings:
    """The environment as typed values: one attribute per variable of the table above,
    each parsed when read (a bad SMS_METRICS_PORT does not stop `status`), a bad one an
    `EnvError` naming it. `current()` reads this process's environment; tests and the
    pod launcher pass any mapping."""

    env: Env

    def get(self, name: str) -> str:
        """The variable's value, stripped; "" when unset."""
        return self.env.get(name, "").strip()

    def storage_url(self) -> str | None:
        """OPTUNA_STORAGE; else, when POSTGRES_HOST is set, the URL built from POSTGRES_*
        (POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB then required); else None. The
        values are taken as they are, spaces included: they are the server's."""
        raw = self.env
        if url := raw.get(OPTUNA_STORAGE):
            return url
        host = raw.get(POSTGRES_HOST)
        if not host:
            return None
        for name in (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB):
            if not raw.get(name):
                raise EnvError(f"{name} is not set (needed with {POSTGRES_HOST} to build the URL)")
        if raw[POSTGRES_PASSWORD] == EXAMPLE_PASSWORD:  # a deploy that skipped the step
            raise EnvError(
                f"{POSTGRES_PASSWORD}: still the example's value; set a real password in "
                "k8s/base/database.env (docs/OPERATING.md, 2. The database password)"
            )
        port = raw.get(POSTGRES_PORT) or str(DEFAULT_POSTGRES_PORT)
        # Kubernetes' service links set POSTGRES_PORT=tcp://IP:PORT for a Service named
        # "postgres" (unless enableServiceLinks is false): the port is after the last colon.
        number = port.rpartition(":")[2] if port.startswith("tcp://") else port
        if not number.isascii() or not number.isdigit() or not 1 <= int(number) <= 65535:
            raise EnvError(
                f"{POSTGRES_PORT}: expected a port number or tcp://IP:PORT, got {port!r}"
            )
        return postgres_url(
            host, int(number), raw[POSTGRES_USER], raw[POSTGRES_PASSWORD], raw[POSTGRES_DB]
        )

    def db_wait_s(self) -> float:
        """SMS_DB_WAIT_S: seconds to wait for a PostgreSQL storage; 0 means do not wait."""
        raw = self.get(SMS_DB_WAIT_S)
        if not raw:
            return DEFAULT_DB_WAIT_S
        head, dot, tail = raw.partition(".")
        if not (
            head.isascii() and head.isdigit() and (not dot or (tail.isascii() and tail.isdigit()))
        ):
            raise EnvError(f"{SMS_DB_WAIT_S}: expected a number of seconds (>= 0), got {raw!r}")
        value = float(raw)
        if value > MAX_DB_WAIT_S:  # a sleep past this overflows (and no outage lasts a day)
            raise EnvError(
                f"{SMS_DB_WAIT_S}: must be at most {MAX_DB_WAIT_S:.0f} s, got {raw[:20]}"
            )
        return value

    def metrics_port(self, config_port: int | None) -> int | None:
        """The port to serve a worker's metrics on, or None for off: SMS_METRICS_PORT
        overrides the config (pods set it; `run` sets it per worker): unset → `config_port`;
        "off" → None; else 0-65535 (0 = any free port)."""
        raw = self.get(SMS_METRICS_PORT)
        if not raw:
            return config_port
        if raw.lower() == "off":
            return None
        if not raw.isascii() or not raw.isdigit() or int(raw) > 65535:
            raise EnvError(
                f"{SMS_METRICS_PORT}: expected a port number (0-65535) or 'off', got {raw!r}"
            )
        return int(raw)

    def torch_threads(self) -> int | None:
        """SMS_TORCH_THREADS: torch's CPU threads, >= 1; None: torch's default."""
        raw = self.get(SMS_TORCH_THREADS)
        if not raw:
            return None
        if not raw.isascii() or not raw.isdigit() or int(raw) < 1:
            raise EnvError(f"{SMS_TORCH_THREADS}: expected a number of threads (>= 1), got {raw!r}")
        return int(raw)

    def workers_per_pod(self) -> int:
        """SMS_WORKERS_PER_POD: `search`'s worker processes in this pod, 1..64; 1 when unset."""
        raw = self.get(SMS_WORKERS_PER_POD)
        if not raw:
            return 1
        if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_WORKERS_PER_POD:
            raise EnvError(
                f"{SMS_WORKERS_PER_POD}: expected an integer 1..{MAX_WORKERS_PER_POD} "
                f"(worker processes per pod), got {raw!r}"
            )
        return int(raw)

    def worker_index(self) -> int:
        """The pod's index in an Indexed Job (JOB_COMPLETION_INDEX), else the local worker's
        (SMS_WORKER_INDEX), else 0."""
        for name in (JOB_COMPLETION_INDEX, SMS_WORKER_INDEX):
            if raw := self.get(name):
                return _index(name, raw)
        return 0

    def code_version(self) -> str | None:
        """SMS_CODE_VERSION, or None: the caller then asks git."""
        return self.get(SMS_CODE_VERSION) or None

    def dashboard_port(self) -> int:
        """DASHBOARD_PORT: the dashboard's port (0 = any free one)."""
        raw = self.get(DASHBOARD_PORT)
        return _port(DASHBOARD_PORT, raw) if raw else DEFAULT_DASHBOARD_PORT

    def study_name(self) -> str | None:
        """SMS_STUDY: the study (version) to work on, or None: --study, then study.name.
        Checked by the caller with the rule of study names (job.config)."""
        return self.get(SMS_STUDY) or None

    def namespace(self) -> str | None:
        """SMS_NAMESPACE: where `research --launch` creates Jobs, or None (job.run.launch looks
        further: the pod's service account, then the kubeconfig)."""
        return self.get(SMS_NAMESPACE) or None

    def pushgateway(self) -> str | None:
        """SMS_PUSHGATEWAY: the Pushgateway's base URL (http or https, a host, an optional
        port, no query), or None: no push. Checked before the first trial, not at the push."""
        raw = self.get(SMS_PUSHGATEWAY)
        if not raw:
            return None
        try:
            parts = urlsplit(raw)
            parts.port  # noqa: B018  # raises ValueError on a port out of range or not a number
        except ValueError as exc:
            raise EnvError(f"{SMS_PUSHGATEWAY}: {exc}, got {redact(raw)!r}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EnvError(
                f"{SMS_PUSHGATEWAY}: expected http(s)://host[:port], got {redact(raw)!r}"
            )
        if parts.query or parts.fragment:
            raise EnvError(f"{SMS_PUSHGATEWAY}: no query or fragment, got {redact(raw)!r}")
        return raw.rstrip("/")

    def postgres_password(self) -> str:
        """POSTGRES_PASSWORD as set, "" when unset: job.logs masks it in every line."""
        return self.get(POSTGRES_PASSWORD)

    def log_format(self) -> str:
        """SMS_LOG_FORMAT: `text` (the default) or `json`, any case."""
        raw = self.get(SMS_LOG_FORMAT).lower() or "text"
        if raw not in LOG_FORMATS:
            raise EnvError(
                f"{SMS_LOG_FORMAT}: expected one of {', '.join(LOG_FORMATS)}, "
                f"got {self.get(SMS_LOG_FORMAT)!r}"
            )
        return raw


def current() -> Settings:
    """This process's environment, as read now."""
    return Settings(os.environ)


def child_env(updates: Mapping[str, str], drop: tuple[str, ...] = ()) -> dict[str, str]:
    """This process's environment for a child process: `drop` removed, `updates` set."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return env | dict(updates)
