"""Stage 2 of the data path: data.

Data sets become uint8 tensors on the training device, prepared once at load (square
pad with grey 128, antialiased bilinear resize, 3 channels): training only indexes.
Sources: `digits` (scikit-learn), `cifar10` (torchvision's on-disk pickles, read
directly), `imagefolder`. Splits are seeded and stratified, one random stream per
decision (test, `data.subset`, validation); `_fingerprint` hashes the source content.
The test cut of a source without a test split (digits, a flat ImageFolder) orders each
class by a seeded hash of every image's content instead: adding or removing images
moves almost no other image across it, so a model chosen before a data change is not
tested on what it trained on afterwards (job.collect.drift), but at a class's quota margin.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from PIL import Image
from torch import Tensor

from job.config import DataConfig

FILL = 128  # grey of the square padding (the seed's, docs/ARCHITECTURE.md)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CHUNK_ELEMS = 1 << 23  # elements per pad/resize chunk: bounds float copies of a big set
_FILE_CHUNK = 256  # images decoded at once: full-size photos are large
_TEST_STREAM, _SUBSET_STREAM, _VAL_STREAM = 0, 1, 2
_FINGERPRINT_VERSION = b"sms-data-v1\0"

Pixels = NDArray[np.uint8]
Labels = NDArray[np.int64]


class DataError(ValueError):
    """Missing, empty or corrupt data; the message names the path or key (CLI: exit 2)."""


@dataclass(frozen=True)
class Split:
    x: Tensor  # (N, 3, S, S) uint8
    y: Tensor  # (N,) int64

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


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


@dataclass(frozen=True)
class _Source:  # a loader's output, on the CPU: uint8 (N, C, H, W), prepared after the cuts
    classes: tuple[str, ...]
    pool: Split  # the training pool; the whole source when it has no test split
    test: Split | None
    fingerprint: str
    digests: list[bytes] | None = None  # per pool image, when there is no test split


def _pad_square(x: Tensor) -> Tensor:
    """(N, C, H, W) → (N, C, L, L), L = max(H, W): short side padded grey, centred."""
    n, c, h, w = x.shape
    if h == w:
        return x
    side = max(h, w)
    out = torch.full((n, c, side, side), FILL, dtype=x.dtype, device=x.device)
    top, left = (side - h) // 2, (side - w) // 2
    out[:, :, top : top + h, left : left + w] = x
    return out


def _resize(x: Tensor, size: int) -> Tensor:
    """(N, 3, L, L) uint8 → (N, 3, size, size) uint8; untouched when L == size."""
    if x.shape[-1] == size:
        return x
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def prepare_images(x: Tensor, size: int) -> Tensor:
    """Same-shape batch (N, C∈{1,3}, H, W) uint8 → (N, 3, size, size) uint8; chunked, so a
    large source never exists as float all at once."""
    n, _, h, w = x.shape
    out = torch.empty((n, 3, size, size), dtype=torch.uint8, device=x.device)
    step = max(1, _CHUNK_ELEMS // (3 * max(h, w) ** 2))
    for start in range(0, n, step):
        part = x[start : start + step]
        if part.shape[1] == 1:  # grey: the same plane in every channel
            part = part.expand(-1, 3, -1, -1)
        out[start : start + step] = _resize(_pad_square(part), size)
    return out


def _prepare_mixed(images: Sequence[Pixels], size: int) -> Tensor:
    """Images of mixed sizes, each (3, H, W): batched per shape to keep resizing vectorised."""
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(image.shape, []).append(i)
    for index in groups.values():
        batch = torch.from_numpy(np.stack([images[i] for i in index]))  # (B, 3, H, W)
        out[torch.tensor(index)] = prepare_images(batch, size)
    return out


def _to_split(x: Pixels, y: Labels) -> Split:  # x (N, C, H, W) at source size, y (N,)
    return Split(torch.from_numpy(x), torch.from_numpy(y))


def _digests(images: Iterable[Pixels], labels: Iterable[int]) -> list[bytes]:
    """Per image, sha256 of (label, shape, pixel bytes); a little-endian header so every
    machine agrees. Pixels are the decoded source, before pad/resize."""
    out = []
    for image, label in zip(images, labels, strict=True):
        head = struct.pack(f"<q{image.ndim}q", int(label), *image.shape)
        out.append(hashlib.sha256(head + np.ascontiguousarray(image).tobytes()).digest())
    return out


def _fingerprint(name: str, classes: tuple[str, ...], parts: dict[str, list[bytes]]) -> str:
    """sha256 of source name, class names, then per source split its sorted image digests:
    renaming, reordering or losslessly re-encoding files leaves it unchanged."""
    digest = hashlib.sha256(_FINGERPRINT_VERSION)
    digest.update(json.dumps([name, list(classes)]).encode())
    for split in sorted(parts):
        digest.update(struct.pack("<q", len(parts[split])) + split.encode() + b"\0")
        for image in sorted(parts[split]):
            digest.update(image)
    return digest.hexdigest()


def _require_path(cfg: DataConfig) -> Path:
    if cfg.path is None:
        raise DataError(f"data.path: required for data set {cfg.name!r}")
    return cfg.path


def _load_digits(cfg: DataConfig) -> _Source:
    from sklearn.datasets import load_digits  # imported late: slow, and only this source

    bunch = load_digits()
    # 0..16 → 0..255; rint of exact products gives the same bytes on every machine.
    x = np.rint(np.asarray(bunch.images)[:, None] * (255 / 16)).astype(np.uint8)  # (N, 1, 8, 8)
    y = np.asarray(bunch.target, np.int64)
    classes = tuple(str(int(c)) for c in bunch.target_names)
    digests = _digests(x, y.tolist())
    fingerprint = _fingerprint("digits", classes, {"all": digests})
    return _Source(classes, _to_split(x, y), None, fingerprint, digests)


def _cifar_folder(cfg: DataConfig) -> Path:
    """`path/cifar-10-batches-py`, or `path` itself when it is that folder."""
    path = _require_path(cfg)
    folder = path if path.name == CIFAR_DIR else path / CIFAR_DIR
    if folder.is_dir():
        return folder
    if not cfg.download:
        raise DataError(f"{folder}: CIFAR-10 folder not found (set data.download: true)")
    import torchvision  # the only network use of this module, and only when asked

    try:
        torchvision.datasets.CIFAR10(root=str(folder.parent), train=True, download=True)
    except Exception as exc:  # network and archive errors come in many types
        raise DataError(f"{folder.parent}: CIFAR-10 download failed ({exc})") from None
    return folder


# What a CIFAR-10 pickle may name besides plain values: numpy arrays (as Python 2, numpy
# 1 and numpy 2 pickle them) and Python 3's protocol-2 bytes. Nothing else is looked up,
# so a file on the (shared) data volume cannot make the unpickler run code.
_CIFAR_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
)


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain values and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which CIFAR-10 never does")
        return super().find_class(module, name)


def _read_pickle(file: Path, *keys: str) -> list[Any]:
    """The values of `keys` in a CIFAR-10 pickle (Python 2 pickles, hence bytes keys),
    read by `_CifarUnpickler`: plain values and numpy arrays only, never code."""
    if not file.is_file():
        raise DataError(f"{file}: CIFAR-10 file missing")
    try:
        with file.open("rb") as f:
            content = _CifarUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        line = (str(exc).splitlines() or [""])[0][:160]
        raise DataError(f"{file}: not a readable CIFAR-10 pickle ({line})") from None
    except Exception as exc:  # a damaged pickle raises almost any type
        raise DataError(f"{file}: not a readable CIFAR-10 pickle ({type(exc).__name__})") from None
    for key in keys:
        if not isinstance(content, dict) or key.encode() not in content:
            raise DataError(f"{file}: not a dict with key b'{key}'")
    return [content[key.encode()] for key in keys]


def _cifar_batch(file: Path, num_classes: int) -> tuple[Pixels, Labels]:
    """One batch file → x (n, 3, 32, 32) uint8 (rows are R, G, B planes), y (n,) int64."""
    data, labels = _read_pickle(file, "data", "labels")
    data = np.asarray(data)
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"{file}: labels must be integers") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{file}: b'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    if len(y) != len(data) or (y.size and (y.min() < 0 or y.max() >= num_classes)):
        raise DataError(f"{file}: need {len(data)} labels in 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), y


def _load_cifar10(cfg: DataConfig) -> _Source:
    folder = _cifar_folder(cfg)
    meta = folder / "batches.meta"
    (names,) = _read_pickle(meta, "label_names")
    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    batches = [_cifar_batch(folder / name, len(classes)) for name in _CIFAR_TRAIN]
    x_pool = np.concatenate([x for x, _ in batches])  # (50000, 3, 32, 32) for the real set
    y_pool = np.concatenate([y for _, y in batches])
    x_test, y_test = _cifar_batch(folder / "test_batch", len(classes))
    parts = {"train": _digests(x_pool, y_pool.tolist()), "test": _digests(x_test, y_test.tolist())}
    pool, test = _to_split(x_pool, y_pool), _to_split(x_test, y_test)
    return _Source(classes, pool, test, _fingerprint("cifar10", classes, parts))


def _unreadable(path: Path | str, exc: OSError, what: str = "folder") -> DataError:
    """One line naming what could not be read and the OS's reason."""
    why = exc.strerror or type(exc).__name__
    if os.path.islink(path):  # say where a dangling or looping link points
        why += f": a symlink to {os.readlink(path)}"
    return DataError(f"{path}: cannot read {what} ({why})")


