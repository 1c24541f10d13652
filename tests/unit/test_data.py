"""Tests of job.ml.data: sources, preparation, splits, fingerprint, errors.

CIFAR-10 and ImageFolder data are written by the tests themselves (CIFAR's real
pickle format, PNG files), since no data set can be downloaded here.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from job.config import DataConfig
from job.ml.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DataError,
    Dataset,
    Split,
    load_data,
    prepare_images,
    real_photos,
)
from job.ml.images import read_image as _read_image
from tests.support.data import image_bytes, planted_pickle, write_folder, write_png

CIFAR_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
N_PER_BATCH = 20


# --- helpers -------------------------------------------------------------------------


def write_cifar(root: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """A tiny CIFAR-10 folder in the real format: 5 data batches, test batch, meta."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (N_PER_BATCH, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, len(CIFAR_NAMES), N_PER_BATCH)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data}
        batch[b"filenames"] = [f"{name}_{i}.png".encode() for i in range(N_PER_BATCH)]
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f)
        written[name] = (data, labels)
    meta = {b"label_names": CIFAR_NAMES, b"num_cases_per_batch": N_PER_BATCH, b"num_vis": 3072}
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump(meta, f)
    return written


def digits(**kw: Any) -> Dataset:
    return load_data(DataConfig(name="digits", **kw))


def cifar(path: Path, **kw: Any) -> Dataset:
    return load_data(DataConfig(name="cifar10", path=path, **kw))


def folder(path: Path, **kw: Any) -> Dataset:
    return load_data(DataConfig(name="imagefolder", path=path, **kw))


def rows(*splits: Split) -> list[bytes]:
    """The images of the splits as sorted byte strings: a multiset to compare."""
    x = torch.cat([s.x for s in splits]).reshape(sum(len(s) for s in splits), -1).numpy()
    return sorted(row.tobytes() for row in x)


def check_split(split: Split, size: int) -> None:
    assert split.x.dtype == torch.uint8 and split.y.dtype == torch.int64
    assert tuple(split.x.shape) == (len(split), 3, size, size)
    assert tuple(split.y.shape) == (len(split),)


# --- digits --------------------------------------------------------------------------


def test_digits_shapes_dtypes_ranges() -> None:
    ds = digits(image_size=16)
    for split in (ds.train, ds.val, ds.test):
        check_split(split, 16)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 1797
    assert len(ds.test) == round(1797 * 0.2)
    assert len(ds.val) == round((1797 - len(ds.test)) * 0.1)
    assert ds.classes == tuple(str(d) for d in range(10)) and ds.num_classes == 10
    x = ds.train.x
    assert int(x.min()) == 0 and int(x.max()) >= 250
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey → 3 channels
    assert set(ds.train.y.tolist()) == set(range(10))
    assert all(0.0 < m < 1.0 for m in ds.mean) and all(0.0 < s < 1.0 for s in ds.std)
    # mean/std are those of the train split
    assert ds.mean[0] == pytest.approx(x.double().mean().item() / 255, rel=1e-9)
    assert ds.std[0] == pytest.approx(x.double().std(unbiased=False).item() / 255, rel=1e-9)


def test_digits_are_scikit_learns_read_without_importing_it() -> None:
    """The table comes from scikit-learn's own file (no import of scikit-learn, which costs
    every worker a second), and it is load_digits' table value for value."""
    from sklearn.datasets import load_digits

    from job.ml.sources import _digits_table, digits_file

    assert digits_file() is not None  # the fast path is the one taken with the pinned release
    bunch = load_digits()
    table = _digits_table()
    assert np.array_equal(table[:, :64], bunch.data)
    assert np.array_equal(table[:, 64].astype(np.int64), bunch.target)


