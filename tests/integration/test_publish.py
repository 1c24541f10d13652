"""Publishing the picks (job.collect.publish): ONNX verified by onnxruntime in every card, the
files as Optuna artifacts that the dashboard we deploy lists and serves, a failed
verification that makes `collect` exit 1. One real local run, real processes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.configs import VERIFY
from tests.support.proc import ROOT, free_port, run_job


@pytest.fixture(scope="module")
def run_out(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished local run with verification: (its config, its output folder)."""
    root = tmp_path_factory.mktemp("publish")
    config = root / "publish.yaml"
    # the search measures latency here: its agreement with onnxruntime's is checked
    text = VERIFY.replace("measure_latency: false", "measure_latency: true")
    config.write_text(text + "export: {latency_runs: 20}\n")
    out = root / "out"
    proc = run_job("run", "--config", str(config), "--workers", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "onnx   best" in proc.stdout and "verified (max |logit diff|" in proc.stdout
    return config, out


def test_every_pick_has_a_verified_onnx_and_int8_in_its_card(run_out: tuple[Path, Path]) -> None:
    _, out = run_out
    selection = json.loads((out / "selection.json").read_text())
    for policy, choice in selection.items():
        if choice["trial"] is None:
            continue
        folder = out / "selected" / policy
        card = json.loads((folder / "card.json").read_text())
        onnx = card["onnx"]
        assert onnx["verified"] is True and onnx["max_logit_diff"] <= 1e-4
        assert onnx["top1_agreement"] == 1.0 and onnx["test_images"] > 0
        assert (folder / "model.onnx").stat().st_size == onnx["bytes"]
        assert onnx["latency_ms"]["threads"] == 1
        assert onnx["latency_ms"]["median_ms"] <= onnx["latency_ms"]["p90_ms"]
        int8 = onnx["int8"]
        assert (folder / "model.int8.onnx").is_file() and isinstance(int8["accuracy_drop"], float)
        spec = card["input"]
        assert spec["layout"] == "NCHW" and spec["classes"] == [str(d) for d in range(10)]
        assert len(spec["mean"]) == 3 and spec["scale"] == pytest.approx(1 / 255)
    verify = json.loads((out / "verify.json").read_text())
    agreement = verify["latency_agreement"]
    assert agreement["models"] and "spearman_rho" in agreement
    assert (out / "report.html").is_file()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body


@contextlib.contextmanager
def _serving(args: list[str], cwd: Path, logs: Path) -> Iterator[str]:
    """`python -m job dashboard ARGS` started in `cwd` until it answers; its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "job", "dashboard", *args, "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # `python -m job` from any folder
    log = (logs / "dashboard.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _get(base + "/api/meta")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (
                    logs / "dashboard.log"
                ).read_text()
                time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def dashboard(
    run_out: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`python -m job dashboard --out <run>` as a user starts it: the artifact store
    beside the results is found on its own."""
    _, out = run_out
    logs = tmp_path_factory.mktemp("dashboard")
    with _serving(["--out", str(out)], ROOT, logs) as base:
        yield base


def _trial_artifacts(base: str, study: str) -> dict[int, Any]:
    studies = json.loads(_get(base + "/api/studies"))["study_summaries"]
    study_id = next(s["study_id"] for s in studies if s["study_name"] == study)
    detail = json.loads(_get(f"{base}/api/studies/{study_id}"))
    return {t["number"]: (study_id, t) for t in detail["trials"]}


def test_the_dashboard_lists_and_serves_each_picks_files(
    run_out: tuple[Path, Path], dashboard: str
) -> None:
    _, out = run_out
    trials = _trial_artifacts(dashboard, "tiny")
    best = json.loads((out / "selection.json").read_text())["best"]["trial"]
    study_id, trial = trials[best]
    names = {a["filename"] for a in trial["artifacts"]}
    wanted = ("model.onnx", "model.int8.onnx", "model.yaml", "card.json")
    assert {f"trial-{best}-{name}" for name in wanted} <= names
    onnx = next(a for a in trial["artifacts"] if a["filename"] == f"trial-{best}-model.onnx")
    url = f"{dashboard}/artifacts/{study_id}/{trial['trial_id']}/{onnx['artifact_id']}"
    assert _get(url) == (out / "selected" / "best" / "model.onnx").read_bytes()


def _served_onnx(base: str, out: Path) -> bytes:
    """The best pick's model.onnx as the dashboard at `base` serves it from its trial."""
    trials = _trial_artifacts(base, "tiny")
    best = json.loads((out / "selection.json").read_text())["best"]["trial"]
    study_id, trial = trials[best]
    onnx = next(a for a in trial["artifacts"] if a["filename"] == f"trial-{best}-model.onnx")
    return _get(f"{base}/artifacts/{study_id}/{trial['trial_id']}/{onnx['artifact_id']}")


@pytest.mark.parametrize("with_out", [False, True], ids=["make-dashboard", "run-banner"])
def test_the_dashboard_started_as_documented_serves_the_picks_files(
    run_out: tuple[Path, Path], tmp_path: Path, with_out: bool
) -> None:
    """`make dashboard` is `python -m job dashboard --config F` with no --out: the run's
    output folder is runs/<study> under the working folder, and its artifact store is
    found there as `run` and `collect` use it. `run`'s banner adds `--out <folder>`."""
    config, out = run_out
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "tiny").symlink_to(out)  # where `make run` would have written it
    args = ["--config", str(config), *(["--out", "runs/tiny"] if with_out else [])]
    with _serving(args, tmp_path, tmp_path) as base:
        assert _served_onnx(base, out) == (out / "selected" / "best" / "model.onnx").read_bytes()


