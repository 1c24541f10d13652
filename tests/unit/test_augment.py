"""job/ml/augment.py: the policy, per-image RandAugment draws, flip and Cutout, batched."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from job.config import AugmentConfig
from job.ml.augment import (
    DEFAULT_OPS,
    OPS,
    Chunk,
    apply_op,
    chunk_steps,
    rand_augment,
    sample_choices,
    train_augment,
)
from tests.support.data import DEVICES, images

N_LEVEL = 31


def test_policy_validates():
    assert AugmentConfig().ops == DEFAULT_OPS and len(DEFAULT_OPS) == 14
    with pytest.raises(ValueError, match="Blur"):
        AugmentConfig(ops=("Identity", "Blur"))
    with pytest.raises(ValueError, match="n_select"):
        AugmentConfig(n_select=15)
    with pytest.raises(ValueError, match="level"):
        AugmentConfig(level=32)
    with pytest.raises(ValueError, match="twice"):
        AugmentConfig(ops=("Rotate", "Rotate"))


def test_train_augment_flips_per_image_and_cuts_clipped_grey_boxes():
    x = torch.randint(0, 100, (64, 3, 16, 16), dtype=torch.uint8)
    off = AugmentConfig(n_select=0, flip_p=0.0, cutout_p=0.0)
    assert torch.equal(train_augment(x, off, torch.Generator().manual_seed(0)), x)
    flip = AugmentConfig(n_select=0, flip_p=1.0, cutout_p=0.0)
    assert torch.equal(train_augment(x, flip, torch.Generator().manual_seed(0)), x.flip(-1))
    half = AugmentConfig(n_select=0, flip_p=0.5, cutout_p=0.0)
    y = train_augment(x, half, torch.Generator().manual_seed(0))
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    assert torch.equal(flipped | (y == x).flatten(1).all(1), torch.ones(64, dtype=torch.bool))
    assert 10 < int(flipped.sum()) < 54
    cut = AugmentConfig(n_select=0, flip_p=0.0, cutout_p=1.0, cutout_size=0.25)  # 4 px
    y = train_augment(x, cut, torch.Generator().manual_seed(0))
    box = (y == 128).all(1)  # (B, H, W)
    rows, cols = box.any(2).sum(1), box.any(1).sum(1)
    assert torch.equal(box.sum((1, 2)), rows * cols)  # a rectangle, clipped at the border
    assert (rows >= 2).all() and (rows <= 4).all() and (cols <= 4).all()
    assert torch.equal(y[~box.unsqueeze(1).expand_as(y)], x[~box.unsqueeze(1).expand_as(x)])


def test_choices_are_distinct_per_image_and_uniform_over_ops():
    policy, batch, draws = AugmentConfig(), 512, 20
    g = torch.Generator().manual_seed(0)
    ops = torch.cat([sample_choices(batch, policy, g)[0] for _ in range(draws)])
    assert ops.shape == (batch * draws, 2) and (ops[:, 0] != ops[:, 1]).all()
    assert len({tuple(r) for r in ops[:batch].tolist()}) > 150  # of 14*13 = 182 pairs
    n, p = ops.shape[0], policy.n_select / len(policy.ops)
    chosen = torch.zeros(len(policy.ops))
    for j in range(len(policy.ops)):
        chosen[j] = (ops == j).any(1).float().mean()
    assert (chosen - p).abs().max() < 5 * math.sqrt(p * (1 - p) / n)


def test_levels_and_signs():
    g = torch.Generator().manual_seed(0)
    _, levels, signs = sample_choices(512, AugmentConfig(), g)
    assert (levels == 15).all()
    assert set(signs.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(signs.mean())) < 5 / math.sqrt(signs.numel())
    _, levels, _ = sample_choices(512, AugmentConfig(level=None), g)
    assert torch.equal(levels.unique(), torch.arange(N_LEVEL + 1))


@pytest.mark.parametrize("device", DEVICES)
def test_same_seed_same_output_other_seed_other_output(device):
    x = images(torch.uint8, device, b=32)
    policy = AugmentConfig(level=None)

    def run(seed: int) -> torch.Tensor:
        pixels, choices = torch.Generator(device=device), torch.Generator()
        return train_augment(x, policy, pixels.manual_seed(seed), choices.manual_seed(seed))

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_every_image_gets_its_own_draws():
    x = images(torch.uint8, b=1, size=16).expand(256, 3, 16, 16).contiguous()
    y = rand_augment(x, AugmentConfig(), torch.Generator().manual_seed(0))
    assert len({bytes(img.numpy()) for img in y}) > 100


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_rand_augment_applies_what_sample_choices_drew(dtype):
    x = images(dtype, b=64, size=16)
    policy = AugmentConfig(level=None)
    y = rand_augment(x, policy, torch.Generator().manual_seed(5))
    ops, levels, signs = sample_choices(64, policy, torch.Generator().manual_seed(5))
    for i in range(0, 64, 7):
        z = x[i : i + 1].float() / 255 if dtype == torch.uint8 else x[i : i + 1]
        for k in range(policy.n_select):
            spec = OPS[policy.ops[int(ops[i, k])]]
            low, high = torch.tensor(spec.low), torch.tensor(spec.high)
            m = low + (high - low) * levels[i, k].float() / policy.n_level  # float32 like ours
            z = apply_op(policy.ops[int(ops[i, k])], z, m * signs[i, k] if spec.signed else m)
        expected = (z * 255).round().clamp(0, 255).to(torch.uint8) if dtype == torch.uint8 else z
        assert torch.allclose(y[i : i + 1].double(), expected.double(), atol=1e-6), i


def test_empty_and_channels_last_batches():
    policy = AugmentConfig()
    empty = torch.zeros(0, 3, 8, 8, dtype=torch.uint8)
    assert train_augment(empty, policy, torch.Generator().manual_seed(0)).shape == empty.shape
    x = images(torch.uint8, b=8)
    y = rand_augment(x, policy, torch.Generator().manual_seed(0))
    last = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(rand_augment(last, policy, torch.Generator().manual_seed(0)), y)


@pytest.mark.parametrize("device", DEVICES)
def test_every_op_in_one_policy_runs_batched_on_each_image(device):
    policy = AugmentConfig(ops=tuple(OPS), n_select=len(OPS), level=None)  # all 16, each image
    for x in (images(torch.uint8, device, b=16), images(torch.float64, device)[..., :11]):
        g = torch.Generator(device=device).manual_seed(0)
        y = train_augment(x, policy, g, torch.Generator().manual_seed(0))
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_outputs_do_not_alias_reused_buffers(dtype):
    x, policy = images(dtype, b=8), AugmentConfig()
    first = rand_augment(x, policy, torch.Generator().manual_seed(0))
    kept, before = first.clone(), x.clone()
    second = train_augment(x, policy, torch.Generator().manual_seed(1))
    assert torch.equal(first, kept) and torch.equal(x, before)
    assert first.data_ptr() != second.data_ptr()


def test_choices_come_from_the_host_generator():
    x = images(torch.uint8, b=32)
    pixels = torch.Generator().manual_seed(0)
    a = train_augment(x, AugmentConfig(), pixels, torch.Generator().manual_seed(1))
    pixels.manual_seed(0)
    b = train_augment(x, AugmentConfig(), pixels, torch.Generator().manual_seed(2))
    assert not torch.equal(a, b)  # same pixel draws, other op choices


# --- chunks: several training batches augmented in one call --------------------------------


def test_chunks_are_sized_by_a_float_working_set():
    assert 8 <= chunk_steps(128, (3, 32, 32)) <= 16  # CIFAR at the seed's batch: 6 MiB each
    assert chunk_steps(128, (3, 224, 224)) == 1  # 308 MiB a batch: never fewer than one
    assert chunk_steps(256, (3, 32, 32)) == chunk_steps(128, (3, 32, 32)) // 2
    assert chunk_steps(1, (1, 1, 1)) > 1000


def _rates(batches: list[int], policy: AugmentConfig, seed: int) -> torch.Tensor:
    """Per slot (rows), the fraction of images that drew each op, each level and sign +1,
    over one `sample_choices` call per entry of ``batches`` (its image count)."""
    g = torch.Generator().manual_seed(seed)
    draws = [sample_choices(b, policy, g) for b in batches]
    ops, levels, signs = (torch.cat(parts) for parts in zip(*draws, strict=True))  # (N, k)
    op_rates = F.one_hot(ops, len(policy.ops)).float().mean(0)  # (k, ops)
    level_rates = F.one_hot(levels, policy.n_level + 1).float().mean(0)  # (k, levels)
    sign_rates = (signs > 0).float().mean(0).unsqueeze(1)  # (k, 1)
    return torch.cat([op_rates, level_rates, sign_rates], 1)


def test_a_chunk_draws_per_image_as_single_batches_do():
    """8 batches of 128 in one call (K=8) or in 8 calls (K=1): the same per-image draws,
    in distribution: every rate agrees within 5 sigma."""
    policy = AugmentConfig(level=None)
    unchunked = _rates([128] * 8 * 16, policy, seed=0)  # 16384 images each
    chunked = _rates([1024] * 16, policy, seed=1)
    rates = (unchunked + chunked) / 2  # (n_select, ops + levels + 1)
    sigma = (rates * (1 - rates) * 2 / 16384).sqrt()  # of the difference of two rates
    assert ((unchunked - chunked).abs() <= 5 * sigma).all()
    assert ((chunked[:, :14] - 1 / 14).abs() < 0.02).all()  # uniform over the 14 ops
    # flip and Cutout: per image from the pixel generator, whatever the call's size
    x = images(torch.uint8, b=1, size=8).expand(1024, 3, 8, 8).contiguous()
    flip = AugmentConfig(n_select=0, flip_p=0.5, cutout_p=0.0)
    cut = AugmentConfig(n_select=0, flip_p=0.0, cutout_p=0.5, cutout_size=0.25)
    for policy, seen in (
        (flip, lambda y: (y == x.flip(-1)).flatten(1).all(1)),
        (cut, lambda y: (y != x).flatten(1).any(1)),
    ):
        g = torch.Generator().manual_seed(0)
        one = train_augment(x, policy, g)  # K=8: one call
        eight = torch.cat([train_augment(part, policy, g) for part in x.split(128)])  # K=1
        for y in (one, eight):
            assert abs(float(seen(y).float().mean()) - 0.5) < 5 * 0.5 / 32  # 5 sigma


def test_a_chunk_serves_its_batches_and_can_be_redone():
    x = images(torch.uint8, b=24, size=8)  # 3 steps of 8 images
    pixels, choices = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    policy = AugmentConfig(level=None)
    chunk = Chunk.augment(x, 6, 3, policy, pixels, choices)
    assert [chunk.holds(s) for s in (5, 6, 8, 9)] == [False, True, True, False]
    assert torch.equal(chunk.batch(7, 8), chunk.x[8:16]) and chunk.x.shape == x.shape
    after = pixels.get_state(), choices.get_state()
    pixels.set_state(chunk.states[0]), choices.set_state(chunk.states[1])  # as a resume does
    again = Chunk.augment(x, 6, 3, policy, pixels, choices)
    assert torch.equal(again.x, chunk.x)
    assert torch.equal(pixels.get_state(), after[0]) and torch.equal(choices.get_state(), after[1])
    off = Chunk.augment(x, 0, 3, AugmentConfig(enabled=False), pixels, choices)
    assert off.x is x  # nothing drawn, nothing copied
    assert torch.equal(pixels.get_state(), after[0])
