"""Stage 2 of the data path: data.

Data sets become uint8 tensors on the training device, prepared once at load (square
pad with grey 128, antialiased bilinear resize, 3 channels: `job.ml.images`): training
only indexes. A source (`job.ml.sources`: `digits`, `cifar10`, `imagefolder`) is read
whole, then cut here: splits are seeded and stratified, one random stream per decision
(test, `data.subset`, validation); the source's fingerprint hashes its content.
The test cut of a source without a test split (digits, a flat ImageFolder) orders each
class by a seeded hash of every image's content instead: adding or removing images
moves almost no other image across it, so a model chosen before a data change is not
tested on what it trained on afterwards (job.collect.drift), but at a class's quota margin.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from job.config import DataConfig
from job.ml.errors import DataError
from job.ml.images import FILL, Labels, prepare_images, real_photos
from job.ml.sources import LOADERS, Source, Split

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "FILL",
    "DataError",
    "Dataset",
    "Split",
    "load_data",
    "prepare_images",
    "raw_test",
    "real_photos",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_TEST_STREAM, _SUBSET_STREAM, _VAL_STREAM = 0, 1, 2


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    classes: tuple[str, ...]
    mean: tuple[float, float, float]  # per channel, [0, 1] units
    std: tuple[float, float, float]
    fingerprint: str  # hex sha256 of the source content

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device | str) -> Dataset:
        moved = {k: getattr(self, k).to(device) for k in ("train", "val", "test")}
        return replace(self, **moved)


def _rng(seed: int, stream: int) -> np.random.Generator:
    # SeedSequence wants non-negative entropy; mod 2**64 keeps negative seeds valid.
    return np.random.default_rng([seed % 2**64, stream])


def _apportion(counts: Labels, total: int, min_each: int) -> Labels:
    """Per-class quotas summing to `total`, proportional to `counts`, each at least
    min(min_each, count). Largest remainder in integers: every machine agrees."""
    base = np.minimum(counts, min_each)
    room = counts - base  # (K,)
    rest = total - int(base.sum())
    if rest <= 0 or not room.sum():
        return base
    quota, remainder = np.divmod(room * rest, room.sum())
    short = rest - int(quota.sum())
    quota[np.argsort(-remainder, kind="stable")[:short]] += 1  # ties → lower class
    return base + quota


def _content_keys(digests: list[bytes], seed: int) -> Labels:
    """Each image's rank under a seeded hash of its content digest: an order that does not
    depend on which other images are there."""
    salt = struct.pack("<q", seed)
    keys = [hashlib.sha256(salt + d).digest() for d in digests]
    rank = np.empty(len(keys), np.int64)
    rank[sorted(range(len(keys)), key=keys.__getitem__)] = np.arange(len(keys))
    return rank


def _stratified_pick(
    y: Labels, total: int, rng: np.random.Generator, min_each: int, keys: Labels | None = None
) -> Labels:
    """Sorted indices of `total` items, drawn per class in proportion to its size: at
    random, or the lowest `keys` of each class when given."""
    labels, counts = np.unique(y, return_counts=True)
    quota = _apportion(counts.astype(np.int64), total, min_each)
    got = []
    for c, q in zip(labels, quota, strict=True):
        members = np.flatnonzero(y == c)
        ordered = rng.permutation(members) if keys is None else members[np.argsort(keys[members])]
        got.append(ordered[:q])
    return np.sort(np.concatenate(got)).astype(np.int64)


def _take(split: Split, index: Labels) -> Split:
    rows = torch.from_numpy(index).to(split.x.device)
    return Split(split.x[rows], split.y[rows])


def _hold_out(
    pool: Split, ratio: float, rng: np.random.Generator, keys: Labels | None = None
) -> tuple[Split, Split]:
    """(kept, held): a stratified, rounded `ratio` of the pool held out (`keys`: by them)."""
    count = math.floor(len(pool) * ratio + 0.5)
    held = _stratified_pick(pool.y.cpu().numpy(), count, rng, min_each=0, keys=keys)
    kept = np.setdiff1d(np.arange(len(pool), dtype=np.int64), held)
    return _take(pool, kept), _take(pool, held)


def _subset(pool: Split, n: int, rng: np.random.Generator) -> Split:
    y = pool.y.cpu().numpy()
    if n > len(pool):
        raise DataError(f"data.subset: {n} is more than the {len(pool)} training images")
    if n < (present := len(np.unique(y))):
        raise DataError(f"data.subset: {n} is fewer than the {present} classes (one image each)")
    return pool if n == len(pool) else _take(pool, _stratified_pick(y, n, rng, min_each=1))


def _channel_stats(x: Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std in [0, 1] units of x (N, 3, S, S) uint8, from histograms:
    exact, and no float copy of the whole set."""
    counts = torch.stack([torch.bincount(x[:, c].flatten(), minlength=256) for c in range(3)])
    levels = torch.arange(256, dtype=torch.float64, device=x.device) / 255  # (256,)
    weights = counts.to(torch.float64) / counts[0].sum()  # (3, 256)
    mean = weights @ levels  # (3,)
    var = (weights * (levels[None] - mean[:, None]).square()).sum(dim=1)
    # Floor at one grey level: a constant channel must not make normalising divide by 0.
    std = var.sqrt().clamp_min(1 / 255)
    m, s = mean.tolist(), std.tolist()
    return (m[0], m[1], m[2]), (s[0], s[1], s[2])


