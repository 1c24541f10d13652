"""Stage 1 of the data path: config.

One YAML file holds everything a search needs, loaded into typed, frozen pydantic
models. Unknown keys, wrong types (`epochs: true` is not a number) and out-of-range
values are errors naming the key's full path (``train.epochs: must be >= 1, got 0``), so
a typo costs seconds, not a cluster run; the CLI turns a `ConfigError` into exit 2.

Each stage's inputs are declared once, here: the augmentation policy *is* the `augment`
section (`AugmentConfig`), the training recipe *is* the `train` section (`TrainConfig`).
The search layer derives a trial's values with `model_copy(update=…)` from values checked
here against the `space` section, so nothing can turn invalid between load and trial.
Sections: study, data, augment, space (the seed's seven blocks by default: data, not
code), train, objectives, constraints, select, export (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    model_validator,
)

from job.files import key_name, read_yaml, short
from job.ml.augment_ops import DEFAULT_OPS, GREY, OPS
from job.ml.blocks import ACTIVATIONS, MAX_CHANNELS, MAX_REPEAT

# YAML's `true` is not 1 and `2.0` is not an int: numbers and flags are taken as written.
# No float is infinite or NaN (`.inf`, `.nan`): no consumer of one has a use for either.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), AllowInfNan(False)]
Bool = Annotated[bool, Strict()]
# Every seed, as numpy and Optuna's samplers take it; one derived at run time from a
# worker's index or a trial's number is folded into the same range (`derive_seed`).
SEED_SPAN = 2**32
Seed = Annotated[int, Strict(), Field(ge=0, le=SEED_SPAN - 1)]


def derive_seed(base: int, *offsets: int) -> int:
    """A configured seed plus run-time offsets (a worker's index, a study version, a
    trial's number), folded into 0..2**32-1: unchanged while the sum is in range."""
    return (base + sum(offsets)) % SEED_SPAN


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key or the file."""


class Section(BaseModel):
    """Base of every section: frozen, and an unknown key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _require(ok: bool, message: str) -> None:
    """A validator's check; the message starts with the failing key ("ops: …")."""
    if not ok:
        raise ValueError(message)


# A study name (study.name, and `--study` on the command line): it names folders too.
STUDY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
STUDY_NAME_MAX = 120


def study_name_problem(name: str) -> str | None:
    """Why `name` cannot be a study's name, or None when it can."""
    if len(name) > STUDY_NAME_MAX:
        return f"must be at most {STUDY_NAME_MAX} characters, got {len(name)}"
    if not re.match(STUDY_NAME_PATTERN, name):
        return f"must be letters, digits, '_', '.' or '-' (not first), got {name!r}"
    return None


class StudyConfig(Section):
    name: str = "sms"  # study_name_problem: the rule `--study` follows too
    # An Optuna storage URL; None → the embedded default under the run's output folder.
    storage: str | None = None
    budget: Int = Field(20, ge=1)
    sampler: Literal["tpe", "nsga2", "random", "gp"] = "tpe"
    seed: Seed = 0  # worker i samples with seed + 1000 i (job.search.worker.make_sampler)
    # Worker metrics over HTTP; SMS_METRICS_PORT overrides ("off" disables).
    metrics_port: Int | None = Field(None, ge=0, le=65535)
    # Keep serving this long after the last trial, so the final values get scraped:
    # twice the PodMonitor's 15 s interval. 0 for no wait (a Pushgateway keeps them).
    metrics_linger_s: Float = Field(30.0, ge=0.0, le=3600.0)
    # No trial completed for this long while budget remains: the SmsStudyStalled alert
    # (the exporter serves it as sms_study_stall_after_seconds; monitoring/rules.yml).
    stall_after_s: Int = Field(3600, ge=60, le=30 * 86400)
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
    path: Path | None = None
    image_size: Int = Field(32, ge=8, le=512)
    # Train images kept after a seeded, stratified cut (the seed used 10k of CIFAR's 50k).
    subset: Int | None = Field(None, ge=10)
    val_ratio: Float = Field(0.1, ge=0.0, lt=1.0)
    # Share held out for test when the source has no test split (digits, ImageFolder).
    test_ratio: Float = Field(0.2, gt=0.0, lt=1.0)
    download: Bool = False
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


IntRange = tuple[Int, Int, Int]  # (low, high, step), inclusive
FloatRange = tuple[Float, Float, Float]
Module = Literal["Conv", "DWConv", "InvertedResidualv2", "InvertedResidualv3", "Pass"]


def _check_range(key: str, r: tuple[float, ...], zero_ok: bool = False) -> None:
    """(low, high[, step]): 0 < low (0 <= low with `zero_ok`), low <= high, step > 0."""
    floor = "0 <=" if zero_ok else "0 <"
    ok = (r[0] >= 0 if zero_ok else r[0] > 0) and r[0] <= r[1] and (len(r) < 3 or r[2] > 0)
    what = "low <= high and step > 0" if len(r) == 3 else "low <= high"
    _require(ok, f"{key}: need {floor} {what}, got {short(list(r))}")


def _check_cap(key: str, values: tuple[int, ...], high: int, cap: int) -> None:
    """`high` (a range's high end, or a choice list's largest) at most `cap`."""
    _require(high <= cap, f"{key}: at most {cap} (a model's cap), got {short(list(values))}")


def _check_choices(key: str, options: tuple[Any, ...], ok: Any, want: str) -> None:
    """A non-empty list of distinct choices, each passing `ok`."""
    _require(bool(options), f"{key}: needs at least one choice")
    bad = [o for o in options if not ok(o)]
    if bad:
        raise ValueError(f"{key}: {short(bad[0])} is not {want}")
    _require(
        len(set(options)) == len(options),
        f"{key}: a choice is listed twice in {short(list(options))}",
    )


class BlockSpace(Section):
    """The choices of one backbone block; ranges are (low, high, step), inclusive."""

    modules: tuple[Module, ...]
    repeat: tuple[Int, Int] = (1, 5)
    channels: IntRange = (16, 128, 16)  # Conv / DWConv out
    kernel: tuple[Int, ...] = (1, 3, 5)  # Conv / DWConv
    stride: tuple[Int, ...] = (1, 2)
    activation: tuple[str, ...] = ("ReLU", "Hardswish")
    ir_channels: IntRange = (16, 40, 8)  # InvertedResidualv2/v3 c
    v2_expansion: tuple[Int, Int] = (1, 4)
    v3_expansion: FloatRange = (1.0, 6.0, 0.1)
    v3_kernel: tuple[Int, ...] = (3, 5)

    @model_validator(mode="after")
    def _ranges(self) -> BlockSpace:
        for key in ("channels", "ir_channels", "v2_expansion", "v3_expansion"):
            _check_range(key, getattr(self, key))
        _check_range("repeat", self.repeat)
        _require(  # a trial rounds the expansion to one decimal: 0.04 would become 0
            self.v3_expansion[0] >= 0.1,
            f"v3_expansion: need low >= 0.1 (one decimal), got {short(list(self.v3_expansion))}",
        )
        _check_choices("modules", self.modules, lambda m: True, "a module")
        _check_choices("stride", self.stride, lambda s: s in (1, 2), "1 or 2")
        _check_choices("kernel", self.kernel, lambda k: k >= 1, "a kernel size >= 1")
        _check_choices("v3_kernel", self.v3_kernel, lambda k: k >= 1, "a kernel size >= 1")
        known = f"one of {', '.join(sorted(ACTIVATIONS))} (any case)"
        _check_choices("activation", self.activation, lambda a: a.lower() in ACTIVATIONS, known)
        # The model's per-layer caps (job.ml.blocks), so no sampled row can exceed them.
        _check_cap("repeat", self.repeat, self.repeat[1], MAX_REPEAT)
        for key in ("channels", "ir_channels"):
            _check_cap(key, getattr(self, key), getattr(self, key)[1], MAX_CHANNELS)
        for key in ("kernel", "v3_kernel"):
            _check_cap(key, getattr(self, key), max(getattr(self, key)), MAX_CHANNELS)
        for key in ("v2_expansion", "v3_expansion"):  # hidden = channels x expansion
            _check_cap(key, getattr(self, key), getattr(self, key)[1], MAX_CHANNELS)
        return self


def _seed_blocks() -> tuple[BlockSpace, ...]:
    """The seed's seven blocks: channel ranges widen with depth."""
    first = BlockSpace(
        modules=("Conv", "DWConv"), repeat=(1, 3), channels=(16, 64, 16), kernel=(3,)
    )
    rest = ("Conv", "DWConv", "InvertedResidualv2", "InvertedResidualv3", "Pass")
    widths = [  # (Conv/DWConv channels, IR channels)
        ((16, 128, 16), (16, 32, 16)),
        ((16, 128, 16), (16, 40, 8)),
        ((32, 256, 32), (24, 80, 8)),
        ((64, 512, 64), (40, 96, 8)),
        ((64, 512, 64), (48, 160, 16)),
        ((128, 1024, 128), (64, 160, 16)),
    ]
    return (
        first,
        *(BlockSpace(modules=rest, channels=conv, ir_channels=ir) for conv, ir in widths),
    )


class AugmentSpace(Section):
    """Searched RandAugment knobs over the `augment` policy (n_select and level within
    its ops and n_level: checked against `augment` when the whole config loads)."""

    n_select: tuple[Int, Int] = (0, 3)
    level: tuple[Int, Int] = (0, 31)
    random_magnitude: tuple[Bool, ...] = (False, True)

    @model_validator(mode="after")
    def _ranges(self) -> AugmentSpace:
        _check_range("n_select", self.n_select, zero_ok=True)
        _check_range("level", self.level, zero_ok=True)
        _check_choices("random_magnitude", self.random_magnitude, lambda v: True, "a flag")
        return self


class TrainSpace(Section):
    """Optional searched training knobs (log-uniform lr and weight decay)."""

    lr: tuple[Float, Float] | None = None
    weight_decay: tuple[Float, Float] | None = None
    label_smoothing: tuple[Float, ...] | None = None

    @model_validator(mode="after")
    def _ranges(self) -> TrainSpace:
        for key in ("lr", "weight_decay"):  # log-uniform: both bounds > 0
            if getattr(self, key) is not None:
                _check_range(key, getattr(self, key))
        if self.label_smoothing is not None:
            ok = lambda v: 0.0 <= v < 1.0  # noqa: E731
            _check_choices("label_smoothing", self.label_smoothing, ok, "in [0, 1)")
        return self


class SpaceConfig(Section):
    blocks: tuple[BlockSpace, ...] = Field(default_factory=_seed_blocks, min_length=1)
    head_channels: IntRange = (128, 1024, 128)  # the 1x1 conv before pooling
    # The seed forces the first downsampling by block 2 and allows at most 5.
    force_stride_by: Int = Field(2, ge=1)
    max_stride2: Int = Field(5, ge=0)
    augment: AugmentSpace | None = AugmentSpace()
    train: TrainSpace = TrainSpace()

    @model_validator(mode="after")
    def _head(self) -> SpaceConfig:
        _check_range("head_channels", self.head_channels)
        _check_cap("head_channels", self.head_channels, self.head_channels[1], MAX_CHANNELS)
        return self


class TrainConfig(Section):
    """The training recipe (SGD with Nesterov momentum, linear warm-up then cosine
    annealing per step), consumed as it is by `job.ml.train`; a trial's copy differs in its
    seed and in whatever `space.train` searches."""

    epochs: Int = Field(10, ge=1)
    batch_size: Int = Field(128, ge=2)  # a batch of one breaks BatchNorm
    eval_batch_size: Int = Field(1024, ge=1)
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
    measure_latency: Bool = True
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
    latency_ms: Float | None = Field(None, gt=0.0)  # the search's PyTorch latency, batch 1

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


class Config(Section):
    study: StudyConfig = StudyConfig()
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    space: SpaceConfig = SpaceConfig()
    train: TrainConfig = TrainConfig()
    objectives: tuple[Objective, ...] = Field(("accuracy", "params"), min_length=1)
    constraints: ConstraintsConfig = ConstraintsConfig()
    select: SelectConfig = SelectConfig()
    export: ExportConfig = ExportConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        _require(
            len(set(self.objectives)) == len(self.objectives),
            f"objectives: listed twice in {short(list(self.objectives))}",
        )
        searched, policy = self.space.augment, self.augment
        if searched is not None and policy.enabled:  # a trial's policy must stay valid
            _require(
                searched.n_select[1] <= len(policy.ops),
                f"space.augment.n_select: at most len(augment.ops) = {len(policy.ops)}, "
                f"got {short(list(searched.n_select))}",
            )
            _require(
                searched.level[1] <= policy.n_level,
                f"space.augment.level: at most augment.n_level = {policy.n_level}, "
                f"got {short(list(searched.level))}",
            )
        return self


def _path(loc: tuple[int | str, ...]) -> str:
    """('train', 'epochs') → 'train.epochs'; ('space', 'blocks', 2) → 'space.blocks[2]'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.startswith(("function-after", "tagged-union")):
            out += f".{key_name(part)}" if out else key_name(part)
    return out


_BOUNDS = {"greater_than_equal": ">= {ge}", "greater_than": "> {gt}"}
_BOUNDS |= {"less_than_equal": "<= {le}", "less_than": "< {lt}"}


def _describe(err: Any) -> str:
    """One line for one pydantic error: `key: what, got value`."""
    key, kind, ctx = _path(tuple(err["loc"])), err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    if kind in _BOUNDS:
        return f"{key}: must be {_BOUNDS[kind].format(**ctx)}, got {short(err['input'])}"
    if kind == "value_error":  # our validators say "subkey: message"
        msg = str(ctx.get("error", err["msg"]))
        if ":" in msg.split(" ")[0]:
            return f"{key}.{msg}" if key else msg
        return f"{key or 'config'}: {msg}"
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f", got {short(got)}"
    return f"{key or 'config'}: {err['msg'][:1].lower()}{err['msg'][1:]}{shown}"


def _root_causes(errors: list[Any]) -> list[Any]:
    """Drop an error on a container that only echoes one inside it (a tuple of blocks
    "too short" because its one block failed)."""
    locs = [tuple(e["loc"]) for e in errors]
    return [
        e
        for e, loc in zip(errors, locs, strict=True)
        if not any(len(o) > len(loc) and o[: len(loc)] == loc for o in locs)
    ] or errors


def parse_config(data: Any, source: str = "config") -> Config:
    """Validate a parsed YAML document; errors become one `ConfigError` line."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc)) from None


def describe_errors(exc: ValidationError, prefix: str = "") -> str:
    """A validation error as one line naming the first key at fault (under `prefix`,
    as in ``recipe.epochs: must be >= 1, got 0``), never quoting a whole value."""
    errors = _root_causes(exc.errors())
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    line = _describe(errors[0])
    if prefix:
        line = f"{prefix}{line}" if line.startswith("[") else f"{prefix}.{line}"
        line = line.replace(f"{prefix}.config: ", f"{prefix}: ", 1)
    return line + more


# What a trial's result depends on, besides the data's content and the code: the data's
# preparation, the augmentation, the space, the recipe, the objectives and constraints.
# Left out: where the data is (its content has its own fingerprint), the eval batch size,
# and the sections that only steer the search or read its results (study, select, export).
RESULT_SECTIONS = ("data", "augment", "space", "train", "objectives", "constraints")
RESULT_EXCLUDES: dict[str, set[str]] = {"data": {"path", "download"}, "train": {"eval_batch_size"}}


def config_fingerprint(config: Config) -> str:
    """sha256 (hex, 16 digits) of the sections that change a trial's result, as canonical
    JSON: two configs with the same fingerprint give comparable trials."""
    import hashlib
    import json

    dumped = config.model_dump(mode="json", include=set(RESULT_SECTIONS))
    for section, keys in RESULT_EXCLUDES.items():
        for key in keys:
            dumped[section].pop(key, None)
    text = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; every failure names the file or the key."""
    return parse_config(read_yaml(path, ConfigError), str(path))


def dump_config(config: Config) -> str:
    """The config as YAML (every default spelled out), for records and reports."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
