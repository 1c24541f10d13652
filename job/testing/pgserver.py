"""A throwaway PostgreSQL server from the local binaries: a real one, never a mock.

For the test suite, the benches and trying the PostgreSQL storage on one machine.
`throwaway_server()` starts a cluster from the PostgreSQL server binaries (`initdb`,
`pg_ctl`) in a temporary folder, on a free loopback port, with a password-protected
role (scram-sha-256), and stops and removes it at the end. `initdb` refuses to run as
root, so as root the server runs as the `postgres` user. `External` stands for a server
named by a URL (`DATABASE_URL`) instead. Either makes fresh, empty databases
(`new_database()`). Under CI=true missing binaries are an error, not a None.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

__all__ = ["DATABASE", "PASSWORD", "USER", "External", "Server", "free_port", "throwaway_server"]

USER, PASSWORD, DATABASE = "sms", "pg-test-s3cret", "sms"


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Server:
    """One running PostgreSQL cluster in `folder`; `url()` names a fresh database."""

    def __init__(self, bindir: Path, folder: Path, port: int, durable: bool = True) -> None:
        self.bindir, self.folder, self.port = bindir, folder, port
        self.durable = durable  # False: no fsync at all, for a suite that throws it away
        self.data = folder / "data"
        self._as_postgres = os.geteuid() == 0
        self._databases = 0

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def init(self) -> None:
        if self._as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        secret = self.folder / "pw"
        secret.write_text(PASSWORD + "\n")
        if self._as_postgres:
            os.chown(secret, pwd.getpwnam("postgres").pw_uid, -1)
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", USER,
            f"--pwfile={secret}", "--auth=scram-sha-256", "-E", "UTF8",
            *([] if self.durable else ["--no-sync"]),
        )  # fmt: skip
        secret.unlink()

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        if not self.durable:  # what survives a power cut does not matter to a test server
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "stop", check=False
        )

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql+psycopg2://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database (no Optuna schema yet) and its URL."""
        self._databases += 1
        name = f"t{os.getpid()}_{self._databases}"
        _create_database(name, host="127.0.0.1", port=self.port, user=USER, password=PASSWORD)
        return self.url(name)


@contextmanager
def throwaway_server(required: bool = False, durable: bool = True) -> Iterator[Server | None]:
    """Start a server for the session; None when there are no binaries, unless
    `required` (the suite under CI=true), where that is an error. `durable=False` skips
    every fsync (the test suite's servers); benchmarks keep them, as a real server does."""
    bindir = _binaries()
    if bindir is None:
        if required:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) are missing")
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="sms-pg-"))
    server = Server(bindir, folder, free_port(), durable)
    try:
        server.init()
        server.start()
        yield server
    finally:
        try:
            server.stop("immediate")
        finally:  # even when initdb failed: the folder may hold the password file
            time.sleep(0.2)
            shutil.rmtree(folder, ignore_errors=True)


class External:
    """A server named by DATABASE_URL; its role needs CREATEDB for fresh databases."""

    def __init__(self, url: str) -> None:
        self.parts = urlsplit(url)

    def url(self, database: str | None = None) -> str:
        path = f"/{database}" if database else self.parts.path
        return urlunsplit(self.parts._replace(path=path))

    def new_database(self) -> str:
        name = f"t{os.getpid()}_{time.monotonic_ns()}"
        p = self.parts
        _create_database(
            name, host=p.hostname, port=p.port or 5432, user=p.username, password=p.password,
            dbname=p.path.lstrip("/") or "postgres",
        )  # fmt: skip
        return self.url(name)


def _create_database(name: str, dbname: str = "postgres", **connect: object) -> None:
    """CREATE DATABASE `name`, connected to `dbname` with psycopg2's `connect` arguments."""
    import psycopg2  # type: ignore[import-untyped]  # no stubs installed

    conn = psycopg2.connect(dbname=dbname, **connect)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
