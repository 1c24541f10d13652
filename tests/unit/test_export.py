"""Stage 9, export: a digits model trained briefly, exported to ONNX and int8, checked by
onnxruntime against PyTorch on the whole test split."""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]
import pytest
import torch

from job.config import Config, ExportConfig, load_config
from job.files import OutputError
from job.ml.data import Dataset, load_data
from job.ml.model import ModelSpec, build_model, parse_model_spec
from job.ml.onnx import (
    ExportError,
    calibration_batches,
    check_onnx,
    export_onnx,
    export_pick,
    input_spec,
    load_weights,
)
from job.ml.train import Normalize, accuracy_and_f1, predict, train

ROOT = Path(__file__).resolve().parents[2]


def _spec(head: int = 128) -> ModelSpec:
    """A quickstart-shaped network: ~15k params, enough that weights dominate the files."""
    backbone = [
        [1, "Conv", [16, 3, 2, None, 1, "ReLU"]],
        [1, "DWConv", [32, 3, 1, None, "ReLU"]],
        [1, "InvertedResidualv2", [32, 4, 2]],
        [1, "Conv", [head, 1, 1]],
        [1, "GlobalAvgPool", []],
        [1, "FixedConv", [10, 1, 1, None, 1, None]],
    ]
    return parse_model_spec({"backbone": backbone})


@dataclass(frozen=True)
class Trained:
    config: Config
    data: Dataset
    spec: ModelSpec
    weights: Path
    folder: Path
    card: dict[str, Any]
    caught: list[warnings.WarningMessage]


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(ROOT / "configs" / "quickstart.yaml")


@pytest.fixture(scope="module")
def data(config: Config) -> Dataset:
    return load_data(config.data)  # digits at 16x16: 1222 train, 359 test


