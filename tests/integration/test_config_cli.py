"""job/config.py through `python -m job`: a bad config exits 2 with one line, before any
training (the in-process cases: tests/unit/test_config.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cli_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 0\n")
    model = ROOT / "configs" / "models" / "mobilenetv2.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "job", "train", "--config", str(bad), "--model", str(model)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: train.epochs: must be >= 1, got 0"
    assert "Traceback" not in proc.stderr


def test_duplicate_ops_exit_2_at_load_before_any_training(tmp_path: Path) -> None:
    """`augment.ops: [Rotate, Rotate]` used to pass the config and crash `train` (exit 1)."""
    bad = tmp_path / "dup.yaml"
    bad.write_text("augment:\n  ops: [Rotate, Rotate]\n  n_select: 1\n")
    model = ROOT / "configs" / "models" / "mobilenetv2.yaml"
    for verb in (["train", "--model", str(model)], ["search", "--out", str(tmp_path)]):
        proc = subprocess.run(
            [sys.executable, "-m", "job", verb[0], "--config", str(bad), *verb[1:]],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == (
            "error: augment.ops: Rotate listed twice (RandAugment picks distinct ops)"
        )
