"""Run `python -m job …` as a user would: a real process in the repo root; free ports; the
Secret's database keys."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

from job.testing.binaries import need_binary
from job.testing.pgserver import free_port

__all__ = [
    "ODD_PASSWORD",
    "POSTGRES",
    "ROOT",
    "database_env",
    "free_port",
    "journal_url",
    "need_binary",
    "run_job",
]

ROOT = Path(__file__).resolve().parents[2]

ODD_PASSWORD = "p@ss:w/rd%40 #?&='\"é"  # needs percent-encoding in a URL, every char of it
# The Secret's database keys, each with a character a URL must encode.
POSTGRES = {
    "POSTGRES_HOST": "db.example",
    "POSTGRES_USER": "sms user",
    "POSTGRES_PASSWORD": ODD_PASSWORD,
    "POSTGRES_DB": "sms/db",
}


def run_job(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "job", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def journal_url(out: Path) -> str:
    """The embedded default storage of an output folder, as `run` and `search` name it."""
    from job.storage import JOURNAL

    return JOURNAL + str((out / "study.journal").resolve())


def database_env(url: str) -> dict[str, str]:
    """The Secret's five keys for the test's own database."""
    parts = urlsplit(url)
    return {
        "POSTGRES_HOST": parts.hostname or "",
        "POSTGRES_PORT": str(parts.port),
        "POSTGRES_USER": unquote(parts.username or ""),
        "POSTGRES_PASSWORD": unquote(parts.password or ""),
        "POSTGRES_DB": parts.path.lstrip("/"),
    }
