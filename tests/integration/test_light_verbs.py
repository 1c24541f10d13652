"""Light verbs stay light: `--help`, `status`, `config show`, the dashboard's and the
exporter's start import no torch (python -X importtime lists every module a run loads)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "configs" / "quickstart.yaml")


def loaded(*argv: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "job", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in run.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return modules, run


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["status", "--help"],
        ["search", "--help"],
        ["dashboard", "--help"],
        ["exporter", "--help"],
        ["config", "show", "--config", QUICK, "--set", "train.epochs=3"],
    ],
)
def test_no_torch(argv: list[str]) -> None:
    modules, run = loaded(*argv)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "torch" not in modules, [m for m in modules if m.startswith("job")]


def test_status_of_a_study_imports_no_torch(tmp_path: Path) -> None:
    modules, run = loaded("status", "--config", QUICK, "--out", str(tmp_path))
    assert run.returncode in (0, 2), run.stderr[-2000:]  # no study there yet: said, exit 2
    assert "torch" not in modules, sorted(m for m in modules if m.startswith("job"))
