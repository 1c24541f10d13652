"""Stage 3 of the data path, augment: per-image batched RandAugment, flip, Cutout.

The seed's train augmentation (docs/ARCHITECTURE.md) for whole batches on the training device: each
image draws its own ops, levels and signs from the op table (`job.ml.augment_ops`); the work is one
call per (slot, op) on the images that chose it (one resample for all geometric ops of a
slot), never a loop over images. The draws are made on the host with a CPU generator, so
the batch plan (which rows take which op) is known without reading the device back: no
host sync per batch. Public functions keep shape and dtype (uint8 0..255 or float 0..1).
The policy is the config's `augment` section itself (`AugmentConfig`), validated at load.

A call costs about 500 small torch ops (kernel launches on a GPU) whatever its size, so
at a training batch of 128 small images the overhead rivals the work. The trainer
therefore augments a chunk of several training batches per call, `chunk_steps` of them:
as many as fit a float working set of `CHUNK_BYTES` (10 batches of 128 32x32 images, one
of 224x224). Every image still draws its own ops, levels, signs, flip and box, each row
of the draws being independent of the others, so the per-image distribution is the same
whatever the chunk; only which image gets which draw depends on it. A `Chunk` holds a
call's output and the generator states before it, from which a resumed run redoes it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from job.config import AugmentConfig
from job.ml.augment_ops import (
    DEFAULT_OPS,
    OPS,
    AffineOp,
    Gen,
    affine,
    apply_op,
    box,
    from_float,
    to_float,
)

Ints = NDArray[np.int64]
Floats = NDArray[np.float32]

__all__ = [
    "CHUNK_BYTES",
    "DEFAULT_OPS",
    "OPS",
    "Chunk",
    "apply_op",
    "chunk_steps",
    "rand_augment",
    "sample_choices",
    "train_augment",
]


_LOCAL = threading.local()

# The float working set one augmentation call may take. 64 MiB: on the 2-core dev CPU a
# call gets no faster per image past about 768 32x32 images (the arithmetic dominates
# there, see docs/BENCHMARKS.md); on a GPU it is small next to the activations.
CHUNK_BYTES = 64 << 20
# float copies of the images alive at the peak of a call: our two buffers (`_buffers`)
# and an op's temporaries on its run of rows
_FLOAT_COPIES = 4


def chunk_steps(batch: int, image_shape: Sequence[int]) -> int:
    """How many training batches of ``batch`` images of ``image_shape`` (C, H, W) to
    augment in one call: as many as fit `CHUNK_BYTES` of float32 working set, at least one
    (128 CIFAR images: 6 MiB a batch, 10 batches; 224x224 images: 1)."""
    per_batch = _FLOAT_COPIES * 4 * batch * math.prod(image_shape)
    return max(1, CHUNK_BYTES // per_batch)


def _buffers(like: Tensor, shape: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Two float buffers per thread, kept for the last shape (never returned to callers): on
    CPU, fresh batch-sized tensors cost more in page faults than the work (~20% at B=128)."""
    dtype = torch.float32 if like.dtype == torch.uint8 else like.dtype
    key = (shape, dtype, like.device)
    if getattr(_LOCAL, "key", None) != key:
        _LOCAL.key = key
        _LOCAL.pair = tuple(torch.empty(shape, dtype=dtype, device=like.device) for _ in "ab")
    pair: tuple[Tensor, Tensor] = _LOCAL.pair
    return pair


def sample_choices(
    batch: int, policy: AugmentConfig, generator: Gen
) -> tuple[Tensor, Tensor, Tensor]:
    """Per image ``n_select`` distinct indices into ``policy.ops`` (int64), levels (int64)
    and signs ±1 (float32), each ``(B, n_select)``, drawn on the host (CPU generator)."""
    n_ops, k = len(policy.ops), policy.n_select
    # one draw for everything, then numpy: a few small torch ops would cost more than this
    u = torch.rand(batch, n_ops + 2 * k, generator=generator, dtype=torch.float64).numpy()
    # first k of a per-row random permutation: a subset without replacement
    ops = u[:, :n_ops].argsort(axis=1, kind="stable")[:, :k]
    if policy.level is None:  # uniform on 0..n_level
        levels = np.floor(u[:, n_ops : n_ops + k] * (policy.n_level + 1)).astype(np.int64)
    else:
        levels = np.full((batch, k), policy.level, dtype=np.int64)
    signs = np.where(u[:, n_ops + k :] < 0.5, -1.0, 1.0).astype(np.float32)
    return torch.from_numpy(ops), torch.from_numpy(levels), torch.from_numpy(signs)


