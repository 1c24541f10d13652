"""The ML stage's exceptions, torch-free: what the CLI and the search map to exit codes
and trial states without importing torch.

Each is raised by one module of ``job.ml`` and re-exported there (``job.ml.data.DataError``
is this ``DataError``): bad input (``DataError``, ``ModelError``: exit 2), a trial that
cannot finish (``TrainError``), a stop on request (``Preempted``), a checkpoint that
cannot be resumed from (``CheckpointError``), a failed ONNX export step (``ExportError``).

Imports nothing from torch or numpy; from job only the error kinds the CLI maps to exit
codes (job.errors: `BadInput` exit 2, `Failure` exit 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from job.errors import BadInput, Failure

FailReason = Literal["nan_loss", "out_of_memory", "invalid_network"]


class DataError(BadInput, ValueError):
    """Missing, empty or corrupt data; the message names the path or key (CLI: exit 2).
    Raised by job.ml.data and job.ml.sources."""


class ModelError(BadInput, ValueError):
    """A model YAML or spec that cannot become a network; the message names the layer.
    Raised by job.ml.model."""


class Preempted(Exception):  # noqa: N818 — a request honoured, not an error
    """Stopped on request; the state is in `path` (None: unsaved), resumable at epoch, step."""

    def __init__(self, path: Path | None, epoch: int, step: int) -> None:
        super().__init__(f"preempted at epoch {epoch}, step {step}")
        self.path, self.epoch, self.step = path, epoch, step


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (damaged, from another network or
    version, or holding anything but tensors and plain values); the message is one line
    naming the file. `train` starts such a trial over instead."""


class TrainError(Failure, RuntimeError):
    """A trial that cannot finish; `reason` is what the search layer records."""

    prefix = "training failed: "

    def __init__(self, reason: FailReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: FailReason = reason
        self.message = message  # without the reason: for a message naming a file instead


class ExportError(ValueError):
    """An export step that failed; the message is one line naming the step and file.
    Raised by job.ml.onnx."""
