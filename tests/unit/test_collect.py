"""The collector on real Optuna studies (journal files): front, best, counts, files, status."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial
from PIL import Image

from job.collect.results import (
    Front,
    best_values,
    collect,
    human_duration,
    is_feasible,
    pareto_front,
    plot_pareto,
    status_report,
    trial_counts,
    wait_for_budget,
    write_pareto_json,
)
from job.config import Config, ConfigError, parse_config
from job.files import OutputError
from job.search.record import SEARCH_TEST_LABEL
from job.search.space import directions

optuna.logging.set_verbosity(optuna.logging.WARNING)

T0 = datetime(2025, 3, 1, 10, 0, 0)
DISTS = {"m1": CategoricalDistribution(["Conv", "DWConv"]), "m1/repeat": IntDistribution(1, 3)}

# (accuracy, params, constraint or None, test accuracy); numbers are the trial numbers.
# Hand-computed front (maximise accuracy, minimise params), feasible = constraint <= 0:
#   0 (0.90, 1000)  front
#   1 (0.95, 5000)  front
#   2 (0.85, 2000)  dominated by 0
#   3 (0.99,  500)  infeasible (0.5 > 0): would dominate 0, 1, 2, 6, 7; not ranked
#   4 (0.80,  200)  front
#   5 FAIL
#   6 (0.95, 5000)  front: equal to 1, and equal trials do not dominate each other
#   7 (0.95, 6000)  dominated by 1 (same accuracy, more params)
#   8 (0.97, 9000)  front: constraint exactly 0 is feasible
#   9 (0.60,  150)  front; made through ask / set_constraint / tell
#  10 RUNNING
ROWS = [
    (0.90, 1000, None, 0.89),
    (0.95, 5000, -0.2, 0.93),
    (0.85, 2000, None, 0.84),
    (0.99, 500, 0.5, 0.98),
    (0.80, 200, None, 0.79),
]
ROWS_AFTER_FAIL = [(0.95, 5000, None, 0.94), (0.95, 6000, None, 0.92), (0.97, 9000, 0.0, 0.96)]
FRONT = [9, 4, 0, 1, 6, 8]


def make_config(budget: int = 20, objectives: tuple[str, ...] = ("accuracy", "params")) -> Config:
    return parse_config({"study": {"name": "coll", "budget": budget}, "objectives": objectives})


def make_study(path: Path, config: Config, name: str = "coll") -> optuna.Study:
    return optuna.create_study(
        storage=JournalStorage(JournalFileBackend(str(path))),
        study_name=name,
        directions=[StudyDirection[d.upper()] for d in directions(config.objectives)],
        load_if_exists=True,
    )


def attrs(number: int, params: int, test: float) -> dict[str, object]:
    return {
        "model_yaml": f"input_channel: 3\n# trial {number}\n",
        "augment": {"n_select": 2, "level": number},
        "params": params,
        "macs": params * 30,
        "test_accuracy": test,
        "latency_ms_ort_fp32": 0.1 * number,
        "data_fingerprint": "fp-new" if number % 2 else "fp-old",
    }


def add(study: optuna.Study, number: int, row: tuple[float, int, float | None, float]) -> None:
    acc, params, constraint, test = row
    trial = create_trial(
        params={"m1": "Conv", "m1/repeat": 1 + number % 3},
        distributions=DISTS,
        values=[acc, params],
        user_attrs=attrs(number, params, test),
        constraints=None if constraint is None else {"params": constraint},
    )
    # One trial every 10 minutes from T0, so the rate is known: 6 per hour.
    trial.datetime_start = T0 + timedelta(minutes=10 * number)
    trial.datetime_complete = trial.datetime_start + timedelta(minutes=10)
    study.add_trial(trial)


@pytest.fixture
def config() -> Config:
    return make_config(budget=20)


@pytest.fixture
def study(tmp_path: Path, config: Config) -> optuna.Study:
    study = make_study(tmp_path / "j.log", config)
    for number, row in enumerate(ROWS):
        add(study, number, row)
    failed = create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "nan_loss"})
    study.add_trial(failed)
    for number, row in enumerate(ROWS_AFTER_FAIL, start=6):
        add(study, number, row)
    # The workers' own path: constraints set on a live trial, then told.
    trial = study.ask()
    trial.suggest_categorical("m1", ["Conv", "DWConv"])
    trial.set_constraint("params", -0.1)
    for key, value in attrs(9, 150, 0.6).items():
        trial.set_user_attr(key, value)
    study.tell(trial, [0.60, 150])
    study.ask()  # 10: still running
    return study


def test_constraints_are_read_from_the_stored_trials(study: optuna.Study) -> None:
    trials = study.get_trials()
    assert trials[3].constraints == {"params": 0.5} and not is_feasible(trials[3])
    assert trials[8].constraints == {"params": 0.0} and is_feasible(trials[8])
    assert trials[9].constraints == {"params": -0.1} and is_feasible(trials[9])
    assert trials[0].constraints == {} and is_feasible(trials[0])


def test_front_is_the_non_dominated_feasible_set(study: optuna.Study, config: Config) -> None:
    assert [t.number for t in pareto_front(study, config)] == FRONT


def test_front_of_a_single_objective_study(tmp_path: Path) -> None:
    config = make_config(objectives=("accuracy",))
    study = make_study(tmp_path / "j.log", config)
    for acc in (0.5, 0.9, 0.7, 0.9):
        study.add_trial(create_trial(params={}, distributions={}, values=[acc]))
    assert [t.number for t in pareto_front(study, config)] == [1, 3]
    assert best_values(study, config) == {"accuracy": 0.9}


def test_best_values_skip_infeasible_and_failed(study: optuna.Study, config: Config) -> None:
    assert best_values(study, config) == {"accuracy": 0.97, "params": 150.0}


def test_counts_by_state_name(study: optuna.Study) -> None:
    assert trial_counts(study) == {"RUNNING": 1, "COMPLETE": 9, "FAIL": 1}


def test_a_study_made_for_other_objectives_is_refused(tmp_path: Path) -> None:
    study = make_study(tmp_path / "j.log", make_config(objectives=("params", "accuracy")))
    with pytest.raises(ConfigError, match="objectives: study 'coll' has directions"):
        pareto_front(study, make_config())


def test_collect_writes_the_three_files(
    study: optuna.Study, config: Config, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "deeper"
    summary = collect(study, config, out)

    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["study"] == "coll" and summary["budget"] == 20
    assert summary["trials"] == {"RUNNING": 1, "COMPLETE": 9, "FAIL": 1}
    assert summary["complete"] == 9
    assert summary["front_size"] == len(FRONT) and summary["front"] == FRONT
    assert summary["best"] == {"accuracy": 0.97, "params": 150.0}
    # Over the feasible COMPLETE trials: trial 3 (0.98) breaks a hard limit.
    assert summary["best_test_accuracy"] == 0.96
    assert summary["best_accuracy"] == 0.97 == summary["best"]["accuracy"]
    assert summary["feasible"] == 8  # 9 COMPLETE, trial 3 infeasible
    # The front in losses (1 - acc, log10(params) / 8), swept by hand, in the unit box.
    assert summary["hypervolume"] == pytest.approx(0.6787632368785259, abs=1e-12)
    # Budget not met: the clock runs to now, long after T0 (the rate itself: test_study).
    assert 0 < summary["trials_per_hour"] < 6.0
    assert summary["objectives"] == [
        {"name": "accuracy", "direction": "maximize", "loss": "1 - accuracy"},
        {"name": "params", "direction": "minimize", "loss": "log10(max(params, 1)) / 8"},
    ]
    assert summary["data_fingerprints"] == ["fp-new", "fp-old"]
    assert summary["files"] == ["pareto.json", "pareto.png", "summary.json"]

    entries = json.loads((out / "pareto.json").read_text())
    assert [e["number"] for e in entries] == FRONT
    first = entries[FRONT.index(0)]
    assert first["values"] == {"accuracy": 0.90, "params": 1000}
    assert first["params"] == {"m1": "Conv", "m1/repeat": 1}
    assert first["model_yaml"] == "input_channel: 3\n# trial 0\n"
    assert first["augment"] == {"n_select": 2, "level": 0}
    assert first["test_accuracy"] == 0.89 and first["params_count"] == 1000
    assert first["macs"] == 30000 and first["latency_ms_ort_fp32"] == 0.0
    assert all(e["model_yaml"] and e["augment"] for e in entries)

    with Image.open(out / "pareto.png") as image:
        assert image.format == "PNG"
        assert image.width >= 600 and image.height >= 400
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 50  # drawn on, not blank


def test_pareto_json_on_its_own(study: optuna.Study, config: Config, tmp_path: Path) -> None:
    write_pareto_json(pareto_front(study, config)[:1], config, tmp_path / "p.json")
    (entry,) = json.loads((tmp_path / "p.json").read_text())
    assert entry["number"] == 9 and entry["values"] == {"accuracy": 0.6, "params": 150}


def test_a_search_trials_test_accuracy_is_shown_only_labelled_as_research(
    study: optuna.Study, config: Config, tmp_path: Path
) -> None:
    """Every trial here has a test accuracy, as with train.test_each_trial: `collect`'s
    line labels it. Off (the default), a trial has none: the line shows validation only,
    and pareto.json keeps its `test_accuracy` key, null."""
    summary = collect(study, config, tmp_path / "out")
    line = Front(summary, []).line(tmp_path).splitlines()[0]
    assert line.endswith(
        f"best validation accuracy 0.9700, its test accuracy 0.9600 ({SEARCH_TEST_LABEL})"
    )
    line = Front(summary | {"best_test_accuracy": None}, []).line(tmp_path).splitlines()[0]
    assert line.endswith("; best validation accuracy 0.9700")
    blind = make_study(tmp_path / "blind.log", config)
    user = {"val_accuracy": 0.9, "params": 1000}
    blind.add_trial(create_trial(params={}, distributions={}, values=[0.9, 1000], user_attrs=user))
    write_pareto_json(pareto_front(blind, config), config, tmp_path / "p.json")
    (entry,) = json.loads((tmp_path / "p.json").read_text())
    assert entry["test_accuracy"] is None and entry["params_count"] == 1000


def test_plot_without_params_objective_reads_the_user_attr(tmp_path: Path) -> None:
    config = make_config(objectives=("f1", "latency"))
    study = make_study(tmp_path / "j.log", config)
    for number, (f1, ms) in enumerate([(0.7, 2.0), (0.8, 3.0), (0.6, 4.0)]):
        user = attrs(number, 1000 * (number + 1), f1)
        study.add_trial(create_trial(params={}, distributions={}, values=[f1, ms], user_attrs=user))
    plot_pareto(study, config, tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as image:
        assert image.format == "PNG" and image.width >= 600
    assert [t.number for t in pareto_front(study, config)] == [0, 1]


def test_status_report(study: optuna.Study, config: Config) -> None:
    # 9 COMPLETE between T0 and T0 + 90 min: 6 per hour; 11 to go: 110 minutes.
    text = status_report(study, config, now=T0 + timedelta(minutes=90))
    assert "study       coll" in text
    assert "9/20 COMPLETE" in text
    assert "RUNNING 1, COMPLETE 9, FAIL 1" in text
    assert "accuracy 0.97 (max), params 150 (min)" in text
    assert f"front       {len(FRONT)} trials" in text
    assert "hypervolume 0.6788 (normalised" in text
    assert "6.0 COMPLETE trials/h" in text
    assert "eta         110 min" in text
    assert "journal" not in text and "j.log" not in text


def test_status_when_the_budget_is_met(tmp_path: Path) -> None:
    config = make_config(budget=5)
    study = make_study(tmp_path / "j.log", config)
    for number, row in enumerate(ROWS):
        add(study, number, row)
    text = status_report(study, config, now=T0 + timedelta(days=3))
    assert "5/5 COMPLETE (100%)" in text and "eta         done" in text
    # The clock stopped at the last completion (T0 + 50 min), not three days later.
    assert "6.0 COMPLETE trials/h" in text


def test_empty_study(tmp_path: Path, config: Config) -> None:
    study = make_study(tmp_path / "j.log", config)
    text = status_report(study, config)
    assert "none yet" in text and "eta         —" in text and "front       0 trials" in text
    assert "hypervolume —" in text
    study.add_trial(create_trial(state=TrialState.FAIL))
    summary = collect(study, config, tmp_path / "out")
    assert summary["trials"] == {"FAIL": 1} and summary["complete"] == 0
    assert summary["front_size"] == 0 and summary["best"] == {}
    assert summary["best_test_accuracy"] is None and summary["data_fingerprints"] == []
    assert summary["best_accuracy"] is None and summary["hypervolume"] == 0.0
    assert summary["trials_per_hour"] is None
    assert json.loads((tmp_path / "out" / "pareto.json").read_text()) == []
    with Image.open(tmp_path / "out" / "pareto.png") as image:
        assert image.format == "PNG"


def test_human_duration() -> None:
    assert human_duration(30) == "<1 min"
    assert human_duration(12 * 60) == "12 min"
    assert human_duration(5 * 3600) == "5.0 h"
    assert human_duration(3 * 86400) == "3.0 d"


def test_wait_for_budget(study: optuna.Study, tmp_path: Path) -> None:
    assert wait_for_budget(study, make_config(budget=9), poll_s=0.01, timeout_s=0)
    assert not wait_for_budget(study, make_config(budget=10), poll_s=0.05, timeout_s=0.2)

    # Another process's handle on the same journal finishes the tenth trial meanwhile.
    other = make_study(tmp_path / "j.log", make_config())
    timer = threading.Timer(0.3, add, (other, 11, (0.5, 100, None, 0.5)))
    timer.start()
    try:
        assert wait_for_budget(study, make_config(budget=10), poll_s=0.05, timeout_s=30)
    finally:
        timer.join()


def test_collect_writes_each_file_atomically(
    study: optuna.Study, config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure mid-write leaves the previous file whole and no temporary file behind;
    a rerun replaces the files; nothing but the three files is ever left."""
    out = tmp_path / "out"
    collect(study, config, out)
    before = {name: (out / name).read_bytes() for name in ("summary.json", "pareto.png")}

    def broken_savefig(self: object, path: object, **kwargs: object) -> None:
        Path(str(path)).write_bytes(b"half a png")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", broken_savefig)
    with pytest.raises(OutputError, match=r"cannot write .*/pareto\.png: No space left"):
        collect(study, config, out)
    assert (out / "pareto.png").read_bytes() == before["pareto.png"]  # still the old one
    assert sorted(p.name for p in out.iterdir()) == ["pareto.json", "pareto.png", "summary.json"]
    monkeypatch.undo()
    add(study, 11, (0.99, 120, 0.98, 0.0))
    collect(study, config, out)
    assert (out / "summary.json").read_bytes() != before["summary.json"]
    assert sorted(p.name for p in out.iterdir()) == ["pareto.json", "pareto.png", "summary.json"]
