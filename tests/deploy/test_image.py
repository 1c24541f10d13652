"""The container image without a Docker engine: the Dockerfile's contract and lint, and
entrypoint.sh run for real (role dispatch and exec; through it the Python it starts:
the storage URL from POSTGRES_*, waiting for PostgreSQL, the dashboard), from the
repository root with the venv first on PATH, as in the image."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

import optuna
import pytest
import torch

from job.testing.pgserver import External, Server, free_port
from tests.support.proc import ROOT

BIN = Path(sys.executable).parent
ENTRYPOINT = ROOT / "entrypoint.sh"
UNKNOWN = "(expected worker, collect, research, dashboard or a python -m job verb)"
ODD_PASSWORD = "p@ss:w/rd%40 #?&='\"é"  # needs percent-encoding in a URL, every char of it
Stage = tuple[str, list[tuple[str, str]]]  # FROM's arguments, the stage's instructions


def stages() -> list[Stage]:
    """The Dockerfile's stages, comment lines dropped and continuations joined; stage 0 is
    what precedes the first FROM."""
    out: list[Stage] = [("", [])]
    current = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.strip().startswith("#"):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
        elif current.strip():
            op, _, args = current.strip().partition(" ")
            if op.upper() == "FROM":
                out.append((args.strip(), []))
            else:
                out[-1][1].append((op.upper(), args.strip()))
            current = ""
    return out


def lineage() -> list[Stage]:
    """The final stage and every stage it is built FROM, final first."""
    by_alias = {m[1]: s for s in stages()[1:] if (m := re.search(r"\bAS\s+(\S+)$", s[0], re.I))}
    chain = [stages()[-1]]
    while (image := chain[-1][0].split()[0]) in by_alias:
        chain.append(by_alias[image])
    return chain


def env(**extra: str) -> dict[str, str]:
    """The runner's environment without any storage settings, the venv first on PATH."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "OPTUNA_"))}
    base.pop("SMS_DB_WAIT_S", None)
    return {**base, "PATH": f"{BIN}:{os.environ.get('PATH', os.defpath)}", **extra}


def database_env(url: str) -> dict[str, str]:
    parts = urlsplit(url)
    return {
        "POSTGRES_HOST": parts.hostname or "",
        "POSTGRES_PORT": str(parts.port or 5432),
        "POSTGRES_USER": unquote(parts.username or ""),
        "POSTGRES_PASSWORD": unquote(parts.password or ""),
        "POSTGRES_DB": parts.path.lstrip("/"),
    }


def unreachable(wait_s: int) -> dict[str, str]:
    """POSTGRES_* for a closed loopback port, with a password to look for in the output."""
    return database_env(f"postgresql://sms:hunter2@127.0.0.1:{free_port()}/sms") | {
        "POSTGRES_PASSWORD": "hunter2-" + ODD_PASSWORD,
        "SMS_DB_WAIT_S": str(wait_s),
    }


