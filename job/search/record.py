"""The typed trial record: what one trial was, and the one place that names user-attr keys.

A trial's results live in its Optuna user attrs (a flat dict of JSON values, written by
the worker, read by the collector, `status`, `run`, `research` and the drift report).
This module is the only one that knows their keys (with `job.storage`, which writes
them): everyone else builds a `TrialAttrs` to write and reads a `TrialRecord`.

- `TrialAttrs`: the user-attr part of a trial, every field optional. `to_attrs()` is the
  dict the worker writes: the fields that were set, by their attr keys, in field order;
  a field left unset, or set to None, is not written, except `augment`, whose None says
  "no augmentation" (`NULL_MEANS`).
- `TrialRecord`: a `TrialAttrs` plus what Optuna keeps of the trial itself (number,
  state, objective values, sampled params, feasibility, start and end times), read by
  `TrialRecord.from_trial(frozen)`. Trials written by older versions read too: a missing
  key, or a value of the wrong type, is None.
- `StudyAttrs`: the study-level attrs (the data a study trains on, the lineage `research`
  recorded, where its collector wrote).

The attr keys are the field names, so stored studies and journals keep reading: a field
is renamed only together with a reader of its old key here.

Nothing here imports Optuna or torch at run time: the policies and light verbs read
records without either (the Optuna objects are only passed in).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

    from job.ml.latency import Latency
    from job.ml.train import TrainResult

__all__ = [
    "LATENCY_FIGURES",
    "LATENCY_KEYS",
    "LINEAGE",
    "RESULTS_DIR",
    "SEARCH_TEST_LABEL",
    "SPEC_ATTR",
    "STUDY_DATA",
    "STUDY_PREPARATION",
    "WARM_START",
    "StudyAttrs",
    "TrialAttrs",
    "TrialRecord",
    "WarmStart",
    "enqueue",
    "latency_key",
    "latency_text",
    "save",
]

# Keys others name (messages, tests, benchmarks) as constants; each is also a field below.
SPEC_ATTR = "retrain"  # a verification trial's `job.search.retrain.Retrain`, as a dict
WARM_START = "warm_start"  # a trial `research` enqueued to re-evaluate one of its parent's
STUDY_DATA = "data_fingerprint"  # study: the source's content its trials train on
STUDY_PREPARATION = "data_preparation"  # study: how the data is cut (`data.*` keys)
# How a search trial's test figure is labelled wherever it is shown: one exists only with
# `train.test_each_trial` (research use), and then the search has seen the test split.
SEARCH_TEST_LABEL = "research: test split seen during the search"
LINEAGE = "research"  # study: the lineage of a version `research` made
RESULTS_DIR = "results_dir"  # study: where its collector wrote (the drift report reads it)


class _Attrs(BaseModel):
    """A set of user attrs: frozen, unknown keys ignored, the keys the field names."""

    model_config = ConfigDict(frozen=True, extra="ignore", protected_namespaces=())

    @classmethod
    def _attr_fields(cls) -> tuple[str, ...]:
        return tuple(cls.model_fields)

    @classmethod
    def _tolerant(cls, data: Mapping[str, Any]) -> Self:
        """Validated from stored attrs; a value of the wrong type (an older version's, a
        hand edit) reads as missing instead of failing the whole record."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            bad = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
            return cls.model_validate({k: v for k, v in data.items() if k not in bad})

    def to_attrs(self) -> dict[str, Any]:
        """The user attrs to write: set fields, by key, in field order (see the module doc)."""
        keep = {
            name
            for name in self.model_fields_set & set(self._attr_fields())
            if getattr(self, name) is not None or name in NULL_MEANS
        }
        return self.model_dump(include=keep)


class WarmStart(BaseModel):
    """Where a warm-start trial comes from: trial `trial` of study `parent`, and why
    (`pick:<policy>` or `front`)."""

    model_config = ConfigDict(frozen=True)

    parent: str
    trial: int
    why: str = ""


# Fields whose None is itself a value, written when set: no augmentation.
NULL_MEANS = frozenset({"augment"})

# What `TrialAttrs.from_result` copies from a `TrainResult`.
RESULT_FIELDS = (
    "val_accuracy",
    "test_accuracy",
    "val_f1",
    "test_f1",
    "train_images_per_s",
    "device",
    "resumed_epoch",
)

