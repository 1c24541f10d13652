"""Stage 1 of the data path: config.

One YAML file holds everything a search needs. It is loaded into typed, frozen
pydantic models; unknown keys, wrong types and out-of-range values are errors that
name the key's full path (``train.epochs: must be >= 1, got 0``), so a typo in a
config costs seconds, not a cluster run. The CLI turns a `ConfigError` into exit 2.

Sections (DESIGN §4): study, data, augment, space, train, objectives, constraints,
select, export. The search space (`space`) is data, not code: the seed's seven-block
space is its default and users narrow or widen it in YAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from job.augment import DEFAULT_OPS, OPS, AugmentPolicy


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key or the file."""


class Section(BaseModel):
    """Base of every section: frozen, and an unknown key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StudyConfig(Section):
    name: str = Field("sms", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    # An Optuna storage URL; None → the embedded default under the run's output folder.
    storage: str | None = None
    budget: int = Field(20, ge=1)
    sampler: Literal["tpe", "nsga2", "random", "gp"] = "tpe"
    seed: int = 0
    # Worker metrics over HTTP; SMS_METRICS_PORT overrides ("off" disables).
    metrics_port: int | None = Field(None, ge=0, le=65535)
    # Keep serving this long after the last trial, so the final values get scraped.
    metrics_linger_s: float = Field(0.0, ge=0.0)
    # PostgreSQL only: a worker that stops beating this long (killed, node lost) has its
    # trial failed and retried by a live worker, at most `max_retry` times.
    heartbeat_interval_s: int = Field(10, ge=1)
    grace_period_s: int = Field(60, ge=2)
    max_retry: int = Field(3, ge=0)
    # PostgreSQL restarted or failing over: retry with backoff this long, then exit 1.
    db_outage_deadline_s: float = Field(300.0, gt=0.0)
    # Where preempted trials leave their state for the retry (a shared volume in k8s);
    # None: <output folder>/checkpoints.
    checkpoint_dir: str | None = None


class DataConfig(Section):
    name: Literal["digits", "cifar10", "imagefolder"] = "digits"
    path: Path | None = None
    image_size: int = Field(32, ge=8, le=512)
    # Train images kept after a seeded, stratified cut (the seed used 10k of CIFAR's 50k).
    subset: int | None = Field(None, ge=10)
    val_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    # Share held out for test when the source has no test split (digits, ImageFolder).
    test_ratio: float = Field(0.2, gt=0.0, lt=1.0)
    download: bool = False
    seed: int = 0

    @model_validator(mode="after")
    def _path_needed(self) -> DataConfig:
        if self.name != "digits" and self.path is None:
            raise ValueError(f"path: required for data set {self.name!r}")
        return self


class AugmentConfig(Section):
    """The fixed augmentation policy; `space.augment` can search n_select and level."""

    enabled: bool = True
    ops: tuple[str, ...] = DEFAULT_OPS
    n_select: int = Field(2, ge=0)
    # None (null) → random magnitude: each op of each image draws its level from 0..n_level.
    level: int | None = Field(15, ge=0)
    n_level: int = Field(31, ge=1)
    flip_p: float = Field(0.5, ge=0.0, le=1.0)
    cutout_p: float = Field(0.8, ge=0.0, le=1.0)
    cutout_size: float = Field(0.45, ge=0.0, le=1.0)
    fill: int = Field(128, ge=0, le=255)

    @model_validator(mode="after")
    def _consistent(self) -> AugmentConfig:
        unknown = [op for op in self.ops if op not in OPS]
        if unknown:
            raise ValueError(f"ops: unknown op {unknown[0]!r} (known: {', '.join(OPS)})")
        if self.n_select > len(self.ops):
            raise ValueError(f"n_select: must be <= len(ops) = {len(self.ops)}")
        if self.level is not None and self.level > self.n_level:
            raise ValueError(f"level: must be <= n_level = {self.n_level}")
        return self

    def policy(self) -> AugmentPolicy | None:
        """The frozen policy `train` consumes; None when augmentation is off."""
        if not self.enabled:
            return None
        return AugmentPolicy(**self.model_dump(exclude={"enabled"}))


IntRange = tuple[int, int, int]  # (low, high, step), inclusive
FloatRange = tuple[float, float, float]
Module = Literal["Conv", "DWConv", "InvertedResidualv2", "InvertedResidualv3", "Pass"]


class BlockSpace(Section):
    """The choices of one backbone block; ranges are (low, high, step), inclusive."""

    modules: tuple[Module, ...]
    repeat: tuple[int, int] = (1, 5)
    channels: IntRange = (16, 128, 16)  # Conv / DWConv out
    kernel: tuple[int, ...] = (1, 3, 5)  # Conv / DWConv
    stride: tuple[int, ...] = (1, 2)
    activation: tuple[str, ...] = ("ReLU", "Hardswish")
    ir_channels: IntRange = (16, 40, 8)  # InvertedResidualv2/v3 c
    v2_expansion: tuple[int, int] = (1, 4)
    v3_expansion: FloatRange = (1.0, 6.0, 0.1)
    v3_kernel: tuple[int, ...] = (3, 5)

    @model_validator(mode="after")
    def _ranges(self) -> BlockSpace:
        for key in ("channels", "ir_channels", "v3_expansion"):
            low, high, step = getattr(self, key)
            if not 0 < low <= high or step <= 0:
                raise ValueError(f"{key}: need 0 < low <= high and step > 0, got {low, high, step}")
        if not 1 <= self.repeat[0] <= self.repeat[1]:
            raise ValueError(f"repeat: need 1 <= low <= high, got {self.repeat}")
        if not self.modules or set(self.stride) - {1, 2}:
            raise ValueError("modules must be non-empty and stride a subset of (1, 2)")
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
    """Searched RandAugment knobs; the rest of the policy comes from `augment`."""

    n_select: tuple[int, int] = (0, 3)
    level: tuple[int, int] = (0, 31)
    random_magnitude: tuple[bool, ...] = (False, True)


class TrainSpace(Section):
    """Optional searched training knobs (log-uniform lr and weight decay)."""

    lr: tuple[float, float] | None = None
    weight_decay: tuple[float, float] | None = None
    label_smoothing: tuple[float, ...] | None = None


class SpaceConfig(Section):
    blocks: tuple[BlockSpace, ...] = Field(default_factory=_seed_blocks, min_length=1)
    head_channels: IntRange = (128, 1024, 128)  # the 1x1 conv before pooling
    # The seed forces the first downsampling by block 2 and allows at most 5.
    force_stride_by: int = Field(2, ge=1)
    max_stride2: int = Field(5, ge=0)
    augment: AugmentSpace | None = AugmentSpace()
    train: TrainSpace = TrainSpace()


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(1024, ge=1)
    optimizer: Literal["sgd"] = "sgd"
    lr: float = Field(0.1, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0.0)
    schedule: Literal["cosine"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # bf16 autocast, CUDA only
    channels_last: bool = True  # NHWC: faster convolutions on CUDA and on CPU
    compile: bool = False
    measure_latency: bool = True
    seed: int = 0


Objective = Literal["accuracy", "f1", "params", "macs", "latency"]


class ConstraintsConfig(Section):
    """Hard limits; a trial over one is infeasible (Optuna constraints, > 0)."""

    max_params: int | None = Field(None, ge=1)
    max_macs: int | None = Field(None, ge=1)
    max_latency_ms: float | None = Field(None, gt=0.0)


class SelectConfig(Section):
    """Which front models the collector keeps."""

    policies: tuple[Literal["best", "smallest", "knee"], ...] = ("best", "smallest", "knee")
    # "smallest": the smallest model within this accuracy of the best.
    tolerance: float = Field(0.01, ge=0.0, le=1.0)


class ExportConfig(Section):
    onnx: bool = True
    opset: int = Field(17, ge=7)
    retrain_epochs: int = Field(0, ge=0)  # 0: export the searched weights as they are


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
    def _objectives(self) -> Config:
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"objectives: listed twice in {list(self.objectives)}")
        return self


def _path(loc: tuple[int | str, ...]) -> str:
    """('train', 'epochs') → 'train.epochs'; ('space', 'blocks', 2) → 'space.blocks[2]'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.startswith(("function-after", "tagged-union")):
            out += f".{part}" if out else part
    return out


