"""Stage 5 of the data path: train.

`train(model_spec, augment, recipe, data) -> TrainResult` trains one network and
measures it. It knows nothing of Optuna: the search layer (`job.search.space`) maps a trial to
these typed values (the config's own `AugmentConfig` and `TrainConfig`) and the result
back to objective values. `Trainer` is the training step and loop that `train` runs and
`bench/train.py` times: `step()`, `run_epoch()`, `save()` / `load()`. Beside it:
`job.ml.checkpoint` (what a checkpoint holds, read back safely), `job.ml.evaluate`
(accuracy, predictions), `job.ml.latency` (the latency objective, timed before training
by the caller), `job.ml.errors` (`TrainError`, `Preempted`, torch-free).

The hot loop keeps the GPU fed without the host: the data set already lives on the
device as uint8, batches are index gathers, augmentation is batched per image on the
device, and the loss is accumulated on the device and read back once per epoch (the
only host sync of an epoch, which is also where a NaN is noticed). The model runs
channels_last (on CPU too: oneDNN steps 1.3-2x faster), on CUDA in bf16 autocast.

Augmentation takes a chunk of K batches per call (`job.ml.augment.chunk_steps`; the epoch's
last chunk may be shorter), so its fixed ~500 small ops (launches) are paid once per K
steps. A checkpoint holds the augmentation generators as at the start of the chunk its
step lies in: a resumed run augments that chunk again, bit for bit, and goes on exactly.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from job import logs
from job.config import AugmentConfig, ConfigError, TrainConfig
from job.files import write_atomic
from job.ml.augment import Chunk, chunk_steps
from job.ml.checkpoint import (
    CHECKPOINT_FORMAT,
    EpochRecord,
    Position,
    byte_tensor,
    check_checkpoint_dir,
    is_out_of_memory,
    read_checkpoint,
)
from job.ml.data import Dataset, Split
from job.ml.errors import CheckpointError, FailReason, Preempted, TrainError
from job.ml.evaluate import (
    Normalize,
    accuracy_and_f1,
    autocast,
    predict,
    val_split,
)
from job.ml.model import (
    MAX_MACS,
    MAX_PARAMS,
    Measure,
    ModelError,
    ModelSpec,
    build_model,
    measure,
)

__all__ = [  # what callers import from here, some of it defined beside this module
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "EpochRecord",
    "FailReason",
    "Normalize",
    "Position",
    "Preempted",
    "Stage",
    "TrainError",
    "TrainResult",
    "Trainer",
    "accuracy_and_f1",
    "autocast",
    "check_batch",
    "check_checkpoint_dir",
    "check_fit",
    "predict",
    "read_checkpoint",
    "resolve_device",
    "train",
    "val_split",
]

# A stage of the step by name ("forward", "loss", "backward", "optimizer") → a context to
# run it in: none in the product, torch.profiler's named ranges in bench/train.py.
Stage = Callable[[str], AbstractContextManager[Any]]
_no_stage: Stage = lambda name: nullcontext()  # noqa: E731


@dataclass(frozen=True)
class TrainResult:
    val_accuracy: float
    test_accuracy: float | None  # None: the test split was not evaluated (`train(test=False)`)
    val_f1: float
    test_f1: float | None
    params: int
    macs: int
    train_images_per_s: float
    seconds: float
    device: str
    history: tuple[EpochRecord, ...] = field(default=())
    resumed_epoch: int = 0  # > 0: resumed from a checkpoint at this epoch (1-based)
    checkpoint_refused: str | None = None  # why a checkpoint was not resumed (started over)


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """train.device → a torch device; "auto" takes CUDA when there is one. `ConfigError`
    naming `key` (the config key or the flag it came from) when CUDA is asked for and
    there is none: the CLI checks this at start-up, before the first trial."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"{key}: 'cuda' asked for, but no CUDA device is visible (use cpu or auto)"
        )
    return torch.device(name)


def check_batch(recipe: TrainConfig, data: Dataset, key: str = "train.batch_size") -> None:
    """`ConfigError` naming `key` unless a train batch fits the train split: no batch is
    ever smaller than train.batch_size (the ragged last one is dropped; BatchNorm needs
    2+), so one larger than the split could never train. The CLI checks it once the data
    is loaded."""
    n = len(data.train)
    if recipe.batch_size > n:
        raise ConfigError(
            f"{key}: {recipe.batch_size} is more than the {n} images of the "
            f"train split (lower it, or raise data.subset or the data)"
        )


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


