"""job.ml.sources.sample_images and job.ml.preview.sampled_preview_images: a preview from a
few decoded images, never the whole data set read, digested or cut."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import job.ml.sources as sources
from job.config import Config, DataConfig
from job.ml.data import DataError, load_data
from job.ml.preview import preview_images, render_grid, sampled_preview_images
from job.ml.sources import sample_images
from tests.support.data import image_bytes


@pytest.fixture
def no_whole_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Digesting (the whole-set hash) or a whole loader fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the whole data set was read")

    monkeypatch.setattr(sources, "_digests", refuse)
    for name in list(sources.LOADERS):
        monkeypatch.setitem(sources.LOADERS, name, refuse)


def test_digits_one_image_of_each_class_in_turn(no_whole_reads: None) -> None:
    sample, classes = sample_images(DataConfig(name="digits", image_size=12), 12)
    assert sample.x.shape == (12, 3, 12, 12) and sample.x.dtype == torch.uint8
    assert classes == tuple(str(i) for i in range(10))
    # the first of each of the ten classes, then the second of the first two
    assert sample.y.tolist() == [*range(10), 0, 1]


def test_digits_images_are_prepared_as_training_prepares_them() -> None:
    """The same pixels load_data gives for the same image (digits: the first is a 0)."""
    cfg = DataConfig(name="digits", image_size=16, test_ratio=0.5, val_ratio=0.0)
    sample, _ = sample_images(cfg, 1)
    data = load_data(cfg)
    found = [torch.equal(sample.x[0], x) for split in (data.train, data.test) for x in split.x]
    assert any(found)


def test_image_folder_decodes_only_what_it_shows(tmp_path: Path, no_whole_reads: None) -> None:
    rng = np.random.default_rng(0)
    for name in ("cat", "dog", "eel"):
        (tmp_path / name).mkdir()
        for i in range(3):
            pixels = rng.integers(0, 256, (10 + i, 8, 3), dtype=np.uint8)
            (tmp_path / name / f"{i}.png").write_bytes(image_bytes(pixels))
    (tmp_path / "cat" / "9.png").write_bytes(b"not an image")  # never decoded: not shown
    (tmp_path / "eel" / "0.png").write_bytes(b"not an image")  # a class not asked for
    cfg = DataConfig(name="imagefolder", path=tmp_path, image_size=8)
    sample, classes = sample_images(cfg, 2)
    assert classes == ("cat", "dog", "eel")  # all named; files listed for two only
    assert sample.y.tolist() == [0, 1] and sample.x.shape == (2, 3, 8, 8)
    with pytest.raises(DataError, match="cannot read image"):  # asked for: said, as load_data
        sample_images(cfg, 3)


def test_image_folder_with_train_and_test_samples_train(tmp_path: Path) -> None:
    for part, value in (("train", 10), ("test", 200)):
        for name in ("a", "b"):
            (tmp_path / part / name).mkdir(parents=True)
            pixels = np.full((8, 8, 3), value, dtype=np.uint8)
            (tmp_path / part / name / "x.png").write_bytes(image_bytes(pixels))
    sample, _ = sample_images(DataConfig(name="imagefolder", path=tmp_path, image_size=8), 2)
    assert bool((sample.x == 10).all())


def test_cifar_reads_meta_and_one_batch(tmp_path: Path, no_whole_reads: None) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": [b"plane", b"car", b"bird"]}, f)
    data = np.arange(4 * 3072, dtype=np.int64).astype(np.uint8).reshape(4, 3072)
    with (folder / "data_batch_1").open("wb") as f:
        pickle.dump({b"data": data, b"labels": [2, 2, 0, 1]}, f)  # no other batch needed
    sample, classes = sample_images(DataConfig(name="cifar10", path=tmp_path), 3)
    assert classes == ("plane", "car", "bird")
    assert sample.y.tolist() == [0, 1, 2]  # rows 2, 3, 0
    assert torch.equal(sample.x[0], torch.from_numpy(data[2].reshape(3, 32, 32)))


def test_missing_source_is_the_same_data_error(tmp_path: Path) -> None:
    cfg = DataConfig(name="imagefolder", path=tmp_path / "nowhere")
    with pytest.raises(DataError, match="image folder not found"):
        sample_images(cfg, 2)


def test_sampled_preview_has_the_tiles_of_the_full_preview(no_whole_reads: None) -> None:
    config = Config.model_validate({"data": {"name": "digits"}})
    images, names = sampled_preview_images(config, 24)
    assert images.shape == (4, 3, 24, 24) and images.dtype == torch.uint8
    assert names == ["photo 1", "photo 2", "digits: 0", "digits: 1"]
    grid = render_grid(images[[0, 2, 3]], [names[i] for i in (0, 2, 3)], ("Rotate",), 10)
    assert grid.width > 3 * 24


def test_full_preview_keeps_its_train_split_images() -> None:
    config = Config.model_validate({"data": {"name": "digits", "image_size": 8}})
    images, names = preview_images(config, 16)
    assert images.shape == (4, 3, 16, 16)
    assert names[:2] == ["photo 1", "photo 2"] and names[2] != names[3]
