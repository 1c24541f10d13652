"""The config's sections other than the search space (job/config/space.py): study,
data, augment, train, constraints, select, export. Each field that changes a trial's
result is in a section marked `RESULTS` on `Config` (job/config/load.py); a field inside
one that does not is marked `NO_RESULTS` on the field itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    model_validator,
)

from job.config.base import (
    NO_RESULTS,
    Bool,
    Float,
    Int,
    Section,
    Seed,
    _require,
    study_name_problem,
)
from job.files import short
from job.ml.vocab import DEFAULT_OPS, GREY, OPS


class PruningConfig(Section):
    """Multi-objective asynchronous successive halving (job.search.prune):
    a trial is judged at epochs `min_epochs * eta**k` below `train.epochs` and goes on only
    while no trial judged at that epoch so far dominates it, or it ranks in their first
    1/eta."""

    enabled: Bool = False
    min_epochs: Int = Field(1, ge=1)  # the first rung
    eta: Int = Field(3, ge=2, le=16)  # a rung's first 1/eta (and first front) go on


class StudyConfig(Section):
    name: str = "sms"  # study_name_problem: the rule `--study` follows too
    # An Optuna storage URL; None → the embedded default under the run's output folder.
    storage: str | None = None
    budget: Int = Field(20, ge=1)  # COMPLETE trials (pruned and failed ones do not count)
    # Epochs trained by all trials (any state), at most: a budget of compute, to compare
    # searches at equal cost. None: no such limit (job.search.budget).
    budget_epochs: Int | None = Field(None, ge=1)
    pruning: PruningConfig = PruningConfig()
    sampler: Literal["tpe", "nsga2", "random", "gp"] = "tpe"
    # NSGA-II's generation size (Optuna's default). Its first generation is drawn at
    # random, so a search of fewer trials than this is random search (docs/BENCHMARKS.md).
    nsga2_population: Int = Field(50, ge=2, le=10_000)
    seed: Seed = 0  # worker i samples with seed + 1000 i (job.search.studies.make_sampler)
    # Worker metrics over HTTP; SMS_METRICS_PORT overrides ("off" disables).
    metrics_port: Int | None = Field(None, ge=0, le=65535)
    # Keep serving this long after the last trial, so the final values get scraped:
    # twice the PodMonitor's 15 s interval. 0 for no wait (a Pushgateway keeps them).
    metrics_linger_s: Float = Field(30.0, ge=0.0, le=3600.0)
    # No trial completed for this long while budget remains: the SmsStudyStalled alert
    # (the exporter serves it as sms_study_stall_after_seconds; monitoring/rules.yml).
    stall_after_s: Int = Field(3600, ge=60, le=30 * 86400)
    # No trial started this long after the exporter first saw the study: SmsStudyNotStarted
    # (pods Pending, a quota, a queue). Raise it where Kueue may hold the Job longer.
    start_within_s: Int = Field(1800, ge=60, le=30 * 86400)
    # On a cluster, the workers' Job is stopped this long after it started (its
    # activeDeadlineSeconds, set by `research --launch`): a search that hangs or cannot
    # meet its budget ends, and frees its GPUs, instead of holding them for ever.
    deadline_s: Int = Field(7 * 86400, ge=600, le=365 * 86400)
    # PostgreSQL only: a worker that stops beating this long (killed, node lost) has its
    # trial failed and retried by a live worker, at most `max_retry` times.
    heartbeat_interval_s: Int = Field(10, ge=1, le=3600)
    grace_period_s: Int = Field(60, ge=2, le=86400)
    max_retry: Int = Field(3, ge=0, le=100)
    # PostgreSQL restarted or failing over: retry with backoff this long, then exit 1.
    db_outage_deadline_s: Float = Field(300.0, gt=0.0, le=86400.0)
    # Where preempted trials leave their state for the retry (a shared volume in k8s);
    # None: <output folder>/checkpoints.
    checkpoint_dir: str | None = None

    @model_validator(mode="after")
    def _beats(self) -> StudyConfig:
        problem = study_name_problem(self.name)
        _require(problem is None, f"name: {problem}")
        _require(
            self.grace_period_s > self.heartbeat_interval_s,
            f"grace_period_s: must be > heartbeat_interval_s ({self.heartbeat_interval_s}), "
            f"or a live worker's trial is failed between two beats",
        )
        return self


class DataConfig(Section):
    name: Literal["digits", "cifar10", "imagefolder"] = "digits"
    path: Annotated[Path | None, NO_RESULTS] = (
        None  # where, not what: content has its own fingerprint
    )
    image_size: Int = Field(32, ge=8, le=512)
    # Train images kept after a seeded, stratified cut (the seed used 10k of CIFAR's 50k).
    subset: Int | None = Field(None, ge=10)
    val_ratio: Float = Field(0.1, ge=0.0, lt=1.0)
    # Share held out for test when the source has no test split (digits, ImageFolder).
    test_ratio: Float = Field(0.2, gt=0.0, lt=1.0)
    download: Annotated[Bool, NO_RESULTS] = False
    seed: Seed = 0

    @model_validator(mode="after")
    def _path_needed(self) -> DataConfig:
        _require(
            self.name == "digits" or self.path is not None,
            f"path: required for data set {self.name!r}",
        )
        return self


class AugmentConfig(Section):
    """The train augmentation policy (the seed's: RandAugment, flip, Cutout), consumed as
    it is by `job.ml.augment`; `space.augment` can search n_select and level over it.
    ``level: null`` draws a level per op and image (random magnitude)."""

    enabled: Bool = True
    ops: tuple[str, ...] = DEFAULT_OPS
    n_select: Int = Field(2, ge=0)
    level: Int | None = Field(15, ge=0)
    n_level: Int = Field(31, ge=1)
    flip_p: Float = Field(0.5, ge=0.0, le=1.0)
    cutout_p: Float = Field(0.8, ge=0.0, le=1.0)
    cutout_size: Float = Field(0.45, ge=0.0, le=1.0)
    fill: Int = Field(GREY, ge=0, le=255)

    @model_validator(mode="after")
    def _consistent(self) -> AugmentConfig:
        unknown = [op for op in self.ops if op not in OPS]
        if unknown:
            raise ValueError(f"ops: unknown op {short(unknown[0])} (known: {', '.join(OPS)})")
        twice = sorted({op for op in self.ops if self.ops.count(op) > 1})
        _require(
            not twice, f"ops: {', '.join(twice)} listed twice (RandAugment picks distinct ops)"
        )
        if self.enabled:  # a policy that is off may keep whatever it had
            _require(bool(self.ops), "ops: must name at least one op (or set enabled: false)")
            _require(
                self.n_select <= len(self.ops),
                f"n_select: must be <= len(ops) = {len(self.ops)}, got {self.n_select}",
            )
        if self.level is not None:
            _require(
                self.level <= self.n_level,
                f"level: must be <= n_level = {self.n_level}, got {self.level}",
            )
        return self


class LatencyConfig(Section):
    """Where the latency objective is timed (job.ml.latency): by default in the runtime the
    picks are deployed in, onnxruntime on the worker's CPU, batch 1, fp32 (int8: the
    export's static quantization); `pytorch`: eager PyTorch on the training device."""

    runtime: Literal["onnxruntime", "pytorch"] = "onnxruntime"
    precision: Literal["fp32", "int8"] = "fp32"
    threads: Int = Field(1, ge=1, le=1024)  # onnxruntime intra-op threads, pinned
    runs: Int = Field(50, ge=10, le=100_000)  # timed batch-1 runs, after a warm-up; the median

    @model_validator(mode="after")
    def _runtime(self) -> LatencyConfig:
        _require(
            self.runtime == "onnxruntime" or self.precision == "fp32",
            f"precision: int8 is timed in onnxruntime only, got runtime {self.runtime}",
        )
        return self


class TrainConfig(Section):
    """The training recipe (SGD with Nesterov momentum, linear warm-up then cosine
    annealing per step), consumed as it is by `job.ml.train`; a trial's copy differs in its
    seed and in whatever `space.train` searches."""

    epochs: Int = Field(10, ge=1)
    batch_size: Int = Field(128, ge=2)  # a batch of one breaks BatchNorm
    eval_batch_size: Annotated[Int, NO_RESULTS] = Field(1024, ge=1)
    lr: Float = Field(0.1, gt=0.0)
    momentum: Float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: Bool = True
    weight_decay: Float = Field(5e-4, ge=0.0)
    warmup_epochs: Float = Field(0.0, ge=0.0)  # at most epochs
    label_smoothing: Float = Field(0.0, ge=0.0, lt=1.0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Bool = True  # bf16 autocast, CUDA only
    channels_last: Bool = True  # NHWC: faster convolutions on CUDA and on CPU
    compile: Bool = False
    measure_latency: Bool = True  # the `latency` objective needs it
    # where latency is timed: a result only where it is an objective or constraint (result_fields)
    latency: Annotated[LatencyConfig, NO_RESULTS] = LatencyConfig()
    # Search trials evaluate the test split too: research use only (the search then sees
    # it, and its figures say so); off, only verification retrains (which always do).
    test_each_trial: Annotated[Bool, NO_RESULTS] = False
    seed: Seed = 0  # trial n trains with seed + n (job.search.space), retrain i with seed + i

    @model_validator(mode="after")
    def _warmup(self) -> TrainConfig:
        _require(
            self.warmup_epochs <= self.epochs,
            f"warmup_epochs: must be <= epochs ({self.epochs}), got {self.warmup_epochs:g}",
        )
        return self


Objective = Literal["accuracy", "f1", "params", "macs", "latency"]


class ConstraintsConfig(Section):
    """Hard limits; a trial over one is infeasible (Optuna constraints, > 0)."""

    max_params: Int | None = Field(None, ge=1)
    max_macs: Int | None = Field(None, ge=1)
    max_latency_ms: Float | None = Field(None, gt=0.0)


class WithinDrop(Section):
    accuracy_drop: Float = Field(ge=0.0, lt=1.0)  # proxy accuracy, absolute (0.01 = 1 point)


class Limits(Section):
    """A deployment budget: any subset of the keys, at least one."""

    params: Int | None = Field(None, ge=1)
    macs: Int | None = Field(None, ge=1)
    latency_ms: Float | None = Field(None, gt=0.0)  # the search's latency (train.latency)

    @model_validator(mode="after")
    def _some(self) -> Limits:
        _require(
            any(v is not None for v in (self.params, self.macs, self.latency_ms)),
            "give at least one of params, macs, latency_ms",
        )
        return self


POLICY_KINDS = ("best", "smallest_within", "knee", "budget", "reference")
_FLAG_KINDS = ("best", "knee")  # policies with no settings: written as a bare word


class Policy(Section):
    """One selection policy (job.collect.policies). In YAML a bare word (`best`, `knee`) or a
    mapping with one policy key and an optional `name` (its folder under selected/,
    by default the policy's kind): `{budget: {params: 50000}, name: tiny}`."""

    name: str
    best: Bool = False
    knee: Bool = False
    smallest_within: WithinDrop | None = None
    budget: Limits | None = None
    reference: str | None = None  # a model YAML (seed format), trained alike

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, data: Any) -> Any:
        known = ", ".join(POLICY_KINDS)
        if isinstance(data, str):
            if data in _FLAG_KINDS:
                return {"name": data, data: True}
            what = "needs settings" if data in POLICY_KINDS else "is not a policy"
            raise ValueError(f"{short(data)} {what} (known: {known}; see docs/ARCHITECTURE.md)")
        if isinstance(data, dict):
            kinds = [k for k in POLICY_KINDS if data.get(k) not in (None, False)]
            _require(
                len(kinds) == 1,
                f"a policy has exactly one of {known}, got {', '.join(kinds) or 'none'}",
            )
            return {"name": kinds[0], **data}
        return data

    @model_validator(mode="after")
    def _name(self) -> Policy:
        problem = study_name_problem(self.name)  # a folder name, like a study's
        _require(problem is None, f"name: {problem}")
        # selected/<name> links to the pick's real folder, selected/trial-<N>
        _require(
            re.fullmatch(r"trial-[0-9]+", self.name) is None,
            f"name: {self.name!r} is how a pick's own folder is named under selected/ "
            "(trial-<N>); give the policy another name",
        )
        return self

    @property
    def kind(self) -> str:
        return next(k for k in POLICY_KINDS if getattr(self, k) not in (None, False))


def _default_policies() -> tuple[Policy, ...]:
    raw: list[Any] = ["best", {"smallest_within": {"accuracy_drop": 0.01}}, "knee"]
    return tuple(Policy.model_validate(p) for p in raw)


class RetrainConfig(Section):
    """Verification: each selected model retrained from scratch on train + validation,
    once per seed (train.seed, train.seed + 1, …), and tested on the test split."""

    epochs: Int | None = Field(None, ge=1)  # None: train.epochs
    seeds: Int = Field(2, ge=1, le=50)


class SelectConfig(Section):
    """What `collect` keeps (job.collect.policies): named policies over the finished study; the
    picks and the top `verify_top_k` front members retrained on the workers (a second
    study, `<study>-verify`), beside `baselines` (model YAMLs) trained alike."""

    policies: tuple[Policy, ...] = Field(default_factory=_default_policies)
    verify: Bool = True  # false: select on proxy accuracy only, retrain nothing
    retrain: RetrainConfig = RetrainConfig()
    verify_top_k: Int = Field(5, ge=0)
    baselines: tuple[str, ...] = ()
    # On a cluster, the collector's Job starts with the workers' and waits for them: it is
    # stopped `study.deadline_s` and this long after it started, time for the retrains
    # and the export once the search is done.
    deadline_s: Int = Field(86400, ge=600, le=365 * 86400)

    @model_validator(mode="after")
    def _distinct(self) -> SelectConfig:
        names = [p.name for p in self.policies]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"policies: name {twice[0]!r} used twice (give each a `name`)")
        _require(
            len(set(self.baselines)) == len(self.baselines),
            f"baselines: a file is listed twice in {short(list(self.baselines))}",
        )
        return self

    def model_files(self) -> list[str]:
        """Every model YAML the selection trains: the baselines, then references."""
        refs = [p.reference for p in self.policies if p.reference is not None]
        return list(dict.fromkeys([*self.baselines, *refs]))


class ExportConfig(Section):
    """What `collect` makes of each selected model (job.ml.onnx): ONNX verified by
    onnxruntime on the test split, an int8 copy, latency where it is deployed, and the
    files uploaded as Optuna artifacts."""

    onnx: Bool = True
    opset: Int = Field(18, ge=13, le=20)  # the TorchScript exporter's supported range
    max_logit_diff: Float = Field(1e-4, gt=0.0)  # fp32 ONNX vs PyTorch, on every test image
    int8: Bool = True  # onnxruntime static quantization: QDQ, per-channel weights
    calibration_images: Int = Field(256, ge=1)  # training images, for the int8 ranges
    latency_threads: Int = Field(1, ge=1, le=1024)  # onnxruntime intra-op threads, pinned
    latency_runs: Int = Field(200, ge=10)  # batch-1 runs timed (after 20 warm-up runs)
    artifacts: Bool = True  # upload the files to an Optuna artifact store beside results
