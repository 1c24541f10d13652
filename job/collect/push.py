"""The collector's push step: the study's final figures and this collect's outcome.

Last step of the pipeline (job.collect.pipeline: study -> front -> select -> verify ->
picks -> publish -> report -> **push**). With SMS_PUSHGATEWAY set, one push of the group
{role=collect, study}: the study exporter's families read now (job.serve.exporter), the
drift gauges of a research version (job.collect.drift), and:

- ``sms_collect_timestamp_seconds{study}``: when this collect ran (Unix time)
- ``sms_collect_success{study}``: 1 when every pick was selected, exported and verified
- ``sms_collect_picks{study}``: models this collect picked
- ``sms_collect_last_success_timestamp_seconds{study}``: when it succeeded (absent
  after a failed collect: its group replaced the last good one's)
"""

from __future__ import annotations

import time
from typing import Any

from job import settings
from job.config import Config


def push_collect(
    config: Config, url: str, name: str, ok: bool, picks: int, drift: dict[str, Any] | None
) -> None:
    """With SMS_PUSHGATEWAY: the study's final figures (the exporter's families, read now),
    the drift gauges and this collect's outcome, as the group {role=collect, study}."""
    from prometheus_client import CollectorRegistry, Gauge

    from job.collect.drift import drift_registry
    from job.serve.exporter import study_registry
    from job.serve.metrics import Together, push_final

    if settings.current().pushgateway() is None:
        return
    mine, now = CollectorRegistry(), time.time()
    outcome = [
        ("sms_collect_timestamp_seconds", "When this collect ran (Unix time).", now),
        ("sms_collect_success", "1: every pick selected, exported and verified.", float(ok)),
        ("sms_collect_picks", "Models this collect picked.", float(picks)),
    ]
    if ok:  # absent after a failed collect: its group replaced the last good one's
        outcome.append(("sms_collect_last_success_timestamp_seconds", "When it succeeded.", now))
    for metric, doc, value in outcome:
        Gauge(metric, doc, ["study"], registry=mine).labels(study=name).set(value)
    parts = [study_registry(config, url, name, min_interval_s=0.0), mine]
    if drift is not None:
        parts.append(drift_registry(drift))
    push_final(Together(*parts), "collect", name)