def test_digits_splits_partition_and_are_stratified() -> None:
    ds = digits(image_size=8)
    whole = digits(image_size=8, val_ratio=0.0, test_ratio=0.01)  # ~everything
    # Together the three splits are exactly the source: disjoint, nothing lost.
    assert rows(ds.train, ds.val, ds.test) == rows(whole.train, whole.val, whole.test)
    total = Counter(torch.cat([ds.train.y, ds.val.y, ds.test.y]).tolist())
    test = Counter(ds.test.y.tolist())
    for label, n in total.items():
        assert abs(test[label] - n * 0.2) <= 1
    pool = Counter(ds.train.y.tolist()) + Counter(ds.val.y.tolist())
    val = Counter(ds.val.y.tolist())
    for label, n in pool.items():
        assert abs(val[label] - n * 0.1) <= 1


def test_digits_deterministic_for_a_seed() -> None:
    a, b, c = digits(seed=3), digits(seed=3), digits(seed=4)
    for name in ("train", "val", "test"):
        sa, sb = getattr(a, name), getattr(b, name)
        assert torch.equal(sa.x, sb.x) and torch.equal(sa.y, sb.y)
    assert not torch.equal(a.test.x, c.test.x)
    assert a.mean == b.mean and a.std == b.std


def test_subset_is_exact_and_stratified() -> None:
    ds = digits(subset=100, val_ratio=0.1)
    assert len(ds.train) + len(ds.val) == 100
    assert len(ds.val) == 10
    counts = Counter(torch.cat([ds.train.y, ds.val.y]).tolist())
    assert set(counts) == set(range(10)) and all(9 <= n <= 11 for n in counts.values())
    assert len(ds.test) == round(1797 * 0.2)  # the subset cuts the train pool only
    assert torch.equal(ds.test.x, digits().test.x)  # and never moves the test split


def test_val_ratio_zero_gives_empty_val() -> None:
    ds = digits(val_ratio=0.0, image_size=12)
    assert tuple(ds.val.x.shape) == (0, 3, 12, 12) and tuple(ds.val.y.shape) == (0,)
    assert len(ds.val) == 0


def test_subset_too_big_names_the_key() -> None:
    with pytest.raises(DataError, match=r"data\.subset"):
        digits(subset=5000)


def test_dataset_to_moves_every_split() -> None:
    ds = digits(subset=20)
    moved = ds.to("meta")
    assert all(s.x.device.type == "meta" for s in (moved.train, moved.val, moved.test))
    assert moved.fingerprint == ds.fingerprint and ds.train.x.device.type == "cpu"
    assert load_data(DataConfig(), torch.device("cpu")).train.x.device.type == "cpu"


# --- preparation ---------------------------------------------------------------------


def test_prepare_pads_short_side_with_grey_centred() -> None:
    x = torch.zeros((1, 3, 4, 2), dtype=torch.uint8)  # tall: pad 1 column each side
    out = prepare_images(x, 4)
    assert torch.all(out[..., 0] == 128) and torch.all(out[..., 3] == 128)
    assert torch.all(out[..., 1:3] == 0)
    grey = prepare_images(torch.full((2, 1, 5, 5), 7, dtype=torch.uint8), 10)
    assert tuple(grey.shape) == (2, 3, 10, 10) and torch.all(grey == 7)


def test_real_photos() -> None:
    photos = real_photos(24)
    assert tuple(photos.shape) == (2, 3, 24, 24) and photos.dtype == torch.uint8
    assert torch.all(photos[:, :, 0] == 128)  # landscape photos: grey bands top and bottom
    assert photos.float().std() > 20  # and real content in between


# --- CIFAR-10 ------------------------------------------------------------------------


def test_cifar_reads_the_pickles_exactly(tmp_path: Path) -> None:
    written = write_cifar(tmp_path)
    ds = cifar(tmp_path, image_size=32, val_ratio=0.0)
    check_split(ds.train, 32)
    train_x = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_y = [label for i in range(1, 6) for label in written[f"data_batch_{i}"][1]]
    assert np.array_equal(ds.train.x.numpy().reshape(-1, 3072), train_x)
    assert ds.train.y.tolist() == train_y
    assert np.array_equal(ds.test.x.numpy().reshape(-1, 3072), written["test_batch"][0])
    assert ds.test.y.tolist() == written["test_batch"][1]
    assert ds.classes == tuple(n.decode() for n in CIFAR_NAMES)
    assert ds.mean == CIFAR10_MEAN and ds.std == CIFAR10_STD


