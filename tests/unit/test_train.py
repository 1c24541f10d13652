"""job/ml/train.py: Optuna-free training that learns, measures, fails cleanly, never syncs
per step."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import job.ml.model
import job.ml.train
from job.config import AugmentConfig
from job.ml.checkpoint import EpochRecord
from job.ml.data import Dataset, Split
from job.ml.model import LayerSpec, ModelSpec, build_model, count_params
from job.ml.train import Preempted, Trainer, TrainError, accuracy_and_f1, train
from tests.support.training import FAST, OFF, TINY, StopAfter


def test_train_improves_over_chance_and_measures(digits16: Dataset) -> None:
    seen = []
    policy = AugmentConfig(n_select=1, level=3, flip_p=0.0)
    result = train(TINY, policy, FAST.model_copy(update=dict(epochs=6)), digits16, seen.append)
    assert result.test_accuracy > 0.5  # chance is 0.1
    assert result.val_accuracy > 0.5 and 0.0 < result.test_f1 <= 1.0
    assert [r.epoch for r in seen] == [1, 2, 3, 4, 5, 6] and result.history == tuple(seen)
    assert result.params == count_params(build_model(TINY))
    assert result.macs > result.params
    assert result.train_images_per_s > 0 and result.seconds > 0 and result.device == "cpu"
    assert seen[-1].lr == pytest.approx(0.0, abs=1e-9)  # cosine annealed to zero


def test_same_seed_same_result(digits16: Dataset) -> None:
    recipe = FAST.model_copy(update=dict(epochs=1, measure_latency=False))
    a = train(TINY, AugmentConfig(), recipe, digits16)
    b = train(TINY, AugmentConfig(), recipe, digits16)
    assert a.history[0].train_loss == b.history[0].train_loss
    assert a.test_accuracy == b.test_accuracy


class _Sealed(Split):
    """A test split that says so when it is read: moving it keeps it sealed."""

    def to(self, device: torch.device | str) -> Split:
        return _Sealed(self.x.to(device), self.y.to(device))


def test_the_test_split_is_evaluated_only_when_asked(
    digits16: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`test=False` (a search trial, train.test_each_trial off) never reads the test split
    and has no test figures; `test=True` (the default: a retrain, `train`) has them, and
    either way the validation result is the same."""
    read: list[bool] = []  # per split predicted on: was it the test split?
    predict = job.ml.train.predict

    def spy(model, split, *args):  # type: ignore[no-untyped-def]
        read.append(isinstance(split, _Sealed))
        return predict(model, split, *args)

    monkeypatch.setattr(job.ml.train, "predict", spy)
    data = replace(digits16, test=_Sealed(digits16.test.x, digits16.test.y))
    recipe = FAST.model_copy(update=dict(epochs=2, measure_latency=False))
    blind = train(TINY, OFF, recipe, data, test=False)
    assert blind.test_accuracy is None and blind.test_f1 is None
    assert len(read) == 3 and not any(read)  # validation: after each epoch, and at the end
    read.clear()
    seen = train(TINY, OFF, recipe, data)
    assert read == [False, False, False, True] and seen.test_accuracy is not None
    assert 0.0 < seen.test_accuracy <= 1.0 and seen.test_f1 is not None
    assert (seen.val_accuracy, seen.val_f1) == (blind.val_accuracy, blind.val_f1)


def test_nan_loss_is_a_typed_error(digits16: Dataset) -> None:
    recipe = FAST.model_copy(update=dict(epochs=2, lr=1e30, momentum=0.0, measure_latency=False))
    with pytest.raises(TrainError) as info:
        train(TINY, AugmentConfig(enabled=False), recipe, digits16)
    assert info.value.reason == "nan_loss"


