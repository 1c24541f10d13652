"""A trial's user attrs and parameters are written in few, whole transactions
(job.storage.save_trial_attrs, ParamHold) and stay exactly what Optuna's per-key
`set_user_attr` and per-suggest writes stored, on the journal and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from job.config import Config, load_config
from job.ml.data import Dataset, load_data
from job.ml.train import TrainError, TrainResult
from job.search import tasks as search
from job.search.record import TrialAttrs
from job.search.tasks import TrialRun
from job.search.worker import JOURNAL, Worker, open_study
from job.storage import open_storage, save_trial_attrs
from job.testing.pgserver import External, Server
from tests.support.configs import TINY

BUDGET = 3  # COMPLETE trials; the second trial fails in training, so four in all


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(TINY.replace("budget: 4", f"budget: {BUDGET}"))
    return load_config(path)


@pytest.fixture(scope="module")
def data(config: Config) -> Dataset:
    return load_data(config.data)


def fake_train() -> Any:
    """Made-up results, no training; the second call fails as a NaN loss would."""
    calls: list[int] = []

    def train(spec: Any, augment: Any, recipe: Any, data: Dataset, **_: Any) -> TrainResult:
        calls.append(1)
        if len(calls) == 2:
            raise TrainError("nan_loss", "loss is nan at epoch 1")
        acc = 0.5 + len(calls) / 100
        return TrainResult(acc, acc - 0.01, acc, acc, 1234, 5678, 999.5, 0.1, "cpu")

    return train


class PerKeyRun(TrialRun):
    """A trial as the worker wrote it before the batching: one `set_user_attr` per key,
    at once."""

    def record(self, attrs: TrialAttrs, write: bool = True) -> None:
        for key, value in attrs.to_attrs().items():
            self.trial.set_user_attr(key, value)


class PerKeyWorker(Worker):
    """The worker as it wrote before the batching: one `set_user_attr` per key, at once
    (and, with `NoHold`, each parameter as its `suggest_*` runs)."""

    run_type = PerKeyRun


class NoHold:
    """ParamHold that holds nothing: Optuna's own write per parameter."""

    def __init__(self, trial: optuna.Trial) -> None:
        pass

    def write(self) -> None:
        pass