# One latency figure per runtime and precision, in ms per image at batch 1 (job.ml.latency),
# each under one name wherever it appears: the trial record, card.json, verify.json,
# baselines.json and the report. `train.latency` picks the one the objective uses.
LATENCY_KEYS = {
    ("onnxruntime", "fp32"): "latency_ms_ort_fp32",
    ("onnxruntime", "int8"): "latency_ms_ort_int8",
    ("pytorch", "fp32"): "latency_ms_torch",  # eager, on the training device
}
LATENCY_FIGURES = (*LATENCY_KEYS.values(), "latency_ms_torch_b256")  # every one a trial has
# Keys older versions wrote, read as today's (the PyTorch figures, renamed to say so).
_RENAMED = {"latency_ms_b1": "latency_ms_torch", "latency_ms_b256": "latency_ms_torch_b256"}


def latency_key(runtime: str, precision: str) -> str:
    """The name of the latency figure timed in `runtime` at `precision`."""
    return LATENCY_KEYS[(runtime, precision)]


def latency_text(key: str) -> str:
    """What a latency figure is, for people: `onnxruntime CPU fp32, batch 1`."""
    runtime, precision = next(k for k, v in LATENCY_KEYS.items() if v == key)
    if runtime == "pytorch":
        return "PyTorch eager, batch 1, on the training device"
    return f"onnxruntime CPU {precision}, batch 1"


class TrialAttrs(_Attrs):
    """The user attrs of one trial; the field names are the keys (see the module doc)."""

    # who ran it, on what (every trial a worker ran)
    worker: str | None = None  # host:pid
    code_version: str | None = None
    data_fingerprint: str | None = None  # the data set's content (`Dataset.fingerprint`)
    config_fingerprint: str | None = None  # the result sections of the config
    # lineage: a retry of a stale or preempted trial, a warm start, a verification run
    retry_of: int | None = None  # the trial number this one retries
    resume_from: str | None = None  # the checkpoint a preempted trial's retry resumes
    warm_start: WarmStart | None = None
    retrain: dict[str, Any] | None = None  # a verification trial's `Retrain` (SPEC_ATTR)
    # the candidate (search trials): network, augmentation (None: off), recipe
    model_yaml: str | None = None
    augment: dict[str, Any] | None = None
    recipe: dict[str, Any] | None = None  # a TrainConfig, as JSON
    params: int | None = None  # the network's weights (not the Optuna params: `sampled`)
    macs: int | None = None
    # what was measured (`TrainResult`)
    val_accuracy: float | None = None
    test_accuracy: float | None = None  # search trials: only with train.test_each_trial
    val_f1: float | None = None
    test_f1: float | None = None
    # latency, ms per image (LATENCY_KEYS): the runtime `train.latency` times in
    latency_ms_ort_fp32: float | None = None
    latency_ms_ort_int8: float | None = None
    latency_ms_torch: float | None = None  # PyTorch eager at batch 1 on `device`
    latency_ms_torch_b256: float | None = None  # and per image at batch 256
    train_images_per_s: float | None = None
    device: str | None = None
    resumed_epoch: int | None = None  # > 0: resumed from a checkpoint at this epoch
    checkpoint_refused: str | None = None  # why a checkpoint was not resumed
    weights: str | None = None  # a verification run's weights file
    # a failure: its reason (nan_loss, oom, no_fit, error, preempted, stale, interrupted, …)
    fail_reason: str | None = None
    fail_message: str | None = None
    checkpoint_epoch: int | None = None  # preempted: where its checkpoint stands
    checkpoint_step: int | None = None
    checkpoint_saved: bool | None = None  # False: preempted, and no checkpoint written
    # pruned (job.search.prune): the rung it stopped at, and how it ranked among how many
    pruned_epoch: int | None = None
    pruned_rank: int | None = None
    rung_size: int | None = None
    # the training loss of each epoch, epoch 1 first (a resumed trial's includes its
    # predecessor's); its validation accuracy per epoch is its learning curve, Optuna's
    # intermediate values (job.storage.save_curve)
    train_loss: list[float] | None = None
    # wall time of the trial on its worker, build to tell
    seconds: float | None = None

    @classmethod
    def of(cls, attrs: Mapping[str, Any]) -> TrialAttrs:
        """From stored user attrs (tolerant: see the module doc)."""
        return TrialAttrs._tolerant(_known(attrs))

    @classmethod
    def read(cls, trial: optuna.Trial | FrozenTrial) -> TrialAttrs:
        """The attrs a live or frozen trial holds now."""
        return cls.of(trial.user_attrs)

    @classmethod
    def from_latency(cls, latency: Latency | None) -> TrialAttrs:
        """A latency timed by job.ml.latency, under its one name (LATENCY_KEYS)."""
        if latency is None:
            return cls()
        found = {latency_key(latency.runtime, latency.precision): latency.ms}
        if latency.ms_b256 is not None:
            found["latency_ms_torch_b256"] = latency.ms_b256
        return cls(**found)

    @classmethod
    def from_result(cls, result: TrainResult, weights: str | None = None) -> TrialAttrs:
        """What a training run measured (`RESULT_FIELDS`), and why a checkpoint was refused
        (damaged or planted: the trial started over); `weights`: a verification run's."""
        found: dict[str, Any] = {key: getattr(result, key) for key in RESULT_FIELDS}
        return cls(**found, checkpoint_refused=result.checkpoint_refused, weights=weights)

    def latency(self, key: str) -> float | None:
        """The latency figure `key` (LATENCY_KEYS), None when not measured."""
        value = getattr(self, key)
        return value if isinstance(value, float) else None

    @property
    def failure(self) -> tuple[str, str]:
        """(reason, message), either "" when not recorded."""
        return self.fail_reason or "", self.fail_message or ""


