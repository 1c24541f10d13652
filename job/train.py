"""Stage 5 of the data path: train.

`train(model_spec, augment_policy, recipe, data) -> TrainResult` trains one network
and measures it. It knows nothing of Optuna: the search layer (`job.space`) maps a
trial to these typed values and the result back to objective values.

The hot loop keeps the GPU fed without the host: the data set already lives on the
device as uint8, batches are index gathers, augmentation is batched per image on the
device, and the loss is accumulated on the device and read back once per epoch (the
only host sync of an epoch, which is also where a NaN is noticed). The model runs
channels_last (on CPU too: oneDNN steps 1.3-2x faster), on CUDA in bf16 autocast.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from job.augment import AugmentPolicy, train_augment
from job.config import TrainConfig
from job.data import Dataset, Split
from job.model import (
    ModelError,
    ModelSpec,
    build_model,
    count_macs,
    count_params,
    output_shape,
)

FailReason = Literal["nan_loss", "out_of_memory", "invalid_network"]


class Preempted(Exception):  # noqa: N818 — a request honoured, not an error
    """Stopped on request; the state is in `path` (None: unsaved), resumable at epoch, step."""

    def __init__(self, path: Path | None, epoch: int, step: int) -> None:
        super().__init__(f"preempted at epoch {epoch}, step {step}")
        self.path, self.epoch, self.step = path, epoch, step


class TrainError(RuntimeError):
    """A trial that cannot finish; `reason` is what the search layer records."""

    def __init__(self, reason: FailReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: FailReason = reason


@dataclass(frozen=True)
class Recipe:
    """Everything about how to train, none of it about what to train."""

    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 1024
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    measure_latency: bool = True
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: TrainConfig, **overrides: object) -> Recipe:
        fields = cfg.model_dump(exclude={"optimizer", "schedule"})
        fields.update(overrides)
        return cls(**fields)


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    val_accuracy: float
    lr: float
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    val_accuracy: float
    test_accuracy: float
    val_f1: float
    test_f1: float
    params: int
    macs: int
    latency_ms_b1: float  # ms per image at batch 1 on the training device
    latency_ms_b256: float  # ms per image at batch 256
    train_images_per_s: float
    seconds: float
    device: str
    history: tuple[EpochRecord, ...] = field(default=())
    resumed_epoch: int = 0  # > 0: resumed from a checkpoint at this epoch (1-based)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainError("invalid_network", "train.device is 'cuda' but no CUDA device is visible")
    return torch.device(name)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """No weight decay on BatchNorm and biases: decaying them only hurts small nets."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine annealing to zero, per optimizer step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class _Normalize:
    """uint8 (B, C, H, W) → float, normalised, in the model's memory format."""

    def __init__(self, data: Dataset, device: torch.device, channels_last: bool) -> None:
        self.mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(data.std, device=device).view(1, -1, 1, 1) * 255.0
        self.format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: Tensor) -> Tensor:
        x = (x.float() - self.mean) / self.std  # (B, C, H, W) float32
        return x.contiguous(memory_format=self.format)


def _autocast(device: torch.device, enabled: bool) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.inference_mode()
def predict(model: nn.Module, split: Split, norm: _Normalize, batch: int, amp: bool) -> Tensor:
    """Class predictions for a whole split, batched large; stays on the device."""
    model.eval()
    device = split.x.device
    out = torch.empty(len(split), dtype=torch.long, device=device)
    for start in range(0, len(split), batch):
        with _autocast(device, amp):
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
    model: nn.Module, image_size: int, device: torch.device, amp: bool
) -> tuple[float, float]:
    """Milliseconds per image at batch 1 and at batch 256, after warm-up."""
    model.eval()
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda _: None
    results = []
    for batch, reps in ((1, 20), (256, 3)):
        x = torch.randn(batch, 3, image_size, image_size, device=device)
        with torch.inference_mode(), _autocast(device, amp):
            model(x)  # warm-up: allocator, cuDNN autotune, lazy init
            sync(device)
            start = time.perf_counter()
            for _ in range(reps):
                model(x)
            sync(device)
        results.append((time.perf_counter() - start) * 1000.0 / (reps * batch))
    return results[0], results[1]


