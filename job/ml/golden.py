"""Stage 9 of the data path, export (beside job.ml.onnx): what a deployer is told. Each
pick ships ``golden.npz`` to check a deployment with, and its card says the data's
conventions and which file to deploy (`which_to_deploy`).

``golden.npz`` (numpy's format, no pickled objects: ``np.load(path)`` reads it as is):

* ``raw``: uint8 (n, H, W, C), a few test images as a deployer holds them once decoded
  (channels last, C 1 for grey or 3 for RGB, the source's own size; for an image folder,
  its files as the loader read them: padded to a square and resized), one per class in
  turn;
* ``labels``: int64 (n,), their classes' indexes; ``classes``: the class names;
* ``input``: float32 (n, 3, S, S), what model.onnx must be fed for them: the card's
  ``input`` recipe, done by the code that trained the model;
* ``logits`` / ``logits_int8``: float32 (n, classes), model.onnx's and model.int8.onnx's
  output for ``input`` in onnxruntime (``logits_int8`` only where the int8 file is).

A deployer runs their own preprocessing on ``raw`` and compares with ``input`` (a wrong
channel order, scale or polarity is far off; another resize implementation is close),
then their runtime's predictions with ``logits`` (README, "Check your deployment").

`conventions` derives from the training images what a deployer gets wrong most: the
channel order and value range the recipe assumes, and the polarity where one dominates
(digits are light strokes on a dark background; fed dark-on-light they score near
chance).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from job.config import DataConfig
from job.files import write_atomic
from job.ml.data import Dataset, raw_test
from job.ml.evaluate import Normalize
from job.ml.images import prepare_images
from job.ml.onnx import INPUT, INT8_FILE, ONNX_FILE, ort_session
from job.ml.sources import in_turn

GOLDEN_FILE = "golden.npz"
GOLDEN_IMAGES = 10  # at most: one per class in turn
_EDGE = 0.15  # the border ring, as a share of the side, that counts as background
_CONTRAST = 16.0  # grey levels (0-255) between border and centre that make a polarity
_DOMINANT = 0.8  # the share of images with one polarity that makes it the data's
# What a deployer's preprocessing may differ by and still be the same recipe (another
# antialiased bilinear resize lands within a few grey levels), in normalised units; a
# wrong scale, channel order or polarity is off by 1 or more.
INPUT_TOLERANCE = 0.1


def _in_turn(labels: NDArray[np.int64], n: int) -> list[int]:
    """Indexes of up to `n` images, the first of each class, then the second, ... (the
    preview's choice, job.ml.sources.in_turn), in split order."""
    return sorted(in_turn(labels.tolist(), n))


def golden_inputs(data: Dataset, cfg: DataConfig) -> dict[str, NDArray[Any]]:
    """The arrays of golden.npz but the logits: a few test images as their source holds
    them (job.ml.data.raw_test), prepared and normalised as training does. Raises
    ValueError when they do not prepare to `data`'s test split (another data set)."""
    # An image folder's files are read prepared (job.ml.sources): its test split is what
    # a deployer decodes, padded and resized, and reading every file again would be slow.
    raw = data.test if cfg.name == "imagefolder" else raw_test(cfg)
    size = cfg.image_size
    picks = _in_turn(raw.y.cpu().numpy().astype(np.int64), GOLDEN_IMAGES)
    x = raw.x[picks].cpu()  # (n, C, H, W) uint8
    prepared = prepare_images(x, size)  # (n, 3, S, S) uint8, as the loader prepares
    if not torch.equal(prepared, data.test.x[picks].cpu()):
        raise ValueError("the raw test images do not prepare to the test split's")
    normalised = Normalize(data, torch.device("cpu"), channels_last=False)(prepared)
    return {
        "raw": x.permute(0, 2, 3, 1).contiguous().numpy(),  # (n, H, W, C): as decoded
        "labels": raw.y[picks].cpu().numpy().astype(np.int64),
        "classes": np.array(data.classes, dtype=np.str_),
        "input": normalised.numpy().astype(np.float32),
    }


def _logits(model: Path, x: NDArray[np.float32]) -> NDArray[np.float32]:
    session = ort_session(model, threads=1)
    out: NDArray[np.float32] = session.run(None, {INPUT: x})[0]
    return out.astype(np.float32)


def write_golden(
    folder: Path, arrays: dict[str, NDArray[Any]], onnx: Path, int8: Path | None
) -> dict[str, Any]:
    """golden.npz in `folder` (written atomically): `arrays` (`golden_inputs`) and the
    logits of the ONNX files for them; returns the card's `golden` section."""
    found = dict(arrays)
    found["logits"] = _logits(onnx, arrays["input"])
    if int8 is not None and int8.is_file():
        found["logits_int8"] = _logits(int8, arrays["input"])

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            # plain arrays, no objects: np.load reads them without allow_pickle (numpy's
            # stub types **arrays as its allow_pickle flag)
            np.savez(handle, **found)  # type: ignore[arg-type]

    write_atomic(folder / GOLDEN_FILE, write)
    return {
        "file": GOLDEN_FILE,
        "images": len(found["labels"]),
        "arrays": sorted(found),
        "input_tolerance": INPUT_TOLERANCE,
        "check": "your preprocessing of `raw` within input_tolerance of `input` (max "
        "absolute difference), and your runtime's argmax of `input` equal to `logits`'",
    }


def conventions(data: Dataset) -> dict[str, str]:
    """The data's conventions a deployment must follow, from its training images."""
    return {
        "channel_order": "RGB, channels first (N, 3, H, W); a grey image is its one "
        "channel repeated 3 times",
        "value_range": "decoded 8-bit pixels 0-255, scaled by 1/255, then (x - mean) / std "
        "per channel: not 0-1 floats already, not BGR",
        "polarity": polarity(data.train.x),
    }


def polarity(x: torch.Tensor) -> str:
    """Whether the images are light on dark, dark on light, or neither, as most of the
    uint8 (N, 3, S, S) images `x` show it: their border ring (background) against their
    centre."""
    grey = x.float().mean(dim=1)  # (N, S, S)
    side = grey.shape[-1]
    edge = max(1, round(side * _EDGE))
    ring = torch.ones(side, side, dtype=torch.bool)
    ring[edge:-edge, edge:-edge] = False
    border = grey[:, ring].mean(dim=1)  # (N,)
    centre = grey[:, ~ring].mean(dim=1) if (~ring).any() else border
    dark = (centre - border > _CONTRAST).float().mean().item()
    light = (border - centre > _CONTRAST).float().mean().item()
    if dark >= _DOMINANT:
        return (
            f"light foreground on a dark background ({dark:.0%} of the training images): "
            f"invert images drawn dark on light before feeding them"
        )
    if light >= _DOMINANT:
        return (
            f"dark foreground on a light background ({light:.0%} of the training images): "
            f"invert images drawn light on dark before feeding them"
        )
    return "mixed: no polarity dominates the training images"


# int8 that loses more than this much test accuracy is not advised, however fast.
INT8_MAX_DROP = 0.01


def which_to_deploy(onnx: dict[str, Any]) -> dict[str, str]:
    """The card's ``onnx.deploy`` from its measured ``onnx`` section: the file to ship and
    why. int8 only where it measured both smaller and faster than fp32 in onnxruntime,
    losing at most INT8_MAX_DROP accuracy: on the CPUs these small networks run on, its
    quantize and dequantize steps often cost more than its arithmetic saves."""
    int8 = onnx.get("int8")
    if not isinstance(int8, dict) or int8.get("problem") or int8.get("size_ratio") is None:
        return {"file": ONNX_FILE, "why": "no int8 copy to weigh against it"}
    fp32_ms = (onnx.get("latency_ms") or {}).get("median_ms")
    int8_ms = (int8.get("latency_ms") or {}).get("median_ms")
    size, drop = float(int8["size_ratio"]), float(int8["accuracy_drop"])
    timed = fp32_ms is not None and int8_ms is not None
    measured = f"int8 is {size:.2f}x the size, " + (
        f"{int8_ms:.3f} ms against {fp32_ms:.3f} ms (median, onnxruntime, batch 1)"
        if timed
        else "its latency not measured"
    )
    measured += f", accuracy drop {drop:+.4f}"
    faster = fp32_ms is not None and int8_ms is not None and int8_ms < fp32_ms
    if size < 1.0 and faster and drop <= INT8_MAX_DROP:
        return {"file": INT8_FILE, "why": f"smaller and faster: {measured}"}
    reasons = [
        *(["not smaller"] if size >= 1.0 else []),
        *(["not faster"] if not faster else []),
        *([f"loses more than {INT8_MAX_DROP:g}"] if drop > INT8_MAX_DROP else []),
    ]
    return {"file": ONNX_FILE, "why": f"int8 {' and '.join(reasons)}: {measured}"}
