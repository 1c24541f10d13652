"""Verification (job.search.retrain, job.collect.picks): the plan, the second study the workers run,
the files `collect` writes, and `train --card`. Real storages, real worker processes."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

from job.collect.picks import resolve_picks
from job.collect.publish import publish
from job.collect.retrains import ensure_plan, fit_classes, model_file, plan_retrains
from job.collect.selection import select
from job.collect.verify import gather, write_verify
from job.collect.verify import verify as verify_step
from job.config import Config, load_config, parse_config
from job.ml.data import load_data
from job.ml.model import ModelError, build_model, load_model_spec
from job.ml.train import TrainResult, train
from job.search.record import TrialRecord
from job.search.retrain import (
    SPEC_ATTR,
    Retrain,
    RetrainTask,
    claim_retrain,
    retrain_data,
    verify_study_name,
)
from job.search.worker import Worker, open_study
from tests.support.configs import RESNET8, VERIFY
from tests.support.proc import ROOT, journal_url
from tests.support.studies import ROWS, search_trial


def _config(text: str = VERIFY, **select: Any) -> Config:
    import yaml

    doc = yaml.safe_load(text)
    doc["select"] = {**doc.get("select", {}), **select}
    return parse_config(doc)


def _searched(config: Config, url: str, rows: list[tuple[float, int, bool]]) -> optuna.Study:
    study = open_study(config, url)
    for number, (acc, params, feasible) in enumerate(rows):
        study.add_trial(search_trial(number, acc, params, feasible))
    return study


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
        return TrainResult(acc, acc, acc, acc, 1, 1, 1.0, 0.1, "cpu", resumed_epoch=0)

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
        config, url, name, train_fn=_fake_train(0.8), log=lambda _: None,
        task=RetrainTask.opener(tmp_path / "verified"),
    )  # fmt: skip
    ensure_plan(worker.study, url, plan)
    assert worker.run(retrain_data(data)) == len(plan)
    out = tmp_path / "results"
    export = config.export.model_copy(update={"onnx": False, "artifacts": False})
    published = config.model_copy(update={"export": export})  # the picks' files, no ONNX
    chosen = select(study.get_trials(), published, models)  # the pipeline's steps, in order
    verification = verify_step(study, chosen, published, url)
    assert verification is not None and not verification.failed and not verification.pending
    out.mkdir()
    picks = resolve_picks(chosen, verification, published, "tiny", out)
    assert publish(out, study, picks, published, data).problems == []
    write_verify(out, verification, chosen, published, data)
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


def test_retrains_evaluate_the_test_split_whatever_the_search_did(tmp_path: Path) -> None:
    """train.test_each_trial off (the default) keeps the test split from search trials
    only: each verification retrain is tested on it, and records its test accuracy."""
    one = {"epochs": 1, "seeds": 1}
    config = _config(verify_top_k=0, policies=["best"], baselines=[], retrain=one)
    assert not config.train.test_each_trial
    url = journal_url(tmp_path)
    _, plan = plan_retrains(_searched(config, url, ROWS).get_trials(), config, {})
    asked: list[object] = []

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        asked.append(kwargs.get("test"))
        return train(*args, **kwargs)  # real training: ResNet-8, 1 epoch at 8x8

    name = verify_study_name("tiny")
    worker = Worker(
        config, url, name, train_fn=spy, log=lambda _: None,
        task=RetrainTask.opener(tmp_path / "verified"),
    )  # fmt: skip
    ensure_plan(worker.study, url, plan)
    assert worker.run(retrain_data(load_data(config.data))) == len(plan) == 1
    assert asked == [True]
    (trial,) = worker.study.get_trials()
    record = TrialRecord.from_trial(trial)
    assert record.test_accuracy is not None and record.test_f1 is not None
    assert trial.values == [record.test_accuracy]  # the verified accuracy


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
    found = gather(plan, verify.get_trials(), "latency_ms_ort_fp32")
    (model,) = found.values()
    assert model.pending == 1 and model.failed[0].startswith("seed 0: nan_loss")
    assert ensure_plan(verify, url, plan) == 1  # queued once more, up to MAX_RUNS_PER_KEY
