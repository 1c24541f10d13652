"""Verification (job.search.retrain, job.collect.picks): the plan, the second study the workers run,
the files `collect` writes, and `train --card`. Real storages, real worker processes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from job.collect.picks import gather, write_selection
from job.collect.publish import publish
from job.config import Config, load_config, parse_config
from job.ml.data import load_data
from job.ml.model import ModelError, build_model, load_model_spec
from job.ml.train import TrainResult
from job.search.retrain import (
    SPEC_ATTR,
    Retrain,
    claim_retrain,
    ensure_plan,
    fit_classes,
    model_file,
    plan_retrains,
    retrain_data,
    verify_study_name,
)
from job.search.worker import Worker, open_study
from tests.gate import Gate
from tests.proc import ROOT, journal_url, run_job
from tests.test_search import TINY

RESNET8 = str(ROOT / "configs" / "models" / "resnet8.yaml")
VERIFY = TINY.replace("select: {verify: false}", "") + (
    "select:\n"
    "  policies: [best, knee, {smallest_within: {accuracy_drop: 0.05}},\n"
    f"             {{reference: {RESNET8}}}]\n"
    "  retrain: {epochs: 1, seeds: 2}\n"
    "  verify_top_k: 2\n"
    f"  baselines: [{RESNET8}]\n"
)


def _config(text: str = VERIFY, **select: Any) -> Config:
    import yaml

    doc = yaml.safe_load(text)
    doc["select"] = {**doc.get("select", {}), **select}
    return parse_config(doc)


def _search_trial(number: int, acc: float, params: int, feasible: bool = True) -> Any:
    """A COMPLETE search trial as a worker leaves it (the attrs verification reads)."""
    spec = load_model_spec(RESNET8)
    from job.ml.model import model_spec_yaml

    return create_trial(
        params={"x": number},
        distributions={"x": IntDistribution(0, 1000)},
        values=[acc, float(params)],
        user_attrs={
            "val_accuracy": acc,
            "params": params,
            "macs": params * 10,
            "latency_ms_b1": 0.1,
            "model_yaml": model_spec_yaml(fit_classes(spec, 10)) + f"# trial {number}\n",
            "augment": None,
            "recipe": {"epochs": 1, "batch_size": 32, "lr": 0.05, "device": "cpu", "seed": number},
            "data_fingerprint": "f" * 64,
            "code_version": "test",
        },
        system_attrs={"constraints": [0.0 if feasible else 1.0]},
    )


def _searched(config: Config, url: str, rows: list[tuple[float, int, bool]]) -> optuna.Study:
    study = open_study(config, url)
    for number, (acc, params, feasible) in enumerate(rows):
        study.add_trial(_search_trial(number, acc, params, feasible))
    return study


ROWS = [(0.90, 1_000, True), (0.97, 10_000, True), (0.99, 1_000_000, False), (0.96, 50_000, True)]


def test_the_plan_retrains_each_pick_once_per_seed_and_the_baselines(tmp_path: Path) -> None:
    config = _config()
    study = _searched(config, journal_url(tmp_path), ROWS)
    models = {RESNET8: load_model_spec(RESNET8)}
    choices, plan = plan_retrains(study.get_trials(), config, models)
    by_policy = {c.policy: c.number for c in choices}
    assert by_policy["best"] == 1  # trial 2 is more accurate but infeasible
    assert by_policy["reference"] is None  # known only once the retrains are in
    retrained = {r.trial for r in plan if r.role == "search"}
    # the picks, then the top 2 front members (0 and 1 are the front); never trial 2
    assert retrained == {c.number for c in choices if c.number is not None} | {0, 1}
    assert 2 not in retrained
    for trial in retrained:
        runs = [r for r in plan if r.trial == trial]
        assert [r.seed for r in runs] == [0, 1] and len({r.key for r in runs}) == 2
        assert len({r.model_key for r in runs}) == 1
        assert all(r.recipe["epochs"] == 1 and r.recipe["seed"] == r.seed for r in runs)
    baselines = [r for r in plan if r.role == "baseline"]
    assert [(r.name, r.seed) for r in baselines] == [("resnet8", 0), ("resnet8", 1)]
    # the same finished study plans the same keys: a rerun finds them all queued
    assert [r.key for r in plan_retrains(study.get_trials(), config, models)[1]] == [
        r.key for r in plan
    ]


def test_ensure_plan_queues_each_key_once_even_from_racing_callers(tmp_path: Path) -> None:
    config = _config()
    url = journal_url(tmp_path)
    study = _searched(config, url, ROWS)
    _, plan = plan_retrains(study.get_trials(), config, {})
    verify = open_study(config, url, verify_study_name(study.study_name), verify=True)
    queued: list[int] = []
    threads = [
        threading.Thread(target=lambda: queued.append(ensure_plan(verify, url, plan)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(queued) == [0, 0, 0, len(plan)]
    keys = [Retrain.of(t).key for t in verify.get_trials()]  # type: ignore[union-attr]
    assert sorted(keys) == sorted(r.key for r in plan)
    assert ensure_plan(verify, url, plan) == 0


def test_claims_take_queued_retrains_and_never_make_an_empty_trial(tmp_path: Path) -> None:
    config = _config()
    url = journal_url(tmp_path)
    verify = open_study(config, url, verify_study_name("x"), verify=True)
    assert claim_retrain(verify, url) == "done"
    assert not verify.get_trials()  # ask() was never called on an empty queue
    _, plan = plan_retrains([], config, {RESNET8: load_model_spec(RESNET8)})
    ensure_plan(verify, url, plan[:1])
    trial = claim_retrain(verify, url)
    assert isinstance(trial, optuna.Trial)
    assert trial.user_attrs[SPEC_ATTR]["key"] == plan[0].key
    assert claim_retrain(verify, url) == "wait"  # running elsewhere, none queued
    verify.tell(trial, [0.5])
    assert claim_retrain(verify, url) == "done"


def test_retrain_data_is_train_plus_validation_and_baselines_fit_the_classes() -> None:
    config = load_config(ROOT / "configs" / "quickstart.yaml")
    data = load_data(config.data)
    full = retrain_data(data)
    assert len(full.train) == len(data.train) + len(data.val) and len(full.val) == 0
    assert torch.equal(full.test.y, data.test.y)
    spec = fit_classes(load_model_spec(RESNET8), 3)
    assert spec.backbone[-1].args[0] == 3
    with pytest.raises(ModelError, match=r"nope\.yaml: no such model YAML"):
        model_file("nope.yaml", data)


def _fake_train(accuracy: float) -> Any:
    def fake(spec, augment, recipe, data, *, weights=None, **kwargs):  # type: ignore[no-untyped-def]
        if weights is not None:  # the network's real state dict, its first weight the seed
            weights.parent.mkdir(parents=True, exist_ok=True)
            state = build_model(spec).state_dict()
            next(v for v in state.values() if v.is_floating_point()).view(-1)[0] = recipe.seed
            torch.save(state, weights)
        acc = accuracy + recipe.seed / 100
        return TrainResult(acc, acc, acc, acc, 1, 1, 0.5, 0.01, 1.0, 0.1, "cpu", resumed_epoch=0)

    return fake


def test_workers_retrain_then_collect_writes_every_file(tmp_path: Path) -> None:
    config = _config()
    url = journal_url(tmp_path)
    study = _searched(config, url, ROWS)
    data = load_data(config.data)
    models = {RESNET8: load_model_spec(RESNET8)}
    _, plan = plan_retrains(study.get_trials(), config, models)
    name = verify_study_name(study.study_name)
    worker = Worker(
        config, url, name, train_fn=_fake_train(0.8), log=lambda _: None, retrain=True,
        weights_dir=tmp_path / "verified",
    )  # fmt: skip
    ensure_plan(worker.study, url, plan)
    assert worker.run(retrain_data(data)) == len(plan)
    out = tmp_path / "results"
    verify_trials = worker.study.get_trials()
    planned = plan_retrains(study.get_trials(), config, models)
    report = write_selection(study.get_trials(), verify_trials, planned, config, "tiny", out)
    assert not report["problems"] and not report["failed"] and not report["pending"]
    export = config.export.model_copy(update={"onnx": False, "artifacts": False})
    published = config.model_copy(update={"export": export})  # the picks' files, no ONNX
    assert publish(out, study, study.get_trials(), published, data, report) == []
    selection = json.loads((out / "selection.json").read_text())
    assert selection["best"]["trial"] == 1
    # every verified search model scores 0.80/0.81 and ResNet-8 as much: the smallest
    # verified trial is as accurate as the reference
    assert selection["reference"]["trial"] == 0
    card = json.loads((out / "selected" / "best" / "card.json").read_text())
    assert card["verified"]["mean"] == pytest.approx(0.805)
    assert card["verified"]["std"] == pytest.approx(math.sqrt(0.01**2 / 2))
    assert card["recipe"]["seed"] == 1 and card["weights"] == "weights.pt"  # the best seed
    weights = torch.load(out / "selected" / "best" / "weights.pt", weights_only=True)
    assert next(v for v in weights.values() if v.is_floating_point()).view(-1)[0] == 1
    assert (out / "selected" / "best" / "model.yaml").read_text() == card["model_yaml"]
    verify = json.loads((out / "verify.json").read_text())
    assert verify["correlated_over"] == 2 and "kendall_tau" in verify
    baselines = json.loads((out / "baselines.json").read_text())
    assert baselines["baselines"][0]["verified_accuracy"] == pytest.approx(0.805)
    row = next(r for r in baselines["comparison"] if r["policy"] == "best")
    assert row["size_ratio"] == pytest.approx(10_000 / 78042, rel=0.01)
    assert row["accuracy_diff"] == pytest.approx(0.0)


def test_a_failed_retrain_is_reported_not_hidden(tmp_path: Path) -> None:
    config = _config(verify_top_k=0, policies=["best"], baselines=[])
    url = journal_url(tmp_path)
    study = _searched(config, url, ROWS)
    _, plan = plan_retrains(study.get_trials(), config, {})
    verify = open_study(config, url, verify_study_name(study.study_name), verify=True)
    ensure_plan(verify, url, plan)
    first = claim_retrain(verify, url)
    assert isinstance(first, optuna.Trial)
    first.set_user_attr("fail_reason", "nan_loss")
    verify.tell(first, state=TrialState.FAIL)
    found = gather(plan, verify.get_trials())
    (model,) = found.values()
    assert model.pending == 1 and model.failed[0].startswith("seed 0: nan_loss")
    assert ensure_plan(verify, url, plan) == 1  # queued once more, up to MAX_RUNS_PER_KEY


@pytest.mark.slow
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


@pytest.mark.slow
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
