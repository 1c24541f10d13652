"""Every row of job.ml.blocks.MODULES builds, runs forward and backward, and emits the
channel count the table promises, at repeat 1 and 2 and (where it strides) stride 1 and 2."""

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from job.ml.blocks import MODULES, BasicBlock, Conv, Repeat, build_layer, fill_defaults

# name → (representative args, input channels, input side). Linear and Flatten get a
# pooled (B, C, 1, 1) input, as they would after GlobalAvgPool.
EXAMPLES: dict[str, tuple[list[Any], int, int]] = {
    "Conv": ([16, 3, 1, None, 1, "Hardswish"], 8, 8),
    "DWConv": ([16, 5, 1, None, "ReLU6"], 8, 8),
    "Bottleneck": ([8, True, 1, 0.5, "SiLU"], 8, 8),
    "InvertedResidualv2": ([8, 6, 1], 8, 8),
    "InvertedResidualv3": ([5, 3.1, 8, 1, 1, 1], 8, 8),
    "MBConv": ([6, 8, 1, 3], 8, 8),
    "BasicBlock": ([16, 1, "ReLU"], 8, 8),
    "Fire": ([8, 16, 16], 8, 8),
    "Linear": ([10, "ReLU"], 8, 1),
    "MaxPool": ([2], 8, 8),
    "AvgPool": ([3, 1, 1], 8, 8),
    "GlobalAvgPool": ([], 8, 8),
    "Flatten": ([], 8, 1),
    "FixedConv": ([10, 1, 1], 8, 8),
}


def _cases() -> Iterator[pytest.ParameterSet]:
    for name, defn in MODULES.items():
        for repeat in (1, 2):
            for stride in (1, 2) if defn.stride_arg is not None else (1,):
                yield pytest.param(name, repeat, stride, id=f"{name}-r{repeat}-s{stride}")


@pytest.mark.parametrize(("name", "repeat", "stride"), list(_cases()))
def test_module_builds_runs_and_matches_table(name: str, repeat: int, stride: int) -> None:
    assert name in EXAMPLES, f"no example args for {name}: add a row to EXAMPLES"
    raw_args, c_in, side = EXAMPLES[name]
    defn = MODULES[name]
    args = list(fill_defaults(name, tuple(raw_args)))
    assert len(args) == len(defn.args)
    if defn.stride_arg is not None:
        args[defn.stride_arg] = stride

    module, c_out = build_layer(name, c_in, tuple(args), repeat)
    assert isinstance(module, Repeat) == (repeat > 1)
    if isinstance(module, Repeat):
        assert len(module) == repeat

    x = torch.randn(2, c_in, side, side, requires_grad=True)  # (B, C, S, S)
    y = module(x)
    assert y.shape[0] == 2
    assert y.shape[1] == c_out == defn.out_channels(c_in, tuple(args))
    if defn.stride_arg is not None:  # only one copy strides, whatever the repeat
        assert y.shape[-2:] == (side // stride, side // stride)

    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for p in module.parameters():
        assert p.grad is not None


@pytest.mark.parametrize(
    ("c_in", "c_out", "stride", "identity"),
    [(16, 16, 1, True), (16, 32, 1, False), (16, 16, 2, False), (16, 32, 2, False)],
)
def test_basic_block_shortcut_projects_only_when_shapes_change(
    c_in: int, c_out: int, stride: int, identity: bool
) -> None:
    block = BasicBlock(c_in, c_out, stride)
    if identity:
        assert isinstance(block.shortcut, torch.nn.Identity)
        assert not list(block.shortcut.parameters())
    else:  # 1x1 conv + BN at the block's stride, no activation (it follows the add)
        assert isinstance(block.shortcut, Conv)
        assert block.shortcut.conv.kernel_size == (1, 1)
        assert block.shortcut.conv.stride == (stride, stride)
        assert isinstance(block.shortcut.act, torch.nn.Identity)
        assert sum(p.numel() for p in block.shortcut.parameters()) == c_in * c_out + 2 * c_out
    y = block(torch.randn(2, c_in, 8, 8))  # (B, Cin, 8, 8) → (B, Cout, 8/s, 8/s)
    assert y.shape == (2, c_out, 8 // stride, 8 // stride)
    assert (y >= 0).all()  # ReLU after the add
