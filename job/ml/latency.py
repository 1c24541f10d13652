"""Stage 5 of the data path, train — the latency objective: a network timed in the runtime
`train.latency` names, by default the one its picks are deployed in.

`measure(spec, data, recipe)` builds the network and times it at batch 1:

- `onnxruntime` (default): exported to ONNX (fp32, the export's opset), for `int8`
  quantized as the export does (job.ml.onnx: static QDQ, ranges from a fixed sample of
  training images), then run by onnxruntime on the CPU with `threads` intra-op threads,
  a warm-up and the median of `runs` timed runs: what a deployer of the pick will see,
  on the worker's CPU. The file is temporary.
- `pytorch`: eager PyTorch on the training device (bf16 autocast on CUDA where the recipe
  asks), at batch 1 and per image at batch 256. For these small networks it is mostly
  per-layer dispatch overhead, which is why it is not the default (docs/BENCHMARKS.md).

A network's latency depends on its layers and shapes, not on its weights, so it is timed
on a freshly built network, before training: the pruning rungs (job.search.prune) can
rank on it from the first epoch. onnxruntime and onnx are imported only here and only
when asked, so a worker that measures no latency does not load them.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from job.config import ExportConfig, TrainConfig
from job.ml.data import Dataset
from job.ml.evaluate import measure_latency
from job.ml.model import ModelSpec, build_model

OPSET = ExportConfig().opset  # the export's: the search times the file a pick becomes
CALIBRATION_IMAGES = 64  # int8 ranges: enough for a timing, which does not depend on them


@dataclass(frozen=True)
class Latency:
    """A network's latency in ms per image: `ms` at batch 1 in `runtime` at `precision`;
    `ms_b256` per image at batch 256 (PyTorch only)."""

    runtime: str
    precision: str
    ms: float
    ms_b256: float | None = None


def measure(spec: ModelSpec, data: Dataset, recipe: TrainConfig) -> Latency:
    """The latency `recipe.latency` asks for, of `spec` on `data`'s image size (module doc)."""
    cfg = recipe.latency
    torch.manual_seed(recipe.seed)  # any weights do; these are the trial's own first ones
    model = build_model(spec)
    if cfg.runtime == "pytorch":
        from job.ml.train import resolve_device

        device = resolve_device(recipe.device)
        model = model.to(device)
        amp = recipe.amp and device.type == "cuda"
        b1, b256 = measure_latency(model, data.train.x.shape[1:], device, amp)
        return Latency(cfg.runtime, cfg.precision, b1, b256)
    return Latency(cfg.runtime, cfg.precision, _onnxruntime_ms(model, data, recipe))


def _onnxruntime_ms(model: torch.nn.Module, data: Dataset, recipe: TrainConfig) -> float:
    """Median batch-1 ms of the network's ONNX file (int8: quantized) in onnxruntime."""
    from job.ml.onnx import export_onnx, ort_latency, quantize_int8

    cfg, size = recipe.latency, int(data.train.x.shape[-1])
    with tempfile.TemporaryDirectory(prefix="sms-latency-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, size, path, OPSET)
        if cfg.precision == "int8":
            quantized = path.with_name("model.int8.onnx")
            quantize_int8(path, quantized, data, CALIBRATION_IMAGES)
            path = quantized
        return float(ort_latency(path, size, cfg.threads, cfg.runs)["median_ms"])