def test_wrong_class_count_is_invalid_network(digits16: Dataset) -> None:
    head = LayerSpec(1, "FixedConv", (7, 1, 1, None, 1, None))
    spec = replace(TINY, backbone=(*TINY.backbone[:-1], head))
    with pytest.raises(TrainError) as info:
        train(spec, OFF, FAST, digits16)
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
        recipe = FAST.model_copy(update=dict(epochs=2, batch_size=batch, measure_latency=False))
        train(TINY, AugmentConfig(), recipe, digits16)
        monkeypatch.undo()
        counts.append(calls)
    assert counts[0] == counts[1]


def test_channels_last_as_configured_on_cpu_too(
    digits16: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """oneDNN trains these networks 1.3-2x faster channels_last, so CPU honours the flag."""
    built: list[torch.nn.Module] = []
    build = job.ml.train.build_model
    monkeypatch.setattr(
        job.ml.train, "build_model", lambda *a: built.append(build(*a)) or built[-1]
    )
    for flag in (True, False):
        recipe = FAST.model_copy(update=dict(epochs=1, channels_last=flag, measure_latency=False))
        assert train(TINY, AugmentConfig(), recipe, digits16).device == "cpu"
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


# 15 steps an epoch, all one chunk (K = 170 for 32 16x16 images): a boundary, mid-chunk
@pytest.mark.parametrize("stop_after", [15, 19])
def test_preempt_and_resume_is_exact(digits16: Dataset, tmp_path, stop_after: int) -> None:
    recipe = FAST.model_copy(update=dict(epochs=3, measure_latency=False))
    policy = AugmentConfig(level=None)
    full = train(TINY, policy, recipe, digits16)
    checkpoint = tmp_path / "trial.pt"
    with pytest.raises(Preempted) as info:
        train(TINY, policy, recipe, digits16, checkpoint=checkpoint, stop=StopAfter(stop_after))
    assert (info.value.epoch, info.value.step) == (2, stop_after - 15) and checkpoint.exists()
    before: list[tuple[EpochRecord, ...]] = []
    after: list[EpochRecord] = []
    resumed = train(
        TINY, policy, recipe, digits16, checkpoint=checkpoint,
        on_resume=before.append, on_epoch=after.append,
    )  # fmt: skip
    assert resumed.resumed_epoch == 2
    assert [r.train_loss for r in resumed.history] == [r.train_loss for r in full.history]
    assert resumed.test_accuracy == full.test_accuracy
    # the learning curve's callbacks: the epoch trained before the stop once, then the new
    assert [[r.epoch for r in h] for h in before] == [[1]]
    assert before[0][0].val_accuracy == full.history[0].val_accuracy
    assert [r.epoch for r in after] == [2, 3]


def _train_chunked(
    data: Dataset, out: Path, stop_after: int | None = None, k_before_stop: int = 4
) -> list[float]:
    """2 epochs in chunks of K=4 steps (15 steps an epoch: 4+4+4+3), weights to ``out``;
    with ``stop_after``: preempted after that many steps (in chunks of ``k_before_stop``),
    then resumed. The epochs' losses."""
    recipe = FAST.model_copy(update=dict(epochs=2, measure_latency=False))
    policy, checkpoint = AugmentConfig(level=None), out.with_suffix(".ckpt")
    with pytest.MonkeyPatch.context() as patch:
        if stop_after is not None:
            patch.setattr(job.ml.train, "chunk_steps", lambda batch, shape: k_before_stop)
            with pytest.raises(Preempted):
                stop = StopAfter(stop_after)
                train(TINY, policy, recipe, data, checkpoint=checkpoint, stop=stop)
        patch.setattr(job.ml.train, "chunk_steps", lambda batch, shape: 4)
        result = train(TINY, policy, recipe, data, checkpoint=checkpoint, weights=out)
    return [r.train_loss for r in result.history]


@pytest.fixture(scope="module")
def uninterrupted(
    digits16: Dataset, tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[float], dict[str, torch.Tensor]]:
    out = tmp_path_factory.mktemp("chunked") / "weights.pt"
    return _train_chunked(digits16, out), torch.load(out)


# epoch 1: mid the 2nd chunk; epoch 2: at a chunk's start, mid the ragged last chunk
@pytest.mark.parametrize("stop_after", [6, 15 + 8, 15 + 13])
def test_a_stop_mid_chunk_resumes_bit_for_bit(
    digits16: Dataset,
    tmp_path: Path,
    uninterrupted: tuple[list[float], dict[str, torch.Tensor]],
    stop_after: int,
) -> None:
    losses = _train_chunked(digits16, tmp_path / "weights.pt", stop_after)
    full_losses, full_weights = uninterrupted
    assert losses == full_losses
    weights = torch.load(tmp_path / "weights.pt")
    assert weights.keys() == full_weights.keys()
    assert all(torch.equal(weights[k], full_weights[k]) for k in weights)


def test_a_checkpoint_from_before_chunks_still_loads(digits16: Dataset, tmp_path: Path) -> None:
    """K=1 draws as the code before chunks did (one call a batch, the generators saved as
    at the step): such a checkpoint resumes under K=4 and trains on; validly, though its
    augmentation, hence its losses, differ from an uninterrupted run's."""
    losses = _train_chunked(digits16, tmp_path / "weights.pt", 15 + 6, k_before_stop=1)
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)


