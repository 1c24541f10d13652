"""job/settings.py: every environment variable the product reads, parsed in one place."""

from __future__ import annotations

import re
from urllib.parse import quote, unquote, urlsplit

import pytest
from sqlalchemy.engine import make_url

from job import settings
from job.settings import EnvError
from job.storage import StorageURLError
from tests.support.proc import ROOT

ODD_PASSWORD = "p@ss:w/rd%40 #?&='\"é"  # needs percent-encoding in a URL, every char of it
POSTGRES = {
    "POSTGRES_HOST": "db.example",
    "POSTGRES_USER": "sms user",
    "POSTGRES_PASSWORD": ODD_PASSWORD,
    "POSTGRES_DB": "sms/db",
}


def test_every_variable_is_in_the_table_and_only_runtime_reads_the_environment() -> None:
    doc = settings.__doc__ or ""
    for name in settings.VARIABLES:
        assert re.search(rf"^    {name} ", doc, re.M), name
    for path in sorted((ROOT / "job").rglob("*.py")):
        if path.name != "settings.py":
            text = path.read_text()
            assert not re.search(r"\bos\.environ|\bgetenv\b|from os import", text), path.name


def test_storage_url_precedence() -> None:
    assert settings.storage_url({}) is None
    assert settings.storage_url({"POSTGRES_HOST": ""}) is None
    assert (
        settings.storage_url({"OPTUNA_STORAGE": "sqlite:///x.db", **POSTGRES}) == "sqlite:///x.db"
    )
    built = settings.storage_url(POSTGRES)
    assert built is not None and built.startswith("postgresql+psycopg2://")


def test_built_url_round_trips_an_odd_password() -> None:
    url = settings.storage_url(POSTGRES)
    assert url is not None
    assert ODD_PASSWORD not in url  # percent-encoded, every special character of it
    parsed = make_url(url)  # as SQLAlchemy (and Optuna) will read it
    assert parsed.password == ODD_PASSWORD
    assert (parsed.username, parsed.database) == ("sms user", "sms/db")
    assert (parsed.host, parsed.port) == ("db.example", 5432)
    parts = urlsplit(url)
    assert unquote(parts.password or "") == ODD_PASSWORD


def test_ipv6_host_is_bracketed() -> None:
    url = settings.storage_url({**POSTGRES, "POSTGRES_HOST": "fd00::1", "POSTGRES_PORT": "6432"})
    assert url is not None and "@[fd00::1]:6432/" in url
    assert (make_url(url).host, make_url(url).port) == ("fd00::1", 6432)
    already = settings.storage_url({**POSTGRES, "POSTGRES_HOST": "[fd00::1]"})
    assert already is not None and "@[fd00::1]:5432/" in already


@pytest.mark.parametrize(
    ("raw", "port"),
    [("", 5432), ("6543", 6543), ("tcp://10.96.0.12:5433", 5433), ("tcp://[fd00::9]:5434", 5434)],
)
def test_postgres_port_forms(raw: str, port: int) -> None:
    url = settings.storage_url({**POSTGRES, "POSTGRES_PORT": raw})
    assert url is not None and make_url(url).port == port


@pytest.mark.parametrize("raw", ["five", "tcp://10.0.0.1:", "0", "70000", "-1", "5432x"])
def test_bad_postgres_port_names_the_variable(raw: str) -> None:
    with pytest.raises(EnvError, match=r"^POSTGRES_PORT: .*" + re.escape(repr(raw))):
        settings.storage_url({**POSTGRES, "POSTGRES_PORT": raw})


@pytest.mark.parametrize("missing", ["POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"])
def test_missing_postgres_variable_is_named(missing: str) -> None:
    env = {k: v for k, v in POSTGRES.items() if k != missing}
    with pytest.raises(EnvError, match=rf"^{missing} is not set \(needed with POSTGRES_HOST"):
        settings.storage_url(env)
    with pytest.raises(EnvError, match=missing):
        settings.storage_url({**env, missing: ""})


def test_redact_masks_the_password_in_urls_and_messages() -> None:
    url = settings.storage_url(POSTGRES)
    assert url is not None
    shown = settings.redact(url)
    assert shown == "postgresql+psycopg2://sms%20user:***@db.example:5432/sms%2Fdb"
    assert settings.redact("postgresql://u:s3cret@[fd00::1]:5432/d") == (
        "postgresql://u:***@[fd00::1]:5432/d"
    )
    for url_ in ("sqlite:///x.db", "journal:///tmp/a b/study.journal", "postgresql://u@h/d"):
        assert settings.redact(url_) == url_
    # in an error message: the raw password and its encoded form, wherever they are
    encoded = urlsplit(url).password or ""
    message = f"FATAL: password {ODD_PASSWORD} rejected ({encoded})"
    masked = settings.redact(message, url)
    assert ODD_PASSWORD not in masked and encoded not in masked and "***" in masked
    assert settings.redact("no secret here", url) == "no secret here"


# pieces no URL or message here holds by chance: none of them may ever be shown
AMBIGUOUS = (
    "Qa1@Zb2",
    "Qa1/Zb2",
    "Qa1#Zb2",
    "Qa1?Zb2",
    "Qa1@Zb2/Xc3",
    "Qa1 Zb2@Xc3",
    "Qa1:Zb2@Xc3/Yd4?Ve5#Wf6",
)


