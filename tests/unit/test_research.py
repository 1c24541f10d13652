"""Research (job.collect.research): study versions, the config's fingerprint, the decision
(the warm start, concurrency and the verb end to end: tests/integration/test_research.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from job.collect.research import (
    IN_PROGRESS,
    NEW_VERSION,
    UNCHANGED,
    decide,
)
from job.config import config_fingerprint, parse_config
from job.search.versions import Fingerprints, Version, version_name, version_number
from tests.support.configs import tiny

NOW = Fingerprints("d1", "c1", "k1")


def _version(number: int, complete: int, prints: Fingerprints | None = NOW) -> Version:
    return Version(version_name("q", number), number, complete, prints, {})


@pytest.mark.parametrize(
    ("name", "number"),
    [("q", 1), ("q-v2", 2), ("q-v10", 10), ("q-v1", None), ("q-v02", None), ("q-v", None),
     ("qq-v2", None), ("q-verify", None), ("q-v2-verify", None), ("x", None)],
)  # fmt: skip
def test_version_numbers(name: str, number: int | None) -> None:
    assert version_number("q", name) == number
    if number is not None:
        assert version_name("q", number) == name


def test_config_fingerprint_tracks_what_changes_results() -> None:
    base = config_fingerprint(parse_config(tiny()))
    same = [
        tiny(**{"study.budget": 99}),
        tiny(**{"study.sampler": "tpe"}),
        tiny(**{"data.path": "/elsewhere"}),
        tiny(**{"train.eval_batch_size": 7}),
        tiny(select={"verify": False, "policies": ["knee"]}),
    ]
    for doc in same:
        assert config_fingerprint(parse_config(doc)) == base, doc
    other = [
        tiny(**{"train.lr": 0.1}),
        tiny(**{"data.image_size": 10}),
        tiny(**{"augment.cutout_p": 0.5}),
        tiny(objectives=["accuracy", "macs"]),
        tiny(constraints={"max_params": 1000}),
    ]
    prints = {config_fingerprint(parse_config(doc)) for doc in other}
    assert base not in prints and len(prints) == len(other)


def test_decide() -> None:
    first = decide(None, "q", 4, NOW)
    assert (first.decision, first.study, first.version, first.parent) == (NEW_VERSION, "q", 1, None)
    assert decide(_version(1, 4), "q", 4, NOW).decision == UNCHANGED
    # an epoch budget spent with fewer COMPLETE trials: done, never launched again
    spent = replace(_version(1, 2), finished=True)
    assert decide(spent, "q", 4, NOW).decision == UNCHANGED
    running = decide(_version(3, 2), "q", 4, NOW)
    assert (running.decision, running.study) == (IN_PROGRESS, "q-v3")
    assert decide(_version(1, 0, None), "q", 4, NOW).decision == IN_PROGRESS  # nothing recorded
    moved = decide(_version(2, 4, Fingerprints("d0", "c1", "k0")), "q", 4, NOW)
    assert (moved.decision, moved.study, moved.parent) == (NEW_VERSION, "q-v3", "q-v2")
    assert moved.changed == ("data", "code")
    assert "data, code changed since q-v2" in moved.line()
    assert decide(_version(2, 1, Fingerprints("d0", "c1", "k1")), "q", 4, NOW).changed == ("data",)
