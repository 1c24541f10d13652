"""job/run/pod.py's pieces, in this process: each child's index, threads and port, the
pod's exit code, its one metrics endpoint merging the children's, Ctrl-C as SIGTERM, and
K checked first (real pods of processes: tests/integration/test_procs.py)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from job import settings
from job.cli.main import main
from job.run.pod import PodMetrics, PodOptions, child_command, exit_code, on_stop_signals
from job.serve.metrics import WorkerMetrics
from job.settings import Settings
from job.testing.prom import check_metrics
from tests.support.metrics import by_label, complete, samples


def test_each_child_gets_its_own_index_threads_and_a_loopback_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "3")  # the pod's: not inherited
    url = settings.postgres_url("db", 5432, "sms", "s3cret-pw", "sms")
    options = PodOptions(tmp_path / "c.yaml", 2, 3, 8, 9100, ("--out", "o"), url)
    for i in range(2):
        cmd, env = child_command(options, i, tmp_path / f"{i}.port")
        assert Settings(env).worker_index() == 6 + i  # pod index * K + i: sampler seeds differ
        assert Settings(env).torch_threads() == 4 and env[settings.OMP_NUM_THREADS] == "4"
        assert Settings(env).metrics_port(9100) == 0  # a free one; the pod's is the parent's
        assert cmd[cmd.index("--procs") + 1] == "1" and str(tmp_path / f"{i}.port") in cmd
        assert "s3cret-pw" not in " ".join(cmd) and Settings(env).storage_url() == url
    _, off = child_command(options, 0, None)
    assert Settings(off).metrics_port(9100) is None  # metrics off: the children only push


def test_the_exit_code_says_stopped_before_anything_else() -> None:
    assert exit_code([0, 0], stopping=False) == 0
    assert exit_code([0, 2], stopping=False) == 2  # bad input: the Job fails at once
    assert exit_code([-9, 0], stopping=False) == 1  # killed: a failure all the same
    assert exit_code([2, 143], stopping=False) == 143  # stopped: the index is rerun
    assert exit_code([-signal.SIGTERM, 0], stopping=False) == 143
    assert exit_code([-9, 143], stopping=True) == 143  # killed past the grace period
    assert exit_code([0, 0], stopping=True) == 0  # both had finished anyway


def test_the_pods_endpoint_merges_its_children_with_a_proc_label(tmp_path: Path) -> None:
    children = [WorkerMetrics("s", "fp", f"host:{i}", ("accuracy", "params")) for i in range(2)]
    files = [tmp_path / f"{i}.port" for i in range(3)]  # the third never served
    try:
        for i, (metrics, path) in enumerate(zip(children, files, strict=False)):
            metrics.trial_started(10 + i, epochs=5)
            metrics.trial_finished("COMPLETE", 3.0, 100.0 * (i + 1))
            path.write_text(str(metrics.serve(0, "127.0.0.1")))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(PodMetrics(files))
        text = generate_latest(registry).decode()
    finally:
        for metrics in children:
            metrics.shutdown()
    assert check_metrics(text) == ""
    assert by_label(samples(text, "sms_pod_proc_up"), "proc") == {"0": 1, "1": 1, "2": 0}
    assert by_label(samples(text, "sms_train_images_per_second"), "proc") == {"0": 100, "1": 200}
    assert by_label(complete(text), "proc") == {"0": 1, "1": 1}
    info = samples(text, "sms_worker_info")
    assert {dict(k)["worker"]: dict(k)["proc"] for k in info} == {"host:0": "0", "host:1": "1"}
    assert text.count("# TYPE sms_trials_total counter") == 1  # each family once


def test_ctrl_c_stops_the_pod_as_sigterm_does() -> None:
    before = signal.getsignal(signal.SIGINT)  # Python's default (pytest-xdist's worker: ignored)
    stop = threading.Event()
    previous = on_stop_signals(stop)
    try:
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the children are stopped
        assert stop.wait(5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("raw", ["0", "65", "two", "-1", "1.5"])
def test_a_bad_k_is_one_line_and_exit_2_before_anything_else(
    raw: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SMS_WORKERS_PER_POD", raw)
    assert main(["search", "--config", str(tmp_path / "missing.yaml")]) == 2  # K first
    expected = "expected an integer 1..64 (worker processes per pod)"
    assert capsys.readouterr().err == f"error: SMS_WORKERS_PER_POD: {expected}, got {raw!r}\n"


def test_the_flag_is_checked_alike_and_wins_over_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["search", "--config", "c.yaml", "--procs", "65"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.count("\n") == 1
    assert "--procs: must be in 1..64, got 65" in err
    monkeypatch.setenv("SMS_WORKERS_PER_POD", "junk")  # not read: the flag wins
    assert main(["search", "--config", str(tmp_path / "missing.yaml"), "--procs", "2"]) == 2
    assert "missing.yaml" in capsys.readouterr().err
