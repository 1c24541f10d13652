"""job/run/pod.py: K `search` worker processes in one pod (SMS_WORKERS_PER_POD, --procs),
with their own worker indexes, ONE metrics endpoint, and stopped as one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from optuna.trial import TrialState
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from job import settings
from job.cli.main import main
from job.config import load_config
from job.run.pod import PodMetrics, PodOptions, child_command, exit_code, on_stop_signals
from job.search.worker import open_study
from job.serve.metrics import WorkerMetrics
from job.settings import Settings
from job.testing.prom import check_metrics, get, pushgateway
from tests.gate import Gate
from tests.support.configs import TINY
from tests.support.proc import ROOT, free_port, journal_url

Samples = dict[tuple[tuple[str, str], ...], float]


def _samples(text: str, name: str) -> Samples:
    """Sample `name`'s values by their sorted labels."""
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def _by(samples: Samples, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for labels, value in samples.items()}


def _complete(text: str) -> Samples:
    """sms_trials_total{state="COMPLETE"}, by labels."""
    found = _samples(text, "sms_trials_total")
    return {k: v for k, v in found.items() if ("state", "COMPLETE") in k}


def _env(**updates: str) -> dict[str, str]:
    """This environment without any of the product's variables, plus `updates`."""
    kept = {k: v for k, v in os.environ.items() if k not in settings.VARIABLES}
    return kept | {settings.SMS_TORCH_THREADS: "1"} | updates


def _pod(config: Path, out: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "job", "search", "--config", str(config), "--out", str(out)]
    return _start(cmd, log, env)


def _gated_pod(
    gate: Gate, config: Path, out: Path, log: Path, **env: str
) -> subprocess.Popen[bytes]:
    """`_pod`, whose children's trials wait at `gate` (tests/gate.py)."""
    cmd = gate.command("search", "--config", str(config), "--out", str(out))
    return _start(cmd, log, env | gate.env())


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:  # a file: a pipe nobody reads would block the children
        return subprocess.Popen(cmd, cwd=ROOT, env=_env(**env), stdout=sink, stderr=sink)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


# --- the pieces, in this process -------------------------------------------------------


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
    assert _by(_samples(text, "sms_pod_proc_up"), "proc") == {"0": 1, "1": 1, "2": 0}
    assert _by(_samples(text, "sms_train_images_per_second"), "proc") == {"0": 100, "1": 200}
    assert _by(_complete(text), "proc") == {"0": 1, "1": 1}
    info = _samples(text, "sms_worker_info")
    assert {dict(k)["worker"]: dict(k)["proc"] for k in info} == {"host:0": "0", "host:1": "1"}
    assert text.count("# TYPE sms_trials_total counter") == 1  # each family once


def test_ctrl_c_stops_the_pod_as_sigterm_does() -> None:
    stop = threading.Event()
    previous = on_stop_signals(stop)
    try:
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the children are stopped
        assert stop.wait(5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


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


# --- real pods: a parent and its children ------------------------------------------------


def test_two_processes_spend_the_exact_budget_with_distinct_indexes(tmp_path: Path) -> None:
    (config := tmp_path / "tiny.yaml").write_text(TINY)
    out, log = tmp_path / "out", tmp_path / "pod.log"
    with pushgateway(tmp_path) as gateway:
        env = {"JOB_COMPLETION_INDEX": "3", "SMS_PUSHGATEWAY": gateway}
        pod = _pod(config, out, log, SMS_WORKERS_PER_POD="2", **env)
        assert pod.wait(timeout=180) == 0, log.read_text()
        pushed = get(f"{gateway}/metrics")
    states = [t.state for t in open_study(load_config(config), journal_url(out)).get_trials()]
    assert states.count(TrialState.COMPLETE) == 4 and TrialState.RUNNING not in states
    by_index = _by(_complete(pushed), "index")  # each child pushed its own group, by its index
    assert set(by_index) == {"6", "7"} and sum(by_index.values()) == 4
    assert "pod: 2 worker processes (indexes 6-7), 1 thread(s) each" in log.read_text()


def test_sigterm_mid_trial_stops_both_children_and_one_endpoint_served_both(
    tmp_path: Path,
) -> None:
    """Both children mid-trial (each waits at a gate after its first epoch: no poll races
    a trial), seen through the pod's one endpoint; SIGTERM to the pod checkpoints and
    hands back both trials and stops both children."""
    (config := tmp_path / "long.yaml").write_text(TINY.replace("epochs: 1,", "epochs: 2,"))
    out, log, port = tmp_path / "out", tmp_path / "pod.log", free_port()
    gate = Gate(tmp_path / "gate", after_epoch=1)
    pod = _gated_pod(gate, config, out, log, SMS_WORKERS_PER_POD="2", SMS_METRICS_PORT=str(port))
    study = open_study(load_config(config), journal_url(out))
    try:
        both_blocked = lambda: True if len(gate.markers()) == 2 else None  # noqa: E731
        gate.wait("both children blocked mid-trial", both_blocked, watch=[pod])
        children = _children(pod.pid)
        assert sorted(children) == sorted(gate.markers()), log.read_text()
        both = {"0": 1.0, "1": 1.0}  # every child mid-trial, seen through the one endpoint

        def scraped() -> str | None:
            try:
                text = get(f"http://127.0.0.1:{port}/metrics")
            except OSError:
                return None  # not serving yet
            return text if _by(_samples(text, "sms_trial_running"), "proc") == both else None

        text = gate.wait("both children running on the pod's endpoint", scraped, watch=[pod])
        assert _by(_samples(text, "sms_pod_proc_up"), "proc") == {"0": 1.0, "1": 1.0}
        assert len({dict(k)["worker"] for k in _samples(text, "sms_worker_info")}) == 2
        assert check_metrics(text) == ""
        pod.send_signal(signal.SIGTERM)
        assert pod.wait(timeout=120) == 143, log.read_text()
    finally:
        gate.open()  # nothing left waiting for ever, whatever failed
        if pod.poll() is None:
            pod.kill()
            pod.wait()
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]  # no orphan
    trials = study.get_trials()
    preempted = [t for t in trials if t.user_attrs.get("fail_reason") == "preempted"]
    assert len(preempted) == 2 and all(t.state == TrialState.FAIL for t in preempted)
    assert all(t.user_attrs["checkpoint_epoch"] == 2 for t in preempted)  # an epoch in
    assert [t.state for t in trials].count(TrialState.WAITING) == 2  # handed back