def _class_names(folder: Path) -> tuple[str, ...]:
    """The class folders of `folder` (hidden entries and plain files skipped); a class
    folder that cannot be read (a dangling or looping symlink, no permission) is an
    error naming it, never a class quietly missing or "no images"."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise _unreadable(folder, exc) from None
    names = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            os.stat(entry.path)  # through a symlink: is its folder there?
        except OSError as exc:
            raise _unreadable(entry.path, exc, "class folder") from None
        if entry.is_dir():
            names.append(entry.name)
    if not names:
        raise DataError(f"{folder}: no class folders (expected {folder}/<class>/<image>)")
    return tuple(names)


def _walk(folder: Path) -> list[Path]:
    """Every entry under `folder` but its subfolders, recursively, not into symlinked
    subfolders (as `Path.rglob`); a folder that cannot be listed is an error naming it."""

    def fail(exc: OSError) -> None:
        raise _unreadable(exc.filename or folder, exc) from None

    return [Path(top, name) for top, _, names in os.walk(folder, onerror=fail) for name in names]


def _image_files(folder: Path, classes: tuple[str, ...], every: bool) -> list[tuple[Path, int]]:
    """(file, label) pairs in sorted order. `every`: each class folder must hold images;
    otherwise (a test tree) missing classes are fine but the tree must not be empty."""
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        if not every and not (folder / name).is_dir():
            continue
        # Hidden files skipped: macOS "._x.png" forks are not images.
        found = [p for p in _walk(folder / name) if p.suffix.lower() in IMAGE_EXTENSIONS]
        found = [p for p in found if not p.name.startswith(".")]
        for p in found:
            try:
                os.stat(p)  # a dangling symlink is an image not there: said, not skipped
            except OSError as exc:
                raise _unreadable(p, exc, "image") from None
        found = sorted(p for p in found if p.is_file())  # not a FIFO or a device
        if every and not found:
            raise DataError(f"{folder / name}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        files += [(p, label) for p in found]
    if not files:
        raise DataError(f"{folder}: no images")
    return files


# Pillow's modes by what becomes of them (https://pillow.readthedocs.io, "Modes"): 8 bits a
# channel, converted by Pillow; with alpha, composited over FILL grey (a transparent pixel's
# colour is undefined: it looks like the padding); 16-bit grey (PNG, TIFF; PGM as "I")
# scaled to 8 bits. Pillow reads 16-bit RGB(A) PNGs as 8-bit "RGB"/"RGBA" itself, by the
# high byte; 16-bit grey keeps the high byte too, so both agree. Any other mode is refused.
_EIGHT_BIT = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
_ALPHA = frozenset({"LA", "PA", "RGBA", "RGBa"})
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def _to_rgb(image: Image.Image, file: Path) -> Pixels:
    """A decoded image in any mode Pillow reads → (H, W, 3) uint8, by the rules above;
    `DataError` naming the file for a mode (or values) with no faithful 8-bit form."""
    mode = image.mode
    if mode in _SIXTEEN_BIT:
        values = np.asarray(image).astype(np.int64)  # (H, W): uint16, or int32 for "I"
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if low < 0 or high > 65535:  # a 32-bit "I" image (TIFF) beyond 16 bits
            raise DataError(
                f"{file}: mode {mode} values {low}..{high} do not fit 16 bits (0..65535); "
                f"cannot scale them to 8 (save it as 8- or 16-bit)"
            )
        grey = (values >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":  # 32-bit float (TIFF): intensities in [0, 1]
        floats = np.asarray(image, dtype=np.float64)
        inside = bool(np.isfinite(floats).all()) and (
            not floats.size or (floats.min() >= 0.0 and floats.max() <= 1.0)
        )
        if not inside:
            shown = f"{np.nanmin(floats):g}..{np.nanmax(floats):g}" if floats.size else ""
            raise DataError(
                f"{file}: mode F (32-bit float) values must lie in [0, 1], found {shown} "
                f"(save it as 8- or 16-bit)"
            )
        grey = np.rint(floats * 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode in _ALPHA or (mode in _EIGHT_BIT and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint32)  # (H, W, 4)
        alpha = rgba[..., 3:]
        mixed = rgba[..., :3] * alpha + FILL * (255 - alpha)  # 255 x the composite
        return ((mixed + 127) // 255).astype(np.uint8)  # rounded to the nearest level
    if mode in _EIGHT_BIT:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    raise DataError(f"{file}: image mode {mode} has no conversion to 8-bit RGB here")


def _read_image(file: Path) -> Pixels:
    """One image file → (3, H, W) uint8: every mode as `_to_rgb` says (grey, palette,
    alpha, 16-bit and float images become 8-bit RGB) or a `DataError` naming the file."""
    try:
        with Image.open(file) as image:
            rgb = _to_rgb(image, file)  # (H, W, 3)
    except DataError:
        raise
    except OSError as exc:  # PIL's "cannot identify image file", or the OS's own
        why = exc.strerror or f"{type(exc).__name__}: {exc}"
        raise DataError(f"{file}: cannot read image ({why})") from None
    except Exception as exc:  # PIL's plugins raise ValueError, SyntaxError, ...
        raise DataError(f"{file}: cannot read image ({type(exc).__name__}: {exc})") from None
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def _read_files(files: list[tuple[Path, int]], size: int) -> tuple[Split, list[bytes]]:
    """Decode, digest and prepare in chunks, so full-size photos never pile up in memory."""
    x = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    digests: list[bytes] = []
    for start in range(0, len(files), _FILE_CHUNK):
        chunk = files[start : start + _FILE_CHUNK]
        images = [_read_image(file) for file, _ in chunk]
        digests += _digests(images, (label for _, label in chunk))
        x[start : start + len(chunk)] = _prepare_mixed(images, size)
    return Split(x, torch.tensor([label for _, label in files], dtype=torch.int64)), digests


def _load_imagefolder(cfg: DataConfig) -> _Source:
    root = _require_path(cfg)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    train_dir, test_dir = root / "train", root / "test"
    if not (train_dir.is_dir() and test_dir.is_dir()):
        classes = _class_names(root)
        pool, digests = _read_files(_image_files(root, classes, every=True), cfg.image_size)
        fingerprint = _fingerprint("imagefolder", classes, {"all": digests})
        return _Source(classes, pool, None, fingerprint, digests)
    classes = _class_names(train_dir)
    extra = sorted(set(_class_names(test_dir)) - set(classes))
    if extra:
        raise DataError(f"{test_dir / extra[0]}: class not in {train_dir}")
    pool, train_digests = _read_files(_image_files(train_dir, classes, every=True), cfg.image_size)
    test, test_digests = _read_files(_image_files(test_dir, classes, every=False), cfg.image_size)
    parts = {"train": train_digests, "test": test_digests}
    return _Source(classes, pool, test, _fingerprint("imagefolder", classes, parts))


_LOADERS = {"digits": _load_digits, "cifar10": _load_cifar10, "imagefolder": _load_imagefolder}


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


def load_data(cfg: DataConfig, device: torch.device | str = "cpu") -> Dataset:
    """Load, prepare and split `cfg`'s data set; the result's tensors live on `device`."""
    source = _LOADERS[cfg.name](cfg)
    where = cfg.path if cfg.path is not None else cfg.name  # what the errors name
    if len(source.classes) < 2:  # one class "trains" to accuracy 1.0 and means nothing
        raise DataError(
            f"{where}: one class ({source.classes[0]!r}); a classifier needs at least 2 "
            f"(one folder per class)"
        )
    pool, test = source.pool, source.test
    if test is None:
        keys = _content_keys(source.digests, cfg.seed) if source.digests is not None else None
        pool, test = _hold_out(pool, cfg.test_ratio, _rng(cfg.seed, _TEST_STREAM), keys)
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


def real_photos(image_size: int = 32) -> Tensor:
    """scikit-learn's two sample photos (china.jpg, flower.jpg) → uint8 (2, 3, S, S)."""
    from sklearn.datasets import load_sample_images

    photos = np.stack(load_sample_images().images)  # (2, 427, 640, 3) uint8
    return prepare_images(torch.from_numpy(photos).permute(0, 3, 1, 2), image_size)
