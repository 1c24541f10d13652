"""Checkpoints on a shared volume: nothing in one can run code, a damaged or planted one
never kills a worker (its trial starts over, saying why), and the folder is checked
before the first trial."""

from __future__ import annotations

import ast
import os
import pickle
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from job.config import load_config
from job.ml.data import Dataset
from job.ml.train import CHECKPOINT_FORMAT, Preempted, TrainResult, read_checkpoint, train
from job.search.worker import Worker
from tests.support.configs import TINY as TINY_SEARCH
from tests.support.proc import ROOT, journal_url
from tests.support.training import FAST, OFF, TINY, StopAfter

RECIPE = FAST.model_copy(update=dict(epochs=2, measure_latency=False))


class Planted:
    """Unpickled, it would open (create) `marker`: what a hostile checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def fresh(digits16: Dataset) -> TrainResult:
    """The run that a refused checkpoint's trial must equal: started over, exactly."""
    return train(TINY, OFF, RECIPE, digits16)


def _same(a: TrainResult, b: TrainResult) -> bool:
    losses = [r.train_loss for r in a.history] == [r.train_loss for r in b.history]
    return losses and a.test_accuracy == b.test_accuracy and a.val_accuracy == b.val_accuracy


def _planted_zip(path: Path, marker: Path) -> None:
    """A checkpoint as torch.save writes one, with code where the weights should be."""
    torch.save({"format": CHECKPOINT_FORMAT, "model": Planted(marker)}, path)


def _planted_pickle(path: Path, marker: Path) -> None:
    """torch's legacy format: a bare pickle, which torch.load reads too."""
    with path.open("wb") as f:
        pickle.dump({"model": Planted(marker)}, f)


# the zip format's refusal names the object (io.open); the bare pickle's names an opcode
@pytest.mark.parametrize(
    ("plant", "named"), [(_planted_zip, "(io.open)"), (_planted_pickle, "")], ids=["zip", "pickle"]
)
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_planted_checkpoint_runs_no_code_and_the_trial_starts_over(
    digits16: Dataset, fresh: TrainResult, tmp_path: Path, plant: object, named: str
) -> None:
    marker, checkpoint = tmp_path / "marker", tmp_path / "trial.pt"
    assert callable(plant)
    plant(checkpoint, marker)
    result = train(TINY, OFF, RECIPE, digits16, checkpoint=checkpoint)
    assert not marker.exists(), "loading the checkpoint ran its code"
    assert result.resumed_epoch == 0 and _same(result, fresh)
    refused = result.checkpoint_refused
    assert refused is not None and str(checkpoint) in refused and "\n" not in refused
    assert f"plain values{' ' + named if named else ''}: refused unread" in refused


def _preempted_checkpoint(data: Dataset, path: Path) -> None:
    with pytest.raises(Preempted):
        train(TINY, OFF, RECIPE, data, checkpoint=path, stop=StopAfter(20))
    assert read_checkpoint(path)["position"]["epoch"] == 2  # a real one, readable as saved


def test_a_truncated_or_foreign_checkpoint_starts_over(
    digits16: Dataset, fresh: TrainResult, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "trial.pt"
    _preempted_checkpoint(digits16, checkpoint)
    whole = checkpoint.read_bytes()
    checkpoint.write_bytes(whole[: len(whole) // 2])  # a torn copy
    torn = train(TINY, OFF, RECIPE, digits16, checkpoint=checkpoint)
    assert torn.resumed_epoch == 0 and _same(torn, fresh)
    assert torn.checkpoint_refused is not None
    assert "not a readable checkpoint" in torn.checkpoint_refused
    # whole, but another layout (an older version's) or another network's weights
    checkpoint.write_bytes(whole)
    saved = read_checkpoint(checkpoint)
    torch.save({k: v for k, v in saved.items() if k != "format"}, checkpoint)
    old = train(TINY, OFF, RECIPE, digits16, checkpoint=checkpoint)
    assert _same(old, fresh) and "not a checkpoint of this version" in str(old.checkpoint_refused)
    saved["model"] = {k: v[:1] if v.ndim else v for k, v in saved["model"].items()}  # shapes
    torch.save(saved, checkpoint)
    other = train(TINY, OFF, RECIPE, digits16, checkpoint=checkpoint)
    assert _same(other, fresh) and "cannot resume from it" in str(other.checkpoint_refused)


def test_a_whole_checkpoint_still_resumes(digits16: Dataset, tmp_path: Path) -> None:
    """The guard refuses only what is wrong: a checkpoint this version saved resumes."""
    checkpoint = tmp_path / "trial.pt"
    _preempted_checkpoint(digits16, checkpoint)
    resumed = train(TINY, OFF, RECIPE, digits16, checkpoint=checkpoint)
    assert resumed.resumed_epoch == 2 and resumed.checkpoint_refused is None


def test_a_worker_refuses_a_planted_checkpoint_and_goes_on(tmp_path: Path) -> None:
    """The worker of a shared volume: trial 0's checkpoint path holds a planted file. The
    trial runs from scratch, says why in its user attrs, and the worker finishes the
    budget; nothing ran."""
    (tmp_path / "tiny.yaml").write_text(TINY_SEARCH.replace("budget: 4", "budget: 2"))
    config = load_config(tmp_path / "tiny.yaml")
    folder, marker = tmp_path / "checkpoints", tmp_path / "marker"
    folder.mkdir()
    url = journal_url(tmp_path)
    worker = Worker(config, url, log=lambda line: None, checkpoint_dir=folder)
    _planted_zip(folder / f"{config.study.name}-trial-0.pt", marker)
    assert worker.run() == 2
    trials = worker.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert "refused unread" in trials[0].user_attrs["checkpoint_refused"]
    assert "checkpoint_refused" not in trials[1].user_attrs
    assert not marker.exists()
    assert not list(folder.iterdir())  # the result is in: the planted file went with it


def test_every_torch_load_in_the_product_reads_weights_only() -> None:
    """`torch.load` unpickles: anywhere in job/ or bench/ it must refuse objects."""
    calls = 0
    for file in [*(ROOT / "job").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]:
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr != "load" or ast.unparse(node.func.value) != "torch":
                continue
            calls += 1
            flags = {k.arg: ast.unparse(k.value) for k in node.keywords}
            assert flags.get("weights_only") == "True", f"{file}:{node.lineno}"
    assert calls >= 2  # train.py's resume, export.py's weights


def test_a_fifo_or_device_at_the_checkpoint_path_is_never_read(
    digits16: Dataset, fresh: TrainResult, tmp_path: Path
) -> None:
    """Opening a FIFO blocks until a writer comes, and /dev/zero never ends: a planted one
    would hang the worker (its heartbeat alive, so never failed as stale)."""
    fifo = tmp_path / "trial.pt"
    os.mkfifo(fifo)
    device = tmp_path / "zero.pt"
    device.symlink_to("/dev/zero")
    for checkpoint in (fifo, device):
        result = train(TINY, OFF, RECIPE, digits16, checkpoint=checkpoint)
        assert _same(result, fresh)
        assert result.checkpoint_refused == f"checkpoint {checkpoint}: not a regular file"
