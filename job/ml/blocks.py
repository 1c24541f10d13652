"""Stage 4 of the data path, model — its modules: the seed's building blocks, a table.

Each block is an ``nn.Module`` taking ``(B, C_in, H, W)``. ``MODULES`` maps the name used in
a model YAML to a ``ModuleDef`` row: how to build one copy, how many channels it emits,
its arguments (names, defaults, checks), which of them width_multiple scales, and which
copy strides on repeat. Adding a module is adding a row; ``job.ml.model`` reads only the
table. Knows nothing of Optuna, YAML files or training.

``ACTIVATIONS`` maps each activation name of the torch-free ``job.ml.vocab.ACTIVATIONS``
(what the config accepts) to its module; the two must name the same ones (checked at
import). The per-layer caps ``MAX_CHANNELS`` and ``MAX_REPEAT`` are ``job.ml.vocab``'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from job.ml import vocab
from job.ml.vocab import MAX_CHANNELS as MAX_CHANNELS  # the caps of one layer: see there
from job.ml.vocab import MAX_REPEAT as MAX_REPEAT

# Each name of job.ml.vocab.ACTIVATIONS (what the config accepts) → its module.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hardswish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "leakyrelu": nn.LeakyReLU,
    "identity": nn.Identity,
}
vocab.same_names("job.ml.vocab.ACTIVATIONS", vocab.ACTIVATIONS, "job.ml.blocks", ACTIVATIONS)


def make_activation(name: str | None) -> nn.Module:
    """Activation by its YAML name (case-insensitive); ``None`` means none (Identity)."""
    if name is None:
        return nn.Identity()
    return ACTIVATIONS[name.lower()]()


def auto_pad(kernel: int, padding: int | None) -> int:
    """``None`` means "same" for odd kernels (k // 2), as in the seed."""
    return kernel // 2 if padding is None else padding


def make_divisible(value: float, divisor: int = 8) -> int:
    """MobileNet's rounding to a multiple of ``divisor``, never more than 10% below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _check_hidden(hidden: int) -> None:
    # torch builds a zero-width conv with only a warning; it would fail at the first forward.
    if hidden < 1:
        raise ValueError(f"the expansion leaves {hidden} hidden channels")
    if hidden > MAX_CHANNELS:
        raise ValueError(f"the expansion makes {hidden:,} hidden channels (cap {MAX_CHANNELS:,})")


class Conv(nn.Module):
    """conv (no bias: BN follows) → BatchNorm → activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 1,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        activation: str | None = "ReLU",
    ) -> None:
        super().__init__()
        pad = auto_pad(kernel, padding)
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel, stride, pad, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:  # (B, Cin, H, W) → (B, Cout, H/s, W/s)
        out: Tensor = self.act(self.bn(self.conv(x)))
        return out


class FixedConv(Conv):
    """The classifier head: a Conv whose width the search never scales."""


class DWConv(Conv):
    """Depthwise-style conv: groups = gcd(in, out), so it is depthwise when in == out."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 1,
        stride: int = 1,
        padding: int | None = None,
        activation: str | None = "ReLU",
    ) -> None:
        groups = math.gcd(in_channels, out_channels)
        super().__init__(in_channels, out_channels, kernel, stride, padding, groups, activation)


class Bottleneck(nn.Module):
    """YOLO bottleneck: 1x1 to out * expansion, 3x3 back to out, add when shapes agree."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        shortcut: bool = True,
        groups: int = 1,
        expansion: float = 0.5,
        activation: str | None = "ReLU",
    ) -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        _check_hidden(hidden)
        self.cv1 = Conv(in_channels, hidden, 1, 1, activation=activation)
        self.cv2 = Conv(hidden, out_channels, 3, 1, groups=groups, activation=activation)
        self.add = bool(shortcut) and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:  # (B, Cin, H, W) → (B, Cout, H, W)
        y: Tensor = self.cv2(self.cv1(x))
        return x + y if self.add else y


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016): 3x3 conv (stride s) → 3x3 conv, plus a shortcut.

    The shortcut is the identity when the shapes agree, else a 1x1 projection (conv with
    stride s + BN, the paper's option B); the activation comes after the add.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        activation: str | None = "ReLU",
    ) -> None:
        super().__init__()
        self.cv1 = Conv(in_channels, out_channels, 3, stride, activation=activation)
        # No activation here: it is applied to the sum, so the residual stays linear.
        self.cv2 = Conv(out_channels, out_channels, 3, 1, activation=None)
        self.shortcut: nn.Module = (
            nn.Identity()
            if stride == 1 and in_channels == out_channels
            # 1x1 with padding 0 at stride s gives the same H/s as the padded 3x3 above.
            else Conv(in_channels, out_channels, 1, stride, activation=None)
        )
        self.act = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:  # (B, Cin, H, W) → (B, Cout, H/s, W/s)
        out: Tensor = self.act(self.cv2(self.cv1(x)) + self.shortcut(x))
        return out


