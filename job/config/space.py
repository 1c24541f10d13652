"""The config's `space` section: what the search may vary — the blocks of the network
(the seed's seven by default: data, not code), the head, the augmentation's n_select and
level, and the recipe's lr and label smoothing. The search layer (job/search/space.py)
turns a trial into values checked here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    model_validator,
)

from job.config.base import (
    Bool,
    Float,
    Int,
    Section,
    _require,
)
from job.files import short
from job.ml.vocab import ACTIVATIONS, MAX_CHANNELS, MAX_REPEAT

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
