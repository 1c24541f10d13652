"""`python -m job dashboard` on a fresh journal, as a user starts it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from tests.support.proc import ROOT, free_port


def serve(folder: Path, study: str) -> tuple[subprocess.Popen[str], int, str, JournalStorage]:
    """`python -m job dashboard --out <folder>` on a new journal there holding `study`,
    once it has said where it listens: the process, its port, that line, the journal."""
    journal = JournalStorage(JournalFileBackend(str(folder / "study.journal")))
    optuna.create_study(storage=journal, study_name=study)
    port = free_port()
    cmd = [sys.executable, "-m", "job", "dashboard", "--out", str(folder), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert line.startswith(f"optuna-dashboard on http://127.0.0.1:{port}/"), line
    return proc, port, line, journal