class SqueezeExcite(nn.Module):
    """Channel attention: pool → 1x1 reduce → act → 1x1 expand → gate → scale."""

    def __init__(self, channels: int, reduced: int, act: str, gate: str) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = make_activation(act)
        self.fc2 = nn.Conv2d(reduced, channels, 1)
        self.gate = make_activation(gate)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) → same
        w: Tensor = self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))  # (B, C, 1, 1)
        return x * w


class _Residual(nn.Module):
    """Shared body of the inverted-residual family: optional expand, depthwise, project."""

    def __init__(
        self, c_in: int, hidden: int, c_out: int, k: int, s: int, act: str, se: nn.Module | None
    ) -> None:
        super().__init__()
        _check_hidden(hidden)
        layers: list[nn.Module] = []
        if hidden != c_in:  # expansion 1 has no pointwise expand, as in the papers
            layers.append(Conv(c_in, hidden, 1, 1, activation=act))
        layers.append(Conv(hidden, hidden, k, s, groups=hidden, activation=act))
        if se is not None:
            layers.append(se)
        layers.append(Conv(hidden, c_out, 1, 1, activation=None))  # linear bottleneck
        self.block = nn.Sequential(*layers)
        self.use_residual = s == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:  # (B, Cin, H, W) → (B, Cout, H/s, W/s)
        y: Tensor = self.block(x)
        return x + y if self.use_residual else y


class InvertedResidualv2(_Residual):
    """MobileNetV2 block [c, t, s]: ReLU6, 3x3 depthwise, expansion t."""

    def __init__(self, in_channels: int, c: int, t: float, s: int) -> None:
        super().__init__(in_channels, round(in_channels * t), c, 3, s, "ReLU6", None)


class InvertedResidualv3(_Residual):
    """MobileNetV3 block [k, t, c, use_se, use_hs, s]."""

    def __init__(
        self, in_channels: int, k: int, t: float, c: int, use_se: int, use_hs: int, s: int
    ) -> None:
        hidden = make_divisible(in_channels * t)
        se = None
        if use_se:
            se = SqueezeExcite(hidden, make_divisible(hidden / 4), "ReLU", "Hardsigmoid")
        super().__init__(in_channels, hidden, c, k, s, "Hardswish" if use_hs else "ReLU", se)


class MBConv(_Residual):
    """EfficientNet block [t, c, s, k]: SiLU, SE squeezing to a quarter of the input."""

    def __init__(self, in_channels: int, t: float, c: int, s: int, k: int) -> None:
        hidden = round(in_channels * t)
        se = SqueezeExcite(hidden, max(1, int(in_channels * 0.25)), "SiLU", "Sigmoid")
        super().__init__(in_channels, hidden, c, k, s, "SiLU", se)


