"""One study, one data set, on PostgreSQL as on the journal: two workers starting together
agree on the study's data (the rest: tests/unit/test_study_data.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from job.ml.data import Dataset, load_data
from job.search.worker import (
    STUDY_DATA,
    DataChanged,
    fix_study_data,
    open_study,
)
from tests.support.configs import imagefolder_config
from tests.support.data import change_one_image, image_folder
from tests.support.proc import journal_url


@pytest.mark.parametrize("kind", ["journal", "postgres"])
def test_two_workers_starting_together_agree_on_the_study_s_data(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Both record and compare at once, each with other data: one study, one data set;
    exactly one of them is refused, whichever came second."""
    images = image_folder(tmp_path / "images")
    config = imagefolder_config(tmp_path, images)
    url = journal_url(tmp_path)
    if kind == "postgres":
        url = request.getfixturevalue("postgres").new_database()
    ours = load_data(config.data)
    change_one_image(images)
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
