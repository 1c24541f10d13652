"""job/storage/'s URL checks, refusals and the run lock; `_hand_back` of an unsaved
checkpoint. The table of bad storage inputs is in tests/unit/test_bad_inputs.py; these need a
live server or a second live process."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

from job.config import load_config
from job.ml.data import load_data
from job.ml.train import train
from job.search.worker import JOURNAL, Worker
from job.storage import (
    StorageURLError,
    check_storage_url,
    refused,
)
from tests.support.configs import TINY


def test_supported_urls_pass_the_check() -> None:
    for url in (
        "journal:///tmp/x/study.journal",
        "postgresql+psycopg2://u:p@db:5432/sms",
        "postgresql+psycopg2://u@[fd00::1]/sms",
        "sqlite:///tmp/x/study.db",
    ):
        check_storage_url(url)
    for url in ("foo://bar", "mysql://u:p@h/d", "sqlite://", "journal://", "postgresql://h/d"):
        with pytest.raises(StorageURLError):
            check_storage_url(url)


def test_final_refusals_are_told_apart_from_outages() -> None:
    assert refused('FATAL:  password authentication failed for user "sms"')
    assert refused('FATAL:  database "nope" does not exist')
    assert refused("fe_sendauth: no password supplied")
    assert not refused("Connection refused Is the server running on that host")
    assert not refused('could not translate host name "db" to address')
    assert not refused("FATAL:  the database system is starting up")


def test_an_unsaved_checkpoint_is_said_so_and_the_retry_starts_over(tmp_path: Path) -> None:
    """SIGTERM mid-trial with a checkpoint folder that cannot be written: the trial is
    handed back (FAIL `preempted`, retry queued, worker stopped: exit 143 as before), but
    as not saved: no resume_from on the retry, and the log says so."""
    config_path = tmp_path / "c.yaml"
    config_path.write_text(TINY)
    config = load_config(config_path)
    url = JOURNAL + str(tmp_path / "study.journal")
    lines: list[str] = []
    worker = Worker(config, url, log=lines.append, checkpoint_dir=Path("/proc/no/such"))

    def preempted_train(*args, **kwargs):  # type: ignore[no-untyped-def]
        worker.stop.set()  # SIGTERM arrives as training starts
        return train(*args, **kwargs)

    worker.train_fn = preempted_train
    worker.run(load_data(config.data))
    trials = worker.study.get_trials()
    first = trials[0]
    assert first.state == TrialState.FAIL
    assert first.user_attrs["fail_reason"] == "preempted"
    assert first.user_attrs["checkpoint_saved"] is False
    assert "checkpoint not saved: " in first.user_attrs["fail_message"]
    assert "checkpoint_epoch" not in first.user_attrs
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == first.number)
    assert retry.state == TrialState.WAITING and "resume_from" not in retry.user_attrs
    assert any("checkpoint NOT saved" in line for line in lines), lines