class Fire(nn.Module):
    """SqueezeNet fire: 1x1 squeeze, then 1x1 and 3x3 expands concatenated."""

    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(in_channels, squeeze, 1), nn.ReLU())
        self.expand1x1 = nn.Sequential(nn.Conv2d(squeeze, expand1x1, 1), nn.ReLU())
        self.expand3x3 = nn.Sequential(nn.Conv2d(squeeze, expand3x3, 3, padding=1), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:  # (B, Cin, H, W) → (B, e1 + e3, H, W)
        s = self.squeeze(x)
        return torch.cat([self.expand1x1(s), self.expand3x3(s)], dim=1)


class Linear(nn.Module):
    """Fully connected layer; a (B, C, H, W) input is flattened to (B, C*H*W) first."""

    def __init__(self, in_features: int, out_features: int, activation: str | None = None) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.act = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:  # (B, ...) → (B, out)
        out: Tensor = self.act(self.linear(x.flatten(1)))
        return out


class GlobalAvgPool(nn.AdaptiveAvgPool2d):
    """(B, C, H, W) → (B, C, 1, 1); keeps 4-D so a FixedConv head can follow."""

    def __init__(self) -> None:
        super().__init__(1)


# --- argument checks -------------------------------------------------------------------

REQUIRED: Any = object()  # marks an argument without a default


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # YAML's true is not a size


def _is_pos_int(v: object) -> bool:
    return isinstance(v, int) and _is_int(v) and 1 <= v <= MAX_CHANNELS


def _is_pad(v: object) -> bool:
    return v is None or (isinstance(v, int) and _is_int(v) and 0 <= v <= MAX_CHANNELS)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and 0 < v <= MAX_CHANNELS


def _is_flag(v: object) -> bool:
    return isinstance(v, bool) or (_is_int(v) and v in (0, 1))


def _is_act(v: object) -> bool:
    return v is None or (isinstance(v, str) and v.lower() in ACTIVATIONS)


# kind → (check, what the check wants, for the error message)
ARG_KINDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "int": (_is_pos_int, f"an int in 1..{MAX_CHANNELS}"),
    "pad": (_is_pad, f"null or an int in 0..{MAX_CHANNELS}"),
    "opt_int": (lambda v: v is None or _is_pos_int(v), f"null or an int in 1..{MAX_CHANNELS}"),
    "number": (_is_number, f"a number in (0, {MAX_CHANNELS}]"),
    "flag": (_is_flag, "0, 1, true or false"),
    "act": (_is_act, f"null or one of {', '.join(sorted(ACTIVATIONS))}"),
}


class ArgDef(NamedTuple):
    """One positional argument: its name, its kind (a key of ``ARG_KINDS``), a default."""

    name: str
    kind: str
    default: Any = REQUIRED


def arg_problem(arg: ArgDef, value: object) -> str | None:
    """Why ``value`` does not suit ``arg``, or None when it does."""
    check, expected = ARG_KINDS[arg.kind]
    return None if check(value) else f"{arg.name} must be {expected}, got {value!r}"


# --- the table ---------------------------------------------------------------------------

Builder = Callable[[int, tuple[Any, ...]], nn.Module]  # (in_channels, full args) → one copy
OutChannels = Callable[[int, tuple[Any, ...]], int]  # (in_channels, full args) → out channels


class ModuleDef(NamedTuple):
    """A row of ``MODULES``; ``args`` are the YAML args after the implicit in_channels."""

    builder: Builder
    out_channels: OutChannels
    args: tuple[ArgDef, ...]
    channel_args: tuple[int, ...] = ()  # indices that width_multiple scales
    stride_arg: int | None = None  # index of the stride that only one copy keeps on repeat
    stride_first: bool = True  # True: the first copy strides; False: the last one does


def _first(_: int, a: tuple[Any, ...]) -> int:
    return int(a[0])


def _same(c_in: int, _: tuple[Any, ...]) -> int:
    return c_in


_A = ArgDef
_CONV = (_A("out", "int"), _A("k", "int", 1), _A("s", "int", 1), _A("padding", "pad", None))
_POOL = (_A("k", "int"), _A("s", "opt_int", None), _A("padding", "pad", 0))
_IRV2 = (_A("c", "int"), _A("t", "number"), _A("s", "int"))
# fmt: off
_IRV3 = (_A("k", "int"), _A("t", "number"), _A("c", "int"),
         _A("use_se", "flag"), _A("use_hs", "flag"), _A("s", "int"))
# fmt: on
_MB = (_A("t", "number"), _A("c", "int"), _A("s", "int"), _A("k", "int"))
_FIRE = (_A("squeeze", "int"), _A("expand1x1", "int"), _A("expand3x3", "int"))
_BOTTLENECK = (_A("out", "int"), _A("shortcut", "flag", True), _A("groups", "int", 1))
_BASIC = (_A("out", "int"), _A("s", "int", 1))


