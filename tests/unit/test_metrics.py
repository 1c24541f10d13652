"""job.serve.metrics: a worker's Prometheus endpoint, scraped over HTTP and parsed."""

from __future__ import annotations

import math
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from job import __version__, settings
from job.serve.metrics import ENV_PORT, WorkerMetrics
from job.testing.prom import check_metrics

OBJECTIVES = ("accuracy", "params")


def _metrics(worker: str = "host-a:101") -> WorkerMetrics:
    return WorkerMetrics("sms-test", "ab12" * 16, worker, OBJECTIVES)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        return str(response.read().decode("utf-8"))


def _families(text: str) -> dict[str, list[Sample]]:
    """Family name → samples; the parser strips `_total` from counter family names."""
    return {f.name: list(f.samples) for f in text_string_to_metric_families(text)}


def _types(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def _value(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise KeyError(f"{name}{labels} not in the exposition")


@pytest.fixture
def served() -> Iterator[WorkerMetrics]:
    metrics = _metrics()
    metrics.serve(0, addr="127.0.0.1")
    yield metrics
    metrics.shutdown()


def _two_trials(metrics: WorkerMetrics, snapshots: list[str]) -> None:
    """Trial 0 completes after 3 epochs, trial 1 fails in its 2nd; keep an exposition
    after each step that the epoch test looks at."""
    metrics.trial_started(0, epochs=3)
    snapshots.append(metrics.exposition())
    for epoch in (1, 2, 3):
        metrics.epoch_done(epoch, images_per_s=1000.0 + epoch)
        snapshots.append(metrics.exposition())
    metrics.trial_finished("COMPLETE", 12.5, 1500.0)
    snapshots.append(metrics.exposition())
    metrics.trial_started(1, epochs=3, retry=True)
    snapshots.append(metrics.exposition())
    metrics.epoch_done(1)
    metrics.trial_finished("FAIL", 0.4, None)
    snapshots.append(metrics.exposition())


def test_scraped_exposition_parses_and_follows_naming(served: WorkerMetrics) -> None:
    _two_trials(served, [])
    assert served.port is not None
    text = _scrape(served.port)
    types = _types(text)
    assert types, "nothing parsed"
    for name, kind in types.items():
        assert name.startswith("sms_"), name
        if kind == "counter":  # the parser drops the suffix from the family name
            samples = _families(text)[name]
            assert all(s.name == name + "_total" for s in samples), name
        if "duration" in name or "time" in name:
            assert name.endswith(("_seconds", "_seconds_created")), name
    assert types["sms_trials"] == "counter"
    assert types["sms_trial_duration_seconds"] == "histogram"


def test_trial_counter_and_histogram_match_the_trials(served: WorkerMetrics) -> None:
    _two_trials(served, [])
    assert served.port is not None
    text = _scrape(served.port)
    assert _value(text, "sms_trials_total", state="COMPLETE") == 1
    assert _value(text, "sms_trials_total", state="FAIL") == 1
    assert _value(text, "sms_trial_duration_seconds_count") == 2
    assert _value(text, "sms_trial_duration_seconds_sum") == pytest.approx(12.9)
    assert _value(text, "sms_trial_duration_seconds_bucket", le="1.0") == 1
    assert _value(text, "sms_trial_duration_seconds_bucket", le="14400.0") == 2
    # The FAIL trial had no throughput: the COMPLETE trial's figure stays.
    assert _value(text, "sms_train_images_per_second") == 1500.0
    assert _value(text, "sms_trial_retries_total") == 1  # trial 1 retried a stale one


def test_a_worker_serves_only_its_own_and_no_created_series(served: WorkerMetrics) -> None:
    """The study's figures have one source, the exporter (job.serve.exporter); prometheus_client's
    `_created` series are off; promtool finds nothing to complain of."""
    _two_trials(served, [])
    assert served.port is not None
    text = _scrape(served.port)
    names = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    assert not [n for n in names if n.startswith("sms_study_")], names
    assert not [n for n in names if n.endswith("_created")], names
    assert check_metrics(text) == ""


def test_fresh_worker_shows_zero_counts_and_unknown_best() -> None:
    text = _metrics().exposition()
    assert _value(text, "sms_trials_total", state="COMPLETE") == 0
    assert _value(text, "sms_trials_total", state="FAIL") == 0
    assert _value(text, "sms_trial_number") == -1
    assert _value(text, "sms_trial_running") == 0
    assert _value(text, "sms_trial_retries_total") == 0
    assert math.isnan(_value(text, "sms_train_images_per_second"))


def test_info_labels(served: WorkerMetrics) -> None:
    assert served.port is not None
    (sample,) = _families(_scrape(served.port))["sms_worker_info"]
    assert sample.value == 1
    assert sample.labels == {
        "study": "sms-test",
        "data_fingerprint": "ab12" * 16,
        "worker": "host-a:101",
        "version": __version__,
        "objectives": "accuracy,params",
    }


def test_epoch_and_running_gauges_follow_the_trial() -> None:
    snapshots: list[str] = []
    _two_trials(_metrics(), snapshots)
    epochs = [_value(t, "sms_trial_epoch") for t in snapshots]
    running = [_value(t, "sms_trial_running") for t in snapshots]
    numbers = [_value(t, "sms_trial_number") for t in snapshots]
    # start 0, epochs 1..3, finished → 0, trial 1 started → 0, failed → 0
    assert epochs == [0, 1, 2, 3, 0, 0, 0]
    assert running == [1, 1, 1, 1, 0, 1, 0]
    assert numbers == [0, 0, 0, 0, -1, 1, -1]
    assert _value(snapshots[3], "sms_trial_epochs") == 3
    assert _value(snapshots[3], "sms_train_images_per_second") == 1003.0


def test_non_final_state_is_rejected() -> None:
    metrics = _metrics()
    with pytest.raises(ValueError, match="RUNNING"):
        metrics.trial_finished("RUNNING", 1.0, None)
    metrics.trial_finished("pruned", 1.0, None)  # Optuna names, any case
    assert _value(metrics.exposition(), "sms_trials_total", state="PRUNED") == 1


def test_metrics_port_env_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_PORT, raising=False)
    assert settings.current().metrics_port(9100) == 9100
    assert settings.current().metrics_port(None) is None
    monkeypatch.setenv(ENV_PORT, "")
    assert settings.current().metrics_port(9100) == 9100
    monkeypatch.setenv(ENV_PORT, " 9200 ")
    assert settings.current().metrics_port(9100) == 9200
    assert settings.current().metrics_port(None) == 9200
    monkeypatch.setenv(ENV_PORT, "0")
    assert settings.current().metrics_port(9100) == 0
    monkeypatch.setenv(ENV_PORT, "off")
    assert settings.current().metrics_port(9100) is None
    monkeypatch.setenv(ENV_PORT, "OFF")
    assert settings.current().metrics_port(None) is None


@pytest.mark.parametrize("raw", ["nine", "9100.5", "-1", "70000"])
def test_metrics_port_bad_env_names_the_variable(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(ENV_PORT, raw)
    with pytest.raises(ValueError, match=ENV_PORT):
        settings.current().metrics_port(9100)


def test_two_instances_in_one_process_do_not_clash() -> None:
    a, b = _metrics("host-a:1"), _metrics("host-b:2")
    pa, pb = a.serve(0, addr="127.0.0.1"), b.serve(0, addr="127.0.0.1")
    try:
        assert pa != pb
        a.trial_started(7, 2)
        a.trial_finished("COMPLETE", 3.0, None)
        ta, tb = _scrape(pa), _scrape(pb)
        assert _value(ta, "sms_trials_total", state="COMPLETE") == 1
        assert _value(tb, "sms_trials_total", state="COMPLETE") == 0
        assert _families(tb)["sms_worker_info"][0].labels["worker"] == "host-b:2"
        with pytest.raises(RuntimeError, match="already served"):
            a.serve(0, addr="127.0.0.1")
    finally:
        a.shutdown()
        b.shutdown()


def test_shutdown_frees_the_port() -> None:
    metrics = _metrics()
    port = metrics.serve(0)  # the default address, all interfaces
    assert port > 0 and metrics.port == port
    _scrape(port)
    metrics.shutdown()
    assert metrics.port is None
    with pytest.raises(urllib.error.URLError):
        _scrape(port)
    with socket.socket() as s:  # what a restarted worker would do
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
    again = _metrics()
    assert again.serve(port, addr="127.0.0.1") == port
    again.shutdown()
    metrics.shutdown()  # idempotent


def test_no_secret_reaches_the_exposition(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql://sms:password-hunter2@db:5432/sms"
    monkeypatch.setenv("SMS_STORAGE", url)  # the environment is never dumped
    # The API has no place for a storage URL; the study name is the only free text.
    metrics = WorkerMetrics("sms-test", "ab12", "host:1", OBJECTIVES)
    _two_trials(metrics, [])
    port = metrics.serve(0, addr="127.0.0.1")
    try:
        text = _scrape(port)
    finally:
        metrics.shutdown()
    for needle in ("postgresql", "password", "hunter2"):
        assert needle not in text
        assert needle not in metrics.exposition()
