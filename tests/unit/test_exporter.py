"""job.serve.exporter and the pushes of job.serve.metrics, in this process: the study's
one source of study-level series, read at scrape time from a journal; the Pushgateway's
URL and a failed push (a database outage, the verb and a real Pushgateway:
tests/integration/test_exporter.py)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from optuna.trial import TrialState, create_trial
from prometheus_client import generate_latest

from job.config import parse_config
from job.search.worker import JOURNAL, open_study
from job.serve.exporter import last_progress, study_registry
from job.serve.metrics import push_final
from job.settings import EnvError, Settings
from job.testing.pgserver import free_port
from job.testing.prom import check_metrics
from tests.support.metrics import one, picks_registry, samples
from tests.support.studies import finished_trial


def _scrape(config_budget: int, url: str, study: str | None = None) -> str:
    config = parse_config({"study": {"name": "exp", "budget": config_budget}})
    return generate_latest(study_registry(config, url, study, min_interval_s=0.0)).decode()


def test_every_study_series_from_one_read(tmp_path: Path) -> None:
    url = JOURNAL + str(tmp_path / "study.journal")
    config = parse_config({"study": {"name": "exp", "budget": 6, "stall_after_s": 900}})
    study = open_study(config, url)
    start = datetime.now() - timedelta(hours=1)
    study.add_trial(finished_trial(0.8, 1000.0, start, 10))
    study.add_trial(finished_trial(0.9, 4000.0, start, 30))
    study.add_trial(create_trial(state=TrialState.FAIL))
    study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values={1: 0.3, 2: 0.4}))
    retry = create_trial(state=TrialState.WAITING, system_attrs={"failed_trial": 2})
    study.add_trial(retry)

    text = generate_latest(study_registry(config, url, min_interval_s=0.0)).decode()
    assert check_metrics(text) == ""
    assert one(text, "sms_storage_up", study="exp") == 1
    states = {dict(k)["state"]: v for k, v in samples(text, "sms_study_trials").items()}
    assert states == {"RUNNING": 0, "WAITING": 1, "COMPLETE": 2, "PRUNED": 1, "FAIL": 1}
    assert one(text, "sms_study_budget") == 6
    assert one(text, "sms_study_finished") == 0
    assert one(text, "sms_study_best_accuracy_ratio") == 0.9
    assert one(text, "sms_study_best_params") == 1000
    # deprecated, kept one release: the mixed-unit family and the duplicate
    assert one(text, "sms_study_best", objective="accuracy") == 0.9
    assert one(text, "sms_study_best", objective="params") == 1000
    assert one(text, "sms_study_best_accuracy") == 0.9
    assert "# HELP sms_study_best_accuracy DEPRECATED" in text
    assert one(text, "sms_study_pareto_front_size") == 2
    assert 0 < one(text, "sms_study_hypervolume") < 1
    rate = one(text, "sms_study_trials_per_hour")
    assert rate == pytest.approx(2.0, rel=0.05)  # 2 COMPLETE in the hour since the start
    # the FAIL and PRUNED trials ended just now: a worker is alive, so there is an ETA
    assert one(text, "sms_study_eta_seconds") == pytest.approx(4 / rate * 3600)
    last = (start + timedelta(minutes=30)).timestamp()
    assert one(text, "sms_study_last_progress_timestamp_seconds") == pytest.approx(last)
    assert one(text, "sms_study_stall_after_seconds") == 900
    assert one(text, "sms_study_stale_trials") == 0
    assert one(text, "sms_study_retried_trials_total") == 1
    assert "# TYPE sms_study_retried_trials_total counter" in text
    assert one(text, "sms_study_retried_trials") == 1  # deprecated gauge
    assert not samples(text, "sms_study_waiting_since_timestamp_seconds")  # trials exist
    # the pruned trial trained 2 of train.epochs' 10; finished_trial's curves are empty
    assert one(text, "sms_study_epochs_trained_total") == 2
    assert one(text, "sms_study_epochs_saved_total") == 8
    assert math.isnan(one(text, "sms_study_budget_epochs"))
    assert not [n for n in text.split() if n.endswith("_created")]


def test_progress_is_the_first_start_until_a_trial_completes() -> None:
    start = datetime(2026, 1, 1, 12, 0)
    running = create_trial(state=TrialState.RUNNING)
    running.datetime_start = start
    assert last_progress([]) is None
    assert last_progress([running]) == start.timestamp()
    done = finished_trial(0.5, 10.0, start, 5)
    assert last_progress([running, done]) == (start + timedelta(minutes=5)).timestamp()


def test_the_latest_version_unless_one_is_named(tmp_path: Path) -> None:
    url = JOURNAL + str(tmp_path / "study.journal")
    config = parse_config({"study": {"name": "exp", "budget": 3}})
    open_study(config, url).add_trial(finished_trial(0.5, 10.0, datetime.now(), 1))
    open_study(config, url, "exp-v2")
    text = _scrape(3, url)
    assert one(text, "sms_study_trials", state="COMPLETE") == 0  # v2: nothing yet
    assert {dict(k)["study"] for k in samples(text, "sms_study_budget")} == {"exp-v2"}
    named = _scrape(3, url, "exp")
    assert one(named, "sms_study_trials", study="exp", state="COMPLETE") == 1


def test_no_study_yet_says_since_when_it_waits_for_its_first_trial(tmp_path: Path) -> None:
    """A study whose workers never start (Pending pods, quota) has its budget and a
    waiting clock, for SmsStudyNotStarted; the clock holds across scrapes and goes once
    a trial has started."""
    url = JOURNAL + str(tmp_path / "study.journal")
    config = parse_config({"study": {"name": "exp", "budget": 3, "start_within_s": 600}})
    registry = study_registry(config, url, min_interval_s=0.0)
    before = datetime.now().timestamp()
    text = generate_latest(registry).decode()
    assert check_metrics(text) == ""
    assert one(text, "sms_storage_up", study="exp") == 1
    assert not samples(text, "sms_study_trials")  # unknown, not zero
    assert one(text, "sms_study_budget", study="exp") == 3
    assert one(text, "sms_study_start_within_seconds", study="exp") == 600
    since = one(text, "sms_study_waiting_since_timestamp_seconds", study="exp")
    assert before - 1 <= since <= datetime.now().timestamp()
    study = open_study(config, url)  # created, still no trial: the same clock
    again = generate_latest(registry).decode()
    assert one(again, "sms_study_waiting_since_timestamp_seconds") == since
    assert one(again, "sms_study_trials", state="COMPLETE") == 0
    study.add_trial(create_trial(state=TrialState.RUNNING))
    started = generate_latest(registry).decode()
    assert not samples(started, "sms_study_waiting_since_timestamp_seconds")
    assert not samples(started, "sms_study_start_within_seconds")


def test_the_eta_is_there_while_a_worker_beats_and_each_best_has_its_unit(
    tmp_path: Path,
) -> None:
    url = JOURNAL + str(tmp_path / "study.journal")
    objectives = ["accuracy", "params", "latency"]
    config = parse_config(
        {
            "study": {"name": "exp", "budget": 4},
            "objectives": objectives,
            "train": {"measure_latency": True},
        }
    )
    study = open_study(config, url)
    start = datetime.now() - timedelta(minutes=30)
    done = finished_trial(0.9, 1000.0, start, 10)
    done.values = [0.9, 1000.0, 2.5]
    done.user_attrs["latency_ms_ort_fp32"] = 2.5
    study.add_trial(done)
    registry = study_registry(config, url, min_interval_s=0.0)
    text = generate_latest(registry).decode()
    # nothing RUNNING, the last trial ended 20 minutes ago: no worker beats, no ETA
    assert not samples(text, "sms_study_eta_seconds")
    study.add_trial(create_trial(state=TrialState.RUNNING))  # a journal keeps no heartbeat
    text = generate_latest(registry).decode()
    assert check_metrics(text) == ""
    assert one(text, "sms_study_eta_seconds") > 0
    assert one(text, "sms_study_best_latency_seconds") == pytest.approx(0.0025)
    assert one(text, "sms_study_best", objective="latency") == pytest.approx(2.5)  # ms
    assert one(text, "sms_study_finished") == 0


def test_scrapes_within_the_interval_read_once(tmp_path: Path) -> None:
    url = JOURNAL + str(tmp_path / "study.journal")
    config = parse_config({"study": {"name": "exp", "budget": 3}})
    study = open_study(config, url)
    registry = study_registry(config, url, min_interval_s=60.0)
    first = generate_latest(registry).decode()
    study.add_trial(finished_trial(0.5, 10.0, datetime.now(), 1))
    assert generate_latest(registry).decode() == first  # cached: no second read
    fresh = generate_latest(study_registry(config, url, min_interval_s=0.0)).decode()
    assert one(fresh, "sms_study_trials", state="COMPLETE") == 1


@pytest.mark.parametrize(
    "raw",
    ["pushgateway:9091", "ftp://gw:9091", "http://", "http://gw:99999", "http://gw:9091/?a=1"],
)
def test_a_bad_pushgateway_url_names_the_variable(raw: str) -> None:
    with pytest.raises(EnvError, match=r"^SMS_PUSHGATEWAY: "):
        Settings({"SMS_PUSHGATEWAY": raw}).pushgateway()


def test_pushgateway_url_forms() -> None:
    assert Settings({}).pushgateway() is None
    assert Settings({"SMS_PUSHGATEWAY": " "}).pushgateway() is None
    assert Settings({"SMS_PUSHGATEWAY": "http://gw:9091/"}).pushgateway() == "http://gw:9091"
    assert Settings({"SMS_PUSHGATEWAY": "https://gw.example"}).pushgateway() == "https://gw.example"


def test_a_failed_push_is_one_warning_never_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # nothing listens
    monkeypatch.setenv("SMS_PUSHGATEWAY", f"http://user:secret-pw@127.0.0.1:{port}")
    said: list[str] = []
    assert not push_final(picks_registry(1), "collect", "exp", say=said.append)
    assert len(said) == 1 and said[0].startswith("warning: metrics push to http://")
    assert "secret-pw" not in said[0]
    monkeypatch.delenv("SMS_PUSHGATEWAY")
    assert not push_final(picks_registry(1), "collect", "exp", say=said.append)  # unset: no push
    assert len(said) == 1