def _stored(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials as a fresh reader sees them in the storage."""
    return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials()


def _urls(kind: str, postgres: Server | External | None, tmp_path: Path) -> tuple[str, str]:
    if kind == "journal":
        return JOURNAL + str(tmp_path / "a.journal"), JOURNAL + str(tmp_path / "b.journal")
    assert postgres is not None
    return postgres.new_database(), postgres.new_database()


def _count_attr_transactions(
    engine: sqlalchemy.Engine, table: str = "trial_user_attributes"
) -> list[int]:
    """A one-item list counting committed transactions that inserted into `table`."""
    count, writing = [0], set()

    @sqlalchemy.event.listens_for(engine, "before_cursor_execute")
    def statement(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        if sql.lstrip().upper().startswith(f"INSERT INTO {table.upper()} "):
            writing.add(id(conn.connection.dbapi_connection))

    @sqlalchemy.event.listens_for(engine, "commit")
    def commit(conn: Any) -> None:
        key = id(conn.connection.dbapi_connection)
        if key in writing:
            writing.discard(key)
            count[0] += 1

    @sqlalchemy.event.listens_for(engine, "rollback")
    def rollback(conn: Any) -> None:
        writing.discard(id(conn.connection.dbapi_connection))

    return count


def _engine(study: optuna.Study) -> sqlalchemy.Engine:
    backend = getattr(study._storage, "_backend", study._storage)
    assert isinstance(backend, optuna.storages.RDBStorage)
    return backend.engine


@pytest.mark.parametrize("kind", ["journal", "postgres"])
def test_user_attrs_and_params_are_the_same_as_per_key_writes(
    kind: str,
    config: Config,
    data: Dataset,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    postgres = request.getfixturevalue("postgres") if kind == "postgres" else None
    batched_url, per_key_url = _urls(kind, postgres, tmp_path)
    Worker(config, batched_url, train_fn=fake_train(), log=lambda _: None).run(data)
    monkeypatch.setattr(search, "ParamHold", NoHold)
    PerKeyWorker(config, per_key_url, train_fn=fake_train(), log=lambda _: None).run(data)
    batched, per_key = _stored(batched_url, "tiny"), _stored(per_key_url, "tiny")
    assert [t.state for t in batched] == [t.state for t in per_key]
    assert [t.state for t in batched].count(TrialState.COMPLETE) == BUDGET
    assert [t.state for t in batched].count(TrialState.FAIL) == 1
    for new, old in zip(batched, per_key, strict=True):
        assert new.params == old.params  # the same seeded sampler: the same candidates
        assert new.distributions == old.distributions and new.params
        assert new.user_attrs.keys() == old.user_attrs.keys()
        assert new.user_attrs["seconds"] > 0 and old.user_attrs["seconds"] > 0
        assert {k: v for k, v in new.user_attrs.items() if k != "seconds"} == {
            k: v for k, v in old.user_attrs.items() if k != "seconds"
        }
    done = next(t for t in batched if t.state == TrialState.COMPLETE)
    assert {"worker", "code_version", "data_fingerprint", "model_yaml", "recipe"} <= set(
        done.user_attrs
    )
    assert done.user_attrs["val_accuracy"] == 0.51 and done.user_attrs["device"] == "cpu"
    failed = next(t for t in batched if t.state == TrialState.FAIL)
    assert failed.user_attrs["fail_reason"] == "nan_loss"
    assert "model_yaml" in failed.user_attrs  # written before training began


def test_save_trial_attrs_is_one_transaction_on_postgres(
    config: Config, postgres: Server | External
) -> None:
    url = postgres.new_database()
    study = open_study(config, url)
    commits = _count_attr_transactions(_engine(study))
    trial = study.ask()
    attrs = {"a": 1, "b": "two", "c": [3, 4.5], "d": None, "e": {"f": True}}
    save_trial_attrs(study, trial, attrs)
    assert commits[0] == 1
    assert trial.user_attrs == attrs  # the Trial object's view, as set_user_attr keeps it
    for key, value in attrs.items():  # the way it was: one transaction per key
        trial.set_user_attr(key, value)
    assert commits[0] == 1 + len(attrs)
    save_trial_attrs(study, trial, {"a": 10, "g": "new"})  # overwrites and adds, as set does
    assert _stored(url, "tiny")[0].user_attrs == attrs | {"a": 10, "g": "new"}

    # all or nothing: a value that cannot be stored leaves every key of the write unwritten
    with pytest.raises(TypeError):
        save_trial_attrs(study, trial, {"h": 1, "i": object(), "j": 2})
    assert not {"h", "j"} & set(_stored(url, "tiny")[0].user_attrs)
    study.tell(trial, [0.5, 100.0])
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        save_trial_attrs(study, trial, {"k": 1})


def test_a_worker_writes_user_attrs_twice_and_params_once_per_trial_on_postgres(
    config: Config, data: Dataset, postgres: Server | External
) -> None:
    worker = Worker(config, postgres.new_database(), train_fn=fake_train(), log=lambda _: None)
    commits = _count_attr_transactions(_engine(worker.study))
    param_commits = _count_attr_transactions(_engine(worker.study), "trial_params")
    assert worker.run(data) == BUDGET + 1
    # base + candidate before training, result (or failure) + seconds before tell: 2, not 19
    assert commits[0] == 2 * (BUDGET + 1)
    assert param_commits[0] == BUDGET + 1  # every suggest_* of a trial: one transaction
    trials = worker.study.get_trials()
    assert all(len(t.params) >= 4 for t in trials)  # 4+ suggests each in this space