def _magnitudes(policy: AugmentConfig, ops: Ints, levels: Ints, signs: Floats) -> Floats:
    """``(B, n_select)`` magnitudes from the table's ranges for the drawn ops and levels."""
    low, high, signed = np.array([OPS[name][1:] for name in policy.ops], dtype=np.float32).T
    m = low[ops] + (high - low)[ops] * levels.astype(np.float32) / policy.n_level
    out: Floats = np.where(signed[ops] > 0, m * signs, m)
    return out


def _apply_runs(
    runs: Tensor, mag: Tensor, names: list[str], counts: list[int], fill: float, generator: Gen
) -> None:
    """Apply ``names[j]`` in place to the j-th run of ``counts[j]`` rows of ``runs`` (B, C, H,
    W), magnitudes ``mag`` (B,); the geometric ops, last, are resampled at once."""
    start, geometric = 0, []
    for name, count in zip(names, counts, strict=True):
        end, fn = start + count, OPS[name].fn
        if count and isinstance(fn, AffineOp):
            geometric.append(fn.matrix(mag[start:end], runs.shape[2], runs.shape[3]))
        elif count and name != "Identity":
            run = runs[start:end]  # (n, C, H, W)
            run.copy_(fn(run, mag[start:end], fill=fill, generator=generator))
        start = end
    if geometric:
        run = runs[start - sum(len(theta) for theta in geometric) : start]  # the last rows
        run.copy_(affine(run, torch.cat(geometric), fill))


def _plan(
    b: int, policy: AugmentConfig, names: list[str], host: Gen
) -> tuple[list[list[int]], Tensor, Tensor]:
    """The whole RandAugment plan of a batch, made on the host so the device is never read:
    run sizes per slot, then row orders (n_select + 1, B) and magnitudes (n_select, B).
    Small host arrays: numpy, which costs a fraction of torch's per-op overhead here."""
    ops, levels, signs = (t.numpy() for t in sample_choices(b, policy, host))  # (B, n_select)
    mags = _magnitudes(policy, ops, levels, signs)
    runs = np.array([names.index(name) for name in policy.ops])[ops]  # (B, n_select)
    perm, orders, row_mags, sizes = np.arange(b), [], [], []  # row i holds image perm[i]
    for k in range(policy.n_select):
        sizes.append(np.bincount(runs[:, k], minlength=len(names)).tolist())
        order = runs[perm, k].argsort(kind="stable")  # rows by run
        perm = perm[order]
        orders.append(order)
        row_mags.append(mags[perm, k])
    orders.append(perm)
    stacked = np.stack(row_mags) if row_mags else np.empty((0, b), dtype=np.float32)
    return sizes, torch.from_numpy(np.stack(orders)), torch.from_numpy(stacked)


def _rand_augment_rows(
    x: Tensor, policy: AugmentConfig, generator: Gen, choices: Gen
) -> tuple[Tensor, Tensor]:
    """RandAugment ``x`` (B, C, H, W) as float rows ``y`` holding images ``perm``. Each slot
    sorts rows by op into runs; the caller unsorts once, as uint8."""
    b, pixels = x.shape[0], math.prod(x.shape[1:])
    flat, spare = _buffers(x, (b, pixels))  # (B, C*H*W) each
    # runs in policy order, geometric ops last so that they form one run together
    names = sorted(policy.ops, key=lambda name: isinstance(OPS[name].fn, AffineOp))
    sizes, orders, mags = _plan(b, policy, names, choices or generator)
    orders = orders.to(x.device, non_blocking=True)  # (n_select + 1, B)
    mags = mags.to(x.device, flat.dtype, non_blocking=True)  # (n_select, B)
    for k, counts in enumerate(sizes):
        if k == 0:  # sort the input (uint8 is 4x cheaper to move), then convert once
            to_float(x.reshape(b, pixels).index_select(0, orders[0]), out=flat)
        else:  # row gathers on (B, C*H*W) views: plain row copies
            flat, spare = torch.index_select(flat, 0, orders[k], out=spare), flat
        _apply_runs(flat.view(x.shape), mags[k], names, counts, policy.fill / 255.0, generator)
    if policy.n_select == 0:
        to_float(x.reshape(b, pixels), out=flat)
    return flat.view(x.shape), orders[-1]