def test_cifar_path_may_be_the_batches_folder(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    a = cifar(tmp_path)
    b = cifar(tmp_path / "cifar-10-batches-py")
    assert a.fingerprint == b.fingerprint and torch.equal(a.train.x, b.train.x)


def test_cifar_resize_subset_and_val(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    ds = cifar(tmp_path, image_size=16, subset=50, val_ratio=0.2)
    check_split(ds.train, 16)
    assert len(ds.train) == 40 and len(ds.val) == 10 and len(ds.test) == N_PER_BATCH


def test_cifar_missing_folder_suggests_download(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.download: true") as err:
        cifar(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)


@pytest.mark.parametrize("content", [b"garbage, not a pickle", b"\x80\x04\x95"])
def test_cifar_corrupt_pickle_names_the_file(tmp_path: Path, content: bytes) -> None:
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(content)
    with pytest.raises(DataError, match="data_batch_3"):
        cifar(tmp_path)


def test_cifar_wrong_content_names_the_file(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    with (tmp_path / "cifar-10-batches-py" / "test_batch").open("wb") as f:
        pickle.dump({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}, f)
    with pytest.raises(DataError, match="test_batch"):
        cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").unlink()
    with pytest.raises(DataError, match="data_batch_1"):
        cifar(tmp_path)


# --- ImageFolder ---------------------------------------------------------------------


def test_imagefolder_flat_layout(tmp_path: Path) -> None:
    write_folder(tmp_path, {"dog": 12, "cat": 10, "eel": 8})
    ds = folder(tmp_path, image_size=20, val_ratio=0.2)
    assert ds.classes == ("cat", "dog", "eel")
    for split in (ds.train, ds.val, ds.test):
        check_split(split, 20)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 30 and len(ds.test) == 6
    assert Counter(ds.test.y.tolist()) == {0: 2, 1: 2, 2: 2}  # 20% of each class
    assert 0.0 < ds.mean[0] < 1.0


def test_imagefolder_train_test_layout(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", {"a": 6, "b": 5})
    write_folder(tmp_path / "test", {"a": 2, "b": 3}, seed=1)
    ds = folder(tmp_path, image_size=12, val_ratio=0.0)
    assert ds.classes == ("a", "b")
    assert len(ds.train) == 11 and len(ds.val) == 0
    assert ds.test.y.tolist() == [0, 0, 1, 1, 1]


def test_imagefolder_exact_pixels_and_grey(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for i in range(5):
        write_png(tmp_path / "rgb" / f"{i}.png", rgb)
        write_png(tmp_path / "grey" / f"{i}.png", np.full((8, 8), 40 + i, np.uint8))
    ds = folder(tmp_path, image_size=8, val_ratio=0.0, test_ratio=0.2)
    x = torch.cat([ds.train.x, ds.test.x])
    y = torch.cat([ds.train.y, ds.test.y])
    assert torch.equal(x[y == 1][0], torch.from_numpy(rgb).permute(2, 0, 1))
    greys = x[y == 0]
    assert torch.equal(greys[:, 0], greys[:, 2])
    assert set(greys[:, 0, 0, 0].tolist()) == set(range(40, 45))


def test_rare_class_survives_subset(tmp_path: Path) -> None:
    write_folder(tmp_path, {"a": 30, "b": 30, "rare": 1})
    ds = folder(tmp_path, subset=10, val_ratio=0.0, image_size=8)
    assert len(ds.train) == 10 and 2 in ds.train.y.tolist()


def test_imagefolder_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing_dir"):
        folder(tmp_path / "missing_dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        folder(tmp_path / "empty")
    write_folder(tmp_path / "classless", {"a": 3})
    (tmp_path / "classless" / "b").mkdir()
    with pytest.raises(DataError, match=r"classless[/\\]b"):
        folder(tmp_path / "classless")


def test_one_class_or_a_train_split_under_two_images_cannot_train(tmp_path: Path) -> None:
    write_folder(tmp_path / "one", {"cat": 6})
    with pytest.raises(DataError, match=r"one: one class \('cat'\); a classifier needs"):
        folder(tmp_path / "one")
    write_folder(tmp_path / "one_each_split", {"train/cat": 4, "test/cat": 2})
    with pytest.raises(DataError, match="one class"):
        folder(tmp_path / "one_each_split")
    write_folder(tmp_path / "tiny", {"a": 2, "b": 1})  # 1 train image after test and val
    with pytest.raises(DataError, match=r"tiny: too few images .*\(1 train, 1 test"):
        folder(tmp_path / "tiny", test_ratio=0.3, val_ratio=0.3, image_size=8)


def test_imagefolder_corrupt_image_names_the_file(tmp_path: Path) -> None:
    write_folder(tmp_path, {"a": 5, "b": 5})
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"broken\.png"):
        folder(tmp_path)


# --- fingerprint ---------------------------------------------------------------------


def test_fingerprint_stable_and_independent_of_cuts() -> None:
    base = digits()
    assert len(base.fingerprint) == 64 and int(base.fingerprint, 16) >= 0
    assert digits().fingerprint == base.fingerprint
    others = [
        digits(subset=50),
        digits(val_ratio=0.0),
        digits(image_size=16),
        digits(seed=9, test_ratio=0.5),
    ]
    assert {d.fingerprint for d in others} == {base.fingerprint}


def test_cifar_fingerprint_tracks_one_pixel(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    before = cifar(tmp_path).fingerprint
    assert cifar(tmp_path, image_size=16, subset=30, seed=5).fingerprint == before
    file = tmp_path / "cifar-10-batches-py" / "data_batch_5"
    with file.open("rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch[b"data"][7, 100] ^= 1
    with file.open("wb") as f:
        pickle.dump(batch, f, protocol=2)  # another protocol alone would change nothing
    assert cifar(tmp_path).fingerprint != before


def test_imagefolder_fingerprint_ignores_names_tracks_pixels(tmp_path: Path) -> None:
    write_folder(tmp_path, {"a": 5, "b": 5})
    before = folder(tmp_path).fingerprint
    (tmp_path / "a" / "000.png").rename(tmp_path / "a" / "zzz.png")
    assert folder(tmp_path, image_size=10).fingerprint == before
    pixels = np.asarray(Image.open(tmp_path / "b" / "002.png")).copy()
    pixels[0, 0, 0] ^= 1
    write_png(tmp_path / "b" / "002.png", pixels)
    changed = folder(tmp_path).fingerprint
    assert changed != before
    (tmp_path / "b" / "002.png").rename(tmp_path / "a" / "002.png")  # relabelled: a change too
    assert folder(tmp_path).fingerprint not in (before, changed)


def test_imagefolder_test_cut_keeps_its_images_when_images_are_added(tmp_path: Path) -> None:
    """The test cut keys on content: new images barely move old ones across it, so a
    model trained before the change is (almost) never tested on its training images."""
    write_folder(tmp_path, {"a": 60, "b": 40})
    before = folder(tmp_path, image_size=12)
    rng = np.random.default_rng(7)
    for name, count in (("a", 15), ("b", 10)):
        for i in range(count):
            write_png(
                tmp_path / name / f"new-{i:03d}.png",
                rng.integers(0, 256, (12, 12, 3), dtype=np.uint8),
            )
    after = folder(tmp_path, image_size=12)
    assert len(after.test) == 25 and len(before.test) == 20
    old_test, old_trained = set(rows(before.test)), set(rows(before.train, before.val))
    new_test = rows(after.test)
    assert len(old_test - set(new_test)) <= 2  # old test images stay test, but at a margin
    assert sum(image in old_trained for image in new_test) <= 2  # no more than that leaks
    # a random cut (what the validation split still is) would move about 80% of them
    assert sum(image in old_trained for image in rows(after.val)) > 2


# --- image modes: every mode Pillow reads becomes 8-bit RGB, or is refused by name -------


def png16(pixels: np.ndarray) -> bytes:
    """A real 16-bit PNG (grey, grey+alpha, RGB or RGBA by the channel count of pixels
    (H, W, C) uint16), written chunk by chunk: Pillow writes no 16-bit colour PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    h, w, c = pixels.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _grey(values: np.ndarray) -> np.ndarray:
    """(H, W) → (3, H, W): the same plane in every channel."""
    return np.repeat(values[None].astype(np.uint8), 3, axis=0)


def _over_grey(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(3, H, W) colour, (H, W) alpha → composited over grey 128, rounded, as uint8."""
    mixed = rgb.astype(np.float64) * alpha / 255 + 128 * (1 - alpha.astype(np.float64) / 255)
    return np.rint(mixed).astype(np.uint8)


LEVELS16 = np.array([[0, 255, 256, 257], [32896, 40000, 65280, 65535]], np.uint16)
LEVELS8 = (LEVELS16 >> 8).astype(np.uint8)  # [[0, 0, 1, 1], [128, 156, 255, 255]]
COLOUR16 = np.stack([LEVELS16, LEVELS16[::-1], np.full_like(LEVELS16, 1000)], axis=-1)


def _palette_with_transparency() -> bytes:
    image = Image.new("P", (2, 2))
    image.putpalette([10, 20, 30, 200, 100, 50])
    image.putpixel((1, 0), 1)
    image.putpixel((1, 1), 1)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0)  # index 0 transparent
    return buffer.getvalue()


ALPHA = np.array([[0, 255], [128, 64]], np.uint8)
MODES: list[tuple[str, str, bytes, np.ndarray]] = [
    # (id, file name, file, expected (3, H, W) uint8)
    ("png-I;16", "g.png", image_bytes(LEVELS16), _grey(LEVELS8)),
    ("pgm-16-bit-as-I", "g.pgm", image_bytes(LEVELS16, "PPM"), _grey(LEVELS8)),
    ("tiff-I-32-bit", "g.tif", image_bytes(LEVELS16.astype(np.int32), "TIFF"), _grey(LEVELS8)),
    ("png-16-bit-grey", "g16.png", png16(LEVELS16[..., None]), _grey(LEVELS8)),
    (
        "png-16-bit-rgb",
        "c16.png",
        png16(COLOUR16),
        (COLOUR16 >> 8).astype(np.uint8).transpose(2, 0, 1),
    ),
    (
        "png-16-bit-rgba",
        "a16.png",
        png16(np.dstack([COLOUR16, np.full_like(LEVELS16, 65535)])),
        (COLOUR16 >> 8).astype(np.uint8).transpose(2, 0, 1),
    ),
    (
        "tiff-F",
        "f.tif",
        image_bytes(np.array([[0.0, 0.25], [0.5, 1.0]], np.float32), "TIFF"),
        _grey(np.array([[0, 64], [128, 255]])),
    ),
    (
        "png-1",
        "b.png",
        image_bytes(np.array([[True, False], [False, True]])),
        _grey(np.array([[255, 0], [0, 255]])),
    ),
    (
        "png-P-transparent",
        "p.png",
        _palette_with_transparency(),
        np.array(
            [[[128, 200], [128, 200]], [[128, 100], [128, 100]], [[128, 50], [128, 50]]], np.uint8
        ),
    ),
    (
        "png-LA",
        "la.png",
        image_bytes(np.dstack([np.full((2, 2), 200, np.uint8), ALPHA])),
        _over_grey(np.full((3, 2, 2), 200), ALPHA),
    ),
    (
        "png-RGBA",
        "rgba.png",
        image_bytes(np.dstack([np.full((2, 2, 3), (250, 10, 60), np.uint8), ALPHA])),
        _over_grey(np.array((250, 10, 60))[:, None, None] * np.ones((3, 2, 2)), ALPHA),
    ),
    (
        "tiff-CMYK",
        "k.tif",
        image_bytes(
            np.array([[[255, 0, 0, 0], [0, 0, 0, 255], [0, 0, 0, 0], [0, 128, 0, 0]]], np.uint8),
            "TIFF",
            "CMYK",
        ),
        np.array([[[0, 0, 255, 255]], [[255, 0, 255, 127]], [[255, 0, 255, 255]]], np.uint8),
    ),
]


@pytest.mark.parametrize(
    ("name", "content", "expected"), [m[1:] for m in MODES], ids=[m[0] for m in MODES]
)
def test_every_image_mode_becomes_8_bit_rgb_pixel_for_pixel(
    tmp_path: Path, name: str, content: bytes, expected: np.ndarray
) -> None:
    file = tmp_path / name
    file.write_bytes(content)
    assert np.array_equal(_read_image(file), expected), Image.open(file).mode


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (
            image_bytes(np.array([[0, 70000]], np.int32), "TIFF"),
            "mode I values 0..70000 do not fit",
        ),
        (image_bytes(np.array([[0.0, 255.0]], np.float32), "TIFF"), "mode F (32-bit float) values"),
        (image_bytes(np.array([[0.0, np.nan]], np.float32), "TIFF"), "must lie in [0, 1]"),
    ],
    ids=["I-beyond-16-bits", "F-beyond-1", "F-nan"],
)
def test_a_mode_with_no_faithful_8_bit_form_is_refused_naming_the_file(
    tmp_path: Path, content: bytes, says: str
) -> None:
    write_folder(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "b" / "odd.tif").write_bytes(content)
    with pytest.raises(DataError) as info:
        folder(tmp_path)
    line = str(info.value)
    assert line.startswith(str(tmp_path / "b" / "odd.tif")) and says in line and "\n" not in line


def test_16_bit_pngs_are_scaled_not_saturated(tmp_path: Path) -> None:
    """The bug: Pillow's convert("RGB") clips 16-bit grey at 255, so all but the darkest
    pixels came out white. Scaled, a ramp over 0..65535 stays a ramp."""
    ramp = (np.arange(256, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)
    for name in ("a", "b"):
        for i in range(5):
            (tmp_path / name).mkdir(exist_ok=True)
            (tmp_path / name / f"{i}.png").write_bytes(image_bytes(ramp))
    ds = folder(tmp_path, image_size=16, val_ratio=0.0)
    x = torch.cat([ds.train.x, ds.test.x])
    assert torch.equal(x[0, 0], torch.arange(256, dtype=torch.uint8).view(16, 16))
    assert float((x == 255).float().mean()) == 1 / 256  # one pixel of each image, not 98%


# --- unreadable data: said as such, never "no images" or a class quietly missing ----------


def test_a_dangling_or_looping_class_folder_is_named_with_the_reason(tmp_path: Path) -> None:
    write_folder(tmp_path, {"a": 4, "b": 4})
    (tmp_path / "c").symlink_to(tmp_path / "unmounted-volume")  # a class not there
    with pytest.raises(DataError) as info:
        folder(tmp_path)
    assert str(info.value) == (
        f"{tmp_path / 'c'}: cannot read class folder (No such file or directory: "
        f"a symlink to {tmp_path / 'unmounted-volume'})"
    )
    (tmp_path / "c").unlink()
    (tmp_path / "c").symlink_to("c")
    with pytest.raises(DataError, match=r"c: cannot read class folder \(Too many levels"):
        folder(tmp_path)
    (tmp_path / "c").unlink()
    (tmp_path / "a" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(DataError, match=r"gone\.png: cannot read image \(No such file"):
        folder(tmp_path)
    (tmp_path / "a" / "gone.png").unlink()
    (tmp_path / "README.txt").write_text("not a class")  # plain files are no classes
    os.mkfifo(tmp_path / "a" / "pipe.png")  # nor image files: never opened (would block)
    assert folder(tmp_path).classes == ("a", "b")


# --- a CIFAR-10 pickle is data, never code ---------------------------------------------


@pytest.mark.parametrize("protocol", [2, 5])
def test_a_planted_cifar_pickle_runs_no_code(tmp_path: Path, protocol: int) -> None:
    write_cifar(tmp_path)
    marker = tmp_path / "marker"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(planted_pickle(str(marker), protocol))
    with pytest.raises(DataError) as info:
        cifar(tmp_path)
    assert not marker.exists(), "reading the data ran its code"
    assert str(info.value) == (
        f"{batch}: not a readable CIFAR-10 pickle (it names io.open, which CIFAR-10 never does)"
    )
