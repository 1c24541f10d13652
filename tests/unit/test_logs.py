"""job/logs.py: text stays print's bytes; json makes every line one record; no password."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
from pathlib import Path
from urllib.parse import quote

import pytest

from job import logs, settings
from job.settings import EnvError
from tests.support.logs import PASSWORD, records

pytestmark = pytest.mark.usefixtures("fresh_logs")

JSON = {"SMS_LOG_FORMAT": "json", "POSTGRES_PASSWORD": PASSWORD}


def messages(text: str) -> list[str]:
    return [record["message"] for record in records(text)]


@pytest.mark.parametrize("env", [{}, {"SMS_LOG_FORMAT": "text"}, {"SMS_LOG_FORMAT": " "}])
def test_text_is_the_default_and_byte_identical_to_print(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    stdout = sys.stdout
    logs.setup("search", env)
    assert not logs.json_enabled() and sys.stdout is stdout
    print("trial 1: accuracy 0.91", "x", sep="\t", end="\r\n")
    logs.event("trial_done", "trial 2: done é", trial=2, accuracy=float("nan"))
    logs.event("slow", "warning: slow storage", level="warning")
    logs.event("failed", "error: trial 3 failed\n  because", level="error")
    assert capsys.readouterr() == (
        "trial 1: accuracy 0.91\tx\r\ntrial 2: done é\n",
        "warning: slow storage\nerror: trial 3 failed\n  because\n",
    )


def test_json_makes_every_printed_line_one_record(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("search", JSON)
    assert logs.json_enabled()
    print("trial 1")
    print("two\nlines")
    print()  # a blank line carries nothing: dropped
    sys.stdout.write("part")
    sys.stdout.flush()  # complete lines only: "part" waits for its newline
    sys.stdout.write("ial\n")
    sys.stdout.write("10%\r50%\r100%\n")  # a progress bar: what it shows last
    sys.stdout.write("bar\r   \rdone\n")  # erased, then a line of its own
    sys.stdout.write("\x1b[32mgreen\x1b[0m\n")
    print("error: boom", file=sys.stderr)
    print("Traceback (most recent call last):", file=sys.stderr)
    sys.stdout.write("left without a newline")
    logs.reset()  # writes what is still waiting
    out, err = capsys.readouterr()
    assert messages(out) == [
        "trial 1", "two", "lines", "partial", "100%", "done", "green", "left without a newline"
    ]  # fmt: skip
    assert {r["role"] for r in records(out + err)} == {"search"}
    assert [(r["level"], r["event"], r["message"]) for r in records(err)] == [
        ("error", "error", "error: boom"),
        ("warning", "message", "Traceback (most recent call last):"),
    ]
    assert all(r["study"] is None and r["trial"] is None for r in records(out + err))


def test_lines_from_threads_never_mix(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("search", JSON)

    def chatter(n: int) -> None:
        for i in range(200):
            print(f"thread {n}", f"line {i}")  # four writes: text, sep, text, newline
            sys.stderr.write(f"heartbeat {n}")
            sys.stderr.write(f" {i}\n")

    threads = [threading.Thread(target=chatter, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out, err = capsys.readouterr()
    assert sorted(messages(out)) == sorted(
        f"thread {n} line {i}" for n in range(4) for i in range(200)
    )
    assert sorted(messages(err)) == sorted(
        f"heartbeat {n} {i}" for n in range(4) for i in range(200)
    )


def test_a_partial_line_waits_for_its_own_threads_newline(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.setup("search", JSON)
    started, finish = threading.Event(), threading.Event()

    def heartbeat() -> None:
        sys.stdout.write("heartbeat")  # half a line, then another thread prints a whole one
        started.set()
        finish.wait(10)
        sys.stdout.write(" ok\n")

    thread = threading.Thread(target=heartbeat)
    thread.start()
    started.wait(10)
    print("trial 1")
    finish.set()
    thread.join()
    assert messages(capsys.readouterr().out) == ["trial 1", "heartbeat ok"]


def test_logging_becomes_records(capsys: pytest.CaptureFixture[str]) -> None:
    # warnings.warn: in the subprocess test, as pytest catches warnings here
    early = logging.getLogger("sms.test.early")  # like optuna's: made before setup
    early_handler = logging.StreamHandler(sys.stderr)
    early.addHandler(early_handler)
    try:
        logs.setup("collect", JSON)
        early.warning("disk almost full")
        late = logging.getLogger("sms.test.late")
        late_handler = logging.StreamHandler()  # sys.stderr now: the wrapper
        late_handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
        late.addHandler(late_handler)
        late.error("cannot reach %s", "db")
        late.removeHandler(late_handler)
        logs.reset()
        assert early_handler.stream is sys.stderr  # given back
    finally:
        early.removeHandler(early_handler)
    err = capsys.readouterr().err
    assert [(r["level"], r["message"]) for r in records(err)] == [
        ("warning", "disk almost full"),
        ("error", "ERROR:sms.test.late:cannot reach db"),
    ]


def test_bound_fields_and_event_fields(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("search", JSON)
    logs.bind(study="s1", worker=2)
    with logs.bound(trial=7, worker=5):
        logs.event(
            "trial_done",
            "trial 7 done",
            accuracy=0.9,
            loss=float("nan"),
            size=float("inf"),
            tags=("a", 1),
            path=Path("/tmp/x"),
        )
        print("from the trial")
        logs.event("trial_failed", "error: trial 7 failed", level="error", reason="oom")
    print("between trials")
    logs.unbind("worker", "not-bound")
    print("unbound")
    out, err = capsys.readouterr()
    assert "NaN" not in out and "Infinity" not in out
    done, plain, between, unbound = records(out)
    assert (done["study"], done["trial"], done["event"]) == ("s1", 7, "trial_done")
    assert done["fields"] == {
        "worker": 5, "accuracy": 0.9, "loss": None, "size": None, "tags": ["a", 1], "path": "/tmp/x"
    }  # fmt: skip
    assert (plain["trial"], plain["event"], plain["fields"]) == (7, "message", {"worker": 5})
    assert (between["trial"], between["fields"]) == (None, {"worker": 2})
    assert (unbound["study"], unbound["fields"]) == ("s1", {})
    [failed] = records(err)
    assert (failed["level"], failed["event"], failed["fields"]) == ("error", "trial_failed", {
        "worker": 5, "reason": "oom"
    })  # fmt: skip


def test_event_follows_a_redirected_stdout() -> None:
    logs.setup("status", JSON)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        logs.event("summary", "3 trials", done=3)
    [record] = records(buffer.getvalue())
    assert (record["event"], record["fields"]) == ("summary", {"done": 3})


@pytest.mark.parametrize(
    ("stream", "line", "level", "event"),
    [
        ("out", "trial 1 done", "info", "message"),
        ("out", "error: bad", "error", "error"),
        ("out", "warning: slow", "warning", "warning"),
        ("out", "Warning: capitalised", "warning", "warning"),
        ("err", "stopping", "warning", "message"),
        ("err", "error: bad", "error", "error"),
        ("err", "CRITICAL:root:gone", "error", "error"),
        ("err", "[W 2025-01-31 12:00:00,000] optuna says", "warning", "warning"),
        ("err", "[I 2025-01-31 12:00:00,000] optuna informs", "info", "message"),
        ("err", "INFO:root:fine", "info", "message"),
    ],
)
def test_level_rule(
    stream: str, line: str, level: str, event: str, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.setup("run", JSON)
    print(line, file=sys.stdout if stream == "out" else sys.stderr)
    out, err = capsys.readouterr()
    [record] = records(out if stream == "out" else err)
    assert (record["level"], record["event"], record["message"]) == (level, event, line)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_password_never_appears(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("search", {**JSON, "SMS_LOG_FORMAT": fmt})
    url = settings.postgres_url("db.example", 5432, "sms", PASSWORD, "sms")
    assert quote(PASSWORD, safe="") in url
    other = "postgresql://u:hunter22@h/db"  # a URL with a password not in the environment
    logs.event("storage", f"storage {url}", url=url, extra={"nested": [other]})
    logs.event("login", f"error: login failed with {PASSWORD}", level="error", raw=PASSWORD)
    logs.event("other", other)
    if fmt == "json":  # wrapped lines are masked too (text mode prints them as they are)
        print(f"connecting to {url} and {other} with {PASSWORD}")
        print(f"error: {PASSWORD}", file=sys.stderr)
    out, err = capsys.readouterr()
    for secret in (PASSWORD, quote(PASSWORD, safe=""), "hunter22"):
        assert secret not in out + err
    assert "***" in out and "***" in err
    if fmt == "json":
        assert len(records(out)) == 3 and len(records(err)) == 2
    else:
        assert out.splitlines()[1] == "postgresql://u:***@h/db"


def test_a_short_password_is_not_masked_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("search", {"SMS_LOG_FORMAT": "text", "POSTGRES_PASSWORD": "a"})
    logs.event("x", "a trial")
    assert capsys.readouterr().out == "a trial\n"


@pytest.mark.parametrize("value", ["yaml", "jsonl", "plain"])
def test_a_bad_format_is_an_env_error_naming_the_variable(value: str) -> None:
    stdout = sys.stdout
    with pytest.raises(EnvError) as caught:
        logs.setup("search", {"SMS_LOG_FORMAT": value})
    message = str(caught.value)
    assert "SMS_LOG_FORMAT" in message and repr(value) in message
    assert "text" in message and "json" in message and "\n" not in message
    assert not logs.json_enabled() and sys.stdout is stdout


def test_the_wrapper_behaves_like_a_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with (tmp_path / "out.txt").open("w", encoding="utf-8") as file:
        monkeypatch.setattr(sys, "stdout", file)
        logs.setup("dashboard", JSON)
        wrapper = sys.stdout
        assert wrapper is not file
        assert not wrapper.isatty() and wrapper.fileno() == file.fileno()
        assert wrapper.encoding == "utf-8" and wrapper.writable()
        wrapper.write("half")
        wrapper.flush()
        assert (tmp_path / "out.txt").read_text() == ""  # a partial line waits
        wrapper.write(" and half\n")  # a complete one is written and flushed at once
        assert messages((tmp_path / "out.txt").read_text()) == ["half and half"]
        logs.reset()
        assert sys.stdout is file


def test_odd_characters_stay_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("search", JSON)
    logs.event("odd", "a\u2028b\x85c", note="tab\there")
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1
    assert messages(out) == ["a\u2028b\x85c"]