def _unpermute(y: Tensor, perm: Tensor, dtype: torch.dtype) -> Tensor:
    """Rows of ``y`` (float, overwritten) back to batch order, as ``dtype``: a fresh tensor."""
    rows = from_float(y, dtype).view(y.shape[0], math.prod(y.shape[1:]))  # (B, C*H*W)
    return rows.index_select(0, perm.argsort()).view(y.shape)


def rand_augment(x: Tensor, policy: AugmentConfig, generator: Gen, choices: Gen = None) -> Tensor:
    """Per-image RandAugment of a batch ``(B, C, H, W)``; keeps shape and dtype. ``choices``
    (CPU) draws each image's ops, levels and signs; it defaults to ``generator`` on CPU."""
    y, perm = _rand_augment_rows(x, policy, generator, choices)
    return _unpermute(y, perm, x.dtype)


def train_augment(x: Tensor, policy: AugmentConfig, generator: Gen, choices: Gen = None) -> Tensor:
    """The seed's train pipeline on padded, resized ``x`` (B, C, H, W): RandAugment, flip,
    Cutout. Pixel randomness from ``generator`` (on x's device), per-image op choices from
    ``choices`` (CPU; defaults to ``generator`` on CPU), so nothing is read back per batch."""
    y, perm = _rand_augment_rows(x, policy, generator, choices)  # (B, C, H, W) float, rows permuted
    b, _, h, w = y.shape
    # draws are per image in batch order, then follow the images to their rows
    flip = torch.rand(b, generator=generator, device=y.device) < policy.flip_p  # (B,)
    cut = torch.rand(b, generator=generator, device=y.device) < policy.cutout_p
    centre = torch.rand(b, 2, generator=generator, device=y.device)  # (B, 2) in [0, 1)
    flip, cut, centre = flip[perm], cut[perm], centre[perm]
    # in place on our buffer; lerp with weights 0/1 is exact and, unlike where, fast on CPU
    y.lerp_(y.flip(-1), flip.to(y.dtype).view(-1, 1, 1, 1))
    side = cut.long() * round(policy.cutout_size * min(h, w))  # (B,) 0: no box
    grey = torch.full((), policy.fill / 255.0, dtype=y.dtype, device=y.device)
    y.lerp_(grey, box(h, w, side, centre, y.dtype))
    return _unpermute(y, perm, x.dtype)


@dataclass(frozen=True)
class Chunk:
    """Training steps ``first .. first + steps - 1`` of an epoch, augmented in one call;
    ``states``: the generators' states before that call, for a resumed run to redo it."""

    first: int
    steps: int
    x: Tensor  # (steps * B, C, H, W), augmented, in step order
    states: tuple[Tensor, Tensor]  # (generator's, choices')

    @classmethod
    def augment(
        cls,
        x: Tensor,
        first: int,
        steps: int,
        policy: AugmentConfig,
        generator: torch.Generator,
        choices: torch.Generator,
    ) -> Chunk:
        """``x`` (steps * B, C, H, W), the steps' images in order, through `train_augment`
        (as it is when ``policy`` is off): each image its own draws, as in its own batch."""
        states = (generator.get_state(), choices.get_state())
        if policy.enabled:
            x = train_augment(x, policy, generator, choices)
        return cls(first, steps, x, states)

    def holds(self, step: int) -> bool:
        return self.first <= step < self.first + self.steps

    def batch(self, step: int, size: int) -> Tensor:
        """The ``size`` images of ``step``: a view of ``x``."""
        at = step - self.first
        return self.x[at * size : (at + 1) * size]
