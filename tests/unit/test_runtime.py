"""job/settings.py: every environment variable the product reads, parsed in one place."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pytest
from sqlalchemy.engine import make_url

from job import settings, urls
from job.run.local import RunOptions, worker_command
from job.settings import EnvError, Settings
from job.storage import StorageURLError
from tests.support.proc import ODD_PASSWORD, POSTGRES, ROOT


def test_every_variable_is_in_the_table_and_only_runtime_reads_the_environment() -> None:
    doc = settings.__doc__ or ""
    for name in settings.VARIABLES:
        assert re.search(rf"^    {name} ", doc, re.M), name
    for path in sorted((ROOT / "job").rglob("*.py")):
        # job/testing: the throwaway servers of tests and benches, not the product's runtime
        if path.name != "settings.py" and "testing" not in path.relative_to(ROOT).parts:
            text = path.read_text()
            assert not re.search(r"\bos\.environ|\bgetenv\b|from os import", text), path.name


def test_storage_url_precedence() -> None:
    assert Settings({}).storage_url() is None
    assert Settings({"POSTGRES_HOST": ""}).storage_url() is None
    assert (
        Settings({"OPTUNA_STORAGE": "sqlite:///x.db", **POSTGRES}).storage_url() == "sqlite:///x.db"
    )
    built = Settings(POSTGRES).storage_url()
    assert built is not None and built.startswith("postgresql+psycopg2://")


def test_built_url_round_trips_an_odd_password() -> None:
    url = Settings(POSTGRES).storage_url()
    assert url is not None
    assert ODD_PASSWORD not in url  # percent-encoded, every special character of it
    parsed = make_url(url)  # as SQLAlchemy (and Optuna) will read it
    assert parsed.password == ODD_PASSWORD
    assert (parsed.username, parsed.database) == ("sms user", "sms/db")
    assert (parsed.host, parsed.port) == ("db.example", 5432)
    parts = urlsplit(url)
    assert unquote(parts.password or "") == ODD_PASSWORD


def test_ipv6_host_is_bracketed() -> None:
    url = Settings({**POSTGRES, "POSTGRES_HOST": "fd00::1", "POSTGRES_PORT": "6432"}).storage_url()
    assert url is not None and "@[fd00::1]:6432/" in url
    assert (make_url(url).host, make_url(url).port) == ("fd00::1", 6432)
    already = Settings({**POSTGRES, "POSTGRES_HOST": "[fd00::1]"}).storage_url()
    assert already is not None and "@[fd00::1]:5432/" in already


@pytest.mark.parametrize(
    ("raw", "port"),
    [("", 5432), ("6543", 6543), ("tcp://10.96.0.12:5433", 5433), ("tcp://[fd00::9]:5434", 5434)],
)
def test_postgres_port_forms(raw: str, port: int) -> None:
    url = Settings({**POSTGRES, "POSTGRES_PORT": raw}).storage_url()
    assert url is not None and make_url(url).port == port


@pytest.mark.parametrize("raw", ["five", "tcp://10.0.0.1:", "0", "70000", "-1", "5432x"])
def test_bad_postgres_port_names_the_variable(raw: str) -> None:
    with pytest.raises(EnvError, match=r"^POSTGRES_PORT: .*" + re.escape(repr(raw))):
        Settings({**POSTGRES, "POSTGRES_PORT": raw}).storage_url()


@pytest.mark.parametrize("missing", ["POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"])
def test_missing_postgres_variable_is_named(missing: str) -> None:
    env = {k: v for k, v in POSTGRES.items() if k != missing}
    with pytest.raises(EnvError, match=rf"^{missing} is not set \(needed with POSTGRES_HOST"):
        Settings(env).storage_url()
    with pytest.raises(EnvError, match=missing):
        Settings({**env, missing: ""}).storage_url()


def test_redact_masks_the_password_in_urls_and_messages() -> None:
    url = Settings(POSTGRES).storage_url()
    assert url is not None
    shown = urls.redact(url)
    assert shown == "postgresql+psycopg2://sms%20user:***@db.example:5432/sms%2Fdb"
    assert urls.redact("postgresql://u:s3cret@[fd00::1]:5432/d") == (
        "postgresql://u:***@[fd00::1]:5432/d"
    )
    for url_ in ("sqlite:///x.db", "journal:///tmp/a b/study.journal", "postgresql://u@h/d"):
        assert urls.redact(url_) == url_
    # in an error message: the raw password and its encoded form, wherever they are
    encoded = urlsplit(url).password or ""
    message = f"FATAL: password {ODD_PASSWORD} rejected ({encoded})"
    masked = urls.redact(message, url)
    assert ODD_PASSWORD not in masked and encoded not in masked and "***" in masked
    assert urls.redact("no secret here", url) == "no secret here"


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
    for shown in (urls.redact(url), str(caught.value), urls.redact(f"see {url} now", url)):
        assert not [p for p in pieces if p in shown], shown
    assert urls.ambiguous_url(url)
    # percent-encoded, the same password is one URL to every reader, and masked whole
    encoded = f"postgresql+psycopg2://us:{quote(password, safe='')}@dbhost:5432/db"
    check_storage_url(encoded)
    assert urls.redact(encoded) == "postgresql+psycopg2://us:***@dbhost:5432/db"
    assert not urls.ambiguous_url(encoded)


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
        assert urls.redact(url) == shown
        assert urls.redact(shown) == shown  # masking twice changes nothing
    # URLs inside a message, whatever surrounds them; the rest of the text as it was
    text = "failed: (postgresql://u:pw@h/d)\tthen 'mysql://v:pw2@h2/x', done"
    assert urls.redact(text) == (
        "failed: (postgresql://u:***@h/d)\tthen 'mysql://v:***@h2/x', done"
    )


def test_db_wait_s() -> None:
    assert Settings({}).db_wait_s() == 120.0
    assert Settings({"SMS_DB_WAIT_S": "0"}).db_wait_s() == 0.0
    assert Settings({"SMS_DB_WAIT_S": " 2.5 "}).db_wait_s() == 2.5
    for raw in ("soon", "-1", "inf", "nan", "1e3", "1."):
        with pytest.raises(EnvError, match=r"^SMS_DB_WAIT_S: .*number of seconds"):
            Settings({"SMS_DB_WAIT_S": raw}).db_wait_s()


def test_metrics_port() -> None:
    assert Settings({}).metrics_port(9100) == 9100
    assert Settings({"SMS_METRICS_PORT": ""}).metrics_port(None) is None
    assert Settings({"SMS_METRICS_PORT": " 9200 "}).metrics_port(9100) == 9200
    assert Settings({"SMS_METRICS_PORT": "0"}).metrics_port(9100) == 0
    assert Settings({"SMS_METRICS_PORT": "Off"}).metrics_port(9100) is None
    for raw in ("nine", "9100.5", "-1", "70000"):
        with pytest.raises(EnvError, match=r"^SMS_METRICS_PORT: "):
            Settings({"SMS_METRICS_PORT": raw}).metrics_port(9100)


def test_torch_threads() -> None:
    assert Settings({}).torch_threads() is None
    assert Settings({"SMS_TORCH_THREADS": "3"}).torch_threads() == 3
    for raw in ("0", "two", "-2", "1.5"):
        with pytest.raises(EnvError, match=r"^SMS_TORCH_THREADS: "):
            Settings({"SMS_TORCH_THREADS": raw}).torch_threads()


def test_worker_index() -> None:
    assert Settings({}).worker_index() == 0
    assert Settings({"SMS_WORKER_INDEX": "3"}).worker_index() == 3
    both = {"JOB_COMPLETION_INDEX": "5", "SMS_WORKER_INDEX": "3"}
    assert Settings(both).worker_index() == 5  # the Indexed Job's index wins
    assert Settings({"JOB_COMPLETION_INDEX": "", "SMS_WORKER_INDEX": "2"}).worker_index() == 2
    for name in ("JOB_COMPLETION_INDEX", "SMS_WORKER_INDEX"):
        with pytest.raises(EnvError, match=rf"^{name}: .*'x'"):
            Settings({name: "x"}).worker_index()


def test_code_version_and_dashboard_port() -> None:
    assert Settings({}).code_version() is None
    assert Settings({"SMS_CODE_VERSION": "1.2.3+abc"}).code_version() == "1.2.3+abc"
    assert Settings({}).dashboard_port() == 8080
    assert Settings({"DASHBOARD_PORT": "9000"}).dashboard_port() == 9000
    with pytest.raises(EnvError, match=r"^DASHBOARD_PORT: .*'http'"):
        Settings({"DASHBOARD_PORT": "http"}).dashboard_port()


def test_errors_are_value_errors_of_one_line() -> None:
    assert issubclass(EnvError, ValueError)
    with pytest.raises(EnvError) as info:
        Settings({**POSTGRES, "POSTGRES_PORT": "x\ny"}).storage_url()
    assert "\n" not in str(info.value).replace("\\n", "")


def test_run_passes_a_password_url_in_the_environment_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """argv is visible to every process on the machine (`ps`): no password there."""
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "7")  # `run` inside a pod: not inherited
    url = settings.postgres_url("db", 5432, "sms", ODD_PASSWORD, "sms")
    options = RunOptions(tmp_path / "c.yaml", 3, tmp_path, url, "s", metrics_port=9100)
    for index in range(3):
        cmd, env = worker_command(options, index)
        argv = " ".join(cmd)
        assert "postgresql" not in argv and "--storage" not in cmd
        assert ODD_PASSWORD not in argv and (urlsplit(url).password or "") not in argv
        assert env["OPTUNA_STORAGE"] == url
        assert Settings(env).storage_url() == url and Settings(env).worker_index() == index
        assert Settings(env).metrics_port(None) == 9100 + index
        assert Settings(env).torch_threads() is not None
