"""Stage 4 of the data path, model: the seed's model YAML; params and MACs.

A model YAML (also the export format of a found architecture) is::

    input_channel: 3
    depth_multiple: 1.0
    width_multiple: 1.0
    backbone:
        # [repeat, module, args]
        [
            [1, Conv, [16, 3, 2, null, 1, Hardswish]],
            [1, GlobalAvgPool, []],
            [1, FixedConv, [10, 1, 1, null, 1, null]]
        ]

A ``ModelSpec`` keeps the args as written (unscaled, trailing defaults omitted) so that
``parse_model_spec(dump_model_spec(s)) == s``; depth and width multiples are applied when
the network is built. The modules themselves and their argument rules live in the table
``job.ml.blocks.MODULES``. Every problem is a ``ModelError`` naming the layer, e.g.
``backbone[3] (DWConv): expected at most 5 args, got 7``.
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from job.files import parse_yaml, read_yaml
from job.ml.blocks import (
    ACTIVATIONS,
    MAX_CHANNELS,
    MAX_REPEAT,
    MODULES,
    REQUIRED,
    arg_problem,
    build_layer,
    fill_defaults,
)
from job.ml.errors import ModelError as ModelError  # torch-free, for the CLI

# A network over either cap is rejected from its meta-device count (`measure`), before a
# weight is allocated: `job.ml.train.check_fit` (a trial fails as invalid_network; `train
# --model` exits 2). Generous for a small-model search (ResNet-50 at 224 px: 26M params,
# 4.1G MACs); `constraints` sets the limits a search actually wants. Per-layer caps
# (channels, repeats) are job.ml.blocks.MAX_CHANNELS and MAX_REPEAT.
MAX_PARAMS = 200_000_000
MAX_MACS = 50_000_000_000  # multiply-accumulates for one image


@dataclass(frozen=True)
class LayerSpec:
    """One backbone row: ``[repeat, module, args]``, args as written."""

    repeat: int
    module: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class ModelSpec:
    """A whole model YAML."""

    input_channel: int
    depth_multiple: float
    width_multiple: float
    backbone: tuple[LayerSpec, ...]


# --- parse -------------------------------------------------------------------------------

_DEFAULTS: dict[str, Any] = {"input_channel": 3, "depth_multiple": 1.0, "width_multiple": 1.0}
_KEYS = (*_DEFAULTS, "backbone")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


MAX_MULTIPLE = 100  # depth_multiple, width_multiple: beyond it every row is over a cap


def _number(key: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= MAX_MULTIPLE
    ):
        raise ModelError(f"{key} must be a number in (0, {MAX_MULTIPLE:g}], got {value!r}")
    return float(value)


def _check_args(where: str, module: str, args: tuple[Any, ...]) -> None:
    defs = MODULES[module].args
    n_required = sum(d.default is REQUIRED for d in defs)
    if len(args) > len(defs):
        raise ModelError(f"{where}: expected at most {len(defs)} args, got {len(args)}")
    if len(args) < n_required:
        names = ", ".join(d.name for d in defs[:n_required])
        raise ModelError(f"{where}: expected at least {n_required} args ({names}), got {len(args)}")
    for i, (d, value) in enumerate(zip(defs, args, strict=False)):
        problem = arg_problem(d, value)
        if problem:
            raise ModelError(f"{where}: arg {i} {problem}")


def _parse_layer(index: int, entry: object) -> LayerSpec:
    if not isinstance(entry, list | tuple) or len(entry) != 3:
        raise ModelError(f"backbone[{index}]: expected [repeat, module, [args]], got {entry!r}")
    repeat, module, args = entry
    if not isinstance(module, str) or module not in MODULES:
        hint = difflib.get_close_matches(str(module), MODULES, n=1)
        also = f" (did you mean {hint[0]}?)" if hint else f"; known: {', '.join(MODULES)}"
        raise ModelError(f"backbone[{index}] ({module}): unknown module{also}")
    where = f"backbone[{index}] ({module})"
    if not _is_int(repeat) or not 1 <= repeat <= MAX_REPEAT:
        raise ModelError(f"{where}: repeat must be an int in 1..{MAX_REPEAT}, got {repeat!r}")
    if not isinstance(args, list | tuple):
        raise ModelError(f"{where}: args must be a list, got {args!r}")
    # An unquoted None in YAML is the string "None"; people mean null.
    normalised = tuple(None if a in ("None", "null") else a for a in args)
    _check_args(where, module, normalised)
    return LayerSpec(repeat, module, normalised)


def parse_model_spec(d: Mapping[str, Any]) -> ModelSpec:
    """Validate a loaded model YAML (a mapping) into a ``ModelSpec``; ``ModelError`` if bad."""
    if not isinstance(d, Mapping):
        raise ModelError(f"a model spec must be a mapping, got {type(d).__name__}")
    unknown = [str(k) for k in d if k not in _KEYS]
    if unknown:
        raise ModelError(f"unknown key {unknown[0]!r}; expected {', '.join(_KEYS)}")
    values = {k: d.get(k, default) for k, default in _DEFAULTS.items()}
    channels = values["input_channel"]
    if not _is_int(channels) or channels < 1:
        raise ModelError(f"input_channel must be an int >= 1, got {channels!r}")
    backbone = d.get("backbone")
    if not isinstance(backbone, list | tuple) or not backbone:
        raise ModelError(f"backbone must be a non-empty list of layers, got {backbone!r}")
    spec = ModelSpec(
        input_channel=channels,
        depth_multiple=_number("depth_multiple", values["depth_multiple"]),
        width_multiple=_number("width_multiple", values["width_multiple"]),
        backbone=tuple(_parse_layer(i, entry) for i, entry in enumerate(backbone)),
    )
    _check_scaled(spec)
    return spec


def _check_scaled(spec: ModelSpec) -> None:
    """Each row within the per-layer caps once depth and width multiples are applied (so
    a huge multiple is refused before anything is built, even on the meta device)."""
    if spec.input_channel > MAX_CHANNELS:
        raise ModelError(f"input_channel must be at most {MAX_CHANNELS}, got {spec.input_channel}")
    for i, layer in enumerate(spec.backbone):
        where = f"backbone[{i}] ({layer.module})"
        repeat = scale_depth(layer.repeat, spec.depth_multiple)
        if repeat > MAX_REPEAT:
            raise ModelError(
                f"{where}: repeat {layer.repeat} x depth_multiple {spec.depth_multiple:g} "
                f"= {repeat:,} copies (cap {MAX_REPEAT})"
            )
        for a in MODULES[layer.module].channel_args:
            value = fill_defaults(layer.module, layer.args)[a]
            if (scaled := scale_width(value, spec.width_multiple)) > MAX_CHANNELS:
                raise ModelError(
                    f"{where}: {value} channels x width_multiple {spec.width_multiple:g} "
                    f"= {scaled:,} (cap {MAX_CHANNELS:,})"
                )


def spec_from_yaml(text: str) -> ModelSpec:
    """A model YAML's text, as a trial or a card keeps it, → its spec (`ModelError`, or
    `yaml.YAMLError` for text that is not YAML)."""
    return parse_model_spec(parse_yaml(text))  # config.SafeLoader: no alias bombs


def load_model_spec(path: str | Path) -> ModelSpec:
    """Read and validate a model YAML file; errors name the file."""
    data = read_yaml(path, ModelError)
    try:
        return parse_model_spec(data)
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None


# --- dump --------------------------------------------------------------------------------


def dump_model_spec(spec: ModelSpec) -> dict[str, Any]:
    """The plain-data form of ``spec`` (what YAML loads); parse of it gives ``spec`` back."""
    return {
        "input_channel": spec.input_channel,
        "depth_multiple": spec.depth_multiple,
        "width_multiple": spec.width_multiple,
        "backbone": [[layer.repeat, layer.module, list(layer.args)] for layer in spec.backbone],
    }


def _flow(value: object) -> str:
    """One value in YAML flow style; PyYAML picks the quoting that loads back the same."""
    text = yaml.safe_dump(value, default_flow_style=True, width=2**31 - 1)
    return text.removesuffix("...\n").strip()


def model_spec_yaml(spec: ModelSpec) -> str:
    """``spec`` as YAML text in the seed's layout: one backbone row per line."""
    data = dump_model_spec(spec)
    head = [f"{key}: {_flow(data[key])}" for key in _DEFAULTS]
    rows = ",\n".join(f"        {_flow(row)}" for row in data["backbone"])
    return "\n".join([*head, "backbone:", "    # [repeat, module, args]", "    [", rows, "    ]\n"])