def _act(default: str | None) -> ArgDef:
    return ArgDef("activation", "act", default)


# The seed strides Conv/DWConv on the last copy of a repeat (docs/ARCHITECTURE.md); the inverted
# residuals and BasicBlock stride on the first, as the MobileNet and ResNet papers do. Linear and
# FixedConv are the classifier (their width is the class count), so they have no channel args
# to scale.
# Pools have no stride arg: every copy of a repeated pool pools.
# fmt: off
MODULES: dict[str, ModuleDef] = {
    # name: ModuleDef(builder, out_channels, args, channel_args, stride_arg, stride_first)
    "Conv": ModuleDef(
        lambda c, a: Conv(c, *a), _first,
        (*_CONV, _A("groups", "int", 1), _act("ReLU")), (0,), 2, False),
    "DWConv": ModuleDef(lambda c, a: DWConv(c, *a), _first, (*_CONV, _act("ReLU")), (0,), 2, False),
    "Bottleneck": ModuleDef(
        lambda c, a: Bottleneck(c, *a), _first,
        (*_BOTTLENECK, _A("expansion", "number", 0.5), _act("ReLU")), (0,)),
    "InvertedResidualv2": ModuleDef(
        lambda c, a: InvertedResidualv2(c, *a), _first, _IRV2, (0,), 2, True),
    "InvertedResidualv3": ModuleDef(
        lambda c, a: InvertedResidualv3(c, *a), lambda _, a: int(a[2]), _IRV3, (2,), 5, True),
    "MBConv": ModuleDef(lambda c, a: MBConv(c, *a), lambda _, a: int(a[1]), _MB, (1,), 2, True),
    "BasicBlock": ModuleDef(
        lambda c, a: BasicBlock(c, *a), _first, (*_BASIC, _act("ReLU")), (0,), 1, True),
    "Fire": ModuleDef(lambda c, a: Fire(c, *a), lambda _, a: int(a[1] + a[2]), _FIRE, (0, 1, 2)),
    "Linear": ModuleDef(lambda c, a: Linear(c, *a), _first, (_A("out", "int"), _act(None))),
    "MaxPool": ModuleDef(lambda c, a: nn.MaxPool2d(a[0], a[1], a[2]), _same, _POOL),
    "AvgPool": ModuleDef(lambda c, a: nn.AvgPool2d(a[0], a[1], a[2]), _same, _POOL),
    "GlobalAvgPool": ModuleDef(lambda c, a: GlobalAvgPool(), _same, ()),
    # Flatten keeps the channel count: like the seed, it assumes a pooled (B, C, 1, 1) input.
    "Flatten": ModuleDef(lambda c, a: nn.Flatten(), _same, ()),
    "FixedConv": ModuleDef(
        lambda c, a: FixedConv(c, *a), _first,
        (*_CONV, _A("groups", "int", 1), _act(None)), (), 2, False),
}
# fmt: on


def fill_defaults(module: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The args with every omitted trailing one replaced by its default."""
    defs = MODULES[module].args
    return (*args, *(d.default for d in defs[len(args) :]))


def build_layer(
    module: str, in_channels: int, args: tuple[Any, ...], repeat: int = 1
) -> tuple[nn.Module, int]:
    """``repeat`` copies of one row (full, already scaled args) → (module, out_channels).

    Only one copy keeps the stride (first or last as the row says); the copies after the
    first take the row's output channels as input.
    """
    defn = MODULES[module]
    copies: list[nn.Module] = []
    c_in = in_channels
    for i in range(repeat):
        a = list(args)
        keeps_stride = i == (0 if defn.stride_first else repeat - 1)
        if defn.stride_arg is not None and not keeps_stride:
            a[defn.stride_arg] = 1
        copies.append(defn.builder(c_in, tuple(a)))
        c_in = defn.out_channels(c_in, tuple(a))
    return (copies[0] if repeat == 1 else Repeat(*copies)), c_in


class Repeat(nn.Sequential):
    """The copies of one repeated YAML row (a named Sequential, for a readable print)."""
