"""The dashboard's server (job.serve.dashboard): threaded, so one client that never finishes its
request blocks no other and not SIGTERM; a socket timeout drops such a client; a bad
`--host` or a `--port` in use is one line naming that flag. Real processes and sockets;
every wait is on an event (a line, a reply, a closed socket, an exit), bounded only as a
guard against hanging the suite."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from job.cli.main import main
from job.serve.dashboard import bind
from tests.support.dashboard import serve

GUARD_S = 60  # a hang guard, far above any real wait here; never a timing assertion


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=GUARD_S) as response:
        body: bytes = response.read()
        return body


def _idle_client(port: int) -> socket.socket:
    """A client that sends half a request line and then nothing."""
    client = socket.create_connection(("127.0.0.1", port), timeout=GUARD_S)
    client.sendall(b"GET /api/stu")
    return client


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`serve` on a journal holding one study."""
    proc, port, _, _ = serve(tmp_path, "served")
    try:
        yield proc, port
    finally:
        proc.kill()
        proc.wait(timeout=GUARD_S)


def test_an_idle_client_blocks_neither_other_requests_nor_sigterm(
    dashboard: tuple[subprocess.Popen[str], int],
) -> None:
    proc, port = dashboard
    idle = _idle_client(port)
    try:
        body = _get(f"http://127.0.0.1:{port}/api/studies")  # answered while idle waits
        assert b"served" in body
        assert _get(f"http://127.0.0.1:{port}/api/studies") == body  # and again
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=GUARD_S) == 0  # the idle client still connected
    finally:
        idle.close()


def _hello(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def test_a_client_silent_past_the_timeout_is_dropped_and_the_server_goes_on() -> None:
    server = bind("127.0.0.1", 0, timeout_s=0.5)
    server.set_app(_hello)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    serving.start()
    port = server.server_port
    try:
        idle = _idle_client(port)
        with idle:
            assert idle.recv(1024) == b""  # the server closed it: end of stream, no reply
        assert _get(f"http://127.0.0.1:{port}/") == b"hello"
    finally:
        server.shutdown()
        server.server_close()
        serving.join(timeout=GUARD_S)
    assert not serving.is_alive()


@pytest.mark.parametrize("verb", ["dashboard", "exporter"])
def test_a_port_in_use_is_one_line_naming_the_port(
    verb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.configs import QUICK

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    monkeypatch.delenv("POSTGRES_HOST", raising=False)
    (tmp_path / "c.yaml").write_text(QUICK)
    (tmp_path / "study.journal").write_text("")  # a study's journal to serve
    before = sorted(os.listdir(tmp_path))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        code = main([verb, "--config", "c.yaml", "--out", str(tmp_path), "--port", port])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"error: --port {port}: "), err
    assert "Address already in use" in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == before
