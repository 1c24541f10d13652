"""Stage 5 of the data path, train — its checkpoints: where a stopped run stands.

A checkpoint holds tensors and plain values only, read back with
`torch.load(weights_only=True)`: nothing in a file planted on the shared checkpoint
volume can run code. `Position` is where the loop stands besides the weights and random
generators; `read_checkpoint` loads and checks a file (`CheckpointError`, one line naming
it, for anything else); `check_checkpoint_dir` finds out at start-up whether checkpoints
can be written at all. `job.ml.train.Trainer.save` / `load` write and resume them.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from job.config import ConfigError
from job.ml.errors import CheckpointError


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of a run's history; a checkpoint's `Position` keeps them all."""

    epoch: int  # 1-based
    train_loss: float
    val_accuracy: float
    lr: float
    seconds: float


def check_checkpoint_dir(path: Path, key: str = "study.checkpoint_dir") -> None:
    """`ConfigError` naming `key` and `path` unless a checkpoint could be written there now:
    tried for real (a probe made and removed at once), since permission bits do not tell
    (root passes them; /proc, read-only or full volumes refuse anyway). The CLI checks it
    before the first trial: a checkpoint is only written at preemption, too late to find
    out. Nothing is left behind."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        within = f" (making {path})" if probe != path else ""
        raise ConfigError(f"{key}: {probe} is not a folder{within}")
    try:
        if probe == path:  # a checkpoint file goes in it
            handle, name = tempfile.mkstemp(prefix=".sms-probe-", dir=probe)
            os.close(handle)
            os.unlink(name)
        else:  # the folder (and any between) is made at the first checkpoint
            os.rmdir(tempfile.mkdtemp(prefix=".sms-probe-", dir=probe))
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        where = f"{probe}: " if probe != path else ""
        raise ConfigError(f"{key}: cannot write checkpoints in {path} ({where}{why})") from None


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA OOM, or the CPU allocator's "can't allocate memory" RuntimeError."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text
    )


@dataclass
class Position:
    """Where the loop stands: what a checkpoint holds besides the weights and RNGs."""

    epoch: int = 1
    step: int = 0
    order: Tensor | None = None  # this epoch's permutation of the train set
    loss_sum: Tensor | None = None
    train_seconds: float = 0.0
    history: list[EpochRecord] = field(default_factory=list)

    def state(self) -> dict[str, Any]:
        """Tensors and plain values only: what `torch.load(weights_only=True)` reads."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "order": self.order,
            "loss_sum": self.loss_sum,
            "train_seconds": self.train_seconds,
            "history": [
                [r.epoch, r.train_loss, r.val_accuracy, r.lr, r.seconds] for r in self.history
            ],
        }

    @classmethod
    def of(cls, state: object) -> Position:
        """Back from `state()`; `CheckpointError` for anything of another shape."""
        if not isinstance(state, dict):
            raise CheckpointError(f"position is a {type(state).__name__}, not a dict")
        epoch, step, order, loss_sum = (
            state.get(k) for k in ("epoch", "step", "order", "loss_sum")
        )
        seconds, history = state.get("train_seconds"), state.get("history")
        if not (
            type(epoch) is int
            and type(step) is int
            and (order is None or isinstance(order, Tensor))
            and (loss_sum is None or isinstance(loss_sum, Tensor))
            and type(seconds) is float
            and isinstance(history, list)
            and all(_is_record(r) for r in history)
        ):
            raise CheckpointError("position: not the fields this version writes")
        records = [EpochRecord(r[0], r[1], r[2], r[3], r[4]) for r in history]
        return cls(epoch, step, order, loss_sum, seconds, records)


def _is_record(value: object) -> bool:
    """An EpochRecord as `Position.state` writes it: [epoch, loss, accuracy, lr, seconds]."""
    return (
        isinstance(value, list)
        and len(value) == 5
        and type(value[0]) is int
        and all(type(v) is float for v in value[1:])
    )


# A checkpoint holds tensors and plain values only (no pickled objects: `torch.load` with
# weights_only=True reads it and refuses anything else, so a file planted on the shared
# checkpoint volume cannot run code); this tag says which layout.
CHECKPOINT_FORMAT = "sms-checkpoint-2"
_CHECKPOINT_KEYS = ("model", "optimizer", "schedule", "gen", "choices", "torch", "position")


def _why_unreadable(exc: BaseException) -> str:
    """One short line for what `torch.load` raised."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError):
        found = re.search(r"\bGLOBAL ([\w.]+)", text)  # the first object it names
        named = f" ({found[1]})" if found else ""
        return f"it holds objects other than tensors and plain values{named}: refused unread"
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    if isinstance(exc, OSError) and exc.strerror:
        line = exc.strerror
    line = line[:120] + ("…" if len(line) > 120 else "")
    return f"not a readable checkpoint ({type(exc).__name__}{': ' + line if line else ''})"


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The state `Trainer.save` wrote to `path`, loaded with `weights_only=True` (tensors
    and plain containers only: nothing in the file can run code) and checked for shape;
    `CheckpointError`, one line naming the file, for anything else."""
    if not path.is_file():  # a FIFO or a device planted there would block or never end
        raise CheckpointError(f"checkpoint {path}: not a regular file")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a damaged file raises almost any type
        if is_out_of_memory(exc):
            raise
        raise CheckpointError(f"checkpoint {path}: {_why_unreadable(exc)}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path}: not a checkpoint of this version (no format {CHECKPOINT_FORMAT!r})"
        )
    missing = [key for key in _CHECKPOINT_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path}: no {', '.join(missing)}")
    return state


def byte_tensor(value: object, name: str) -> Tensor:
    """A generator's state as saved: a uint8 tensor."""
    if not isinstance(value, Tensor) or value.dtype != torch.uint8:
        raise CheckpointError(f"{name}: not a generator state (a uint8 tensor)")
    return value
