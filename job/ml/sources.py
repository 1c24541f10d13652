"""Stage 2 of the data path, data — its sources: a data set's images, read as stored.

A loader per `data.name` reads the whole source into a `Source` on the CPU, at source
size, before any cut: `digits` (scikit-learn's table, read without importing it),
`cifar10` (torchvision's on-disk pickles, read directly by an unpickler that builds
nothing but arrays), `imagefolder` (a class folder per class; `train/` and `test/` when
split). Each image is
digested as decoded, and `_fingerprint` hashes the digests: renaming, reordering or
losslessly re-encoding files leaves it unchanged. `job.ml.data` cuts and prepares what
a loader returns. `sample_images` decodes just a few images of a source, for a preview:
no whole read, no hashing.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import pickle
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from job.config import DataConfig
from job.ml.errors import DataError
from job.ml.images import Labels, Pixels, prepare_mixed, read_image

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_FILE_CHUNK = 256  # images decoded at once: full-size photos are large
_FINGERPRINT_VERSION = b"sms-data-v1\0"


@dataclass(frozen=True)
class Split:
    """Labelled images on one device: prepared, or at source size inside a `Source`."""

    x: Tensor  # (N, 3, S, S) uint8
    y: Tensor  # (N,) int64

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class Source:  # a loader's output, on the CPU: uint8 (N, C, H, W), prepared after the cuts
    classes: tuple[str, ...]
    pool: Split  # the training pool; the whole source when it has no test split
    test: Split | None
    fingerprint: str
    digests: list[bytes] | None = None  # per pool image, when there is no test split


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


def _digits() -> tuple[Pixels, Labels, tuple[str, ...]]:
    """scikit-learn's digits: x (N, 1, 8, 8) uint8, y (N,), the class names."""
    values = _digits_table()  # (N, 65): 64 pixels in 0..16, then the label
    # 0..16 → 0..255; rint of exact products gives the same bytes on every machine.
    x = np.rint(values[:, :64].reshape(-1, 1, 8, 8) * (255 / 16)).astype(np.uint8)  # (N, 1, 8, 8)
    y = values[:, 64].astype(np.int64)
    return x, y, tuple(str(c) for c in range(10))


def _digits_table() -> np.ndarray:
    """The table `sklearn.datasets.load_digits` parses, (N, 65): 64 pixels, then the label.
    Read from scikit-learn's package folder without importing scikit-learn: its import
    (scipy with it) costs a second of CPU in every worker process, for a 1,797-line CSV.
    Where the file is not where this pinned release keeps it, scikit-learn's loader runs."""
    file = digits_file()
    if file is not None:
        with gzip.open(file, "rt", encoding="utf-8") as text:
            return np.loadtxt(text, delimiter=",")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.column_stack([bunch.data, bunch.target])


