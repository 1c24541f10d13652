"""The search layer's space: an Optuna trial → typed, frozen values; results → objectives.

This is the only place of the data path that knows Optuna. `sample_candidate` asks
the trial for a network (the seed's seven blocks, declared as data in `space`), a
RandAugment policy and optional training knobs, and returns a `Candidate` of plain
frozen values that `job.ml.train.train` consumes. A network that cannot run on the input
size is rejected here, before any training; its latency is timed here too, before
training (job.ml.latency), so hard limits (`constraints`) on params, MACs and latency are
all recorded at once, with Optuna 5's `trial.set_constraint` (a value > 0 is infeasible).

Parameter names follow the seed: `m1`, `m1/repeat`, `m1/channels`, … , `head/channels`,
`aug/n_select`, `aug/level`, `train/lr`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna

from job.config import (
    AugmentConfig,
    BlockSpace,
    Config,
    ConstraintsConfig,
    IntRange,
    Objective,
    TrainConfig,
    derive_seed,
)
from job.ml.data import Dataset
from job.ml.latency import Latency, measure
from job.ml.model import LayerSpec, Measure, ModelSpec
from job.ml.train import TrainResult, check_fit
from job.search.view import OBJECTIVES
from job.search.view import directions as directions


@dataclass(frozen=True)
class Candidate:
    """What one trial trains: the network, its augmentation and its recipe."""

    model: ModelSpec
    augment: AugmentConfig
    recipe: TrainConfig
    measured: Measure  # params and MACs, measured once on the meta device
    latency: Latency | None = None  # timed before training (job.ml.latency); None: not asked


def _int(trial: optuna.Trial, name: str, r: IntRange) -> int:
    return trial.suggest_int(name, r[0], r[1], step=r[2])


def _choice(trial: optuna.Trial, name: str, options: tuple[Any, ...]) -> Any:
    return trial.suggest_categorical(name, list(options))


def _block_args(
    trial: optuna.Trial, p: str, module: str, space: BlockSpace, stride: int
) -> list[Any]:
    """The seed's argument list for one block's module, in the model YAML's order."""
    if module in ("Conv", "DWConv"):
        out = _int(trial, f"{p}/channels", space.channels)
        kernel = _choice(trial, f"{p}/kernel", space.kernel)
        act = _choice(trial, f"{p}/activation", space.activation)
        if module == "Conv":
            return [out, kernel, stride, None, 1, act]
        return [out, kernel, stride, None, act]
    if module == "InvertedResidualv2":
        c = _int(trial, f"{p}/v2_c", space.ir_channels)
        t = trial.suggest_int(f"{p}/v2_t", *space.v2_expansion)
        return [c, t, stride]
    # InvertedResidualv3 [k, t, c, SE, HS, s]
    k = _choice(trial, f"{p}/v3_k", space.v3_kernel)
    low, high, step = space.v3_expansion
    expansion = round(trial.suggest_float(f"{p}/v3_t", low, high, step=step), 1)
    c = _int(trial, f"{p}/v3_c", space.ir_channels)
    se = _choice(trial, f"{p}/v3_se", (0, 1))
    hs = _choice(trial, f"{p}/v3_hs", (0, 1))
    return [k, expansion, c, se, hs, stride]


def sample_model(trial: optuna.Trial, config: Config, num_classes: int) -> ModelSpec:
    """The seed's block-wise space with its stride rules, then the fixed head."""
    space = config.space
    layers: list[LayerSpec] = []
    n_stride = 0
    for index, block in enumerate(space.blocks, start=1):
        p = f"m{index}"
        module = _choice(trial, p, block.modules)
        if module == "Pass":
            continue
        repeat = trial.suggest_int(f"{p}/repeat", *block.repeat)
        stride = _choice(trial, f"{p}/stride", block.stride)
        if n_stride == 0 and index >= space.force_stride_by:
            stride = 2  # the seed forces the first downsampling early
        if n_stride >= space.max_stride2:
            stride = 1
        n_stride += stride == 2
        layers.append(
            LayerSpec(repeat, module, tuple(_block_args(trial, p, module, block, stride)))
        )
    head = _int(trial, "head/channels", space.head_channels)
    layers += [
        LayerSpec(1, "Conv", (head, 1, 1)),
        LayerSpec(1, "GlobalAvgPool", ()),
        LayerSpec(1, "FixedConv", (num_classes, 1, 1, None, 1, None)),
    ]
    return ModelSpec(
        input_channel=3, depth_multiple=1.0, width_multiple=1.0, backbone=tuple(layers)
    )