def _val_split(data: Dataset) -> Split:
    """The split the search selects on; the test split stands in when there is none."""
    return data.val if len(data.val) else data.test


def _build(spec: ModelSpec, data: Dataset, device: torch.device) -> nn.Module:
    """Build on the CPU with a dry run at the data's size, then check the class count."""
    image_size = data.train.x.shape[-1]
    try:
        model = build_model(spec, image_size=image_size)
        classes = output_shape(model, image_size)[-1]
    except ModelError as exc:
        raise TrainError("invalid_network", str(exc)) from None
    if classes != data.num_classes:
        raise TrainError(
            "invalid_network",
            f"the network outputs {classes} classes, the data has {data.num_classes}",
        )
    return model.to(device)


@dataclass
class _Position:
    """Where the loop stands: what a checkpoint holds besides the weights and RNGs."""

    epoch: int = 1
    step: int = 0
    order: Tensor | None = None  # this epoch's permutation of the train set
    loss_sum: Tensor | None = None
    train_seconds: float = 0.0
    history: list[EpochRecord] = field(default_factory=list)


def _save(path: Path, parts: dict[str, Any], pos: _Position) -> None:
    """Everything the loop needs to go on exactly, written atomically (whole or absent)."""
    state = {name: part.state_dict() for name, part in parts.items() if hasattr(part, "state_dict")}
    state |= {name: g.get_state() for name, g in parts.items() if isinstance(g, torch.Generator)}
    state |= {"torch": torch.get_rng_state(), "position": pos}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load(path: Path, parts: dict[str, Any], device: torch.device) -> _Position:
    state = torch.load(path, map_location=device, weights_only=False)
    for name, part in parts.items():
        if isinstance(part, torch.Generator):
            part.set_state(state[name].cpu())
        else:
            part.load_state_dict(state[name])
    torch.set_rng_state(state["torch"].cpu())
    pos: _Position = state["position"]
    return pos