def check_fit(spec: ModelSpec, data: Dataset) -> Measure:
    """The spec measured on the meta device (nothing allocated); `TrainError` when it
    cannot run on the data's images, is over a size cap (job.ml.model.MAX_PARAMS, MAX_MACS)
    or does not output one logit per class."""
    channels = int(data.train.x.shape[1])
    if spec.input_channel != channels:
        raise TrainError(
            "invalid_network",
            f"input_channel is {spec.input_channel}, the data has {channels} channels "
            f"(images are prepared as RGB)",
        )
    try:
        found = measure(spec, data.train.x.shape[-1])
    except ModelError as exc:
        raise TrainError("invalid_network", str(exc)) from None
    for what, value, cap in (("params", found.params, MAX_PARAMS), ("MACs", found.macs, MAX_MACS)):
        if value > cap:
            raise TrainError("invalid_network", f"{value:,} {what}, over the cap of {cap:,}")
    if found.outputs != data.num_classes:
        raise TrainError(
            "invalid_network",
            f"the network outputs {found.outputs} classes, the data has {data.num_classes}",
        )
    return found


class Trainer:
    """One network's training: the step, the epoch loop, and the state a checkpoint holds.

    ``step(x, y)`` trains on one normalised batch; ``batch(i)`` makes batch ``i`` of the
    epoch, asked for in order, from the resident uint8 data (its chunk gathered and
    augmented at once, then normalised); ``run_epoch`` does a whole epoch and validates;
    ``save``/``load`` write and read all it takes to go on exactly.
    """

    def __init__(
        self,
        model: nn.Module,
        augment: AugmentConfig,
        recipe: TrainConfig,
        data: Dataset,
        device: torch.device,
    ) -> None:
        self.augment, self.recipe, self.data, self.device = augment, recipe, data, device
        self.amp = recipe.amp and device.type == "cuda"
        self.norm = Normalize(data, device, recipe.channels_last)
        self.model = model.to(device).to(memory_format=self.norm.format)
        self.forward: Callable[[Tensor], Tensor] = (
            torch.compile(self.model) if recipe.compile else self.model
        )
        self.optimizer = torch.optim.SGD(
            _param_groups(self.model, recipe.weight_decay),
            lr=recipe.lr,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov and recipe.momentum > 0,
        )
        n = len(data.train)
        check_batch(recipe, data)
        self.batch_size = recipe.batch_size
        self.steps = n // self.batch_size  # drop the ragged last batch: BatchNorm needs 2+
        total, warmup = recipe.epochs * self.steps, round(recipe.warmup_epochs * self.steps)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(total, warmup))
        self.gen = torch.Generator(device).manual_seed(recipe.seed)  # pixel draws, on device
        self.choices = torch.Generator().manual_seed(recipe.seed)  # op picks, on the host
        self.pos = Position()
        self.chunk_steps = chunk_steps(self.batch_size, data.train.x.shape[1:])  # K
        self._chunk: Chunk | None = None  # the chunk batches are served from

    def step(self, x: Tensor, y: Tensor, stage: Stage = _no_stage) -> None:
        """One optimizer step on ``x`` (B, C, H, W) normalised, ``y`` (B,); the loss is
        added up on the device, never read here."""
        with stage("forward"), autocast(self.device, self.amp):
            logits = self.forward(x)  # (B, classes)
        with stage("loss"):
            smoothing = self.recipe.label_smoothing
            loss = F.cross_entropy(logits.float(), y, label_smoothing=smoothing)
        with stage("optimizer"):
            self.optimizer.zero_grad(set_to_none=True)
        with stage("backward"):
            loss.backward()  # type: ignore[no-untyped-call]
        with stage("optimizer"):
            self.optimizer.step()
            self.schedule.step()
            if self.pos.loss_sum is not None:
                self.pos.loss_sum += loss.detach()

    def batch(self, i: int) -> tuple[Tensor, Tensor]:
        """Batch ``i`` of this epoch, augmented (if enabled) with its chunk, normalised."""
        assert self.pos.order is not None, "start_epoch() first"
        b, chunk = self.batch_size, self._chunk
        if chunk is None or not chunk.holds(i):
            # chunks start at multiples of K, so a resumed run finds the one it stopped in
            first = i - i % self.chunk_steps
            steps = min(self.chunk_steps, self.steps - first)  # the epoch's last: ragged
            idx = self.pos.order[first * b : (first + steps) * b]  # (K*B,)
            chunk = self._chunk = Chunk.augment(
                self.data.train.x[idx], first, steps, self.augment, self.gen, self.choices
            )
        idx = self.pos.order[i * b : (i + 1) * b]  # (B,)
        return self.norm(chunk.batch(i, b)), self.data.train.y[idx]

    def start_epoch(self, epoch: int) -> None:
        """A new permutation and loss sum, unless a checkpoint left this epoch half done."""
        pos = self.pos
        if pos.order is None or pos.loss_sum is None or epoch != pos.epoch:
            pos.order = torch.randperm(len(self.data.train), generator=self.gen, device=self.device)
            pos.loss_sum, pos.step = torch.zeros((), device=self.device), 0
            self._chunk = None  # the last epoch's
        pos.epoch = epoch

    def run_epoch(
        self, epoch: int, stop: threading.Event | None = None, checkpoint: Path | None = None
    ) -> EpochRecord:
        """Train epoch ``epoch`` (1-based) from where it stands, then validate. With ``stop``
        set between steps: save ``checkpoint`` (when given) and raise `Preempted`."""
        self.model.train()
        start = time.perf_counter()
        self.start_epoch(epoch)
        for i in range(self.pos.step, self.steps):
            if stop is not None and stop.is_set():  # a Python flag: no device sync
                self.pos.step = i
                self.pos.train_seconds += time.perf_counter() - start
                if checkpoint is not None:
                    try:
                        self.save(checkpoint)
                    except OSError as exc:  # unsaved: handed back to start over (search)
                        raise Preempted(None, epoch, i) from exc
                raise Preempted(checkpoint, epoch, i)
            self.step(*self.batch(i))
        assert self.pos.loss_sum is not None
        mean_loss = float(self.pos.loss_sum) / self.steps  # the epoch's one host sync
        self.pos.train_seconds += time.perf_counter() - start
        if not math.isfinite(mean_loss):
            raise TrainError("nan_loss", f"training loss became {mean_loss} in epoch {epoch}")
        val_acc, _ = self.evaluate(val_split(self.data))
        lr = float(self.optimizer.param_groups[0]["lr"])
        record = EpochRecord(epoch, mean_loss, val_acc, lr, time.perf_counter() - start)
        self.pos.history.append(record)
        return record

    def fit(
        self,
        on_epoch: Callable[[EpochRecord], None] | None = None,
        stop: threading.Event | None = None,
        checkpoint: Path | None = None,
    ) -> list[EpochRecord]:
        """Every epoch left of the recipe; the records of all of them (resumed ones too)."""
        for epoch in range(self.pos.epoch, self.recipe.epochs + 1):
            record = self.run_epoch(epoch, stop, checkpoint)
            if on_epoch is not None:
                on_epoch(record)
        return self.pos.history

    def evaluate(self, split: Split) -> tuple[float, float]:
        """Accuracy and macro-F1 on ``split``."""
        pred = predict(self.model, split, self.norm, self.recipe.eval_batch_size, self.amp)
        return accuracy_and_f1(pred, split.y, self.data.num_classes)

    @property
    def images_per_s(self) -> float:
        """Train images/s over every run of this training, resumed ones included."""
        images = self.steps * self.batch_size * self.recipe.epochs
        return images / max(self.pos.train_seconds, 1e-9)

    def _parts(self) -> dict[str, Any]:
        names = ("model", "optimizer", "schedule", "gen", "choices")
        return {name: getattr(self, name) for name in names}

    def save(self, path: Path) -> None:
        """Everything the loop needs to go on exactly, written atomically (whole or absent):
        tensors and plain values only, so that `load` reads it with weights_only=True."""
        state: dict[str, Any] = {"format": CHECKPOINT_FORMAT}
        for name, part in self._parts().items():
            state[name] = (
                part.get_state() if isinstance(part, torch.Generator) else part.state_dict()
            )
        if self._chunk is not None and self._chunk.holds(self.pos.step):  # stopped mid-chunk
            state["gen"], state["choices"] = self._chunk.states  # load() then redoes the chunk
        state |= {"torch": torch.get_rng_state(), "position": self.pos.state()}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: torch.save(state, tmp))

    def load(self, path: Path) -> int:
        """Resume from ``path``; returns the epoch it resumes at (1-based). A checkpoint
        from before chunks loads too and goes on validly, though not bit for bit.
        `CheckpointError` (one line naming the file) when it cannot be resumed from: the
        trainer may then be half loaded, so the caller starts over with a new one."""
        state = read_checkpoint(path, self.device)
        try:
            position = Position.of(state["position"])
            self._chunk = None  # batch(pos.step) augments its chunk again from the states
            for name, part in self._parts().items():
                if isinstance(part, torch.Generator):
                    part.set_state(byte_tensor(state[name], name).cpu())
                else:
                    part.load_state_dict(state[name])
            torch.set_rng_state(byte_tensor(state["torch"], "torch").cpu())
        except Exception as exc:  # another network's weights, a wrong type, ...
            if is_out_of_memory(exc):
                raise
            line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise CheckpointError(f"checkpoint {path}: cannot resume from it ({line})") from None
        self.pos = position
        return self.pos.epoch


