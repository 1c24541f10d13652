"""job/run/pod.py: K `search` worker processes in one pod (SMS_WORKERS_PER_POD, --procs),
with their own worker indexes, ONE metrics endpoint, and stopped as one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from optuna.trial import TrialState

from job import settings
from job.config import load_config
from job.search.worker import open_study
from job.testing.prom import check_metrics, get, pushgateway
from tests.gate import Gate
from tests.support.configs import TINY
from tests.support.metrics import by_label, complete, samples
from tests.support.proc import ROOT, free_port, journal_url


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
    by_index = by_label(complete(pushed), "index")  # each child pushed its own group, by its index
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
            return text if by_label(samples(text, "sms_trial_running"), "proc") == both else None

        text = gate.wait("both children running on the pod's endpoint", scraped, watch=[pod])
        assert by_label(samples(text, "sms_pod_proc_up"), "proc") == {"0": 1.0, "1": 1.0}
        assert len({dict(k)["worker"] for k in samples(text, "sms_worker_info")}) == 2
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
