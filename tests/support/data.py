"""Data the tiers share: random image batches, real image files, hostile pickles, image
folders of real digits or random pixels, a blank data set, a journal holding a study's data
fingerprint."""

from __future__ import annotations

import io
import pickle
import tempfile
from pathlib import Path

import numpy as np
import optuna
import torch
from PIL import Image

from job.ml.data import Dataset, Split
from job.search.worker import STUDY_DATA

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def images(dtype: torch.dtype, device: str = "cpu", b: int = 4, size: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        x = torch.randint(0, 256, (b, 3, size, size), generator=g, dtype=torch.uint8)
    else:
        x = torch.rand(b, 3, size, size, generator=g, dtype=dtype)
    return x.to(device)


def image_bytes(pixels: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    """A real image file of `pixels`, as Pillow writes it in `fmt` (the mode Pillow infers
    from the array's dtype and shape, or `mode`)."""
    image = Image.fromarray(pixels) if mode is None else Image.fromarray(pixels, mode=mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


class Planted:
    """Unpickled by an unrestricted unpickler, it would create `marker`."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def planted_pickle(marker: str, protocol: int = 2) -> bytes:
    """A CIFAR-10 batch file whose labels would run code (create `marker`)."""
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": Planted(marker)}
    return pickle.dumps(batch, protocol=protocol)


def write_digits(root: Path, start: int, per_class: int) -> None:
    """Digits `start .. start + per_class` of each class as 8x8 grey PNGs in root/<class>/."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    for label in range(10):
        rows = np.flatnonzero(y == label)[start : start + per_class]
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        for row in rows:
            pixels = (x[row].reshape(8, 8) * (255 / 16)).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"{row}.png")


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_folder(root: Path, counts: dict[str, int], seed: int = 0) -> None:
    """`root/<class>/<i>.png` with random pixels, mixed sizes, some grey."""
    rng = np.random.default_rng(seed)
    for name, count in counts.items():
        for i in range(count):
            h, w = (12, 12) if i % 3 else (10, 14)
            shape = (h, w) if i % 4 == 0 else (h, w, 3)  # every 4th image grey
            write_png(root / name / f"{i:03d}.png", rng.integers(0, 256, shape, dtype=np.uint8))


def image_folder(root: Path) -> Path:
    """An image folder at `root`: 2 classes (a, b) x 12 random 8x8 RGB PNGs."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        for i in range(12):
            write_png(root / name / f"{i:02d}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    return root


def change_one_image(root: Path) -> None:
    """One bit of one pixel of image_folder(root)'s b/05.png flipped."""
    file = root / "b" / "05.png"
    pixels = np.asarray(Image.open(file)).copy()
    pixels[3, 3, 1] ^= 0x40
    Image.fromarray(pixels).save(file)


def blank_dataset(size: int = 32, classes: int = 10) -> Dataset:
    """Images of the given size and a class count: all sample_candidate reads of data."""
    x = torch.zeros(classes, 3, size, size, dtype=torch.uint8)
    split = Split(x, torch.arange(classes))
    names = tuple(str(i) for i in range(classes))
    return Dataset("t", split, split, split, names, (0.5,) * 3, (0.25,) * 3, "-")


def journal_with_study_data(name: str, fingerprint: str) -> bytes:
    """A journal holding study `name` whose first worker recorded data `fingerprint`
    (tests/unit/test_bad_inputs.py writes it where `collect` and `run` look)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "study.journal"
        storage = JournalStorage(JournalFileBackend(str(file)))
        study = optuna.create_study(
            study_name=name, storage=storage, directions=["maximize", "minimize"]
        )
        study.set_user_attr(STUDY_DATA, fingerprint)
        return file.read_bytes()
