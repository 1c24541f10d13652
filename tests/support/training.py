"""A small network and fast recipes for in-process training tests."""

from __future__ import annotations

import threading

from job.config import AugmentConfig, TrainConfig
from job.ml.model import LayerSpec, ModelSpec

TINY = ModelSpec(
    input_channel=3,
    depth_multiple=1.0,
    width_multiple=1.0,
    backbone=(
        LayerSpec(1, "Conv", (16, 3, 1, None, 1, "ReLU")),
        LayerSpec(1, "InvertedResidualv2", (24, 2, 2)),
        LayerSpec(1, "Conv", (64, 1, 1)),
        LayerSpec(1, "GlobalAvgPool", ()),
        LayerSpec(1, "FixedConv", (10, 1, 1, None, 1, None)),
    ),
)


OFF = AugmentConfig(enabled=False)


FAST = TrainConfig(epochs=3, batch_size=32, lr=0.05, device="cpu", measure_latency=True, seed=0)


class StopAfter(threading.Event):
    """A stop flag that turns itself on after `n` looks (one look per training step)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.looks = n

    def is_set(self) -> bool:
        self.looks -= 1
        return self.looks < 0