# --- build -------------------------------------------------------------------------------


def scale_width(channels: int, width_multiple: float) -> int:
    """The seed's rule: ceil(c * w / 8) * 8 (so even w = 1 rounds 3 up to 8)."""
    # The epsilon keeps float noise (40 * 0.2 = 8.000000000000002) from adding 8 channels.
    return max(8, math.ceil(channels * width_multiple / 8 - 1e-9) * 8)


def scale_depth(repeat: int, depth_multiple: float) -> int:
    """The seed's rule: only rows repeated more than once scale, and never below one copy."""
    return max(round(repeat * depth_multiple), 1) if repeat > 1 else repeat


def layer_args(layer: LayerSpec, width_multiple: float) -> tuple[Any, ...]:
    """The args one copy is built with: defaults filled in, channel args width-scaled."""
    args = list(fill_defaults(layer.module, layer.args))
    for i in MODULES[layer.module].channel_args:
        args[i] = scale_width(args[i], width_multiple)
    return tuple(args)


def to_logits(x: Tensor) -> Tensor:
    """(B, C, H, W) or (B, C) → (B, C).

    A final map bigger than 1x1 is averaged first, so a YAML that ends without a
    GlobalAvgPool still classifies instead of emitting C*H*W "logits".
    """
    if x.dim() == 4 and x.shape[-2] * x.shape[-1] > 1:
        x = nn.functional.adaptive_avg_pool2d(x, 1)  # (B, C, 1, 1)
    return x.flatten(1)  # (B, C)


