"""job/train.py: Optuna-free training that learns, measures, fails cleanly, never syncs per step."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
import torch

import job.train
from job.augment import AugmentPolicy
from job.data import Dataset
from job.model import LayerSpec, ModelSpec, build_model, count_params
from job.train import Preempted, Recipe, TrainError, accuracy_and_f1, train

TINY = ModelSpec(
    input_channel=3,
    depth_multiple=1.0,
    width_multiple=1.0,
    backbone=(
        LayerSpec(1, "Conv", (16, 3, 1, None, 1, "ReLU")),
        LayerSpec(1, "InvertedResidualv2", (24, 2, 2)),
        LayerSpec(1, "Conv", (64, 1, 1)),
        LayerSpec(1, "GlobalAvgPool", ()),
        LayerSpec(1, "FixedConv", (10, 1, 1, None, 1, None)),
    ),
)
FAST = Recipe(epochs=3, batch_size=32, lr=0.05, device="cpu", measure_latency=True, seed=0)


@pytest.mark.slow
def test_train_improves_over_chance_and_measures(digits16: Dataset) -> None:
    seen = []
    policy = AugmentPolicy(n_select=1, level=3, flip_p=0.0)
    result = train(TINY, policy, replace(FAST, epochs=6), digits16, seen.append)
    assert result.test_accuracy > 0.5  # chance is 0.1
    assert result.val_accuracy > 0.5 and 0.0 < result.test_f1 <= 1.0
    assert [r.epoch for r in seen] == [1, 2, 3, 4, 5, 6] and result.history == tuple(seen)
    assert result.params == count_params(build_model(TINY))
    assert result.macs > result.params
    assert result.latency_ms_b1 > 0 and result.latency_ms_b256 > 0
    assert result.train_images_per_s > 0 and result.seconds > 0 and result.device == "cpu"
    assert seen[-1].lr == pytest.approx(0.0, abs=1e-9)  # cosine annealed to zero


def test_same_seed_same_result(digits16: Dataset) -> None:
    recipe = replace(FAST, epochs=1, measure_latency=False)
    a = train(TINY, AugmentPolicy(), recipe, digits16)
    b = train(TINY, AugmentPolicy(), recipe, digits16)
    assert a.history[0].train_loss == b.history[0].train_loss
    assert a.test_accuracy == b.test_accuracy


def test_nan_loss_is_a_typed_error(digits16: Dataset) -> None:
    recipe = replace(FAST, epochs=2, lr=1e30, momentum=0.0, measure_latency=False)
    with pytest.raises(TrainError) as info:
        train(TINY, None, recipe, digits16)
    assert info.value.reason == "nan_loss"


def test_wrong_class_count_is_invalid_network(digits16: Dataset) -> None:
    head = LayerSpec(1, "FixedConv", (7, 1, 1, None, 1, None))
    spec = replace(TINY, backbone=(*TINY.backbone[:-1], head))
    with pytest.raises(TrainError) as info:
        train(spec, None, FAST, digits16)
    assert info.value.reason == "invalid_network" and "7 classes" in str(info.value)


def test_no_host_sync_per_step(digits16: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    """Host syncs (item/float/bool/tolist) per epoch do not grow with the step count."""
    counts: list[int] = []
    for batch in (16, 128):  # 30 vs 3 steps per epoch
        calls = 0
        originals = {
            n: getattr(torch.Tensor, n) for n in ("item", "__float__", "__bool__", "tolist")
        }

        def counting(original):  # type: ignore[no-untyped-def]
            def wrapper(self, *args, **kwargs):  # type: ignore[no-untyped-def]
                nonlocal calls
                calls += 1
                return original(self, *args, **kwargs)

            return wrapper

        for name in originals:
            monkeypatch.setattr(torch.Tensor, name, counting(originals[name]))
        recipe = replace(FAST, epochs=2, batch_size=batch, measure_latency=False)
        train(TINY, AugmentPolicy(), recipe, digits16)
        monkeypatch.undo()
        counts.append(calls)
    assert counts[0] == counts[1]


def test_channels_last_as_configured_on_cpu_too(
    digits16: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """oneDNN trains these networks 1.3-2x faster channels_last, so CPU honours the flag."""
    built: list[torch.nn.Module] = []
    build = job.train._build
    monkeypatch.setattr(job.train, "_build", lambda *a: built.append(build(*a)) or built[-1])
    for flag in (True, False):
        recipe = replace(FAST, epochs=1, channels_last=flag, measure_latency=False)
        assert train(TINY, AugmentPolicy(), recipe, digits16).device == "cpu"
        weight = next(built[-1].parameters())  # the first conv's, (16, 3, 3, 3)
        assert weight.shape == (16, 3, 3, 3)
        assert weight.is_contiguous(memory_format=torch.channels_last) == flag
        assert weight.is_contiguous() == (not flag)


def test_accuracy_and_macro_f1() -> None:
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 0, 1, 0, 2, 1])
    acc, f1 = accuracy_and_f1(pred, target, 3)
    assert acc == pytest.approx(4 / 6)
    # per class F1: 0 → 0.8, 1 → 0.5, 2 → 2/3
    assert f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


class _StopAfter(threading.Event):
    """A stop flag that turns itself on after `n` looks (one look per training step)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.looks = n

    def is_set(self) -> bool:
        self.looks -= 1
        return self.looks < 0


@pytest.mark.parametrize("stop_after", [15, 19])  # 15 steps an epoch: a boundary, mid-epoch
def test_preempt_and_resume_is_exact(digits16: Dataset, tmp_path, stop_after: int) -> None:
    recipe = replace(FAST, epochs=3, measure_latency=False)
    policy = AugmentPolicy(level=None)
    full = train(TINY, policy, recipe, digits16)
    checkpoint = tmp_path / "trial.pt"
    with pytest.raises(Preempted) as info:
        train(TINY, policy, recipe, digits16, checkpoint=checkpoint, stop=_StopAfter(stop_after))
    assert (info.value.epoch, info.value.step) == (2, stop_after - 15) and checkpoint.exists()
    resumed = train(TINY, policy, recipe, digits16, checkpoint=checkpoint)
    assert resumed.resumed_epoch == 2
    assert [r.train_loss for r in resumed.history] == [r.train_loss for r in full.history]
    assert resumed.test_accuracy == full.test_accuracy