@pytest.fixture(scope="module")
def trained(config: Config, data: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """Two epochs (about 4 s on 2 cores), so the int8 ranges are those of a real model.
    Augmentation off: it is most of the training time and nothing export looks at."""
    folder = tmp_path_factory.mktemp("pick")
    recipe = config.train.model_copy(update={"epochs": 2, "measure_latency": False})
    augment = config.augment.model_copy(update={"enabled": False})
    spec, weights = _spec(), folder / "weights.pt"
    train(spec, augment, recipe, data, weights=weights)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        card = export_pick(folder, spec, weights, data, config.export)
    return Trained(config, data, spec, weights, folder, card, caught)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_onnx_matches_pytorch(trained: Trained) -> None:
    card, data = trained.card, trained.data
    assert card["verified"] and card["problem"] is None, card
    assert card["file"] == "model.onnx" and card["opset"] == 18
    assert card["bytes"] == (trained.folder / "model.onnx").stat().st_size
    assert 0 <= card["max_logit_diff"] <= 1e-4 == card["tolerance"]  # measured: ~5e-6
    assert card["top1_agreement"] == 1.0
    assert card["test_images"] == len(data.test) == 359
    model = load_weights(trained.spec, trained.weights)
    norm = Normalize(data, torch.device("cpu"), channels_last=False)
    pred = predict(model, data.test, norm, 256, amp=False)
    assert card["test_accuracy"] == accuracy_and_f1(pred, data.test.y, 10)[0] > 0.5


def test_dynamic_batch(trained: Trained) -> None:
    session = _session(trained.folder / "model.onnx")
    model = load_weights(trained.spec, trained.weights)
    norm = Normalize(trained.data, torch.device("cpu"), channels_last=False)
    for batch in (1, 7):
        x = norm(trained.data.test.x[:batch])  # (batch, 3, 16, 16)
        (got,) = session.run(["logits"], {"input": x.numpy()})
        with torch.inference_mode():
            want = model(x).numpy()
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_int8(trained: Trained) -> None:
    int8, fp32 = trained.card["int8"], trained.card
    assert int8 is not None and int8["problem"] is None, int8
    file = trained.folder / "model.int8.onnx"
    assert file.stat().st_size == int8["bytes"] and int8["file"] == file.name
    # Measured: 36 kB of 67 kB (0.54): int8 weights, plus per-channel scales and Q/DQ nodes
    # that weigh more, in share, the smaller the network.
    assert int8["size_ratio"] == pytest.approx(int8["bytes"] / fp32["bytes"])
    assert 0.3 < int8["size_ratio"] < 0.6
    assert isinstance(int8["accuracy_drop"], float)
    assert int8["accuracy_drop"] == pytest.approx(fp32["test_accuracy"] - int8["test_accuracy"])
    assert abs(int8["accuracy_drop"]) <= 0.03  # measured: 0.0 (static ranges, 256 images)
    assert int8["calibration_images"] == 256
    assert int8["format"] == "QDQ, per-channel int8 weights in a 7-bit range, uint8 activations"
    ops = {node.op_type for node in onnx.load(file).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert not list(trained.folder.glob(".*"))  # no temporary file left behind


def test_latency(trained: Trained) -> None:
    for latency in (trained.card["latency_ms"], trained.card["int8"]["latency_ms"]):
        assert 0 < latency["median_ms"] <= latency["p90_ms"]
        assert latency["runs"] == 200 and latency["threads"] == 1 and latency["batch"] == 1
        assert latency["provider"] == "CPUExecutionProvider"


def test_export_is_quiet(trained: Trained) -> None:
    assert [str(w.message) for w in trained.caught] == []


def test_corrupted_file_is_reported(trained: Trained, tmp_path: Path) -> None:
    model = load_weights(trained.spec, trained.weights)
    good = (trained.folder / "model.onnx").read_bytes()
    truncated, flipped = tmp_path / "truncated.onnx", tmp_path / "flipped.onnx"
    truncated.write_bytes(good[: len(good) // 2])
    middle = len(good) // 2
    flipped.write_bytes(good[:middle] + bytes(b ^ 0xFF for b in good[middle:]))
    for path in (truncated, flipped):
        result = check_onnx(path, model, trained.data, 1e-4)
        assert result["verified"] is False and result["problem"], result
        assert "\n" not in result["problem"]


def test_other_weights_fail_the_check(trained: Trained) -> None:
    torch.manual_seed(1)
    other = build_model(trained.spec)  # same network, fresh weights
    result = check_onnx(trained.folder / "model.onnx", other, trained.data, 1e-4)
    assert result["verified"] is False and result["max_logit_diff"] > 1e-4
    assert "over" in result["problem"]


def test_weights_that_do_not_fit_the_spec(trained: Trained, tmp_path: Path) -> None:
    cfg = ExportConfig(latency_runs=10)
    card = export_pick(tmp_path, _spec(head=64), trained.weights, trained.data, cfg)
    assert card["verified"] is False and "does not fit" in card["problem"], card
    assert card["int8"] is None and not (tmp_path / "model.onnx").exists()
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a state dict")
    card = export_pick(tmp_path, trained.spec, garbage, trained.data, cfg)
    assert card["verified"] is False and "cannot load" in card["problem"], card


def test_pick_prints_nothing(
    trained: Trained, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(trained.weights, tmp_path / "weights.pt")
    cfg = ExportConfig(latency_runs=10, calibration_images=32)
    card = export_pick(tmp_path, trained.spec, tmp_path / "weights.pt", trained.data, cfg)
    assert card["verified"] and card["int8"]["problem"] is None
    assert card["int8"]["calibration_images"] == 32
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    model = load_weights(trained.spec, trained.weights)
    assert not check_onnx(bad, model, trained.data, 1e-4)["verified"]
    assert capfd.readouterr() == ("", "")


def test_input_spec(data: Dataset, config: Config) -> None:
    spec = input_spec(data, config.data)
    assert spec["classes"] == list(data.classes) == [str(i) for i in range(10)]
    assert spec["mean"] == list(data.mean) and spec["std"] == list(data.std)
    assert (spec["height"], spec["width"], spec["channels"]) == (16, 16, 3)
    assert spec["name"] == "input" and spec["layout"] == "NCHW" and spec["dtype"] == "float32"
    assert spec["scale"] == pytest.approx(1 / 255) and "antialias" in spec["resize"]
    assert "128" in spec["resize"]  # the square padding's grey


def test_calibration_sample_is_fixed(data: Dataset) -> None:
    a, b = calibration_batches(data, 100), calibration_batches(data, 100)
    assert sum(len(x) for x in a) == 100 and all(x.dtype == torch.float32 for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert sum(len(x) for x in calibration_batches(data, 10**6)) == len(data.train)


def test_export_error_is_one_line(tmp_path: Path) -> None:
    model = build_model(_spec())
    with pytest.raises(ExportError, match=r"model\.onnx: ONNX export failed") as info:
        export_onnx(model, 16, tmp_path / "model.onnx", 5)  # an opset too old for it
    assert "\n" not in str(info.value) and not (tmp_path / "model.onnx").exists()
    # a file that cannot be written is no fault of the model: OutputError, naming the file
    with pytest.raises(OutputError, match=r"cannot write .*/missing/model\.onnx: No such file"):
        export_onnx(model, 16, tmp_path / "missing" / "model.onnx", 18)
    assert list(tmp_path.iterdir()) == []
