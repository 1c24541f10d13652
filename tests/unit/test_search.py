"""job/search/worker.py, job/run/local.py and the search verbs: real worker processes on a
real study."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from job.config import config_fingerprint, load_config
from job.ml.data import load_data
from job.ml.train import TrainError, train
from job.run.local import describe
from job.search.record import SEARCH_TEST_LABEL, TrialRecord
from job.search.worker import (
    MAX_ERRORS_IN_A_ROW,
    TrialsKeepFailing,
    Worker,
    claim_trial,
    open_study,
    redact,
    resolve_storage,
)
from tests.support.proc import journal_url


def test_storage_precedence_and_redaction(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(tiny)
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    assert resolve_storage(None, config, tmp_path) == journal_url(tmp_path)
    config = config.model_copy(
        update={"study": config.study.model_copy(update={"storage": "sqlite:///c.db"})}
    )
    assert resolve_storage(None, config, tmp_path) == "sqlite:///c.db"
    monkeypatch.setenv("OPTUNA_STORAGE", "sqlite:///env.db")
    assert resolve_storage(None, config, tmp_path) == "sqlite:///env.db"
    assert resolve_storage("sqlite:///flag.db", config, tmp_path) == "sqlite:///flag.db"
    url = "postgresql+psycopg2://sms:s3cret@db:5432/sms"
    assert redact(url) == "postgresql+psycopg2://sms:***@db:5432/sms"
    assert "s3cret" not in redact(url)


def test_claims_stop_at_the_budget_counting_running_trials(tiny: Path, tmp_path: Path) -> None:
    config = load_config(tiny)
    url = journal_url(tmp_path)
    study = open_study(config, url)
    claimed = [claim_trial(study, 2, url) for _ in range(3)]
    assert isinstance(claimed[0], optuna.Trial) and isinstance(claimed[1], optuna.Trial)
    assert claimed[2] == "wait"  # two RUNNING trials cover a budget of 2
    study.tell(claimed[0], state=TrialState.FAIL)  # a failure frees its slot
    third = claim_trial(study, 2, url)
    assert isinstance(third, optuna.Trial)
    study.tell(claimed[1], [0.5, 10.0])
    study.tell(third, [0.6, 20.0])
    assert claim_trial(study, 2, url) == "done"


def test_a_tell_written_before_its_connection_dropped_is_not_told_twice(
    tiny: Path, tmp_path: Path
) -> None:
    """`persist` retries a tell whose reply was lost: the retry finds the trial finished
    as told and stops there (Optuna 5 raises "Cannot tell a COMPLETE trial" otherwise);
    a trial finished otherwise meanwhile (failed as stale elsewhere) is reported."""
    url = journal_url(tmp_path)
    worker = Worker(load_config(tiny), url, log=[].append)
    trial = claim_trial(worker.study, 4, url)
    assert isinstance(trial, optuna.Trial)
    worker.study.tell(trial, [0.5, 10.0])  # the first try, written; its reply lost
    worker._tell(trial, [0.5, 10.0], TrialState.COMPLETE)  # the retry: no error
    assert [t.state for t in worker.study.get_trials()] == [TrialState.COMPLETE]
    other = claim_trial(worker.study, 4, url)
    assert isinstance(other, optuna.Trial)
    worker.study.tell(other, state=TrialState.FAIL)  # failed as stale by another worker
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError, match="FAIL"):
        worker._tell(other, [0.6, 20.0], TrialState.COMPLETE)


# --- a worker whose trials keep failing stops, with the first failure's reason ------------


def test_a_worker_whose_trials_all_error_stops_after_three_with_the_first_reason(
    tiny: Path, tmp_path: Path
) -> None:
    config = load_config(tiny)
    data = load_data(config.data)

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom, not the network's fault")

    lines: list[str] = []
    worker = Worker(config, journal_url(tmp_path), train_fn=broken, log=lines.append)
    with pytest.raises(TrialsKeepFailing) as caught:
        worker.run(data)
    message = str(caught.value)
    assert "\n" not in message
    assert f"{MAX_ERRORS_IN_A_ROW} trials in a row failed" in message
    assert "(trial 0) failed with error: RuntimeError: boom" in message
    states = [t.state for t in worker.study.get_trials()]
    assert states == [TrialState.FAIL] * MAX_ERRORS_IN_A_ROW  # each told FAIL, none left open


def test_misfit_networks_are_search_outcomes_until_too_many_in_a_row(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(tiny)
    data = load_data(config.data)
    calls: list[int] = []

    def misfits_then_one_trains(spec, policy, recipe, data, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) % 5:  # four misfits, then a real (quick) training
            raise TrainError("invalid_network", "does not fit")
        return train(spec, policy, recipe, data, **kwargs)

    worker = Worker(config, journal_url(tmp_path), train_fn=misfits_then_one_trains, log=print)
    assert worker.run(data) == 20  # 16 misfits never stop it: a COMPLETE resets the count

    monkeypatch.setattr("job.search.worker.MAX_FAILURES_IN_A_ROW", 6)
    config = config.model_copy(update={"study": config.study.model_copy(update={"name": "b"})})

    def never_fits(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise TrainError("invalid_network", "over the cap")

    worker = Worker(config, journal_url(tmp_path), train_fn=never_fits, log=print)
    with pytest.raises(TrialsKeepFailing, match=r"^6 trials .*\(trial 0\).* invalid_network: over"):
        worker.run(data)


def test_search_exits_2_with_one_line_when_every_trial_errors(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from job.cli.main import main
    from job.ml.train import Trainer

    def fit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise ValueError("a recipe that cannot run")

    monkeypatch.setattr(Trainer, "fit", fit)
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    monkeypatch.delenv("SMS_METRICS_PORT", raising=False)
    code = main(["search", "--config", str(tiny), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "failed with error: ValueError: a recipe that cannot run" in err


def test_studies_name_their_objectives_for_the_dashboard(tiny: Path, tmp_path: Path) -> None:
    config = load_config(tiny)
    url = journal_url(tmp_path)
    assert open_study(config, url).metric_names == ["accuracy", "params"]
    assert open_study(config, url, "tiny-verify", verify=True).metric_names == ["verified_accuracy"]


def test_each_trial_draws_its_learning_curve(tiny: Path, tmp_path: Path) -> None:
    """Validation accuracy per epoch, as Optuna intermediate values (Trial.report refuses a
    multi-objective study): what optuna-dashboard draws for each trial."""
    tiny.write_text(tiny.read_text().replace("epochs: 1,", "epochs: 2,"))
    config = load_config(tiny)
    url = journal_url(tmp_path)
    worker = Worker(config, url, log=lambda _: None)
    assert worker.run(load_data(config.data)) == config.study.budget
    for trial in open_study(config, url).get_trials():
        assert trial.state == TrialState.COMPLETE
        assert list(trial.intermediate_values) == [1, 2]
        assert all(0.0 <= v <= 1.0 for v in trial.intermediate_values.values())
        losses = TrialRecord.from_trial(trial).train_loss  # and the training loss per epoch
        assert losses is not None and len(losses) == 2 and all(v > 0 for v in losses)
        # the last point is the trial's validation accuracy, its first objective
        assert trial.intermediate_values[2] == trial.values[0]


def test_search_trials_evaluate_the_test_split_only_for_research(
    tiny: Path, tmp_path: Path
) -> None:
    """train.test_each_trial off (the default): no search trial is evaluated on the test
    split, so no test figure can steer the search or be shown. On (research use): each
    trial records one, and its progress line labels it; the study stays the same study."""
    configs = {
        research: load_config(tiny, ["study.budget=2", f"train.test_each_trial={research}"])
        for research in ("false", "true")
    }
    assert not load_config(tiny).train.test_each_trial
    assert config_fingerprint(configs["false"]) == config_fingerprint(configs["true"])
    for research, config in configs.items():
        url = journal_url(tmp_path / research)
        assert Worker(config, url, log=lambda _: None).run(load_data(config.data)) == 2
        for trial in open_study(config, url).get_trials():
            record = TrialRecord.from_trial(trial)
            assert record.val_accuracy is not None and record.val_accuracy == trial.values[0]
            assert ("test_accuracy" in trial.user_attrs) == (research == "true")
            assert ("test_f1" in trial.user_attrs) == (research == "true")
            line = describe(trial, config.objectives)
            assert ("test acc" in line) == (SEARCH_TEST_LABEL in line) == (research == "true")
