"""JSON log lines read back as records (the fixture that resets job.logs: tests/conftest.py)."""

from __future__ import annotations

import json
import re
from typing import Any

from job import logs

PASSWORD = "p@ss:w/rd é-42"  # needs percent-encoding in a URL
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _no_constant(name: str) -> Any:
    raise AssertionError(f"bare {name} in a record: not JSON")


def records(text: str) -> list[dict[str, Any]]:
    """Every line of `text` as a record, checked for the fixed keys and their types."""
    found = []
    for line in text.splitlines():
        record = json.loads(line, parse_constant=_no_constant)
        assert list(record) == list(logs.KEYS), line
        assert TIME.match(record["time"]), record["time"]
        assert record["level"] in ("info", "warning", "error")
        assert isinstance(record["event"], str) and isinstance(record["message"], str)
        assert isinstance(record["fields"], dict)
        found.append(record)
    return found
