"""A real Prometheus (Debian's 2.42) scrapes two local workers, the study exporter and a
real Pushgateway during a small search, and evaluates monitoring/rules.yml: every
figure it ends with equals the study's, the workers' final values were scraped (they
linger) and pushed, the search-finished alert fires, and a killed exporter is a target
down that SmsExporterDown goes pending on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from optuna.trial import TrialState

from job.config import load_config
from job.search.worker import open_study
from job.testing.pgserver import free_port
from job.testing.prom import prometheus, pushgateway, query, values
from tests.support.configs import TINY
from tests.support.proc import ROOT, journal_url

RULES = ROOT / "monitoring" / "rules.yml"


def _until(check: object, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout_s}s: {what}")


def test_prometheus_sees_what_the_study_holds(tmp_path: Path) -> None:
    out, config_path = tmp_path / "run", tmp_path / "tiny.yaml"
    # linger 3 s: three more scrapes at 1 s after each worker's last trial
    config_path.write_text(TINY.replace("seed: 0}", "seed: 0, metrics_linger_s: 3}"))
    config = load_config(config_path)
    workers, exporter = free_port(), free_port()
    while exporter in (workers, workers + 1):
        exporter = free_port()
    env = {**os.environ, "SMS_TORCH_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("OPTUNA_STORAGE", None)
    with pushgateway(tmp_path) as gateway:
        jobs = {
            "worker": [f"127.0.0.1:{workers}", f"127.0.0.1:{workers + 1}"],
            "exporter": [f"127.0.0.1:{exporter}"],
            "pushgateway": [gateway.removeprefix("http://")],
        }
        with prometheus(tmp_path, jobs, rules=RULES) as prom:
            out.mkdir()
            serve = [sys.executable, "-m", "job", "exporter", "--config", str(config_path)]
            served = subprocess.Popen(
                [*serve, "--out", str(out), "--port", str(exporter)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                run = [sys.executable, "-m", "job", "run", "--config", str(config_path)]
                done = subprocess.run(
                    [*run, "--out", str(out), "--metrics-port", str(workers), "--workers", "2"],
                    cwd=ROOT,
                    env={**env, "SMS_PUSHGATEWAY": gateway},
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                assert done.returncode == 0, done.stdout + done.stderr
                trials = open_study(config, journal_url(out)).get_trials()
                counts = Counter(t.state.name for t in trials)
                complete = counts["COMPLETE"]
                assert complete == 4
                # the exporter's latest scrape says what the study holds
                _until(
                    lambda: (
                        values(prom, 'sms_study_trials{job="exporter"}', "state").get("COMPLETE")
                        == complete
                    ),
                    "the exporter's COMPLETE count reaching the study's",
                )
                by_state = values(prom, 'sms_study_trials{job="exporter"}', "state")
                for state in TrialState:
                    assert by_state[state.name] == counts[state.name], (state, by_state)
                found = values(prom, 'sms_storage_up{job="exporter"}', "study")
                assert found == {"tiny": 1.0}
                _until(
                    lambda: query(prom, 'ALERTS{alertname="SmsSearchFinished",study="tiny"}'),
                    "SmsSearchFinished firing",
                    timeout_s=30,
                )
            finally:
                served.send_signal(signal.SIGTERM)
                served.communicate(timeout=30)
            # the exporter is gone: its target is down, and SmsExporterDown is pending (it
            # fires after 5 minutes: rules.test.yml shows when)
            _until(
                lambda: (
                    values(prom, 'up{job="exporter"}', "instance") == {jobs["exporter"][0]: 0.0}
                ),
                "the killed exporter's target down",
                timeout_s=30,
            )
            _until(
                lambda: query(prom, 'ALERTS{alertname="SmsExporterDown",alertstate="pending"}'),
                "SmsExporterDown pending",
                timeout_s=30,
            )

            # each worker's last values were scraped before it exited (it lingered)
            per_worker = {t.user_attrs["worker"] for t in trials}
            info = query(prom, 'max_over_time(sms_worker_info{job="worker"}[10m])')
            assert {r["metric"]["worker"] for r in info} == per_worker
            scraped = values(
                prom,
                'max_over_time(sms_trials_total{job="worker",state="COMPLETE"}[10m])',
                "instance",
            )
            assert sorted(scraped) == sorted(jobs["worker"])
            assert sum(scraped.values()) == complete
            # ... and pushed: one group per worker index, and the collector's
            pushed = values(prom, 'sms_trials_total{role="worker",state="COMPLETE"}', "index")
            assert sorted(pushed) == ["0", "1"] and sum(pushed.values()) == complete
            final = values(prom, 'sms_study_trials{role="collect"}', "state")
            assert final["COMPLETE"] == complete
            assert values(prom, 'sms_collect_success{role="collect"}', "study") == {"tiny": 1.0}