class Model(nn.Sequential):
    """The built network: child ``i`` is ``backbone[i]``; forward returns ``(B, classes)``."""

    spec: ModelSpec

    def __init__(self, layers: list[nn.Module], spec: ModelSpec) -> None:
        super().__init__(*layers)
        self.spec = spec

    def forward(self, input: Tensor) -> Tensor:  # (B, C, S, S) → (B, classes)
        for layer in self:
            input = layer(input)  # (B, C_i, H_i, W_i) → the next layer's input
        return to_logits(input)


def build_model(spec: ModelSpec, image_size: int | None = None) -> Model:
    """The network for ``spec``; with ``image_size``, also check that it fits that input.

    The spec is validated again here because job.search.space builds specs in code, not from YAML.
    """
    spec = parse_model_spec(dump_model_spec(spec))
    layers: list[nn.Module] = []
    channels = spec.input_channel
    for i, layer in enumerate(spec.backbone):
        args = layer_args(layer, spec.width_multiple)
        repeat = scale_depth(layer.repeat, spec.depth_multiple)
        try:  # torch's own checks, e.g. groups that do not divide the channels
            module, channels = build_layer(layer.module, channels, args, repeat)
        except (ValueError, TypeError, RuntimeError) as e:
            got = f"(in_channels {channels}, built with {list(args)})"
            raise ModelError(f"backbone[{i}] ({layer.module}): {e} {got}") from None
        layers.append(module)
    model = Model(layers, spec)
    if image_size is not None:
        _dry_run(model, image_size, spec.input_channel)
    return model


# --- measure -----------------------------------------------------------------------------