def _train_epochs(
    model: nn.Module,
    policy: AugmentPolicy | None,
    recipe: Recipe,
    data: Dataset,
    device: torch.device,
    on_epoch: Callable[[EpochRecord], None] | None,
    checkpoint: Path | None = None,
    stop: threading.Event | None = None,
) -> tuple[list[EpochRecord], float, int]:
    """The training loop; returns the epoch records, train images/s and the epoch it
    resumed at (0: from scratch). With `stop` set it saves `checkpoint` and raises."""
    cuda = device.type == "cuda"
    norm = _Normalize(data, device, recipe.channels_last)
    model = model.to(memory_format=norm.format)
    step_model: nn.Module = torch.compile(model) if recipe.compile else model  # type: ignore[assignment]
    optimizer = torch.optim.SGD(
        _param_groups(model, recipe.weight_decay),
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov and recipe.momentum > 0,
    )
    n = len(data.train)
    batch = min(recipe.batch_size, n)
    steps = n // batch  # drop the ragged last batch: a batch of 1 breaks BatchNorm
    warmup = round(recipe.warmup_epochs * steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(recipe.epochs * steps, warmup)
    )
    gen = torch.Generator(device).manual_seed(recipe.seed)  # pixel draws, on the device
    choices = torch.Generator().manual_seed(recipe.seed)  # per-image op picks, on the host
    parts = {"model": model, "optimizer": optimizer, "schedule": schedule}
    parts |= {"gen": gen, "choices": choices}
    resumed = checkpoint is not None and checkpoint.exists()
    pos = _load(checkpoint, parts, device) if resumed else _Position()  # type: ignore[arg-type]
    resumed_epoch = pos.epoch if resumed else 0
    for epoch in range(pos.epoch, recipe.epochs + 1):
        model.train()
        start = time.perf_counter()
        if pos.order is None or pos.loss_sum is None or epoch != pos.epoch:
            pos.order = torch.randperm(n, generator=gen, device=device)  # (n,)
            pos.loss_sum, pos.step = torch.zeros((), device=device), 0
        pos.epoch = epoch
        for i in range(pos.step, steps):
            if stop is not None and stop.is_set():  # a Python flag: no device sync
                pos.step, pos.train_seconds = i, pos.train_seconds + time.perf_counter() - start
                if checkpoint is not None:
                    _save(checkpoint, parts, pos)
                raise Preempted(checkpoint, epoch, i)
            idx = pos.order[i * batch : (i + 1) * batch]  # (B,)
            x = data.train.x[idx]  # (B, 3, S, S) uint8
            if policy is not None:
                x = train_augment(x, policy, gen, choices)
            with _autocast(device, recipe.amp and cuda):
                logits = step_model(norm(x))  # (B, classes)
            loss = F.cross_entropy(
                logits.float(), data.train.y[idx], label_smoothing=recipe.label_smoothing
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            schedule.step()
            pos.loss_sum += loss.detach()
        mean_loss = float(pos.loss_sum) / steps  # the epoch's one host sync
        pos.train_seconds += time.perf_counter() - start
        if not math.isfinite(mean_loss):
            raise TrainError("nan_loss", f"training loss became {mean_loss} in epoch {epoch}")
        val = _val_split(data)
        val_pred = predict(model, val, norm, recipe.eval_batch_size, recipe.amp and cuda)
        val_acc, _ = accuracy_and_f1(val_pred, val.y, data.num_classes)
        lr = float(optimizer.param_groups[0]["lr"])
        record = EpochRecord(epoch, mean_loss, val_acc, lr, time.perf_counter() - start)
        pos.history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    # train_seconds spans every run of this training, resumed ones included
    ips = steps * batch * recipe.epochs / max(pos.train_seconds, 1e-9)
    return pos.history, ips, resumed_epoch


def train(
    model_spec: ModelSpec,
    augment_policy: AugmentPolicy | None,
    recipe: Recipe,
    data: Dataset,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    checkpoint: Path | None = None,
    stop: threading.Event | None = None,
) -> TrainResult:
    """Train one network on `data` and measure it; raises `TrainError` on failure.

    Validation accuracy (the search's objective) comes from the validation split; when
    the config asks for none (`data.val_ratio: 0`) the test split stands in for it.
    Preemption: when `stop` is set, the state goes to `checkpoint` and `Preempted` is
    raised; a later call with the same `checkpoint` resumes at that step, exactly.
    """
    started = time.perf_counter()
    device = resolve_device(recipe.device)
    torch.manual_seed(recipe.seed)
    data = data.to(device)
    model = _build(model_spec, data, device)
    image_size = data.train.x.shape[-1]
    params, macs = count_params(model), count_macs(model, image_size)
    try:
        history, ips, resumed_epoch = _train_epochs(
            model, augment_policy, recipe, data, device, on_epoch, checkpoint, stop
        )
        amp = recipe.amp and device.type == "cuda"
        norm = _Normalize(data, device, recipe.channels_last)
        scores = {}
        for name, split in (("val", _val_split(data)), ("test", data.test)):
            pred = predict(model, split, norm, recipe.eval_batch_size, amp)
            scores[name] = accuracy_and_f1(pred, split.y, data.num_classes)
        latency = (
            measure_latency(model, image_size, device, amp)
            if recipe.measure_latency
            else (float("nan"), float("nan"))
        )
    except torch.OutOfMemoryError as exc:
        raise TrainError("out_of_memory", str(exc).splitlines()[0]) from None
    return TrainResult(
        val_accuracy=scores["val"][0],
        test_accuracy=scores["test"][0],
        val_f1=scores["val"][1],
        test_f1=scores["test"][1],
        params=params,
        macs=macs,
        latency_ms_b1=latency[0],
        latency_ms_b256=latency[1],
        train_images_per_s=ips,
        seconds=time.perf_counter() - started,
        device=str(device),
        history=tuple(history),
        resumed_epoch=resumed_epoch,
    )