_TRIAL_KEYS = frozenset(TrialAttrs.model_fields)


def _known(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The trial keys of stored user attrs, an older version's renamed keys as today's."""
    found = {_RENAMED.get(k, k): v for k, v in attrs.items() if k not in _RENAMED.values()}
    found |= {k: v for k, v in attrs.items() if k in _RENAMED.values()}  # today's win
    return {k: v for k, v in found.items() if k in _TRIAL_KEYS}


class TrialRecord(TrialAttrs):
    """What a trial was: its attrs (`TrialAttrs`) and what Optuna keeps of it."""

    number: int
    state: str  # the TrialState's name: COMPLETE, FAIL, RUNNING, WAITING, PRUNED
    values: tuple[float, ...] | None = None  # the objective values (COMPLETE only)
    sampled: dict[str, Any] = {}  # the Optuna params the sampler chose (`FrozenTrial.params`)
    feasible: bool = True  # every constraint value <= 0 (job.search.view.is_feasible)
    datetime_start: datetime | None = None
    datetime_complete: datetime | None = None

    @classmethod
    def _attr_fields(cls) -> tuple[str, ...]:
        return tuple(TrialAttrs.model_fields)

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> TrialRecord:
        """The record of a stored trial, of this version or an older one."""
        attrs = _known(trial.user_attrs)
        return cls._tolerant(
            {
                **attrs,
                "number": trial.number,
                "state": trial.state.name,
                "values": trial.values,
                "sampled": dict(trial.params),
                "feasible": all(v <= 0.0 for v in trial.constraints.values()),
                "datetime_start": trial.datetime_start,
                "datetime_complete": trial.datetime_complete,
            }
        )

    @property
    def complete(self) -> bool:
        return self.state == "COMPLETE"


def save(study: optuna.Study, trial: optuna.Trial, attrs: TrialAttrs | Mapping[str, Any]) -> None:
    """Write `attrs` (a `TrialAttrs`, or the merge of several `to_attrs()`) onto `trial` as
    one write (`job.storage.save_trial_attrs`: one transaction on PostgreSQL)."""
    from job.storage import save_trial_attrs

    found = attrs.to_attrs() if isinstance(attrs, TrialAttrs) else dict(attrs)
    save_trial_attrs(study, trial, found)


def enqueue(
    study: optuna.Study,
    params: Mapping[str, Any],
    attrs: TrialAttrs,
    skip_if_exists: bool = False,
) -> None:
    """Queue a trial with fixed `params` (a retry, a retrain, a warm start) and its attrs."""
    study.enqueue_trial(dict(params), user_attrs=attrs.to_attrs(), skip_if_exists=skip_if_exists)


# --- the study ----------------------------------------------------------------------


class StudyAttrs(_Attrs):
    """A study's user attrs; the field names are the keys (the constants above)."""

    data_fingerprint: str | None = None  # STUDY_DATA: fixed by its first worker
    data_preparation: dict[str, Any] | None = None  # STUDY_PREPARATION: `data.*` keys
    research: dict[str, Any] | None = None  # LINEAGE: version, parent, fingerprints, …
    results_dir: str | None = None  # RESULTS_DIR: the folder its collector wrote

    @classmethod
    def of(cls, attrs: Mapping[str, Any]) -> StudyAttrs:
        return cls._tolerant(attrs)

    @classmethod
    def read(cls, study: optuna.Study) -> StudyAttrs:
        return cls.of(study.user_attrs)

    @classmethod
    def stored(cls, storage: BaseStorage, study_id: int) -> StudyAttrs:
        """A study's attrs through its storage, without loading the study."""
        return cls.of(storage.get_study_user_attrs(study_id))

    @property
    def lineage(self) -> dict[str, Any] | None:
        """The lineage `research` recorded (None: a version `run` made)."""
        return self.research

    def write(self, study: optuna.Study) -> None:
        """Set each of these attrs on `study` (one write each)."""
        for key, value in self.to_attrs().items():
            study.set_user_attr(key, value)
