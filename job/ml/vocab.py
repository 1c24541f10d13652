"""The ML stage's names, torch-free: what the config validates against.

The config (`job.config`) checks an augmentation policy's op names and a search space's
activations and layer caps against these tables, so a verb that only reads a config
never imports torch. The tables that do the work live beside the code and must name
exactly the same things; each checks it when imported (and tests/unit/test_ops.py too):

- ``OPS`` here: op name → ``OpRange(low, high, signed)``, its magnitude range and sign
  (as torchvision keeps ``_augmentation_space`` apart from ``_apply_op``);
  ``job.ml.augment_ops`` holds the batched function of each op.
- ``ACTIVATIONS`` here: the activation names a model YAML may use (lower case; matched
  in any case); ``job.ml.blocks.ACTIVATIONS`` maps each to its ``nn.Module``.

Adding an augmentation op: one row in ``OPS`` here (name, magnitude range, signed), one
row in ``job.ml.augment_ops``'s function table, and the function itself. Adding an
activation: its name here and its module in ``job.ml.blocks.ACTIVATIONS``.

Imports nothing from torch, numpy or job.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


class OpRange(NamedTuple):
    """An op's magnitude at level ``l`` is ``low + (high - low) * l / n_level``."""

    low: float  # magnitude at level 0
    high: float  # magnitude at level n_level
    signed: bool  # negated for a random half of the images


# The order is the config's: its messages list the ops as here.
OPS: dict[str, OpRange] = {
    "Identity": OpRange(0.0, 0.0, False),
    "AutoContrast": OpRange(0.0, 0.0, False),
    "Equalize": OpRange(0.0, 0.0, False),
    "Rotate": OpRange(0.0, 30.0, True),  # degrees
    "Solarize": OpRange(256.0, 0.0, False),  # threshold, uint8 units
    "Color": OpRange(0.0, 0.9, True),  # factor 1 ± m
    "Contrast": OpRange(0.0, 0.9, True),
    "Brightness": OpRange(0.0, 0.9, True),
    "Sharpness": OpRange(0.0, 0.9, True),
    "Posterize": OpRange(8.0, 4.0, False),  # bits kept
    "ShearX": OpRange(0.0, 0.3, True),
    "ShearY": OpRange(0.0, 0.3, True),
    "TranslateX": OpRange(0.0, 0.45, True),  # of the side
    "TranslateY": OpRange(0.0, 0.45, True),
    "Invert": OpRange(0.0, 0.0, False),
    "Cutout": OpRange(0.0, 0.45, False),  # box side, fraction of the side
}

DEFAULT_OPS: tuple[str, ...] = tuple(n for n in OPS if n not in ("Invert", "Cutout"))

GREY = 128  # fill colour outside rotated/sheared/translated images and in Cutout boxes

ACTIVATIONS: tuple[str, ...] = (
    "relu",
    "relu6",
    "hardswish",
    "hardsigmoid",
    "silu",
    "swish",
    "sigmoid",
    "tanh",
    "leakyrelu",
    "identity",
)

# Size caps of one layer, checked before anything is built (docs: README "Models"): no
# channel count (after width_multiple, an expansion's hidden width included) and no other
# int arg is larger than MAX_CHANNELS, and no row repeats more than MAX_REPEAT times
# (after depth_multiple). The network as a whole has its caps in job.ml.model (MAX_PARAMS,
# MAX_MACS), counted on the meta device; these keep that count itself cheap.
MAX_CHANNELS = 8192
MAX_REPEAT = 100


def same_names(table: str, names: Iterable[str], other: str, others: Iterable[str]) -> None:
    """`RuntimeError` unless two tables name the same things (at import: a row missing in
    one of them is a bug of this package, found the moment it loads)."""
    a, b = set(names), set(others)
    if a != b:
        raise RuntimeError(
            f"{table} and {other} must name the same entries: only in {table}: "
            f"{sorted(a - b)}, only in {other}: {sorted(b - a)}"
        )