def entry(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENTRYPOINT), *args], cwd=ROOT, env=env(**extra),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_hadolint_and_shellcheck_pass() -> None:
    for cmd in ([BIN / "hadolint", ROOT / "Dockerfile"], [BIN / "shellcheck", ENTRYPOINT]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_entrypoint_embeds_no_program() -> None:
    """The script maps a role to a verb and execs; the logic is Python's, tested as such."""
    script = ENTRYPOINT.read_text()
    assert not re.search(r"python3? -c|<<", script)
    assert script.count("exec ") == 1 and 'exec python -m job "$verb" "$@"' in script


def test_dockerfile_contract() -> None:
    (_, preamble), *rest = stages()
    assert len(rest) >= 2, "a build stage and a runtime stage"
    default = dict(a.split("=", 1) for op, a in preamble if op == "ARG" and "=" in a)
    base = re.fullmatch(
        r"nvidia/cuda:(\d+\.\d+)\.\d+-runtime-ubuntu\d\d\.04", default["BASE_IMAGE"]
    )
    assert base, default["BASE_IMAGE"]
    if torch.version.cuda:  # the default base is the pinned torch's CUDA version
        assert base[1] == torch.version.cuda
    chain = lineage()
    assert chain[-1][0].split()[0] in ("${BASE_IMAGE}", "$BASE_IMAGE")
    final = rest[-1][1]
    users = [a for op, a in final if op == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:\d+", users[-1]), users
    runs = " ".join(a for _, ops in chain for op, a in ops if op == "RUN")
    compilers = r"\b(gcc|g\+\+|clang|build-essential|cmake|python3[\d.]*-dev|cuda-nvcc[\w-]*)\b"
    assert not re.search(compilers, runs), "no compilers in the runtime image"
    build = " ".join(a for _, ops in rest[:-1] for op, a in ops if op == "RUN")
    assert "torch.version.cuda" in build and "REQUIRE_CUDA" in build, "the CUDA assertion"
    assert [json.loads(a) for op, a in final if op == "ENTRYPOINT"] == [["/app/entrypoint.sh"]]
    assert [json.loads(a) for op, a in final if op == "CMD"] == [["--help"]]
    assert ("WORKDIR", "/app") in final
    image_env = dict(
        w.split("=", 1) for op, a in final if op == "ENV" for w in shlex.split(a) if "=" in w
    )
    assert image_env["PATH"].startswith("/opt/venv/bin:")
    for key in ("HOME", "MPLCONFIGDIR", "XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR"):
        assert image_env[key].startswith("/tmp"), key  # the only writable place in a pod
    copied = " ".join(a for op, a in final if op == "COPY")
    for path in ("job/", "configs/", "entrypoint.sh", "requirements.txt"):
        assert path in copied
    assert not re.search(r"\b(tests|bench|docs|k8s)\b", copied)
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".git", "tests", "k8s", "runs"} <= ignored
    assert os.access(ENTRYPOINT, os.X_OK)


def test_roles_help_and_pass_through(tmp_path: Path) -> None:
    for args in ((), ("bogus",)):
        done = entry(*args)
        role = args[0] if args else ""
        assert done.returncode == 2
        assert done.stderr == f"entrypoint: unknown role '{role}' {UNKNOWN}\n"
    done = entry("--help")
    assert done.returncode == 0 and "worker" in done.stdout and "dashboard" in done.stdout
    for role, verb in (("worker", "search"), ("collect", "collect"), ("dashboard", "dashboard")):
        done = entry(role, "--help")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"usage: python -m job {verb} "), done.stdout
    journal = f"journal://{tmp_path / 'study.journal'}"
    done = entry("status", "--config", "configs/quickstart.yaml", "--storage", journal)
    assert done.returncode == 2 and "study 'quickstart' not found" in done.stderr  # nothing made
    assert not (tmp_path / "study.journal").exists()
    backend = optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.journal"))
    storage = optuna.storages.JournalStorage(backend)
    optuna.create_study(
        storage=storage, study_name="quickstart", directions=["maximize", "minimize"]
    )
    done = entry("status", "--config", "configs/quickstart.yaml", "--storage", journal)
    assert done.returncode == 0, done.stderr
    assert f"storage {journal}" in done.stdout
    assert re.search(r"^study +quickstart$", done.stdout, re.M), done.stdout


def test_bad_environment_is_named_in_one_line() -> None:
    config = ("--config", "configs/quickstart.yaml")
    no_password = {"POSTGRES_HOST": "db", "POSTGRES_USER": "u", "POSTGRES_DB": "d"}
    cases = [
        (no_password, "POSTGRES_PASSWORD is not set"),
        (unreachable(1) | {"POSTGRES_PORT": "tcp://10.0.0.1:x"}, "POSTGRES_PORT: "),
        (unreachable(1) | {"SMS_DB_WAIT_S": "soon"}, "SMS_DB_WAIT_S: "),
        ({"OPTUNA_STORAGE": "postgresql://u:hunter2@[::1"}, "the storage is not a valid"),
        ({"SMS_METRICS_PORT": "nine"}, "SMS_METRICS_PORT: "),
    ]
    for variables, message in cases:
        done = entry("worker", *config, **variables)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"error: {message}"), done.stderr
        assert done.stderr.count("\n") == 1 and "hunter2" not in done.stderr


def test_unreachable_database_fails_in_time_without_the_password() -> None:
    variables = unreachable(wait_s=3)
    start = time.monotonic()
    done = entry("worker", "--config", "configs/quickstart.yaml", **variables)
    assert done.returncode == 1 and time.monotonic() - start < 120  # not a hang
    shown = f"postgresql+psycopg2://sms:***@127.0.0.1:{variables['POSTGRES_PORT']}/sms"
    lines = done.stderr.splitlines()
    assert lines[0] == f"waiting for database {shown}"
    assert lines[-1].startswith(f"error: database {shown} not reachable after 3 s: ")
    assert len(lines) == 2 and "Connection refused" in lines[-1]
    assert "hunter2" not in done.stdout + done.stderr


