"""Bad input, tried as a new user would: every case exits 2 (1 for an outage past its
deadline) with one line on stderr naming the key, flag, file or URL, no traceback, and
nothing created or deleted in its folder.

Each case runs `python -m job …` in-process (`job.cli.main`) in a fresh folder that is
also the working directory, so the whole table takes seconds: every case must fail
before any training. `{tmp}` in arguments, files and environment is that folder;
`{cfg}` is `{tmp}/c.yaml`, written from the case's `config` (a small digits search).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from job.cli import main

# A small, valid search: each case breaks one thing of it (or of its command line).
QUICK = """\
study: {name: bad, budget: 2, seed: 0}
data: {name: digits, image_size: 16, subset: 200, val_ratio: 0.2}
augment: {n_select: 1, level: 3, flip_p: 0.0}
space:
  blocks:
    - {modules: [Conv], repeat: [1, 1], channels: [8, 16, 8], kernel: [3]}
  head_channels: [16, 32, 16]
  augment: null
train: {epochs: 1, batch_size: 32, device: cpu, measure_latency: false}
"""
MODEL = "configs/models/mobilenetv3_small.yaml"
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    """One bad input: `python -m job ARGV` with the files and environment given."""

    id: str
    argv: tuple[str, ...]
    says: str  # a substring of the one line on stderr: the culprit's name
    config: str | None = QUICK  # written to {cfg}; None: no config file
    files: dict[str, str | bytes] = field(default_factory=dict)  # name → content
    env: dict[str, str] = field(default_factory=dict)
    code: int = 2


def _edit(**sections: str) -> str:
    """QUICK with whole top-level sections replaced (YAML flow text per section)."""
    lines = [line for line in QUICK.splitlines() if line.split(":")[0] not in sections]
    keep = "\n".join(lines)
    if "space" in sections:  # the space section spans several lines
        keep = QUICK.split("space:")[0] + QUICK.split("augment: null\n")[1]
        keep = "\n".join(line for line in keep.splitlines() if line.split(":")[0] not in sections)
    return keep + "\n" + "\n".join(f"{k}: {v}" for k, v in sections.items()) + "\n"


CASES: list[Case] = [
    # --- config: keys, types, ranges (validated at load) ---------------------------
    Case("unknown-key", ("train", "--config", "{cfg}", "--model", MODEL), "trian: unknown key",
         config=QUICK + "trian: {}\n"),
    Case("epochs-zero", ("search", "--config", "{cfg}"), "train.epochs: must be >= 1, got 0",
         config=_edit(train="{epochs: 0}")),
    Case("epochs-bool", ("search", "--config", "{cfg}"), "train.epochs",
         config=_edit(train="{epochs: true}")),
    Case("duplicate-ops", ("search", "--config", "{cfg}"), "augment.ops: Rotate listed twice",
         config=_edit(augment="{ops: [Rotate, Rotate], n_select: 1}")),
    Case("no-ops", ("search", "--config", "{cfg}"), "augment.ops",
         config=_edit(augment="{ops: [], n_select: 0}")),
    Case("batch-size-one", ("search", "--config", "{cfg}"), "train.batch_size",
         config=_edit(train="{batch_size: 1}")),
    Case("binary-config", ("search", "--config", "{cfg}"), "c.yaml", config="\udcff"),
    Case("missing-config", ("search", "--config", "{tmp}/nope.yaml"), "nope.yaml: cannot read",
         config=None),
    # --- the command line --------------------------------------------------------
    Case("train-epochs-zero", ("train", "--config", "{cfg}", "--model", MODEL, "--epochs", "0"),
         "--epochs"),
    # (helpers: add the cases of your part below, in your own section)
]  # fmt: skip


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _fill(text: str, tmp: Path) -> str:
    return text.replace("{cfg}", str(tmp / "c.yaml")).replace("{tmp}", str(tmp))


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh folder as the working directory; the repo's configs reachable by path."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    for name in ("OPTUNA_STORAGE", "POSTGRES_HOST", "SMS_METRICS_PORT", "JOB_COMPLETION_INDEX"):
        monkeypatch.delenv(name, raising=False)
    yield tmp_path


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_at_once_with_one_line(
    case: Case, in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if case.config is not None:
        data = case.config.encode("utf-8", "surrogateescape")
        (in_tmp / "c.yaml").write_bytes(data)
    for name, content in case.files.items():
        path = in_tmp / _fill(name, in_tmp)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(_fill(content, in_tmp))
    for name, value in case.env.items():
        monkeypatch.setenv(name, _fill(value, in_tmp))
    before = _tree(in_tmp)
    try:
        code = main([_fill(arg, in_tmp) for arg in case.argv])
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == case.code, err
    assert len(lines) == 1, err
    assert case.says in lines[0], err
    assert "Traceback" not in err
    assert _tree(in_tmp) == before, "a bad input created or deleted files"
    assert os.getcwd() == str(in_tmp)
