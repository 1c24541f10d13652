"""job.ml.model: the seed's model YAML parsed, scaled, built, measured and dumped back."""

import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from job.ml.blocks import Conv, FixedConv
from job.ml.model import (
    LayerSpec,
    Measure,
    Model,
    ModelError,
    ModelSpec,
    build_model,
    count_macs,
    count_params,
    dump_model_spec,
    load_model_spec,
    measure,
    model_spec_yaml,
    output_shape,
    parse_model_spec,
    scale_depth,
    scale_width,
)

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_MODELS = sorted((ROOT / "configs" / "models").glob("*.yaml"))

# The seed's format exactly as a user writes it, quoting and comments included.
SEED_YAML = """\
input_channel: 3
depth_multiple: 1.0
width_multiple: 1.0
backbone:
    # [repeat, module, args]
    [
        [1, Conv, [16, 3, 2, null, 1, "Hardswish"]],
        [2, 'InvertedResidualv3', [3, 1, 16, 1, 0, 2]],
        [3, DWConv, [96, 5, 1, null, "ReLU"]],
        [2, InvertedResidualv2, [24, 6, 2]],
        [1, Conv, [1024, 1, 1]],
        [1, GlobalAvgPool, []],
        [1, FixedConv, [10, 1, 1, null, 1, null]]
    ]
"""


def _spec(
    *rows: tuple[int, str, Any], depth: float = 1.0, width: float = 1.0, channels: int = 3
) -> ModelSpec:
    return ModelSpec(channels, depth, width, tuple(LayerSpec(r, m, tuple(a)) for r, m, a in rows))


def test_seed_example_parses_builds_and_classifies() -> None:
    spec = parse_model_spec(yaml.safe_load(SEED_YAML))
    assert spec.backbone[1] == LayerSpec(2, "InvertedResidualv3", (3, 1, 16, 1, 0, 2))
    model = build_model(spec, image_size=32)
    assert isinstance(model, Model) and len(model) == 7
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert "InvertedResidualv3" in repr(model)


@pytest.mark.parametrize("source", ["seed", *(p.name for p in REFERENCE_MODELS), "odd values"])
def test_yaml_round_trip_is_exact(source: str) -> None:
    if source == "seed":
        spec = parse_model_spec(yaml.safe_load(SEED_YAML))
    elif source == "odd values":  # floats, booleans, None as text, depth/width not 1
        odd = [(3, "InvertedResidualv3", [5, 3.1, 40, True, 0, 2]), (1, "Conv", [8, 1, 1, "None"])]
        spec = parse_model_spec({"depth_multiple": 0.33, "width_multiple": 0.75, "backbone": odd})
    else:
        spec = load_model_spec(ROOT / "configs" / "models" / source)
    text = model_spec_yaml(spec)
    assert yaml.safe_load(text) == dump_model_spec(spec)
    assert parse_model_spec(yaml.safe_load(text)) == spec
    rows = text.split("# [repeat, module, args]\n")[1].strip().splitlines()
    assert len(rows) == len(spec.backbone) + 2  # "[", one line per layer, "]"


@pytest.mark.parametrize(
    ("repeat", "depth", "copies"),
    [(3, 0.33, 1), (1, 0.1, 1), (4, 0.5, 2), (2, 2.0, 4), (5, 0.5, 2)],
)
def test_depth_multiple_scales_repeats_above_one(repeat: int, depth: float, copies: int) -> None:
    assert scale_depth(repeat, depth) == copies
    model = build_model(_spec((repeat, "Conv", [8, 3]), depth=depth))
    layer = model[0]
    assert (len(layer) if isinstance(layer, torch.nn.Sequential) else 1) == copies


@pytest.mark.parametrize(
    ("channels", "width", "scaled"), [(16, 0.75, 16), (40, 0.75, 32), (40, 0.2, 8), (3, 1.0, 8)]
)
def test_width_multiple_rounds_up_to_multiples_of_8(
    channels: int, width: float, scaled: int
) -> None:
    assert scale_width(channels, width) == scaled
    model = build_model(_spec((1, "Conv", [channels, 3]), width=width))
    assert isinstance(model[0], Conv) and model[0].conv.out_channels == scaled


def test_classifier_outputs_are_not_width_scaled() -> None:
    spec = _spec(
        (1, "Conv", [16, 3, 2]),
        (1, "FixedConv", [10, 1, 1, None, 1, None]),
        (1, "GlobalAvgPool", []),
        (1, "Linear", [7]),
        width=0.5,
    )
    model = build_model(spec)
    assert isinstance(model[1], FixedConv) and model[1].conv.out_channels == 10
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 7)