@pytest.mark.parametrize("password", AMBIGUOUS)
def test_an_unencoded_password_is_never_shown_in_part_and_is_refused(password: str) -> None:
    """Parsers disagree on these (urllib ends the password at the authority's last "@",
    SQLAlchemy at its first; both end the authority at the first "/", "?" or "#"): the
    URL is refused at once (exit 2) and no piece of the password is ever shown."""
    from job.storage import check_storage_url

    url = f"postgresql+psycopg2://us:{password}@dbhost:5432/db"
    pieces = [p for p in re.split(r"[@/#? :]", password) if p]
    with pytest.raises(StorageURLError, match="percent-encode it") as caught:
        check_storage_url(url)
    for shown in (settings.redact(url), str(caught.value), settings.redact(f"see {url} now", url)):
        assert not [p for p in pieces if p in shown], shown
    assert settings.ambiguous_url(url)
    # percent-encoded, the same password is one URL to every reader, and masked whole
    encoded = f"postgresql+psycopg2://us:{quote(password, safe='')}@dbhost:5432/db"
    check_storage_url(encoded)
    assert settings.redact(encoded) == "postgresql+psycopg2://us:***@dbhost:5432/db"
    assert not settings.ambiguous_url(encoded)


def test_redact_works_from_the_url_s_parts() -> None:
    cases = {
        # no authority: an "@" in a path is no password
        "journal:///home/a@b/study.journal": "journal:///home/a@b/study.journal",
        "sqlite:////data/x@y.db": "sqlite:////data/x@y.db",
        # a user with an "@" (Azure's user@server), a password-like query parameter
        "postgresql://me@srv:pw@h/d": "postgresql://me@srv:***@h/d",
        "postgresql://u@h/d?sslmode=require&password=pw": (
            "postgresql://u@h/d?sslmode=require&password=***"
        ),
        "postgresql://u:pw@h/d?connect_timeout=3": "postgresql://u:***@h/d?connect_timeout=3",
        # an "@" past the authority: unsure, so everything before the last "@" is masked
        "postgresql://u:pw@h/d@b": "postgresql://***@b",
    }
    for url, shown in cases.items():
        assert settings.redact(url) == shown
        assert settings.redact(shown) == shown  # masking twice changes nothing
    # URLs inside a message, whatever surrounds them; the rest of the text as it was
    text = "failed: (postgresql://u:pw@h/d)\tthen 'mysql://v:pw2@h2/x', done"
    assert settings.redact(text) == (
        "failed: (postgresql://u:***@h/d)\tthen 'mysql://v:***@h2/x', done"
    )


def test_db_wait_s() -> None:
    assert settings.db_wait_s({}) == 120.0
    assert settings.db_wait_s({"SMS_DB_WAIT_S": "0"}) == 0.0
    assert settings.db_wait_s({"SMS_DB_WAIT_S": " 2.5 "}) == 2.5
    for raw in ("soon", "-1", "inf", "nan", "1e3", "1."):
        with pytest.raises(EnvError, match=r"^SMS_DB_WAIT_S: .*number of seconds"):
            settings.db_wait_s({"SMS_DB_WAIT_S": raw})


def test_metrics_port() -> None:
    assert settings.metrics_port(9100, {}) == 9100
    assert settings.metrics_port(None, {"SMS_METRICS_PORT": ""}) is None
    assert settings.metrics_port(9100, {"SMS_METRICS_PORT": " 9200 "}) == 9200
    assert settings.metrics_port(9100, {"SMS_METRICS_PORT": "0"}) == 0
    assert settings.metrics_port(9100, {"SMS_METRICS_PORT": "Off"}) is None
    for raw in ("nine", "9100.5", "-1", "70000"):
        with pytest.raises(EnvError, match=r"^SMS_METRICS_PORT: "):
            settings.metrics_port(9100, {"SMS_METRICS_PORT": raw})


def test_torch_threads() -> None:
    assert settings.torch_threads({}) is None
    assert settings.torch_threads({"SMS_TORCH_THREADS": "3"}) == 3
    for raw in ("0", "two", "-2", "1.5"):
        with pytest.raises(EnvError, match=r"^SMS_TORCH_THREADS: "):
            settings.torch_threads({"SMS_TORCH_THREADS": raw})


def test_worker_index() -> None:
    assert settings.worker_index({}) == 0
    assert settings.worker_index({"SMS_WORKER_INDEX": "3"}) == 3
    both = {"JOB_COMPLETION_INDEX": "5", "SMS_WORKER_INDEX": "3"}
    assert settings.worker_index(both) == 5  # the Indexed Job's index wins
    assert settings.worker_index({"JOB_COMPLETION_INDEX": "", "SMS_WORKER_INDEX": "2"}) == 2
    for name in ("JOB_COMPLETION_INDEX", "SMS_WORKER_INDEX"):
        with pytest.raises(EnvError, match=rf"^{name}: .*'x'"):
            settings.worker_index({name: "x"})


def test_code_version_and_dashboard_port() -> None:
    assert settings.code_version({}) is None
    assert settings.code_version({"SMS_CODE_VERSION": "1.2.3+abc"}) == "1.2.3+abc"
    assert settings.dashboard_port({}) == 8080
    assert settings.dashboard_port({"DASHBOARD_PORT": "9000"}) == 9000
    with pytest.raises(EnvError, match=r"^DASHBOARD_PORT: .*'http'"):
        settings.dashboard_port({"DASHBOARD_PORT": "http"})


def test_errors_are_value_errors_of_one_line() -> None:
    assert issubclass(EnvError, ValueError)
    with pytest.raises(EnvError) as info:
        settings.storage_url({**POSTGRES, "POSTGRES_PORT": "x\ny"})
    assert "\n" not in str(info.value).replace("\\n", "")