def digits_file() -> Path | None:
    """scikit-learn's digits.csv.gz, found without running any of scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    file = Path(folders[0], "datasets", "data", "digits.csv.gz") if folders else None
    return file if file is not None and file.is_file() else None


def _load_digits(cfg: DataConfig) -> Source:
    x, y, classes = _digits()
    digests = _digests(x, y.tolist())
    fingerprint = _fingerprint("digits", classes, {"all": digests})
    return Source(classes, _to_split(x, y), None, fingerprint, digests)


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


def _cifar_classes(folder: Path) -> tuple[str, ...]:
    (names,) = _read_pickle(folder / "batches.meta", "label_names")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _load_cifar10(cfg: DataConfig) -> Source:
    folder = _cifar_folder(cfg)
    classes = _cifar_classes(folder)
    batches = [_cifar_batch(folder / name, len(classes)) for name in _CIFAR_TRAIN]
    x_pool = np.concatenate([x for x, _ in batches])  # (50000, 3, 32, 32) for the real set
    y_pool = np.concatenate([y for _, y in batches])
    x_test, y_test = _cifar_batch(folder / "test_batch", len(classes))
    parts = {"train": _digests(x_pool, y_pool.tolist()), "test": _digests(x_test, y_test.tolist())}
    pool, test = _to_split(x_pool, y_pool), _to_split(x_test, y_test)
    return Source(classes, pool, test, _fingerprint("cifar10", classes, parts))


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


def _read_files(files: list[tuple[Path, int]], size: int) -> tuple[Split, list[bytes]]:
    """Decode, digest and prepare in chunks, so full-size photos never pile up in memory."""
    x = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    digests: list[bytes] = []
    for start in range(0, len(files), _FILE_CHUNK):
        chunk = files[start : start + _FILE_CHUNK]
        images = [read_image(file) for file, _ in chunk]
        digests += _digests(images, (label for _, label in chunk))
        x[start : start + len(chunk)] = prepare_mixed(images, size)
    return Split(x, torch.tensor([label for _, label in files], dtype=torch.int64)), digests


def _load_imagefolder(cfg: DataConfig) -> Source:
    root = _require_path(cfg)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    train_dir, test_dir = root / "train", root / "test"
    if not (train_dir.is_dir() and test_dir.is_dir()):
        classes = _class_names(root)
        pool, digests = _read_files(_image_files(root, classes, every=True), cfg.image_size)
        fingerprint = _fingerprint("imagefolder", classes, {"all": digests})
        return Source(classes, pool, None, fingerprint, digests)
    classes = _class_names(train_dir)
    extra = sorted(set(_class_names(test_dir)) - set(classes))
    if extra:
        raise DataError(f"{test_dir / extra[0]}: class not in {train_dir}")
    pool, train_digests = _read_files(_image_files(train_dir, classes, every=True), cfg.image_size)
    test, test_digests = _read_files(_image_files(test_dir, classes, every=False), cfg.image_size)
    parts = {"train": train_digests, "test": test_digests}
    return Source(classes, pool, test, _fingerprint("imagefolder", classes, parts))


LOADERS: dict[str, Callable[[DataConfig], Source]] = {
    "digits": _load_digits,
    "cifar10": _load_cifar10,
    "imagefolder": _load_imagefolder,
}


# --- a few images, for a preview ----------------------------------------------------------


def in_turn(labels: Sequence[int], n: int) -> list[int]:
    """Indices of `n` items: the first of each class (by label), then the second of each,
    and so on, each class's in source order; two picks are of two classes when there are
    two."""
    seen: dict[int, int] = {}
    keyed = []
    for i, label in enumerate(labels):
        rank = seen[label] = seen.get(label, -1) + 1
        keyed.append((rank, label, i))
    return [i for _, _, i in sorted(keyed)[:n]]


def sample_images(cfg: DataConfig, n: int) -> tuple[Split, tuple[str, ...]]:
    """`n` images of `cfg`'s training pool (fewer when it holds fewer) prepared as training
    sees them, uint8 (n, 3, S, S) with S = data.image_size, and the source's class names
    (what `y` indexes). The first image of each class, then the second of each, ... in the
    source's order. Only those images are decoded: nothing else is read whole, digested
    or cut, so a source without a test split (digits, a flat image folder) may give an
    image that its test cut holds. The same `DataError`s as `load_data` for a missing or
    unreadable source (a corrupt image elsewhere in it goes unnoticed)."""
    if cfg.name in ("digits", "cifar10"):
        if cfg.name == "digits":
            x, y, classes = _digits()
        else:  # the first training batch holds every class
            folder = _cifar_folder(cfg)
            classes = _cifar_classes(folder)
            x, y = _cifar_batch(folder / _CIFAR_TRAIN[0], len(classes))
        pick = in_turn(y.tolist(), n)
        return _sample([x[i] for i in pick], [int(y[i]) for i in pick], cfg), classes
    root = _require_path(cfg)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    folder = root / "train" if (root / "train").is_dir() and (root / "test").is_dir() else root
    classes = _class_names(folder)
    files = _image_files(folder, classes[:n], every=True)  # listed, not decoded
    pick = in_turn([label for _, label in files], n)
    images = [read_image(files[i][0]) for i in pick]
    return _sample(images, [files[i][1] for i in pick], cfg), classes


def _sample(images: list[Pixels], labels: list[int], cfg: DataConfig) -> Split:
    """Decoded images (each (C, H, W) uint8, any size) → a prepared `Split`."""
    return Split(prepare_mixed(images, cfg.image_size), torch.tensor(labels, dtype=torch.int64))
