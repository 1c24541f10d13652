"""Stage 5 of the data path, train — its measurements: what a trained network scores.

The uint8 images normalised as the network takes them (`Normalize`), predictions for a
whole split batched on the device (`predict`), accuracy and macro-F1 from one confusion
matrix (`accuracy_and_f1`) and milliseconds per image (`measure_latency`). `job.ml.train`
measures every trial with them; `job.ml.onnx` and `job.collect.drift` measure a stored
network the same way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from job.ml.data import Dataset, Split


class Normalize:
    """uint8 (B, C, H, W) → float, normalised, in the model's memory format."""

    def __init__(self, data: Dataset, device: torch.device, channels_last: bool) -> None:
        self.mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(data.std, device=device).view(1, -1, 1, 1) * 255.0
        self.format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: Tensor) -> Tensor:
        x = (x.float() - self.mean) / self.std  # (B, C, H, W) float32
        return x.contiguous(memory_format=self.format)


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast where asked and on CUDA; a no-op context elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.inference_mode()
def predict(model: nn.Module, split: Split, norm: Normalize, batch: int, amp: bool) -> Tensor:
    """Class predictions for a whole split, batched large; stays on the device."""
    model.eval()
    device = split.x.device
    out = torch.empty(len(split), dtype=torch.long, device=device)
    for start in range(0, len(split), batch):
        with autocast(device, amp):
            logits = model(norm(split.x[start : start + batch]))  # (b, classes)
        out[start : start + batch] = logits.argmax(dim=1)
    return out


def accuracy_and_f1(pred: Tensor, target: Tensor, num_classes: int) -> tuple[float, float]:
    """Accuracy and macro-F1 from one confusion matrix built on the device."""
    if len(target) == 0:
        return float("nan"), float("nan")
    cm = torch.bincount(target * num_classes + pred, minlength=num_classes**2)
    cm = cm.view(num_classes, num_classes).double()  # (true, predicted)
    tp = cm.diag()
    precision = tp / cm.sum(0).clamp(min=1)
    recall = tp / cm.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    present = cm.sum(1) > 0  # macro-F1 over the classes this split holds
    return float(tp.sum() / cm.sum()), float(f1[present].mean())


def measure_latency(
    model: nn.Module, shape: Sequence[int], device: torch.device, amp: bool
) -> tuple[float, float]:
    """Milliseconds per image of ``shape`` (C, S, S) at batch 1 and at batch 256, after a
    warm-up; ``amp``: in bf16 autocast (CUDA)."""
    model.eval()
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda _: None
    results = []
    for batch, reps in ((1, 20), (256, 3)):
        x = torch.randn(batch, *shape, device=device)
        with torch.inference_mode(), autocast(device, amp):
            model(x)  # warm-up: allocator, cuDNN autotune, lazy init
            sync(device)
            start = time.perf_counter()
            for _ in range(reps):
                model(x)
            sync(device)
        results.append((time.perf_counter() - start) * 1000.0 / (reps * batch))
    return results[0], results[1]


def val_split(data: Dataset) -> Split:
    """The split the search selects on; the test split stands in when there is none."""
    return data.val if len(data.val) else data.test
