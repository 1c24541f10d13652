"""job.ml.golden: what golden.npz holds for a real data set (the test images as their
source holds them prepare to the test split), the conventions read from the training
images (polarity on hand-made images), and which file the card says to deploy. Written
and checked against model.onnx in a real collect: tests/integration/test_publish.py."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

from job.config import parse_config
from job.ml.data import Split, load_data, raw_test
from job.ml.golden import (
    GOLDEN_IMAGES,
    _in_turn,
    conventions,
    golden_inputs,
    polarity,
    which_to_deploy,
)


def _strokes(n: int, light_on_dark: bool, side: int = 16) -> torch.Tensor:
    """(n, 3, side, side) uint8 images: a bar in the middle on a plain background."""
    background, stroke = (0, 255) if light_on_dark else (255, 0)
    x = torch.full((n, 3, side, side), background, dtype=torch.uint8)
    x[:, :, side // 4 : -side // 4, side // 2 - 1 : side // 2 + 1] = stroke
    return x


def test_polarity_names_the_dominant_one_and_says_what_to_do() -> None:
    assert polarity(_strokes(10, light_on_dark=True)).startswith(
        "light foreground on a dark background (100%"
    )
    assert "invert images drawn dark on light" in polarity(_strokes(10, light_on_dark=True))
    assert polarity(_strokes(10, light_on_dark=False)).startswith("dark foreground on a light")
    mixed = torch.cat([_strokes(5, True), _strokes(5, False)])
    assert polarity(mixed).startswith("mixed")
    flat = torch.full((4, 3, 16, 16), 90, dtype=torch.uint8)  # no contrast at all
    assert polarity(flat).startswith("mixed")


def test_one_image_per_class_in_turn() -> None:
    labels = np.array([2, 2, 0, 1, 0, 2], dtype=np.int64)
    assert _in_turn(labels, 3) == [0, 2, 3]  # the first 0, 1 and 2
    assert _in_turn(labels, 5) == [0, 1, 2, 3, 4]  # then the second of each
    assert _in_turn(labels, 99) == list(range(6))


def test_golden_inputs_of_digits_are_the_test_split_prepared_and_normalised() -> None:
    config = parse_config({"data": {"name": "digits", "image_size": 16}})
    data = load_data(config.data)
    arrays = golden_inputs(data, config.data)
    raw, wanted = arrays["raw"], arrays["input"]
    assert raw.dtype == np.uint8 and raw.shape[1:] == (8, 8, 1)  # as scikit-learn holds them
    assert wanted.shape == (len(raw), 3, 16, 16) and wanted.dtype == np.float32
    assert len(raw) == min(GOLDEN_IMAGES, data.num_classes)
    assert sorted(arrays["labels"].tolist()) == list(range(10))
    assert list(arrays["classes"]) == list(data.classes)
    # image i of the raw split is image i of the prepared one
    assert len(raw_test(config.data)) == len(data.test)
    assert conventions(data)["polarity"].startswith("light foreground on a dark background")


def test_golden_inputs_refuse_a_test_split_of_other_images() -> None:
    config = parse_config({"data": {"name": "digits", "image_size": 16}})
    data = load_data(config.data)
    flipped = Split(data.test.x.flip(-1), data.test.y)  # a mirrored test split
    with pytest.raises(ValueError, match="do not prepare to the test split"):
        golden_inputs(replace(data, test=flipped), config.data)


def _onnx(fp32_ms: float, int8_ms: float | None, size: float, drop: float) -> dict[str, Any]:
    int8 = {"size_ratio": size, "accuracy_drop": drop, "problem": None}
    int8["latency_ms"] = None if int8_ms is None else {"median_ms": int8_ms}
    return {"latency_ms": {"median_ms": fp32_ms}, "int8": int8}


@pytest.mark.parametrize(
    ("onnx", "file", "why"),
    [
        (_onnx(0.10, 0.05, 0.6, 0.0), "model.int8.onnx", "smaller and faster: int8 is 0.60x"),
        (_onnx(0.035, 0.083, 1.01, 0.003), "model.onnx", "int8 not smaller and not faster"),
        (_onnx(0.077, 0.154, 0.59, 0.0), "model.onnx", "int8 not faster: "),
        (_onnx(0.10, 0.05, 1.2, 0.0), "model.onnx", "int8 not smaller: "),
        (_onnx(0.10, 0.05, 0.6, 0.05), "model.onnx", "int8 loses more than 0.01"),
        (
            _onnx(0.10, None, 0.6, 0.0),
            "model.onnx",
            "int8 not faster: int8 is 0.60x the size, its latency not measured",
        ),
        ({"latency_ms": {"median_ms": 0.1}, "int8": None}, "model.onnx", "no int8 copy"),
        ({"int8": {"problem": "quantization failed"}}, "model.onnx", "no int8 copy"),
    ],
)
def test_int8_is_advised_only_where_it_measured_smaller_and_faster(
    onnx: dict[str, Any], file: str, why: str
) -> None:
    advice = which_to_deploy(onnx)
    assert advice["file"] == file and advice["why"].startswith(why), advice
