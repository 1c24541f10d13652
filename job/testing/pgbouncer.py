"""A real PgBouncer for the storage stage's tests and benches, never a mock; beside
`job.testing.pgserver`, the one place both import (bench/ reaches nothing under tests/).

`bouncer(server)` starts Debian's `pgbouncer` (the Makefile's DEBS) on a free loopback
port in front of a running PostgreSQL (`job.testing.pgserver.Server`: the suite's throwaway
server, or a bench's), in transaction pool mode, the way `k8s/components/pgbouncer`
runs it in a cluster, and stops it at the end. Every database of the server is reachable
through it by name (`* = …`), so `Bouncer.url(server.new_database())` is a fresh,
empty database seen through the pooler. Its auth file holds the test role's password in
clear text, which lets PgBouncer speak SCRAM to both sides (the server's
`--auth=scram-sha-256`). PgBouncer refuses to run as root, so as root it runs as the
`postgres` user, as the server does. Services never start on their own: the caller
starts it, as the suite's PostgreSQL is started. Under CI=true a missing binary is an
error (`find_binary(required=True)`), elsewhere a skip.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from job.testing.pgserver import PASSWORD, USER, free_port

__all__ = ["Bouncer", "bouncer", "find_binary"]

# What k8s/components/pgbouncer sets: a high client cap, ~40 pooled server connections,
# at most 50 to the server (PostgreSQL's default max_connections is 100).
MAX_CLIENT_CONN = 1000
DEFAULT_POOL_SIZE = 40
MAX_DB_CONNECTIONS = 50


def find_binary(required: bool = False) -> str | None:
    """The pgbouncer executable (Debian puts it in /usr/sbin), else None; with `required`
    (CI=true) its absence is an error."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/sbin")
    if found is None and required:
        raise RuntimeError("pgbouncer is missing: apt-get install pgbouncer (the Makefile's DEBS)")
    return found


class Bouncer:
    """One running PgBouncer: `url(server_url)` is the same database through it."""

    def __init__(self, binary: str, folder: Path, server_port: int, **settings: Any) -> None:
        self.binary, self.folder, self.server_port = binary, folder, server_port
        self.port = free_port()
        self.settings = {
            "pool_mode": "transaction",
            "max_client_conn": MAX_CLIENT_CONN,
            "default_pool_size": DEFAULT_POOL_SIZE,
            "max_db_connections": MAX_DB_CONNECTIONS,
        } | settings
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> Path:
        users = self.folder / "userlist.txt"
        users.write_text(f'"{USER}" "{PASSWORD}"\n')  # clear text: SCRAM to both sides
        lines = [
            "[databases]",
            f"* = host=127.0.0.1 port={self.server_port}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = scram-sha-256",
            f"auth_file = {users}",
            f"logfile = {self.folder / 'pgbouncer.log'}",
            # psycopg2 sends neither; other clients' drivers do, and PgBouncer refuses a
            # startup parameter it does not know unless it is told to ignore it
            "ignore_startup_parameters = extra_float_digits,options",
            *(f"{key} = {value}" for key, value in self.settings.items()),
        ]
        config = self.folder / "pgbouncer.ini"
        config.write_text("\n".join(lines) + "\n")
        return config

    def start(self, timeout_s: float = 20.0) -> None:
        config = self.write_config()
        as_postgres: dict[str, Any] = {}
        if os.geteuid() == 0:  # PgBouncer will not run as root
            entry = pwd.getpwnam("postgres")
            for path in (self.folder, *self.folder.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            as_postgres = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        self.proc = subprocess.Popen(
            [self.binary, str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **as_postgres,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited {self.proc.returncode}: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not listen within {timeout_s:g} s: {self.log()}")

    def log(self) -> str:
        path = self.folder / "pgbouncer.log"
        return path.read_text()[-2000:] if path.exists() else "(no log)"

    def stop(self) -> None:
        """Immediate shutdown (SIGTERM in 1.18, Debian 12's; SIGKILL when it lingers)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def url(self, server_url: str) -> str:
        """`server_url` (a database of the server behind it) with PgBouncer's port."""
        parts = urlsplit(server_url)
        netloc = parts.netloc.rsplit("@", 1)
        netloc[-1] = f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc="@".join(netloc)))


@contextmanager
def bouncer(server: Any, binary: str | None = None, **settings: Any) -> Iterator[Bouncer]:
    """A PgBouncer in front of `server` (a `job.testing.pgserver.Server`: its `port`) for the
    block; `settings` override pgbouncer.ini's [pgbouncer] values (`default_pool_size=1`).
    Its folder, log and auth file are removed at the end."""
    binary = binary or find_binary(required=True)
    assert binary is not None
    folder = Path(tempfile.mkdtemp(prefix="sms-pgbouncer-"))
    running = Bouncer(binary, folder, server.port, **settings)
    try:
        running.start()
        yield running
    finally:
        try:
            running.stop()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