def test_the_dashboard_draws_each_trials_learning_curve(
    run_out: tuple[Path, Path], dashboard: str
) -> None:
    """Every trial's validation accuracy per epoch, as the dashboard's API serves it to
    its intermediate-values plot (one point per epoch, steps from 1)."""
    config, _ = run_out
    from job.config import load_config

    epochs = load_config(config).train.epochs
    trials = _trial_artifacts(dashboard, "tiny")
    assert trials
    for _, trial in trials.values():
        curve = trial["intermediate_values"]
        assert [point["step"] for point in curve] == list(range(1, epochs + 1)), trial
        assert all(0.0 <= float(point["value"]) <= 1.0 for point in curve)


def test_collect_again_uploads_no_copy_and_a_failed_verification_exits_1(
    run_out: tuple[Path, Path], tmp_path: Path
) -> None:
    config, out = run_out
    again = run_job("collect", "--config", str(config), "--out", str(out))
    assert again.returncode == 0, again.stderr + again.stdout
    from job.config import load_config
    from job.search.worker import open_study
    from tests.support.proc import journal_url

    study = open_study(load_config(config), journal_url(out), create=False)
    best = json.loads((out / "selection.json").read_text())["best"]["trial"]
    from optuna.artifacts import get_all_artifact_meta

    metas = get_all_artifact_meta(study)
    names = [m.filename for m in metas]
    assert names.count(f"trial-{best}-model.onnx") == 1  # the same bytes: not again

    strict = tmp_path / "strict.yaml"  # no fp32 export is this exact: verification fails
    strict.write_text(config.read_text().replace("latency_runs: 20}", "latency_runs: 20, "
                                                 "max_logit_diff: 1.0e-15}"))  # fmt: skip
    published = {p.name: p.read_bytes() for p in (out / "selected" / "best").iterdir()}
    failed = run_job("collect", "--config", str(strict), "--out", str(out))
    assert failed.returncode == 1, failed.stdout + failed.stderr
    warned = [line for line in failed.stdout.splitlines() if line.startswith("warning: best: ")]
    assert len(warned) == 1 and "ONNX FAILED verification" in warned[0], failed.stdout
    # an unverified set never replaces a published one: the verified set stays, whole
    assert {p.name: p.read_bytes() for p in (out / "selected" / "best").iterdir()} == published
    problem = json.loads((out / "selection.json").read_text())["best"]["problem"]
    assert "model.onnx: max logit diff" in problem and "over 1e-15" in problem
    assert "not published" in (out / "report.html").read_text().lower()


