"""Run `python -m job …` as a user would: a real process in the repo root; free ports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from job.testing.pgserver import free_port

__all__ = ["ROOT", "free_port", "journal_url", "run_job"]

ROOT = Path(__file__).resolve().parents[1]


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


def need_binary(names: tuple[str, ...], package: str) -> str:
    """The path of the first of `names` on PATH; skips the test without one (fails it
    under CI=true, where `make test` has installed the Debian `package`)."""
    import os
    import shutil

    import pytest

    for name in names:
        if found := shutil.which(name):
            return found
    why = f"no {' or '.join(names)} on PATH (Debian package {package})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why}; CI=true needs it: apt-get install {package}")
    pytest.skip(why)