_BOUNDS = {
    "greater_than_equal": ">= {ge}",
    "greater_than": "> {gt}",
    "less_than_equal": "<= {le}",
    "less_than": "< {lt}",
}


def _describe(err: Any) -> str:
    """One line for one pydantic error: `key: what, got value`."""
    key, kind, ctx = _path(tuple(err["loc"])), err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    if kind in _BOUNDS:
        return f"{key}: must be {_BOUNDS[kind].format(**ctx)}, got {err['input']!r}"
    if kind == "value_error":  # our validators: "subkey: message"
        msg = str(ctx.get("error", err["msg"]))
        return f"{key}.{msg}" if key and ":" in msg.split(" ")[0] else f"{key or 'config'}: {msg}"
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f", got {got!r}"
    return f"{key or 'config'}: {err['msg'][:1].lower()}{err['msg'][1:]}{shown}"


def parse_config(data: Any, source: str = "config") -> Config:
    """Validate a parsed YAML document; errors become one `ConfigError` line."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        first = _describe(exc.errors()[0])
        more = len(exc.errors()) - 1
        raise ConfigError(f"{first}" + (f" (and {more} more)" if more else "")) from None


def read_yaml(path: str | Path, error: type[ValueError]) -> Any:
    """Parse a YAML file; a missing or malformed file raises `error` naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise error(f"{path}:{where} not valid YAML") from None


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; every failure names the file or the key."""
    return parse_config(read_yaml(path, ConfigError), str(path))


def dump_config(config: Config) -> str:
    """The config as YAML (every default spelled out), for records and reports."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