@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """eval + no_grad for a measuring pass (BN on a batch of one), then the old mode back."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _dry_run(model: nn.Module, image_size: int, in_channels: int) -> Tensor:
    """Run a (1, C, S, S) zero image layer by layer; a misfit names its layer."""
    if not _is_int(image_size) or image_size < 1:
        raise ModelError(f"image_size must be an int >= 1, got {image_size!r}")
    # On the model's own device and dtype: callers measure models already moved to a GPU.
    like = next(itertools.chain(model.parameters(), model.buffers()), torch.zeros(()))
    dtype = like.dtype if like.is_floating_point() else torch.float32
    x = torch.zeros(1, in_channels, image_size, image_size, device=like.device, dtype=dtype)
    names = [layer.module for layer in model.spec.backbone] if isinstance(model, Model) else []
    steps = list(model) if isinstance(model, Model) else [model]
    with _inference(model):
        for i, step in enumerate(steps):
            where = f"backbone[{i}] ({names[i]})" if names else "model"
            got = tuple(x.shape)
            try:
                x = step(x)
            except (RuntimeError, ValueError) as e:
                reason = (str(e).strip().splitlines() or [type(e).__name__])[
                    0
                ]  # torch's first line
                size = f"{image_size}x{image_size}"
                message = f"{where}: does not fit a {size} input (it gets {got}): {reason}"
                raise ModelError(message) from None
            if x.numel() == 0:
                raise ModelError(f"{where}: output shrinks to {tuple(x.shape)} at {image_size}px")
        return to_logits(x) if names else x


def _channels(model: nn.Module, in_channels: int | None) -> int:
    if in_channels is not None:
        return in_channels
    return model.spec.input_channel if isinstance(model, Model) else 3


def output_shape(
    spec_or_model: ModelSpec | nn.Module, image_size: int, in_channels: int | None = None
) -> tuple[int, ...]:
    """The output shape for one (1, C, S, S) image, e.g. (1, 10); ``ModelError`` on misfit."""
    model = spec_or_model if isinstance(spec_or_model, nn.Module) else build_model(spec_or_model)
    return tuple(_dry_run(model, image_size, _channels(model, in_channels)).shape)


def count_params(model: nn.Module) -> int:
    """All parameters (BN's affine ones included, its running statistics not)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, image_size: int, in_channels: int | None = None) -> int:
    """Multiply-accumulates of every Conv2d and Linear for one (C, S, S) image.

    BN, activations, pools and residual adds are left out: they are a rounding error next
    to the convolutions, and leaving them out keeps the figure comparable with the usual
    published MAC counts. ``in_channels`` defaults to the spec's input_channel for a built
    ``Model``, else 3. Runs in eval mode under no_grad; the model's mode is restored.
    """
    return _macs_and_output(model, image_size, _channels(model, in_channels))[0]


def _macs_and_output(model: nn.Module, image_size: int, in_channels: int) -> tuple[int, Tensor]:
    """One dry run that counts MACs with forward hooks and returns the output too."""
    total = 0

    def conv_hook(m: nn.Module, _: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        assert isinstance(m, nn.Conv2d)
        k = math.prod(m.kernel_size)
        total += out.numel() * (m.in_channels // m.groups) * k  # out = (1, Cout, H', W')

    def linear_hook(m: nn.Module, _: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        assert isinstance(m, nn.Linear)
        total += out.numel() * m.in_features  # out = (1, out_features)

    hooks = [
        m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    try:
        out = _dry_run(model, image_size, in_channels)
    finally:
        for h in hooks:
            h.remove()
    return total, out


@dataclass(frozen=True)
class Measure:
    """What a spec costs at one input size, found without allocating a weight."""

    params: int
    macs: int
    outputs: int  # logits per image: must equal the data's class count


def measure(spec: ModelSpec, image_size: int) -> Measure:
    """Params, MACs and output width of ``spec`` at ``image_size``, on the meta device: the
    network is built and dry-run with shapes only (no weights, no arithmetic), so even a
    huge candidate is measured in milliseconds. ``ModelError`` when it does not fit."""
    with torch.device("meta"):
        model = build_model(spec)
        params = count_params(model)
        _drop_shape_keepers(model)  # shapes only: these keep them, and cost most on meta
        macs, out = _macs_and_output(model, image_size, spec.input_channel)  # one dry run
    return Measure(params, macs, int(out.shape[-1]))


# Leaf modules that keep their input's shape and add no MACs to the count: on the meta
# device each runs a Python decomposition, together 70% of a measure.
_SHAPE_KEEPERS = (nn.BatchNorm2d, *{f for f in ACTIVATIONS.values() if isinstance(f, type)})


def _drop_shape_keepers(model: nn.Module) -> None:
    """Swap every BatchNorm2d and activation module of a throwaway meta model for an
    identity: the shapes and MACs of the dry run stay the same, at half its cost (the
    search measures every candidate)."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, _SHAPE_KEEPERS):
                setattr(module, name, nn.Identity())