def sample_augment(trial: optuna.Trial, config: Config) -> AugmentConfig:
    """The augmentation policy: `augment` as configured, with searched knobs over it.
    The config checked at load that every searched value keeps the policy valid."""
    policy, searched = config.augment, config.space.augment
    if not policy.enabled or searched is None:
        return policy
    n_select = trial.suggest_int("aug/n_select", *searched.n_select)
    level = None  # random magnitude
    if not _choice(trial, "aug/random_magnitude", searched.random_magnitude):
        level = trial.suggest_int("aug/level", *searched.level)
    return policy.model_copy(update={"n_select": n_select, "level": level})


def sample_recipe(trial: optuna.Trial, config: Config) -> TrainConfig:
    """The training recipe; each trial gets its own reproducible seed."""
    knobs = config.space.train
    update: dict[str, float | int] = {"seed": derive_seed(config.train.seed, trial.number)}
    if knobs.lr is not None:
        update["lr"] = trial.suggest_float("train/lr", *knobs.lr, log=True)
    if knobs.weight_decay is not None:
        update["weight_decay"] = trial.suggest_float(
            "train/weight_decay", *knobs.weight_decay, log=True
        )
    if knobs.label_smoothing is not None:
        update["label_smoothing"] = _choice(trial, "train/label_smoothing", knobs.label_smoothing)
    return config.train.model_copy(update=update)


def constraint_values(
    limits: ConstraintsConfig, params: int, macs: int, latency_ms: float | None = None
) -> dict[str, float]:
    """Optuna constraint values (<= 0 feasible), relative to each configured limit."""
    values: dict[str, float] = {}
    if limits.max_params is not None:
        values["params"] = params / limits.max_params - 1.0
    if limits.max_macs is not None:
        values["macs"] = macs / limits.max_macs - 1.0
    if limits.max_latency_ms is not None and latency_ms is not None:
        values["latency"] = latency_ms / limits.max_latency_ms - 1.0
    return values


def sample_candidate(
    trial: optuna.Trial, data: Dataset, config: Config, timed: bool = True
) -> Candidate:
    """Everything one trial trains; raises `TrainError` for a network that cannot run on
    `data` (measured on the meta device: nothing allocated, however large). With `timed`
    (and `train.measure_latency`) its latency too; a caller that only checks that the
    params fit (research's warm start) leaves it out."""
    model = sample_model(trial, config, data.num_classes)
    augment = sample_augment(trial, config)
    recipe = sample_recipe(trial, config)
    measured = check_fit(model, data)
    latency = measure(model, data, recipe) if timed and recipe.measure_latency else None
    limits = config.constraints
    ms = None if latency is None else latency.ms
    for key, value in constraint_values(limits, measured.params, measured.macs, ms).items():
        trial.set_constraint(key, value)
    return Candidate(model, augment, recipe, measured, latency)


def objective_values(
    result: TrainResult, objectives: tuple[Objective, ...], latency: Latency | None = None
) -> list[float]:
    """A TrainResult (and the latency measured before it) → the study's objective values,
    in the configured order; an unmeasured latency is NaN."""
    found: dict[str, float] = {"latency": math.nan if latency is None else latency.ms}
    for name in objectives:
        if name != "latency":  # timed before training, the others measured by it
            found[name] = float(getattr(result, OBJECTIVES[name].field))
    return [found[name] for name in objectives]
