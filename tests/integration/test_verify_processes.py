"""Verification end to end: `run` selects, verifies and `train --card` reproduces; a worker
killed during a retrain (the plan and the in-process cases: tests/unit/test_verify.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from optuna.trial import TrialState

from job.config import load_config
from job.search.retrain import (
    Retrain,
    verify_study_name,
)
from job.search.worker import open_study
from tests.gate import Gate
from tests.support.configs import VERIFY
from tests.support.proc import ROOT, journal_url, run_job


def test_run_selects_verifies_and_train_card_reproduces(tmp_path: Path) -> None:
    config_path = tmp_path / "verify.yaml"
    config_path.write_text(VERIFY.replace("epochs: 1, seeds: 2", "epochs: 3, seeds: 2"))
    out = tmp_path / "out"
    proc = run_job("run", "--config", str(config_path), "--workers", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    for policy in ("best", "knee", "smallest_within"):
        folder = out / "selected" / policy
        assert {"model.yaml", "weights.pt", "card.json"} <= {p.name for p in folder.iterdir()}
    assert "select best" in proc.stdout and "resnet8" in proc.stdout
    assert "verify " in proc.stdout  # a line per retrain while the workers ran them
    verify = json.loads((out / "verify.json").read_text())
    pairs = [
        (m["proxy_accuracy"], m["verified_accuracy"]) for m in verify["models"] if m["on_front"]
    ]
    tau = verify["kendall_tau"]
    if tau is None:  # null only where a rank correlation is undefined
        proxy, verified = ({p for p, _ in pairs}, {v for _, v in pairs})
        assert verify["correlated_over"] < 2 or len(proxy) == 1 or len(verified) == 1
    else:
        assert -1.0 <= tau <= 1.0 and -1.0 <= verify["spearman_rho"] <= 1.0
        assert f"Kendall tau {tau:.3f}" in proc.stdout
    baselines = json.loads((out / "baselines.json").read_text())
    assert baselines["comparison"] and baselines["baselines"][0]["name"] == "resnet8"
    card = json.loads((out / "selected" / "best" / "card.json").read_text())
    assert len(card["verified"]["seeds"]) == 2

    config = load_config(config_path)
    study = open_study(config, journal_url(out), verify_study_name("tiny"), verify=True)
    before = len(study.get_trials())
    again = run_job("collect", "--config", str(config_path), "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert len(study.get_trials()) == before  # idempotent: nothing retrained twice

    card_path = out / "selected" / "best" / "card.json"
    rerun = run_job("train", "--config", str(config_path), "--card", str(card_path))
    assert rerun.returncode == 0, rerun.stderr
    assert "within its std" in rerun.stdout, rerun.stdout


def test_a_worker_killed_during_a_retrain_is_retried_and_recorded_once(tmp_path: Path) -> None:
    text = VERIFY.replace("seed: 0}", "seed: 0, heartbeat_interval_s: 1, grace_period_s: 3}")
    text = text.replace("budget: 4", "budget: 2").replace(
        "epochs: 1, seeds: 2", "epochs: 1, seeds: 1"
    )
    text = text.replace("verify_top_k: 2", "verify_top_k: 0")
    config_path = tmp_path / "kill.yaml"
    config_path.write_text(text)
    config = load_config(config_path)
    out = tmp_path / "out"
    url = journal_url(out)
    # a baseline retrain waits at a gate, RUNNING and beating, until its worker is killed:
    # no poll races a retrain (tests/gate.py)
    gate = Gate(tmp_path / "gate", on="baseline")
    procs = []
    for index in range(2):
        env = {**os.environ, "OPTUNA_STORAGE": url, "SMS_WORKER_INDEX": str(index)}
        env |= {"SMS_METRICS_PORT": "off", "OMP_NUM_THREADS": "1", "SMS_TORCH_THREADS": "1"}
        cmd = gate.command("search", "--config", str(config_path), "--out", str(out))
        log = (tmp_path / f"w{index}.log").open("wb")
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env | gate.env(), stdout=log, stderr=log))
    try:
        pid = gate.wait(
            "a worker blocked in a baseline retrain",
            lambda: min(gate.markers(), default=None),
            watch=procs,
        )
        verify = open_study(config, url, verify_study_name("tiny"), create=False, verify=True)
        running = verify.get_trials(states=(TrialState.RUNNING,))
        (trial,) = [t for t in running if t.user_attrs.get("worker", "").endswith(f":{pid}")]
        spec = Retrain.of(trial)
        assert spec is not None and spec.role == "baseline"
        number, key = trial.number, spec.key
        os.kill(pid, signal.SIGKILL)
        next(p for p in procs if p.pid == pid).wait(timeout=60)
        gate.open()
        codes = [proc.wait(timeout=600) for proc in procs]
    finally:
        gate.open()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert sorted(codes) == [-signal.SIGKILL, 0], codes
    verify = open_study(config, url, verify_study_name("tiny"), create=False, verify=True)
    runs = [t for t in verify.get_trials() if Retrain.of(t) and Retrain.of(t).key == key]  # type: ignore[union-attr]
    assert [t.state for t in runs].count(TrialState.COMPLETE) == 1
    killed = next(t for t in runs if t.number == number)
    assert killed.state == TrialState.FAIL and killed.user_attrs["fail_reason"] == "stale"
    done = run_job("collect", "--config", str(config_path), "--out", str(out))
    assert done.returncode == 0, done.stderr + done.stdout
    baselines = json.loads((out / "baselines.json").read_text())
    assert len(baselines["baselines"][0]["seeds"]) == 1  # recorded once
    assert config.select.retrain.seeds == 1
