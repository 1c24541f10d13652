"""job/cli/main.py: the verbs as a user runs them — real processes, real files, exit codes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.support.proc import ROOT, run_job

# Written by hand in the seed's format (quoted names, nulls, trailing args omitted),
# not produced by job.ml.model: the format is the contract.
SEED_STYLE_MODEL = """\
input_channel: 3

depth_multiple: 0.5
width_multiple: 0.5

backbone:
    # [repeat, module, args]
    [
        [2, 'Conv', [16, 3, 1, null, 1, 'Hardswish']],
        [3, 'InvertedResidualv3', [3, 3.0, 32, 0, 0, 2]],
        [1, 'DWConv', [48, 5, 1, null, 'ReLU']],
        [2, 'InvertedResidualv2', [24, 4, 2]],
        [1, 'Conv', [256, 1, 1]],
        [1, 'GlobalAvgPool', []],
        [1, 'FixedConv', [10, 1, 1, null, 1, null]]
    ]
"""

TINY_CONFIG = """\
data: {name: digits, image_size: 16, subset: 300, val_ratio: 0.2}
augment: {n_select: 1, level: 5, flip_p: 0.0}
train: {epochs: 2, batch_size: 64, lr: 0.05, device: cpu}
"""


def test_train_verb_on_a_hand_written_seed_yaml(tmp_path: Path) -> None:
    (tmp_path / "model.yaml").write_text(SEED_STYLE_MODEL)
    (tmp_path / "config.yaml").write_text(TINY_CONFIG)
    out = tmp_path / "out"
    proc = run_job(
        "train",
        "--config",
        str(tmp_path / "config.yaml"),
        "--model",
        str(tmp_path / "model.yaml"),
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "epoch   2" in proc.stdout and "test accuracy" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params"] > 0 and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert len(metrics["history"]) == 2 and len(metrics["data_fingerprint"]) == 64
    assert (out / "model.yaml").read_text().startswith("input_channel: 3")


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("backbone: [[1, Conv, [16, 3, 1]], [1, Teleport, []]]\n", "Teleport"),
        ("input_channel: 3\nbackbone: [[1, FixedConv, [7, 1, 1, null, 1, null]]]\n", "7 classes"),
        ("backbone: [[1, Conv\n", "model.yaml"),
    ],
)
def test_bad_model_yaml_exits_2_with_one_line(tmp_path: Path, model: str, expected: str) -> None:
    (tmp_path / "model.yaml").write_text(model)
    (tmp_path / "config.yaml").write_text(TINY_CONFIG)
    proc = run_job(
        "train", "--config", str(tmp_path / "config.yaml"), "--model", str(tmp_path / "model.yaml")
    )
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_augment_preview_writes_the_grid(tmp_path: Path) -> None:
    out = tmp_path / "preview.png"
    proc = run_job(
        "augment-preview", "--config", "configs/quickstart.yaml", "--out", str(out), "--size", "48"
    )
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as image:
        width, height = image.size
    # 4 images x (original + 3 levels) columns, 14 ops as rows
    assert width > 16 * 48 and height > 14 * 48


def test_every_verb_documents_its_options() -> None:
    from job.cli.main import build_parser

    parser = build_parser()
    help_text = parser.format_help()
    verbs = ("search", "run", "status", "collect", "train", "augment-preview", "dashboard")
    assert all(v in help_text for v in verbs)
    for verb in verbs:
        sub = parser._subparsers._group_actions[0].choices[verb]  # type: ignore[union-attr]
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"{verb} --{action.dest} has no help"


def test_missing_data_exits_2_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        f"data: {{name: cifar10, path: {tmp_path / 'nowhere'}}}\n"
    )
    model = ROOT / "configs" / "models" / "mobilenetv2.yaml"
    proc = run_job("train", "--config", str(tmp_path / "config.yaml"), "--model", str(model))
    assert proc.returncode == 2, proc.stderr
    assert str(tmp_path / "nowhere") in proc.stderr and "data.download" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_dashboard_without_a_storage_exits_2(tmp_path: Path) -> None:
    env = {"OPTUNA_STORAGE": "", "POSTGRES_HOST": ""}
    proc = run_job("dashboard", env=env)
    assert proc.returncode == 2 and proc.stderr.startswith("error: dashboard: no storage")
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run_job("dashboard", "--out", str(tmp_path), env=env)  # no study there yet
    assert proc.returncode == 2 and str(tmp_path / "study.journal") in proc.stderr
    proc = run_job("dashboard", "--out", str(tmp_path), env={**env, "DASHBOARD_PORT": "web"})
    assert proc.returncode == 2 and proc.stderr.startswith("error: DASHBOARD_PORT: ")


def test_dashboard_serves_a_local_journal_study(tmp_path: Path) -> None:
    """Locally: `dashboard --out runs/<study>` on the embedded journal, on 127.0.0.1."""
    import urllib.error
    import urllib.request

    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from tests.support.dashboard import serve

    proc, port, line, journal = serve(tmp_path, "local-dash")
    cmd = [sys.executable, "-m", "job", "dashboard", "--out", str(tmp_path), "--port", str(port)]
    try:
        url = f"http://127.0.0.1:{port}/api/studies"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert "local-dash" in response.read().decode()
        assert line.rstrip().endswith("(read-only)")
        # read-only: nothing that could change the study gets through (optuna-dashboard
        # would delete the study on this DELETE)
        for method, path in (("DELETE", "/api/studies/0"), ("POST", "/api/studies")):
            request = urllib.request.Request(url.removesuffix("/api/studies") + path, b"{}")
            request.method = method
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)
            assert refused.value.code == 403 and b"--allow-writes" in refused.value.read()
        assert [s.study_name for s in journal.get_all_studies()] == ["local-dash"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0  # a clean stop
    finally:
        proc.kill()
    proc = subprocess.Popen([*cmd, "--allow-writes"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:  # asked for: a DELETE does remove the study
        assert proc.stderr is not None and "(read-write)" in proc.stderr.readline()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/studies/0")
        request.method = "DELETE"
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status in (200, 204)
        journal = JournalStorage(JournalFileBackend(str(tmp_path / "study.journal")))
        assert journal.get_all_studies() == []
    finally:
        proc.kill()


def test_sigterm_stops_a_waiting_collector_at_once(tmp_path: Path) -> None:
    """In a pod Python is PID 1, which ignores an unhandled SIGTERM: every verb handles it."""
    cmd = [sys.executable, "-m", "job", "collect", "--config", "configs/quickstart.yaml"]
    proc = subprocess.Popen(
        [*cmd, "--wait", "--out", str(tmp_path)], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None  # no study yet: it waits for one, creating nothing
    assert proc.stderr.readline().startswith("waiting for study 'quickstart' in journal://")
    assert proc.poll() is None and not (tmp_path / "study.journal").exists()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143


def test_the_run_banner_names_a_storage_the_dashboard_opens(tmp_path: Path) -> None:
    """optuna-dashboard's own CLI cannot open `journal:///…`: the banner gives it the file,
    and our read-only verb with the run's own folder."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    from optuna_dashboard._storage_url import get_storage  # what its CLI calls

    from job.run.local import RunOptions, dashboard_hint
    from job.storage import JOURNAL

    journal = tmp_path / "study.journal"
    optuna.create_study(
        storage=JournalStorage(JournalFileBackend(str(journal))), study_name="banner"
    )
    options = RunOptions(tmp_path / "c.yaml", 2, tmp_path, JOURNAL + str(journal), "banner")
    hint = dashboard_hint(options)
    assert f"python -m job dashboard --config {tmp_path / 'c.yaml'} --out {tmp_path}" in hint
    path = hint.split("optuna-dashboard ")[1].rstrip(")")
    names = [s.study_name for s in get_storage(path).get_all_studies()]
    assert names == ["banner"]
    url = "postgresql+psycopg2://sms:hunter22@db:5432/sms"
    remote = dashboard_hint(RunOptions(tmp_path / "c.yaml", 2, tmp_path, url, "banner"))
    assert "hunter22" not in remote and "--out" not in remote