def test_a_final_map_bigger_than_1x1_is_pooled_into_logits() -> None:
    spec = _spec((1, "Conv", [16, 3, 2]), (1, "FixedConv", [10]))
    assert build_model(spec)(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert output_shape(spec, 16) == (1, 10)


def test_params_of_a_tiny_net_match_a_hand_count() -> None:
    spec = _spec((1, "Conv", [8, 3, 1]), (1, "GlobalAvgPool", []), (1, "Linear", [10]))
    conv = 3 * 3 * 3 * 8  # no bias: BN follows
    bn = 2 * 8  # weight and bias; running statistics are buffers
    linear = 8 * 10 + 10
    assert count_params(build_model(spec)) == conv + bn + linear == 322


@pytest.mark.parametrize("stride", [1, 2])
def test_macs_of_a_single_conv_are_k2_cin_cout_hw(stride: int) -> None:
    model = build_model(_spec((1, "Conv", [16, 3, stride])))
    model.train()
    side = 8 // stride
    assert count_macs(model, 8) == 3 * 3 * 3 * 16 * side * side
    assert model.training  # measuring restores the mode


DEEP_POOLS: list[tuple[int, str, Any]] = [
    (1, "Conv", [8, 3]),
    (4, "MaxPool", [2]),
]  # 8 → 4 → 2 → 1 → 0


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([(1, "Conv", [8]), (1, "Conv2", [8])], "backbone[1] (Conv2): unknown module"),
        (
            [(1, "Conv", [8]), (1, "Conv", [8]), (1, "Conv", [8]), (3, "DWConv", [96] * 7)],
            "backbone[3] (DWConv): expected at most 5 args, got 7",
        ),
        ([(0, "Conv", [8])], "backbone[0] (Conv): repeat must be an int in 1..100, got 0"),
        ([(1, "Conv", [8, 3, 1, None, 1, "Relu7"])], "backbone[0] (Conv): arg 5 activation"),
        ([(1, "InvertedResidualv2", [16, 6])], "backbone[0] (InvertedResidualv2): expected at"),
        ([(1, "Conv", [8, 3, 1, None, 3])], "backbone[0] (Conv): out_channels must be divisible"),
        (DEEP_POOLS, "backbone[1] (MaxPool): does not fit a 8x8 input"),
    ],
)
def test_errors_name_the_layer(rows: list[tuple[int, str, Any]], message: str) -> None:
    data = {"input_channel": 3, "backbone": [[r, m, a] for r, m, a in rows]}
    with pytest.raises(ModelError) as caught:
        build_model(parse_model_spec(data), image_size=8)
    assert message in str(caught.value)
    error = caught.value  # raised "from None": no torch traceback chained to it
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (_spec((10**9, "Conv", [8, 3])), "repeat must be an int in 1..100, got 1000000000"),
        (_spec((1, "Conv", [100_000, 3])), "arg 0 out must be an int in 1..8192, got 100000"),
        (_spec((1, "Conv", [8, 10**9])), "arg 1 k must be an int in 1..8192"),
        (_spec((5, "Conv", [8, 3]), depth=100), "repeat 5 x depth_multiple 100 = 500 copies"),
        (_spec((1, "Conv", [1024, 3]), width=50), "1024 channels x width_multiple 50 = 51,200"),
        (_spec((1, "Conv", [8]), width=1e300), "width_multiple must be a number in (0, 100]"),
        (_spec((1, "Conv", [8]), channels=10**6), "input_channel must be at most 8192"),
        (_spec((1, "InvertedResidualv2", [16, 10**9, 1])), "arg 1 t must be a number in (0, 8192]"),
        (_spec((1, "Conv", [64]), (1, "InvertedResidualv2", [16, 1000, 1])), "64,000 hidden"),
    ],
)
def test_absurd_sizes_are_refused_before_anything_is_built(spec: ModelSpec, message: str) -> None:
    """Per-layer caps (job.ml.blocks.MAX_CHANNELS, MAX_REPEAT), checked on the spec: even
    the meta-device count never loops a billion times or shapes a 1e18-element weight."""
    start = time.perf_counter()
    with pytest.raises(ModelError) as caught:
        measure(spec, 16)
    assert message in str(caught.value)
    assert time.perf_counter() - start < 1.0


def test_specs_built_in_code_are_validated_too() -> None:
    with pytest.raises(ModelError, match=r"backbone\[0\] \(Conv\): arg 1 k"):
        build_model(_spec((1, "Conv", (8, 0))))
    with pytest.raises(ModelError, match=r"backbone\[1\] \(MaxPool\)"):
        output_shape(_spec(*DEEP_POOLS), 8)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "m.yaml"
    bad.write_text("input_channel: 3\nbackbone: [[1, Conv, [8, 3, 1, 0, 1, ReLU, 9]]]\n")
    with pytest.raises(ModelError, match=r"m\.yaml: backbone\[0\] \(Conv\): expected at most 6"):
        load_model_spec(bad)
    with pytest.raises(ModelError, match="cannot read"):
        load_model_spec(tmp_path / "missing.yaml")
    with pytest.raises(ModelError, match="unknown key 'head'"):
        parse_model_spec({"head": [], "backbone": [[1, "Conv", [8]]]})


# configs/models/<stem>.yaml → ((min, max) params, (min, max) MACs) at 32x32: the published
# sizes (ResNet-8 of MLPerf Tiny ~78k params, 12.5M MACs; He et al.'s ResNet-20 0.27M).
REFERENCE_SIZES: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "mobilenetv2": ((1_000_000, 3_000_000), (10_000_000, 100_000_000)),
    "mobilenetv3_small": ((1_000_000, 3_000_000), (10_000_000, 100_000_000)),
    "resnet8": ((70_000, 90_000), (10_000_000, 15_000_000)),
    "resnet20": ((250_000, 300_000), (35_000_000, 45_000_000)),
}


@pytest.mark.parametrize("path", REFERENCE_MODELS, ids=lambda p: p.stem)
def test_reference_models_build_and_run(path: Path) -> None:
    assert path.stem in REFERENCE_SIZES, f"no expected size for {path.name}: add a row"
    (min_params, max_params), (min_macs, max_macs) = REFERENCE_SIZES[path.stem]
    spec = load_model_spec(path)
    model = build_model(spec, image_size=32)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    params, macs = count_params(model), count_macs(model, 32)
    assert min_params < params < max_params
    assert min_macs < macs < max_macs
    assert measure(spec, 32) == Measure(params, macs, 10)  # the meta-device count agrees


def test_reference_models_are_present() -> None:
    assert {p.stem for p in REFERENCE_MODELS} >= set(REFERENCE_SIZES)