def _deployer_preprocess(raw: Any, spec: dict[str, Any]) -> Any:
    """A deployer's preprocessing written from card.json's `input` alone (numpy and
    torch's interpolate, as its `resize` names it): (n, H, W, C) uint8 → (n, 3, S, S)."""
    import numpy as np
    import torch
    from torch.nn import functional

    x = torch.from_numpy(np.ascontiguousarray(raw)).permute(0, 3, 1, 2)  # (n, C, H, W)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)  # grey: one channel repeated
    side = max(x.shape[2], x.shape[3])
    padded = torch.full((x.shape[0], 3, side, side), 128, dtype=torch.uint8)
    top, left = (side - x.shape[2]) // 2, (side - x.shape[3]) // 2
    padded[:, :, top : top + x.shape[2], left : left + x.shape[3]] = x
    size = (spec["height"], spec["width"])
    if padded.shape[2:] != size:
        resized = functional.interpolate(
            padded.float(), size=size, mode="bilinear", antialias=True, align_corners=False
        )
        padded = resized.round().clamp(0, 255).to(torch.uint8)
    mean = np.array(spec["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.array(spec["std"], dtype=np.float32).reshape(1, 3, 1, 1)
    return ((padded.numpy().astype(np.float32) * spec["scale"] - mean) / std).astype(np.float32)


def test_each_pick_ships_a_golden_file_that_checks_a_deployment(run_out: tuple[Path, Path]) -> None:
    """golden.npz: raw test images, the tensors model.onnx wants for them, and its
    logits (and int8's). A preprocessing that follows the card passes the README's
    check; one that forgets the polarity or the scale is caught by it."""
    import numpy as np
    import onnxruntime as ort

    _, out = run_out
    best = out / "selected" / "best"
    card = json.loads((best / "card.json").read_text())
    assert card["golden"]["file"] == "golden.npz"
    deploy = card["onnx"]["deploy"]  # int8 only where it measured smaller and faster
    int8, fp32_ms = card["onnx"]["int8"], card["onnx"]["latency_ms"]["median_ms"]
    pays = int8["size_ratio"] < 1 and int8["latency_ms"]["median_ms"] < fp32_ms
    pays = pays and int8["accuracy_drop"] <= 0.01
    assert deploy["file"] == ("model.int8.onnx" if pays else "model.onnx"), deploy
    assert f"{int8['size_ratio']:.2f}x the size" in deploy["why"]
    golden = np.load(best / "golden.npz")  # allow_pickle=False: no objects inside
    assert set(card["golden"]["arrays"]) == set(golden.files)
    raw, wanted = golden["raw"], golden["input"]
    assert raw.dtype == np.uint8 and raw.ndim == 4 and wanted.dtype == np.float32
    assert len(set(golden["labels"].tolist())) == len(golden["labels"])  # a class each
    assert [str(c) for c in golden["classes"]] == card["input"]["classes"]
    conventions = card["input"]["conventions"]
    assert conventions["polarity"].startswith("light foreground on a dark background")
    assert "RGB" in conventions["channel_order"] and "0-255" in conventions["value_range"]
    session = ort.InferenceSession(str(best / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": wanted})[0]
    assert np.abs(logits - golden["logits"]).max() < 1e-4
    int8 = ort.InferenceSession(str(best / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(int8.run(None, {"input": wanted})[0] - golden["logits_int8"]).max() < 1e-4
    tolerance = card["golden"]["input_tolerance"]
    spec = card["input"]

    def preprocess(images: Any) -> Any:  # the README's `preprocess`: the deployer's own
        return _deployer_preprocess(images, spec)

    readme = (ROOT / "README.md").read_text()
    snippet = readme.split("<!-- golden-check -->\n```python\n")[1].split("```")[0]
    snippet = snippet.replace("runs/quickstart/selected/best", str(best))
    exec(snippet, {"preprocess": preprocess, "np": np, "ort": ort})  # passes: no error
    assert np.abs(preprocess(raw) - wanted).max() < tolerance
    for wrong in (lambda r: preprocess(255 - r), lambda r: preprocess(r) * 255.0):
        assert np.abs(wrong(raw) - wanted).max() > tolerance  # inverted, or not scaled
        with pytest.raises(AssertionError, match="differs from training"):
            exec(snippet, {"preprocess": wrong, "np": np, "ort": ort})