@pytest.mark.parametrize("role", ["worker", "dashboard"])
def test_sigterm_ends_the_wait_at_once(role: str) -> None:
    """Python is PID 1 in a pod, which ignores a SIGTERM it has no handler for: waiting
    for the database, it must stop at once."""
    args = ["--config", "configs/quickstart.yaml"]
    proc = subprocess.Popen(
        [str(ENTRYPOINT), role, *args], cwd=ROOT, env=env(**unreachable(wait_s=600)),
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    assert proc.stderr.readline().startswith("waiting for database")
    proc.terminate()  # a wait of 600 s: ended by the signal, not by the wait
    assert proc.wait(timeout=120) == 143
    assert "hunter2" not in proc.stderr.read()


def test_sigterm_ends_a_hanging_connection_attempt_at_once() -> None:
    """A host that never answers (a SYN into the void) holds a connection attempt for
    seconds: the wait still ends at once."""
    import socket

    with socket.socket() as listener:  # a backlog that fills: connects hang, unanswered
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(4)]
        for sock in fillers:
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
        variables = unreachable(wait_s=600) | {"POSTGRES_PORT": str(port)}
        proc = subprocess.Popen(
            [str(ENTRYPOINT), "status", "--config", "configs/quickstart.yaml"], cwd=ROOT,
            env=env(**variables), stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert proc.stderr is not None  # the first attempt timed out (after 5 s) ...
            assert proc.stderr.readline().startswith("waiting for database")
            time.sleep(3)  # ... and 2 s later the next began: it is inside that one now
            proc.terminate()  # a wait of 600 s: ended by the signal, not by the wait
            assert proc.wait(timeout=120) == 143
        finally:
            proc.kill()
            for sock in fillers:
                sock.close()


@pytest.fixture
def fresh_database(postgres: Server | External) -> dict[str, str]:
    return database_env(postgres.new_database())


@pytest.fixture
def odd_role(postgres: Server | External) -> dict[str, str]:
    """A login role whose password has every URL-special character, owning a fresh database."""
    import psycopg2

    admin = database_env(postgres.url())
    role = f"odd_{os.getpid()}_{time.monotonic_ns()}"
    db = database_env(postgres.new_database())["POSTGRES_DB"]
    conn = psycopg2.connect(
        host=admin["POSTGRES_HOST"], port=admin["POSTGRES_PORT"], user=admin["POSTGRES_USER"],
        password=admin["POSTGRES_PASSWORD"], dbname=db,
    )  # fmt: skip
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE ROLE "{role}" LOGIN PASSWORD %s', (ODD_PASSWORD,))
            cur.execute(f'ALTER DATABASE "{db}" OWNER TO "{role}"')
    except psycopg2.errors.InsufficientPrivilege:
        pytest.skip("the server's role may not create roles")
    finally:
        conn.close()
    return {**admin, "POSTGRES_USER": role, "POSTGRES_PASSWORD": ODD_PASSWORD, "POSTGRES_DB": db}


@pytest.mark.parametrize("database", ["fresh_database", "odd_role"])
def test_built_url_reaches_postgres(
    database: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    v: dict[str, str] = request.getfixturevalue(database)
    done = entry("status", "--config", "configs/quickstart.yaml", "--out", str(tmp_path), **v)
    # reached and logged in: the database answers that it holds no such study (status
    # creates nothing), which it could not say unreachable or with a wrong password
    shown = f"{v['POSTGRES_USER']}:***@{v['POSTGRES_HOST']}:{v['POSTGRES_PORT']}/{v['POSTGRES_DB']}"
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f"error: study 'quickstart' not found in postgresql+psycopg2://{shown}\n"
    )
    assert v["POSTGRES_PASSWORD"] not in done.stdout + done.stderr
    assert not list(tmp_path.iterdir())


def test_worker_is_python_itself(tmp_path: Path) -> None:
    """`exec`: the started process becomes Python, so SIGTERM reaches the worker."""
    journal = f"journal://{tmp_path / 'study.journal'}"
    args = ["worker", "--config", "configs/quickstart.yaml", "--storage", journal]
    proc = subprocess.Popen(
        [str(ENTRYPOINT), *args, "--out", str(tmp_path)], cwd=ROOT, env=env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        cmdline: list[str] = []
        give_up = time.monotonic() + 30
        while "search" not in cmdline and time.monotonic() < give_up and proc.poll() is None:
            time.sleep(0.05)
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode().split("\0")
        assert Path(cmdline[0]).name.startswith("python"), cmdline
        assert cmdline[1:4] == ["-m", "job", "search"], cmdline
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_dashboard_serves_the_study(postgres: Server | External, tmp_path: Path) -> None:
    url = postgres.new_database()
    optuna.create_study(storage=url, study_name="on-the-dashboard")
    variables, port, log = database_env(url), free_port(), tmp_path / "dashboard.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(ENTRYPOINT), "dashboard"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            env=env(**variables, DASHBOARD_PORT=str(port)),
        )  # fmt: skip
    try:
        page, give_up = "", time.monotonic() + 60
        while not page and time.monotonic() < give_up and proc.poll() is None:
            time.sleep(0.5)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    assert response.status == 200
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies") as response:
                    page = response.read().decode()
            except OSError:
                pass
        assert "on-the-dashboard" in page, log.read_text()
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode().split("\0")
        assert argv[1:6] == ["-m", "job", "dashboard", "--host", "0.0.0.0"], argv
        assert "python" in argv[0] and variables["POSTGRES_PASSWORD"] not in " ".join(argv)
    finally:
        proc.terminate()
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log.read_text()  # SIGTERM: a clean stop
    assert variables["POSTGRES_PASSWORD"] not in log.read_text()
