"""One study, one data set, on PostgreSQL as on the journal: two workers starting together
agree on the study's data (the rest: tests/unit/test_study_data.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from job.config import Config, load_config
from job.ml.data import Dataset, load_data
from job.search.worker import (
    STUDY_DATA,
    DataChanged,
    fix_study_data,
    open_study,
)
from tests.support.proc import journal_url

# A tiny search on a real image folder: 2 classes x 12 PNGs of 8x8.
CONFIG = """\
study: {{name: same, budget: {budget}, sampler: random, seed: 0}}
data: {{name: imagefolder, path: {path}, image_size: 8, val_ratio: 0.2{extra}}}
augment: {{enabled: false}}
space:
  blocks:
    - {{modules: [Conv], repeat: [1, 1], channels: [8, 8, 8], kernel: [3]}}
  head_channels: [16, 16, 16]
  augment: null
train: {{epochs: 1, batch_size: 4, device: cpu, measure_latency: false}}
objectives: [accuracy, params]
select: {{verify: false}}
"""


def _images(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
    return root


def _change_one_image(root: Path) -> None:
    file = root / "b" / "05.png"
    pixels = np.asarray(Image.open(file)).copy()
    pixels[3, 3, 1] ^= 0x40
    Image.fromarray(pixels).save(file)


def _config(tmp_path: Path, images: Path, budget: int = 1, extra: str = "") -> Config:
    path = tmp_path / f"c{budget}{len(extra)}.yaml"
    path.write_text(CONFIG.format(budget=budget, path=images, extra=extra))
    return load_config(path)


@pytest.mark.parametrize("kind", ["journal", "postgres"])
def test_two_workers_starting_together_agree_on_the_study_s_data(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Both record and compare at once, each with other data: one study, one data set;
    exactly one of them is refused, whichever came second."""
    images = _images(tmp_path / "images")
    config = _config(tmp_path, images)
    url = journal_url(tmp_path)
    if kind == "postgres":
        url = request.getfixturevalue("postgres").new_database()
    ours = load_data(config.data)
    _change_one_image(images)
    theirs = load_data(config.data)
    study = open_study(config, url)
    start = threading.Barrier(2)
    refused: list[str] = []

    def worker(data: Dataset) -> None:
        mine = open_study(config, url)  # its own connection, as another process's
        start.wait()
        try:
            fix_study_data(mine, url, data, config)
        except DataChanged as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=worker, args=(d,)) for d in (ours, theirs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(refused) == 1, refused
    fixed = study.user_attrs[STUDY_DATA]
    assert fixed in (ours.fingerprint, theirs.fingerprint)
    other = theirs if fixed == ours.fingerprint else ours
    assert f"{other.fingerprint[:12]} here, {fixed[:12]} in study" in refused[0]
