"""The output files of a run keep their fields: the key structure of summary.json,
pareto.json, selection.json, verify.json, baselines.json and every pick's card.json, from a
real (tiny) `python -m job run`, equals tests/data/output_keys.json, recorded from the code
before the refactor of issue 24 (DESIGN.md §4: the collector's files are a contract), and
since extended on purpose (issue 25: each rank correlation's p-value, count and too_few;
the recipes' `test_each_trial`; the card's `policies` and selection.json's `folder`, since
the policies that choose one trial share its folder `selected/trial-<N>/`).

A structure keeps only what a reader relies on: each dict's keys, each list's element
structure (the union over its elements), and each leaf's kind (`number`, `str`, `bool`).
Compared leniently only where the data, not the code, decides: a null matches any
structure (a value that is optional), an empty list any list, and the dicts keyed by data
(MAPS: trial states, an architecture's parameters) are described by their values alone.

A change to these files is a change to a contract: make it on purpose, then record the new
structure with

    SMS_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/integration/test_output_keys.py

and commit tests/data/output_keys.json with the change (its diff shows what changed). Read
that diff: a value that happened to be null in the recording run (kendall_tau over a
one-member front, say) is recorded as null and so no longer checked below it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "output_keys.json"
UPDATE = "SMS_UPDATE_GOLDEN"
RESNET8 = ROOT / "configs" / "models" / "resnet8.yaml"

# A tiny search in the quickstart's shape: every kind of policy (the reference one may
# or may not find a trial: either way selection.json has its row), verification with
# two seeds, a baseline, ONNX and int8 export, latency measured. About 40 s on 2 cores.
CONFIG = f"""\
study: {{name: keys, budget: 6, sampler: random, seed: 0}}
data: {{name: digits, image_size: 8, subset: 300, val_ratio: 0.2}}
augment: {{n_select: 1, level: 3, flip_p: 0.0, cutout_p: 0.0}}
space:
  blocks:
    - {{modules: [Conv, DWConv], repeat: [1, 1], channels: [8, 16, 8], kernel: [3]}}
    - {{modules: [InvertedResidualv2, Pass], repeat: [1, 1], ir_channels: [8, 16, 8]}}
  head_channels: [32, 64, 32]
  augment: {{n_select: [0, 1], level: [0, 5], random_magnitude: [false]}}
train: {{epochs: 1, batch_size: 32, lr: 0.05, device: cpu, measure_latency: true}}
objectives: [accuracy, params]
select:
  policies:
    - best
    - smallest_within: {{accuracy_drop: 0.05}}
    - knee
    - budget: {{params: 100000}}
      name: under-100k
    - reference: {RESNET8}
  retrain: {{epochs: 1, seeds: 2}}
  verify_top_k: 2
  baselines: [{RESNET8}]
export: {{latency_runs: 10, calibration_images: 32}}
"""
# The policies that always pick a trial here, so always publish a card.
ALWAYS_PICKED = ("best", "smallest_within", "knee", "under-100k")
FILES = ("summary.json", "pareto.json", "selection.json", "verify.json", "baselines.json")
CARD = "selected/<policy>/card.json"
# Dicts whose keys are data, not fields: (file, path of keys and `[]` for list elements).
MAPS = {
    ("summary.json", ("trials",)),  # trials by state: FAIL appears only when one failed
    ("pareto.json", ("[]", "params")),  # an architecture's parameters
}
ANY = "<any>"  # the one key of a data-keyed dict's structure


# --- structures -----------------------------------------------------------------------


def structure(value: Any, file: str, path: tuple[str, ...] = ()) -> Any:
    """The key structure of a JSON value (see the module's docstring)."""
    if isinstance(value, dict):
        if (file, path) in MAPS:
            inner = None
            for v in value.values():
                inner = merge(inner, structure(v, file, (*path, ANY)))
            return {ANY: inner}
        return {k: structure(v, file, (*path, k)) for k, v in sorted(value.items())}
    if isinstance(value, list):
        inner = None
        for v in value:
            inner = merge(inner, structure(v, file, (*path, "[]")))
        return [] if not value else [inner]
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "str"


def merge(a: Any, b: Any) -> Any:
    """One structure for two values found in the same place (list elements, map values)."""
    if a is None or a == []:
        return b
    if b is None or b == []:
        return a
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: merge(a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys())}
    if isinstance(a, list) and isinstance(b, list):
        return [merge(a[0], b[0])]
    if a == b:
        return a
    return " | ".join(sorted({*str(a).split(" | "), *str(b).split(" | ")}))