def _shown(cfg: DataConfig) -> Path | str:
    """What a data error names: the data's folder, else the built-in data set's name."""
    return cfg.path if cfg.path is not None else cfg.name


def _load_source(cfg: DataConfig) -> tuple[Source, Split, Split]:
    """`cfg`'s source, its training pool and its test split, unprepared."""
    source = LOADERS[cfg.name](cfg)
    where = _shown(cfg)
    if len(source.classes) < 2:  # one class "trains" to accuracy 1.0 and means nothing
        raise DataError(
            f"{where}: one class ({source.classes[0]!r}); a classifier needs at least 2 "
            f"(one folder per class)"
        )
    pool, test = source.pool, source.test
    if test is None:
        keys = _content_keys(source.digests, cfg.seed) if source.digests is not None else None
        pool, test = _hold_out(pool, cfg.test_ratio, _rng(cfg.seed, _TEST_STREAM), keys)
    return source, pool, test


def raw_test(cfg: DataConfig) -> Split:
    """The test split of `load_data(cfg)` as its source holds it, before preparation:
    uint8 (N, C, H, W) at the source's size, C 1 or 3 (an image folder's files are read
    already padded and resized: job.ml.sources). Image i here is image i of the
    prepared test split."""
    return _load_source(cfg)[2]


def load_data(cfg: DataConfig, device: torch.device | str = "cpu") -> Dataset:
    """Load, prepare and split `cfg`'s data set; the result's tensors live on `device`."""
    source, pool, test = _load_source(cfg)
    where = _shown(cfg)
    if cfg.subset is not None:
        pool = _subset(pool, cfg.subset, _rng(cfg.seed, _SUBSET_STREAM))
    train, val = _hold_out(pool, cfg.val_ratio, _rng(cfg.seed, _VAL_STREAM))
    if len(train) < 2 or not len(test):  # a train batch needs 2 images (BatchNorm)
        raise DataError(
            f"{where}: too few images for data.test_ratio/val_ratio "
            f"({len(train)} train, {len(test)} test; training needs 2 or more)"
        )
    # Prepared only now: resizing is the slow part, and cuts keep e.g. 10k of CIFAR's 50k.
    train, val, test = (Split(prepare_images(s.x, cfg.image_size), s.y) for s in (train, val, test))
    cifar = cfg.name == "cifar10"  # the seed's CIFAR-10 constants (docs/ARCHITECTURE.md)
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if cifar else _channel_stats(train.x)
    dataset = Dataset(cfg.name, train, val, test, source.classes, mean, std, source.fingerprint)
    return dataset.to(device)