def test_chunks_serve_each_batch_its_own_images(
    digits16: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """K=4 over 15 steps: chunks 4, 4, 4, 3; batch i holds images order[32i : 32i + 32],
    augmented (here: all flipped), with their labels."""
    monkeypatch.setattr(job.ml.train, "chunk_steps", lambda batch, shape: 4)
    flip = AugmentConfig(n_select=0, flip_p=1.0, cutout_p=0.0)
    for policy, expected in ((flip, lambda x: x.flip(-1)), (OFF, lambda x: x)):
        trainer = Trainer(build_model(TINY), policy, FAST, digits16, torch.device("cpu"))
        trainer.start_epoch(1)
        assert trainer.pos.order is not None and trainer.steps == 15
        chunks = []
        for i in range(trainer.steps):
            x, y = trainer.batch(i)
            idx = trainer.pos.order[i * 32 : (i + 1) * 32]
            assert torch.equal(x, trainer.norm(expected(digits16.train.x[idx])))
            assert torch.equal(y, digits16.train.y[idx])
            assert trainer._chunk is not None
            chunks.append((trainer._chunk.first, trainer._chunk.steps))
        assert sorted(set(chunks)) == [(0, 4), (4, 4), (8, 4), (12, 3)]


def test_a_chunk_is_at_most_the_rest_of_the_epoch(digits16: Dataset) -> None:
    """K by the working set (job.ml.augment.chunk_steps, tested in test_augment.py): 170 steps
    of 32 16x16 images, capped at the epoch's 15 steps."""
    trainer = Trainer(build_model(TINY), AugmentConfig(), FAST, digits16, torch.device("cpu"))
    assert trainer.chunk_steps == 170
    trainer.start_epoch(1)
    trainer.batch(0)
    assert trainer._chunk is not None and (trainer._chunk.first, trainer._chunk.steps) == (0, 15)


def test_a_network_is_measured_once_on_meta_and_built_once(
    digits16: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One dry run per trial, on the meta device (nothing allocated), and one real build;
    none at all when the caller (the search) passes the measure it already has."""
    dry_devices: list[str] = []
    builds: list[int] = []
    dry_run, build = job.ml.model._dry_run, job.ml.train.build_model

    def counting_dry_run(model, size, channels):  # type: ignore[no-untyped-def]
        dry_devices.append(next(model.parameters()).device.type)
        return dry_run(model, size, channels)

    monkeypatch.setattr(job.ml.model, "_dry_run", counting_dry_run)
    monkeypatch.setattr(job.ml.train, "build_model", lambda *a: builds.append(1) or build(*a))
    recipe = FAST.model_copy(update=dict(epochs=1, measure_latency=False))
    result = train(TINY, OFF, recipe, digits16)
    assert dry_devices == ["meta"] and builds == [1]
    measured = job.ml.train.check_fit(TINY, digits16)
    assert (measured.params, measured.macs) == (result.params, result.macs)
    assert measured.params == count_params(build_model(TINY))
    dry_devices.clear()
    train(TINY, OFF, recipe, digits16, measured=measured)
    assert dry_devices == []


def test_trainer_step_by_step_equals_train(digits16: Dataset) -> None:
    """The public step and epoch are what train() runs: the same losses, bit for bit."""
    recipe = FAST.model_copy(update=dict(epochs=2, measure_latency=False))
    policy = AugmentConfig(level=None)
    full = train(TINY, policy, recipe, digits16)
    torch.manual_seed(recipe.seed)
    trainer = Trainer(build_model(TINY), policy, recipe, digits16, torch.device("cpu"))
    losses = []
    for epoch in (1, 2):
        trainer.model.train()
        trainer.start_epoch(epoch)
        for i in range(trainer.steps):
            trainer.step(*trainer.batch(i))
        assert trainer.pos.loss_sum is not None
        losses.append(float(trainer.pos.loss_sum) / trainer.steps)
        trainer.evaluate(digits16.val)  # as run_epoch does: eval mode, no RNG drawn
    assert losses == [r.train_loss for r in full.history]


# --- what fails before training, and what fails during it ---------------------------------


def _with(*rows: LayerSpec, channels: int = 3) -> ModelSpec:
    head = (LayerSpec(1, "GlobalAvgPool", ()), LayerSpec(1, "FixedConv", (10, 1, 1)))
    return ModelSpec(channels, 1.0, 1.0, (*rows, *head))


def test_networks_over_the_size_caps_are_rejected_from_a_meta_count(digits16: Dataset) -> None:
    import time

    wide = _with(LayerSpec(1, "Conv", (8192, 3)), LayerSpec(1, "Conv", (8192, 3)))
    start = time.perf_counter()
    with pytest.raises(TrainError, match=r"invalid_network: 604,315,668 params, over the cap"):
        job.ml.train.check_fit(wide, digits16)  # 2.4 GB of float32 weights, were they allocated
    assert time.perf_counter() - start < 2.0
    assert job.ml.model.MAX_PARAMS < 604_315_668


def test_the_macs_cap_and_the_input_channels_are_checked(
    digits16: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job.ml.train, "MAX_MACS", 1000)
    with pytest.raises(TrainError, match=r"MACs, over the cap of 1,000"):
        job.ml.train.check_fit(TINY, digits16)
    with pytest.raises(TrainError, match="input_channel is 1, the data has 3 channels"):
        job.ml.train.check_fit(replace(TINY, input_channel=1), digits16)


def test_a_cpu_allocator_failure_is_out_of_memory(
    digits16: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 52428800000 bytes. Error code 12"
        )

    monkeypatch.setattr(Trainer, "fit", fit)
    recipe = FAST.model_copy(update=dict(epochs=1, measure_latency=False))
    with pytest.raises(TrainError) as info:
        train(TINY, OFF, recipe, digits16)
    assert info.value.reason == "out_of_memory" and "can't allocate" in str(info.value)

    def other(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("some other failure")

    monkeypatch.setattr(Trainer, "fit", other)
    with pytest.raises(RuntimeError, match="some other failure"):  # not a TrainError
        train(TINY, OFF, recipe, digits16)


def test_device_and_batch_size_errors_name_the_key(digits16: Dataset) -> None:
    from job.config import ConfigError

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"^train\.device: 'cuda'"):
            job.ml.train.resolve_device("cuda")
        with pytest.raises(ConfigError, match=r"^--device: 'cuda'"):
            job.ml.train.resolve_device("cuda", "--device")
    n = len(digits16.train)
    with pytest.raises(ConfigError, match=rf"train\.batch_size: {n + 1} is more than the {n}"):
        job.ml.train.check_batch(FAST.model_copy(update={"batch_size": n + 1}), digits16)
    job.ml.train.check_batch(FAST.model_copy(update={"batch_size": n}), digits16)