def differences(want: Any, have: Any, where: str) -> list[str]:
    """How the structure `have` differs from `want`, one line each."""
    if want is None or have is None or want == [] or have == []:
        return []  # optional, or empty this time: nothing to compare
    if isinstance(want, dict) and isinstance(have, dict):
        found = [f"{where}: missing key {k!r}" for k in sorted(want.keys() - have.keys())]
        found += [f"{where}: new key {k!r}" for k in sorted(have.keys() - want.keys())]
        for key in sorted(want.keys() & have.keys()):
            found += differences(want[key], have[key], f"{where}.{key}")
        return found
    if isinstance(want, list) and isinstance(have, list):
        return differences(want[0], have[0], f"{where}[]")
    if want != have and not (isinstance(want, str) and isinstance(have, str) and have in want):
        return [f"{where}: was {kind(want)}, now {kind(have)}"]
    return []


def kind(value: Any) -> str:
    if isinstance(value, dict):
        return f"a dict of {sorted(value)}"
    return "a list" if isinstance(value, list) else repr(value)


def structures(out: Path) -> dict[str, Any]:
    """The structure of each output file of the run in `out`; the cards share one."""
    found: dict[str, Any] = {}
    for name in FILES:
        path = out / name
        assert path.is_file(), f"the run wrote no {name}"
        found[name] = structure(json.loads(path.read_text(encoding="utf-8")), name)
    selection = json.loads((out / "selection.json").read_text(encoding="utf-8"))
    published = [p for p, row in selection.items() if row.get("published") is not None]
    assert set(ALWAYS_PICKED) <= set(published), selection
    card: Any = None
    for policy in published:
        path = out / "selected" / policy / "card.json"
        assert path.is_file(), f"{policy}: published, but no {path}"
        card = merge(card, structure(json.loads(path.read_text(encoding="utf-8")), CARD))
    found[CARD] = card
    return found


# --- the test -------------------------------------------------------------------------


def _run(root: Path) -> Path:
    """A real `python -m job run` of CONFIG, with an embedded journal; its output folder."""
    config = root / "keys.yaml"
    config.write_text(CONFIG)
    out = root / "out"
    # the run's own storage and nothing pushed, whatever this shell has set
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SMS_", "POSTGRES_")) and k != "OPTUNA_STORAGE"
    }
    args = ["run", "--config", str(config), "--workers", "2", "--out", str(out), "--fresh"]
    done = subprocess.run(
        [sys.executable, "-m", "job", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_output_files_keep_their_fields(tmp_path: Path) -> None:
    have = structures(_run(tmp_path))
    if os.environ.get(UPDATE) == "1":
        GOLDEN.write_text(json.dumps({"files": have}, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"{UPDATE}=1: wrote {GOLDEN.relative_to(ROOT)}; review and commit it")
    want = json.loads(GOLDEN.read_text(encoding="utf-8"))["files"]
    assert set(have) == set(want)
    found = [line for name in want for line in differences(want[name], have[name], name)]
    assert not found, (
        "the run's output files no longer have the fields of "
        f"{GOLDEN.relative_to(ROOT)}:\n  " + "\n  ".join(found) + "\n"
        f"On purpose? Record the new fields with {UPDATE}=1 (see this module's docstring)."
    )


def test_the_comparison_names_what_changed() -> None:
    # the checker itself, without a run: a dropped, an added and a retyped field
    golden = structure({"a": 1, "b": {"c": "x", "d": [{"e": True}]}, "n": None}, "t")
    assert differences(golden, golden, "t") == []
    changed = structure({"b": {"c": 2, "d": [{"e": True, "f": 1}]}, "z": 0, "n": {}}, "t")
    assert differences(golden, changed, "t") == [
        "t: missing key 'a'",
        "t: new key 'z'",
        "t.b.c: was 'str', now 'number'",
        "t.b.d[]: new key 'f'",
    ]
    # optional values and empty lists match anything; data-keyed dicts by their values
    assert differences(structure({"l": []}, "t"), structure({"l": [{"x": 1}]}, "t"), "t") == []
    assert structure({"trials": {"COMPLETE": 3, "FAIL": 1}}, "summary.json") == {
        "trials": {ANY: "number"}
    }
    assert structure([{"a": 1}, {"b": None}], "t") == [{"a": "number", "b": None}]