def train(
    model_spec: ModelSpec,
    augment: AugmentConfig,
    recipe: TrainConfig,
    data: Dataset,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    checkpoint: Path | None = None,
    stop: threading.Event | None = None,
    measured: Measure | None = None,
    weights: Path | None = None,
    on_resume: Callable[[tuple[EpochRecord, ...]], None] | None = None,
    test: bool = True,
) -> TrainResult:
    """Train one network on `data` and measure it; raises `TrainError` on failure.

    Validation accuracy (the search's objective) comes from the validation split; when
    the config asks for none (`data.val_ratio: 0`) the test split stands in for it.
    `measured`: the spec's `check_fit` when the caller has it (the search measured the
    candidate already); the network is then built once, with no dry run.
    Preemption: when `stop` is set, the state goes to `checkpoint` and `Preempted` is
    raised; a later call with the same `checkpoint` resumes at that step, exactly, and
    first hands `on_resume` the epochs it trained before (`on_epoch` sees the new ones).
    `weights`: where the trained network's state dict goes (CPU tensors, written
    atomically), for a model worth keeping (a verification retrain).
    `test`: evaluate the test split too; False (the search's trials, unless
    `train.test_each_trial`) never reads it, and the result's test figures are None.
    """
    started = time.perf_counter()
    device = resolve_device(recipe.device)
    measured = measured or check_fit(model_spec, data)
    torch.manual_seed(recipe.seed)
    data = data.to(device)
    try:
        trainer = Trainer(build_model(model_spec), augment, recipe, data, device)
        resumed, refused = 0, None
        if checkpoint is not None and checkpoint.exists():
            try:
                resumed = trainer.load(checkpoint)
            except CheckpointError as exc:  # damaged or planted: never run, started over
                refused = str(exc)
                logs.event("checkpoint_refused", f"warning: {refused}; starting over", "warning")
                torch.manual_seed(recipe.seed)  # as a fresh run: the same weights, exactly
                trainer = Trainer(build_model(model_spec), augment, recipe, data, device)
        if resumed and on_resume is not None:
            on_resume(tuple(trainer.pos.history))
        history = trainer.fit(on_epoch, stop, checkpoint)
        val_acc, val_f1 = trainer.evaluate(val_split(data))
        test_acc, test_f1 = trainer.evaluate(data.test) if test else (None, None)
        if weights is not None:
            state = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
            weights.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(weights, lambda tmp: torch.save(state, tmp))
    except RuntimeError as exc:  # torch.OutOfMemoryError among them
        if not is_out_of_memory(exc):
            raise
        raise TrainError("out_of_memory", (str(exc).splitlines() or [""])[0]) from None
    return TrainResult(
        val_accuracy=val_acc, test_accuracy=test_acc, val_f1=val_f1, test_f1=test_f1,
        params=measured.params, macs=measured.macs,
        train_images_per_s=trainer.images_per_s, seconds=time.perf_counter() - started,
        device=str(device), history=tuple(history), resumed_epoch=resumed,
        checkpoint_refused=refused,
    )  # fmt: skip
