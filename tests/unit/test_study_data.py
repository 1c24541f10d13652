"""One study, one data set: the first worker records the study's data (the source's
fingerprint and how it is cut); a worker, retrainer, `run` or `collect` whose data differs
refuses (exit 2, one line naming both), so no summary mixes two data sets."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from job.cli.main import main
from job.config import load_config
from job.ml.data import load_data
from job.search.retrain import RetrainTask, verify_study_name
from job.search.worker import (
    STUDY_DATA,
    STUDY_PREPARATION,
    DataChanged,
    Worker,
)
from job.storage import open_storage
from tests.support.configs import IMAGEFOLDER, imagefolder_config
from tests.support.data import change_one_image, image_folder
from tests.support.proc import journal_url


def _trials(url: str, name: str = "same") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials()


def test_a_worker_on_changed_data_refuses_before_its_first_trial(tmp_path: Path) -> None:
    images = image_folder(tmp_path / "images")
    url = journal_url(tmp_path)
    first = imagefolder_config(tmp_path, images, budget=1)
    before = load_data(first.data)
    assert Worker(first, url, log=lambda line: None).run(before) == 1
    recorded = optuna.load_study(study_name="same", storage=open_storage(url)).user_attrs
    assert recorded[STUDY_DATA] == before.fingerprint
    assert recorded[STUDY_PREPARATION]["image_size"] == 8

    change_one_image(images)  # the volume changed under the study
    # one more trial to run, were it allowed
    second = imagefolder_config(tmp_path, images, budget=2)
    after = load_data(second.data)
    assert after.fingerprint != before.fingerprint
    with pytest.raises(DataChanged) as info:
        Worker(second, url, log=lambda line: None).run(after)
    line = str(info.value)
    assert "\n" not in line and len(line) <= 300
    assert f"{after.fingerprint[:12]} here, {before.fingerprint[:12]} in study 'same'" in line
    assert "research" in line and "--study NEW" in line
    assert len(_trials(url)) == 1  # no trial on the other data
    # the unchanged data still runs: the refusal is about the data, not the study
    change_one_image(images)
    assert load_data(second.data).fingerprint == before.fingerprint
    assert Worker(second, url, log=lambda line: None).run() == 1


def test_a_worker_cutting_the_data_otherwise_refuses_naming_the_key(tmp_path: Path) -> None:
    """The same files, another `data.subset`: other images trained on, same fingerprint."""
    images = image_folder(tmp_path / "images")
    url = journal_url(tmp_path)
    Worker(imagefolder_config(tmp_path, images), url, log=lambda line: None).run()
    cut = imagefolder_config(tmp_path, images, budget=2, extra=", subset: 16")
    with pytest.raises(DataChanged, match=r"^data\.subset: 16 here, None in study 'same'"):
        Worker(cut, url, log=lambda line: None).run()
    assert len(_trials(url)) == 1


def test_a_retrainer_on_changed_data_refuses_too(tmp_path: Path) -> None:
    images = image_folder(tmp_path / "images")
    url, config = journal_url(tmp_path), imagefolder_config(tmp_path, images)
    name = verify_study_name("same")
    assert Worker(config, url, name, log=lambda line: None, task=RetrainTask.open).run() == 0
    change_one_image(images)
    with pytest.raises(DataChanged, match=f"in study '{name}'"):
        Worker(config, url, name, log=lambda line: None, task=RetrainTask.open).run()


def test_an_older_study_keeps_the_data_its_trials_recorded(tmp_path: Path) -> None:
    """A study from before the record: its COMPLETE trials say what data it ran on."""
    images = image_folder(tmp_path / "images")
    url, config = journal_url(tmp_path), imagefolder_config(tmp_path, images, budget=2)
    Worker(config, url, log=lambda line: None).run()
    study = optuna.load_study(study_name="same", storage=open_storage(url))
    old = study.user_attrs[STUDY_DATA]
    for key in (STUDY_DATA, STUDY_PREPARATION):  # as an older version left it
        study._storage.set_study_user_attr(study._study_id, key, None)
    change_one_image(images)
    with pytest.raises(DataChanged, match="in study 'same'"):
        Worker(config, url, log=lambda line: None).run()
    assert study.user_attrs[STUDY_DATA] == old  # recorded from its trials, not this worker


def test_search_run_and_collect_refuse_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The verbs: `search` (the worker), `run` (before starting any) and `collect`
    (whose exports would be verified on other data) exit 2 with one line; no trial runs."""
    images = image_folder(tmp_path / "images")
    out = tmp_path / "out"
    (tmp_path / "c.yaml").write_text(IMAGEFOLDER.format(budget=1, path=images, extra=""))
    (tmp_path / "c2.yaml").write_text(IMAGEFOLDER.format(budget=2, path=images, extra=""))
    argv = ["--config", str(tmp_path / "c.yaml"), "--out", str(out)]
    assert main(["search", *argv]) == 0
    before = load_data(load_config(tmp_path / "c.yaml").data).fingerprint
    change_one_image(images)
    after = load_data(load_config(tmp_path / "c.yaml").data).fingerprint
    capsys.readouterr()
    more = ["--config", str(tmp_path / "c2.yaml"), "--out", str(out)]
    for verb in (["search", *more], ["run", *more, "--workers", "1"], ["collect", *argv]):
        assert main(verb) == 2, verb
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1, err
        assert f"{after[:12]} here, {before[:12]} in study 'same'" in err[0]
        assert "Traceback" not in err[0]
    assert len(_trials(journal_url(out))) == 1
