"""The real Prometheus parts the suite drives: promtool, a Prometheus server and a
Pushgateway, from Debian's `prometheus` and `prometheus-pushgateway` (`make test`
installs them where missing). Without them a test is skipped, except under CI=true,
where a missing binary is a failure. Each server runs on a free loopback port in its
own folder and is stopped with its test."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from job.testing.binaries import need_binary
from job.testing.pgserver import free_port

PACKAGES = {  # binary → the Debian package that has it
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "prometheus-pushgateway": "prometheus-pushgateway",
}


def binary(name: str) -> str:
    """The path of `name`; skips the test without it (fails it under CI=true)."""
    return need_binary((name,), PACKAGES[name])


def check_metrics(text: str) -> str:
    """What `promtool check metrics` says of an exposition: "" when it is clean."""
    done = subprocess.run(
        [binary("promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = (done.stdout + done.stderr).strip()
    return said if done.returncode or said else ""


def get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode("utf-8"))


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url} exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            get(url, timeout=2)
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise AssertionError(f"{url} not ready in {timeout_s}s: {log.read_text()[-2000:]}")


@contextmanager
def _server(argv: list[str], ready: str, log: Path) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(ready, proc, log)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def pushgateway(folder: Path) -> Iterator[str]:
    """A Pushgateway on a free loopback port; yields its base URL."""
    exe = binary("prometheus-pushgateway")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Debian's build persists to /var/lib/prometheus by default: memory only, per test
    argv = [exe, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="]
    with _server(argv, f"{url}/-/ready", folder / "pushgateway.log"):
        yield url


@contextmanager
def prometheus(
    folder: Path, jobs: dict[str, list[str]], interval_s: int = 1, rules: Path | None = None
) -> Iterator[str]:
    """A Prometheus scraping `jobs` (job name → host:port targets) and evaluating `rules`
    every `interval_s`; a job named `pushgateway` keeps the pushed labels (honor_labels).
    Yields its URL."""
    exe = binary("prometheus")
    port = free_port()
    scrapes = [
        {
            "job_name": name,
            "honor_labels": name == "pushgateway",
            "static_configs": [{"targets": t}],
        }
        for name, t in jobs.items()
    ]
    every = f"{interval_s}s"
    config: dict[str, Any] = {
        "global": {"scrape_interval": every, "evaluation_interval": every},
        "scrape_configs": scrapes,
    }
    if rules is not None:
        config["rule_files"] = [str(rules)]
    (path := folder / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    argv = [
        exe,
        f"--config.file={path}",
        f"--storage.tsdb.path={folder / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    url = f"http://127.0.0.1:{port}"
    with _server(argv, f"{url}/-/ready", folder / "prometheus.log"):
        yield url


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """An instant query's result vector: [{"metric": labels, "value": [t, "v"]}, ...]."""
    body = json.loads(get(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"))
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def values(url: str, promql: str, by: str) -> dict[str, float]:
    """The query's values keyed by one label."""
    return {r["metric"].get(by, ""): float(r["value"][1]) for r in query(url, promql)}
