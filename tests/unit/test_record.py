"""job.search.record, the typed trial record: what the worker writes is what the readers
read back (search trials, failed trials, retrains, warm starts), trials written by older
versions still read (missing keys are None), and the user-attr keys are named nowhere
else in job/ but the storage layer."""

from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from job.collect.policies import Record
from job.search.record import (
    LINEAGE,
    RESULTS_DIR,
    SPEC_ATTR,
    STUDY_DATA,
    STUDY_PREPARATION,
    WARM_START,
    StudyAttrs,
    TrialAttrs,
    TrialRecord,
    WarmStart,
    enqueue,
    save,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

JOB = Path(__file__).resolve().parents[2] / "job"

# What a search trial's worker writes, in its two writes (base + candidate; result + seconds).
BASE = TrialAttrs(
    worker="host:12", code_version="0.1+abc", data_fingerprint="d" * 64, config_fingerprint="c1"
)
CANDIDATE = TrialAttrs(
    model_yaml="backbone: []\n",
    augment=None,  # augmentation off: written as null
    recipe={"epochs": 2, "lr": 0.01, "seed": 0},
    params=1234,
    macs=56789,
)
RESULT = TrialAttrs(
    val_accuracy=0.91,
    test_accuracy=0.9,
    val_f1=0.89,
    test_f1=0.88,
    latency_ms_ort_fp32=0.42,
    train_images_per_s=5120.0,
    device="cpu",
    resumed_epoch=0,
    seconds=3.5,
)


def _study() -> optuna.Study:
    return optuna.create_study(directions=["maximize", "minimize"])


def _run(study: optuna.Study, *parts: TrialAttrs, values: list[float] | None = None) -> int:
    """A trial asked, its attrs written as the worker writes them, then told."""
    trial = study.ask({"lr": FloatDistribution(1e-4, 1.0, log=True)})
    for part in parts:
        save(study, trial, part)
    state = TrialState.COMPLETE if values is not None else TrialState.FAIL
    study.tell(trial, values, state=state)
    return trial.number


def test_a_search_trial_round_trips() -> None:
    study = _study()
    number = _run(study, BASE, CANDIDATE, RESULT, values=[0.91, 1234.0])
    frozen = study.trials[number]
    record = TrialRecord.from_trial(frozen)
    assert record.to_attrs() == frozen.user_attrs  # every key and value, nothing added
    assert frozen.user_attrs["augment"] is None and "retry_of" not in frozen.user_attrs
    assert record.number == number and record.complete and record.state == "COMPLETE"
    assert record.values == (0.91, 1234.0) and record.feasible
    assert record.sampled == frozen.params and "lr" in record.sampled
    assert record.params == 1234 and record.macs == 56789  # weights, not Optuna's params
    assert record.val_accuracy == 0.91 and record.latency("latency_ms_ort_fp32") == 0.42
    assert record.augment is None and record.recipe == {"epochs": 2, "lr": 0.01, "seed": 0}
    assert record.code_version == "0.1+abc" and record.fail_reason is None
    assert record.retrain is None and record.warm_start is None and record.retry_of is None
    assert isinstance(record.datetime_start, datetime) and record.seconds == 3.5


def test_what_the_worker_wrote_before_this_record_reads_the_same() -> None:
    """The keys and values of the dicts the worker wrote by hand before `TrialAttrs`."""
    written = {
        "worker": "host:12",
        "code_version": "0.1+abc",
        "data_fingerprint": "d" * 64,
        "config_fingerprint": "c1",
        "model_yaml": "backbone: []\n",
        "augment": None,
        "recipe": {"epochs": 2, "lr": 0.01, "seed": 0},
        "params": 1234,
        "macs": 56789,
        "val_accuracy": 0.91,
        "test_accuracy": 0.9,
        "val_f1": 0.89,
        "test_f1": 0.88,
        "latency_ms_ort_fp32": 0.42,
        "train_images_per_s": 5120.0,
        "device": "cpu",
        "resumed_epoch": 0,
        "seconds": 3.5,
    }
    merged = BASE.to_attrs() | CANDIDATE.to_attrs() | RESULT.to_attrs()
    assert merged == written
    assert [type(v) for v in merged.values()] == [type(v) for v in written.values()]


def test_a_failed_trial_keeps_its_reason() -> None:
    study = _study()
    failure = TrialAttrs(fail_reason="nan_loss", fail_message="loss is nan at epoch 1")
    number = _run(study, BASE, failure, TrialAttrs(seconds=0.5))
    frozen = study.trials[number]
    record = TrialRecord.from_trial(frozen)
    assert record.to_attrs() == frozen.user_attrs
    assert record.state == "FAIL" and not record.complete and record.values is None
    assert record.failure == ("nan_loss", "loss is nan at epoch 1")
    assert record.val_accuracy is None and record.params is None


def test_a_preempted_trial_and_its_retry() -> None:
    """The hand-back: the reason and where the checkpoint stands; its retry is queued
    with the lineage (retry_of, resume_from) and, for a retrain, its spec."""
    study = _study()
    saved = TrialAttrs(
        fail_reason="preempted", fail_message="SIGTERM", checkpoint_epoch=2, checkpoint_step=7
    )
    number = _run(study, BASE, saved)
    assert study.trials[number].user_attrs["checkpoint_epoch"] == 2
    unsaved = TrialAttrs(fail_reason="preempted", fail_message="x", checkpoint_saved=False)
    assert unsaved.to_attrs()["checkpoint_saved"] is False
    # a checkpoint that was not saved: no resume_from at all (None is not written)
    assert TrialAttrs(retry_of=number, resume_from=None).to_attrs() == {"retry_of": number}
    enqueue(study, {"lr": 0.1}, TrialAttrs(retry_of=number, resume_from="/ck/t0.pt"))
    retry = study.ask()
    frozen = study.trials[retry.number]
    record = TrialRecord.from_trial(frozen)
    assert frozen.user_attrs == {"retry_of": number, "resume_from": "/ck/t0.pt"}
    assert record.retry_of == number and record.resume_from == "/ck/t0.pt"
    assert record.state == "RUNNING" and retry.suggest_float("lr", 1e-4, 1.0, log=True) == 0.1
    assert TrialAttrs.read(retry).resume_from == "/ck/t0.pt"  # a live trial reads too


def test_a_retrain_trial_round_trips() -> None:
    study = optuna.create_study(direction="maximize")
    spec = {
        "key": "abc-s0",
        "model_key": "abc",
        "role": "search",
        "name": "trial 3",
        "trial": 3,
        "path": None,
        "model_yaml": "backbone: []\n",
        "augment": None,
        "recipe": {"epochs": 4, "seed": 0},
        "seed": 0,
    }
    enqueue(study, {}, TrialAttrs(retrain=spec))
    trial = study.ask()
    assert study.trials[trial.number].user_attrs == {SPEC_ATTR: spec}
    save(study, trial, TrialAttrs(params=10, macs=20))
    save(study, trial, TrialAttrs.from_result(_result(), weights="/v/sms-verify-abc-s0.pt"))
    study.tell(trial, [0.8])
    frozen = study.trials[trial.number]
    record = TrialRecord.from_trial(frozen)
    assert record.to_attrs() == frozen.user_attrs
    assert record.retrain == spec and record.weights == "/v/sms-verify-abc-s0.pt"
    assert record.test_accuracy == 0.8 and record.values == (0.8,)
    assert "checkpoint_refused" not in frozen.user_attrs  # None: not written


def _result(refused: str | None = None) -> Any:
    from job.ml.train import TrainResult

    return TrainResult(
        val_accuracy=math.nan,
        test_accuracy=0.8,
        val_f1=math.nan,
        test_f1=0.79,
        params=10,
        macs=20,
        train_images_per_s=100.0,
        seconds=1.0,
        device="cpu",
        checkpoint_refused=refused,
    )


def test_from_result_copies_what_was_measured() -> None:
    attrs = TrialAttrs.from_result(_result("damaged")).to_attrs()
    assert attrs["checkpoint_refused"] == "damaged" and attrs["resumed_epoch"] == 0
    assert "params" not in attrs and "seconds" not in attrs  # written by the worker itself
    assert math.isnan(attrs["val_accuracy"]) and attrs["device"] == "cpu"


def test_a_warm_start_round_trips() -> None:
    study = _study()
    origin = WarmStart(parent="sms", trial=4, why="pick:best")
    enqueue(study, {"lr": 0.1}, TrialAttrs(warm_start=origin), skip_if_exists=True)
    enqueue(study, {"lr": 0.1}, TrialAttrs(warm_start=origin), skip_if_exists=True)  # once
    assert len(study.trials) == 1
    frozen = study.trials[0]
    assert frozen.user_attrs == {WARM_START: {"parent": "sms", "trial": 4, "why": "pick:best"}}
    assert TrialRecord.from_trial(frozen).warm_start == origin


def test_a_trial_of_an_older_version_reads_with_missing_keys_none() -> None:
    old = create_trial(
        state=TrialState.COMPLETE,
        values=[0.8, 900.0],
        params={"lr": 0.1},
        distributions={"lr": FloatDistribution(1e-4, 1.0, log=True)},
        user_attrs={"val_accuracy": 0.8, "params": 900, "model_yaml": "x", "legacy": 1},
    )
    record = TrialRecord.from_trial(old)
    assert record.val_accuracy == 0.8 and record.params == 900 and record.model_yaml == "x"
    for name in ("test_accuracy", "latency_ms_ort_fp32", "data_fingerprint", "code_version"):
        assert getattr(record, name) is None
    assert record.augment is None and "augment" not in record.to_attrs()
    assert record.recipe is None and record.retrain is None and record.seconds is None
    assert record.to_attrs() == {"val_accuracy": 0.8, "params": 900, "model_yaml": "x"}
    assert record.sampled == {"lr": 0.1}  # create_trial: number -1, as Optuna makes it


def test_a_value_of_the_wrong_type_reads_as_missing() -> None:
    odd = {
        "params": "many",
        "val_accuracy": 1,  # an int where a float is written: still a number
        "warm_start": {"parent": "sms"},  # no trial: no origin
        "retry_of": 3,
        "retrain": "not a dict",
    }
    record = TrialAttrs.of(odd)
    assert record.params is None and record.warm_start is None and record.retrain is None
    assert record.val_accuracy == 1.0 and record.retry_of == 3


def test_an_older_versions_pytorch_latency_reads_under_the_name_that_says_so() -> None:
    """Before the latency objective moved to onnxruntime, `latency_ms_b1`/`_b256` were the
    PyTorch figures: they read as `latency_ms_torch`/`_torch_b256`, and never as another
    runtime's."""
    old = create_trial(
        state=TrialState.COMPLETE, values=[0.8, 0.3],
        user_attrs={"latency_ms_b1": 0.3, "latency_ms_b256": 0.01},
    )  # fmt: skip
    record = TrialRecord.from_trial(old)
    assert record.latency("latency_ms_torch") == 0.3 and record.latency_ms_torch_b256 == 0.01
    assert record.latency("latency_ms_ort_fp32") is None
    assert TrialAttrs.of({"latency_ms_b1": 0.3, "latency_ms_torch": 0.2}).latency_ms_torch == 0.2


def test_an_infeasible_trial_is_not_feasible() -> None:
    trial = create_trial(
        state=TrialState.COMPLETE,
        values=[0.9],
        system_attrs={"constraints:params": 10.0, "constraints:macs": -1.0},
    )
    assert not TrialRecord.from_trial(trial).feasible


def test_the_policies_view_of_a_record() -> None:
    record = TrialRecord.model_validate(
        {"number": 5, "state": "COMPLETE", "values": (0.9, 100.0), "val_accuracy": 0.9}
    )
    view = Record.of(record, on_front=True, latency_key="latency_ms_ort_fp32")
    assert view == Record(5, 0.9, 0, 0, view.latency_ms, True, True, (0.9, 100.0))
    assert math.isnan(view.latency_ms)  # not measured


def test_study_attrs_round_trip(tmp_path: Path) -> None:
    study = _study()
    lineage = {"version": 2, "parent": "sms", "fingerprints": {"data": "d"}}
    written = StudyAttrs(
        data_fingerprint="d" * 64,
        data_preparation={"image_size": 8, "seed": 0},
        research=lineage,
        results_dir=str(tmp_path),
    )
    written.write(study)
    assert study.user_attrs == {
        STUDY_DATA: "d" * 64,
        STUDY_PREPARATION: {"image_size": 8, "seed": 0},
        LINEAGE: lineage,
        RESULTS_DIR: str(tmp_path),
    }
    found = StudyAttrs.read(study)
    assert found == written and found.lineage == lineage
    storage = study._storage
    assert StudyAttrs.stored(storage, study._study_id) == written
    assert StudyAttrs.of({}).to_attrs() == {} and StudyAttrs.of({}).lineage is None
    assert StudyAttrs.of({LINEAGE: "garbled", STUDY_DATA: 7}) == StudyAttrs()


# --- one place names the keys ---------------------------------------------------------

# Keys that are user-attr keys only (never an output file's field or a TrainResult's):
# outside the record and the storage, none is written as a string.
ATTR_ONLY_KEYS = (
    "latency_ms_torch_b256",
    "train_images_per_s",
    "resumed_epoch",
    "retry_of",
    "resume_from",
    "fail_reason",
    "fail_message",
    "checkpoint_epoch",
    "checkpoint_step",
    "checkpoint_saved",
    "warm_start",
    "results_dir",
    "data_preparation",
)
ALLOWED = ("search/record.py", "storage/")


def _modules() -> list[tuple[str, str]]:
    found = []
    for path in sorted(JOB.rglob("*.py")):
        name = path.relative_to(JOB).as_posix()
        if not name.startswith(ALLOWED):
            found.append((name, path.read_text(encoding="utf-8")))
    return found


def test_user_attrs_are_read_and_written_only_through_the_record() -> None:
    """`user_attrs`, `set_user_attr`, `save_trial_attrs`, `get_study_user_attrs`: only the
    record and the storage layer touch Optuna's user attrs."""
    offenders = [name for name, text in _modules() if "user_attr" in text]
    assert offenders == []


def test_attr_keys_are_named_only_in_the_record() -> None:
    keys = "|".join(ATTR_ONLY_KEYS)
    pattern = re.compile(rf"""["']({keys})["']""")
    offenders = [
        f"{name}: {m.group(0)}" for name, text in _modules() for m in pattern.finditer(text)
    ]
    assert offenders == []
    known = set(TrialAttrs.model_fields) | set(StudyAttrs.model_fields)
    assert set(ATTR_ONLY_KEYS) <= known


@pytest.mark.parametrize("name", ["worker", "seconds", "device", "weights"])
def test_every_field_is_optional(name: str) -> None:
    assert getattr(TrialAttrs(), name) is None and TrialAttrs().to_attrs() == {}
