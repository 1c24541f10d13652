"""job.collect.drift, the research drift report: a real parent study and its version in one Optuna
storage, a real parent results folder holding a digits model trained here (about a
second), evaluated on the data again; the JSON, the metrics files and the report page."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial
from prometheus_client.parser import text_string_to_metric_families

from job.collect.drift import (
    DRIFT_JSON,
    MIN_DROP,
    drift_report,
    drift_text,
    regressed,
    write_decision_metrics,
    write_drift,
    write_drift_metrics,
)
from job.collect.report import REPORT_HTML, write_report
from job.config import Config, DataConfig, parse_config
from job.ml.data import Dataset
from job.ml.model import model_spec_yaml, parse_model_spec
from job.ml.onnx import input_spec
from job.ml.train import train
from job.search.view import hypervolume, normalised_losses
from tests.support.configs import TINY
from tests.support.html import assert_self_contained

optuna.logging.set_verbosity(optuna.logging.WARNING)

OBJ = ("accuracy", "params")
DIRECTIONS: list[StudyDirection] = [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
# parent trials: (accuracy, params); 0, 1, 2 are its front, 3 is dominated by 0
PARENT = [(0.90, 1000), (0.95, 5000), (0.97, 20000), (0.85, 3000)]
# the version's trials: (parent trial re-evaluated, why, state, values); the last is new
CHILD = [
    (2, "pick:best", TrialState.COMPLETE, (0.96, 20000)),  # stays on the front
    (1, "pick:knee", TrialState.COMPLETE, (0.80, 5000)),  # dominated by the new trial 3
    (0, "front", TrialState.FAIL, None),  # its re-evaluation failed: not re-evaluated
    (None, None, TrialState.COMPLETE, (0.93, 2000)),
]


@pytest.fixture(scope="module")
def config() -> Config:
    return parse_config(yaml.safe_load(TINY))


@dataclass(frozen=True)
class Trained:
    model_yaml: str
    weights: Path
    test_accuracy: float  # job.ml.train's own figure, on digits16's test split


@pytest.fixture(scope="module")
def trained(digits16: Dataset, config: Config, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A tiny network (1.6k params) trained for three epochs (about 2 s) on digits at
    16x16: about 0.8 test accuracy, so predictions mean something."""
    backbone = [
        [1, "Conv", [8, 3, 2, None, 1, "ReLU"]],
        [1, "Conv", [16, 3, 2, None, 1, "ReLU"]],
        [1, "GlobalAvgPool", []],
        [1, "FixedConv", [10, 1, 1, None, 1, None]],
    ]
    spec = parse_model_spec({"backbone": backbone})
    recipe = config.train.model_copy(update={"epochs": 3, "batch_size": 32, "lr": 0.1})
    augment = config.augment.model_copy(update={"enabled": False})
    weights = tmp_path_factory.mktemp("trained") / "weights.pt"
    result = train(spec, augment, recipe, digits16, weights=weights)
    return Trained(model_spec_yaml(spec), weights, result.test_accuracy)


def verified_at(acc: float) -> dict[str, tuple[float, float]]:
    """policy → (verified mean, std) around the model's accuracy `acc`, so that "best"
    dropped within the floor, "knee" dropped beyond its std, "small" within its std."""
    return {"best": (acc + 0.005, 0.001), "knee": (acc + 0.05, 0.02), "small": (acc + 0.03, 0.04)}


def parent_folder(root: Path, trained: Trained, data: Dataset) -> Path:
    """What the parent's collector wrote: selection.json, selected/trial-<N>/ and the
    link selected/<policy> to it, read through the link."""
    folder = root / "parent-results"
    trials = {"best": 2, "knee": 1, "small": 0}
    selection: dict[str, Any] = {p: {"kind": p, "trial": n} for p, n in trials.items()}
    selection["budget"] = {"kind": "budget", "trial": None, "reason": "none fits"}
    for policy, (mean, std) in verified_at(trained.test_accuracy).items():
        pick = folder / "selected" / f"trial-{trials[policy]}"
        pick.mkdir(parents=True)
        (folder / "selected" / policy).symlink_to(pick.name)
        card = {"policy": policy, "trial": trials[policy], "verified": {"mean": mean, "std": std}}
        card["input"] = input_spec(data, DataConfig(name="digits", image_size=16))
        (pick / "card.json").write_text(json.dumps(card))
        (pick / "model.yaml").write_text(trained.model_yaml)
        shutil.copyfile(trained.weights, pick / "weights.pt")
    (folder / "selection.json").write_text(json.dumps(selection))
    return folder


def studies(results_dir: str | None, parent: str = "tiny") -> tuple[optuna.Study, optuna.Study]:
    """The parent study and its version, in one in-memory storage."""
    storage = optuna.storages.InMemoryStorage()
    first = optuna.create_study(storage=storage, study_name="tiny", directions=DIRECTIONS)
    for accuracy, params in PARENT:
        first.add_trial(create_trial(values=[accuracy, params], user_attrs={"params": params}))
    if results_dir is not None:
        first.set_user_attr("results_dir", results_dir)
    version = optuna.create_study(storage=storage, study_name="tiny-v2", directions=DIRECTIONS)
    fingerprints = {"data": "d2", "config": "c1", "code": "k1"}
    version.set_user_attr(
        "research",
        {
            "version": 2, "base": "tiny", "parent": parent, "changed": ["data"],
            "fingerprints": fingerprints,
            "parent_fingerprints": fingerprints | {"data": "d1"},
            "warm_start_trials": 3, "created": "2025-01-01T00:00:00",
        },
    )  # fmt: skip
    for number, why, state, values in CHILD:
        attrs = {} if number is None else {"warm_start": {"parent": parent, "trial": number}}
        if why is not None:
            attrs["warm_start"]["why"] = why
        version.add_trial(create_trial(state=state, values=values, user_attrs=attrs))
    return first, version


@pytest.fixture(scope="module")
def found(
    trained: Trained, digits16: Dataset, config: Config, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path]:
    """The drift report of a version whose parent's results are all there."""
    root = tmp_path_factory.mktemp("drift")
    _, version = studies(str(parent_folder(root, trained, digits16)))
    out = root / "out"
    out.mkdir()
    report = drift_report(version, version.get_trials(), config, digits16, out)
    assert report is not None
    return report, out


# --- the picks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "std", "want"),
    [
        (-0.005, 0.001, False),  # within the floor of a point
        (-0.011, 0.001, True),  # beyond the floor, std below it
        (-0.03, 0.04, False),  # within the seeds' spread
        (-0.05, 0.04, True),  # beyond the spread
        (0.02, 0.0, False),  # better now
        (-0.5, None, True),  # one seed: the floor applies
        (None, 0.01, False),  # not evaluated: no regression
    ],
)
def test_the_regression_rule(change: float | None, std: float | None, want: bool) -> None:
    assert regressed(change, std) is want
    assert MIN_DROP == 0.01


def test_each_pick_is_evaluated_on_the_new_data(
    found: tuple[dict[str, Any], Path], trained: Trained, digits16: Dataset
) -> None:
    report, _ = found
    rows = {row["policy"]: row for row in report["picks"]}
    assert list(rows) == ["best", "knee", "small"]  # the budget policy chose nothing
    assert [rows[p]["trial"] for p in rows] == [2, 1, 0]
    for policy, (mean, std) in verified_at(trained.test_accuracy).items():
        row = rows[policy]
        assert row["problem"] is None
        assert 0.5 < row["accuracy_now"] <= 1.0  # a trained model, not chance (0.1)
        # the same weights on the same split as job.ml.train measured them (one image of slack)
        assert row["accuracy_now"] == pytest.approx(trained.test_accuracy, abs=1.01 / 359)
        assert (row["verified_mean"], row["verified_std"]) == (mean, std)
        assert row["change"] == pytest.approx(row["accuracy_now"] - mean)
    assert len(digits16.test) == 359
    assert [rows[p]["regressed"] for p in ("best", "knee", "small")] == [False, True, False]
    assert report["regressions"] == 1 and report["problems"] == []
    assert report["study"] == "tiny-v2" and report["parent"] == "tiny"
    assert report["changed"] == ["data"]
    assert report["fingerprints"]["data"] == "d2" and report["parent_fingerprints"]["data"] == "d1"


def test_front_kept_and_hypervolume(found: tuple[dict[str, Any], Path]) -> None:
    report, _ = found
    front = report["front"]
    assert front["parent"] == [0, 1, 2]  # by ascending accuracy; 3 is dominated
    assert front["re_evaluated"] == [1, 2]  # 0's re-evaluation failed
    assert front["kept"] == [2]  # 1's re-evaluation is dominated by the new trial
    assert front["kept_ratio"] == 0.5
    assert front["re_evaluated_as"] == {"1": 1, "2": 0}
    then = hypervolume(normalised_losses([list(v) for v in PARENT[:3]], OBJ))
    now = hypervolume(normalised_losses([[0.96, 20000], [0.93, 2000]], OBJ))
    hv = report["hypervolume"]
    assert hv["parent"] == pytest.approx(then) and hv["now"] == pytest.approx(now)
    assert hv["change"] == pytest.approx(now - then) and 0 < then < 1


# --- what cannot be compared --------------------------------------------------------------


@pytest.mark.parametrize("results_dir", [None, "/nonexistent/parent-results"])
def test_missing_parent_results_give_a_problem_per_pick(
    results_dir: str | None, config: Config, digits16: Dataset, tmp_path: Path
) -> None:
    _, version = studies(results_dir)
    report = drift_report(version, version.get_trials(), config, digits16, tmp_path)
    assert report is not None
    # without the parent's selection.json the picks come from the warm starts
    assert [(r["policy"], r["trial"]) for r in report["picks"]] == [("best", 2), ("knee", 1)]
    for row in report["picks"]:
        assert row["problem"].startswith("not evaluated: parent")
        assert row["accuracy_now"] is None and row["change"] is None and not row["regressed"]
    assert len(report["problems"]) == 1 and report["regressions"] == 0
    assert report["front"]["kept"] == [2]  # the front is still compared
    assert "not evaluated" in drift_text(report)


def test_a_parent_that_is_gone_is_a_problem_not_an_exception(
    config: Config, digits16: Dataset, tmp_path: Path
) -> None:
    _, version = studies(None, parent="tiny-v1")
    report = drift_report(version, version.get_trials(), config, digits16, tmp_path)
    assert report is not None
    assert report["problems"] == ["parent study 'tiny-v1' is not in this storage"]
    assert report["hypervolume"]["parent"] is None and report["hypervolume"]["now"] > 0
    assert report["front"]["parent"] == [] and report["front"]["kept_ratio"] is None


def test_changed_classes_size_or_missing_weights_are_problems(
    trained: Trained, digits16: Dataset, config: Config, tmp_path: Path
) -> None:
    folder = parent_folder(tmp_path, trained, digits16)
    _, version = studies(str(folder))
    renamed = replace(digits16, classes=tuple("abcdefghij"))
    report = drift_report(version, version.get_trials(), config, renamed, tmp_path)
    assert report is not None
    for row in report["picks"]:
        assert row["problem"].startswith("class names changed")
        assert row["accuracy_now"] is None and row["change"] is None
    card = json.loads((folder / "selected" / "best" / "card.json").read_text())
    card["input"]["height"] = card["input"]["width"] = 32
    (folder / "selected" / "best" / "card.json").write_text(json.dumps(card))
    (folder / "selected" / "knee" / "weights.pt").unlink()
    report = drift_report(version, version.get_trials(), config, digits16, tmp_path)
    assert report is not None
    rows = {row["policy"]: row for row in report["picks"]}
    assert rows["best"]["problem"] == "input size changed: 32x32 then, 16x16 now"
    assert "weights.pt is missing" in rows["knee"]["problem"]
    assert rows["small"]["problem"] is None and rows["small"]["accuracy_now"] is not None
    assert report["regressions"] == 0  # knee regressed before; not evaluated, not counted


def test_no_lineage_or_no_parent_is_no_report(
    config: Config, digits16: Dataset, tmp_path: Path
) -> None:
    first, version = studies(None)
    assert drift_report(first, first.get_trials(), config, digits16, tmp_path) is None
    version.set_user_attr("research", {"version": 1, "base": "tiny", "parent": None})
    assert drift_report(version, version.get_trials(), config, digits16, tmp_path) is None


# --- the files ------------------------------------------------------------------------------


def test_drift_json_and_text(found: tuple[dict[str, Any], Path]) -> None:
    report, out = found
    path = write_drift(out, report)
    assert path == out / DRIFT_JSON
    assert json.loads(path.read_text()) == json.loads(json.dumps(report))
    assert not list(out.glob(".*tmp"))  # written atomically, nothing left behind
    text = drift_text(report)
    assert "drift  tiny-v2 from tiny: changed data" in text
    assert "knee" in text and "REGRESSED" in text and text.count("REGRESSED") == 1
    assert "1 of 2 re-evaluated parent front members (3 in all)" in text


def _samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) → value, with every family's type checked."""
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        assert family.type == "gauge" and family.name.startswith("sms_research_")
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_drift_metrics(found: tuple[dict[str, Any], Path]) -> None:
    report, out = found
    path = write_drift_metrics(out, report)
    assert path.name == "drift.prom" and "_created" not in path.read_text()
    samples = _samples(path)
    ids = (("parent", "tiny"),)
    rows = {row["policy"]: row for row in report["picks"]}
    for policy, row in rows.items():
        labels = (*ids, ("policy", policy), ("study", "tiny-v2"))
        change, now = row["change"], row["accuracy_now"]
        assert samples[("sms_research_pick_accuracy_change", labels)] == pytest.approx(change)
        assert samples[("sms_research_pick_accuracy", labels)] == pytest.approx(now)
        assert samples[("sms_research_pick_regressed", labels)] == float(row["regressed"])
        assert samples[("sms_research_pick_problem", labels)] == 0.0
    pair = (*ids, ("study", "tiny-v2"))
    assert samples[("sms_research_regressions", pair)] == 1.0
    assert samples[("sms_research_front_kept_ratio", pair)] == 0.5
    change = report["hypervolume"]["change"]
    assert samples[("sms_research_hypervolume_change", pair)] == pytest.approx(change)
    assert len(samples) == 4 * 3 + 3


def test_drift_metrics_of_picks_not_evaluated(
    config: Config, digits16: Dataset, tmp_path: Path
) -> None:
    _, version = studies(None, parent="tiny-v1")  # no parent: nothing to compare with
    report = drift_report(version, version.get_trials(), config, digits16, tmp_path)
    assert report is not None
    samples = _samples(write_drift_metrics(tmp_path, report))
    for policy in ("best", "knee"):  # from the warm starts, neither evaluated
        labels = (("parent", "tiny-v1"), ("policy", policy), ("study", "tiny-v2"))
        assert samples[("sms_research_pick_problem", labels)] == 1.0
        assert samples[("sms_research_pick_regressed", labels)] == 0.0
    names = {name for name, _ in samples}  # no accuracy, no ratio, no hypervolume change
    assert names == {"sms_research_pick_problem", "sms_research_pick_regressed"} | {
        "sms_research_regressions"
    }


def test_decision_metrics(tmp_path: Path) -> None:
    path = write_decision_metrics(tmp_path, "tiny", "tiny-v3", 3, "new_version")
    assert path == tmp_path / "research.prom" and "_created" not in path.read_text()
    samples = _samples(path)
    for decision in ("unchanged", "new_version", "in_progress"):
        labels = (("decision", decision), ("study", "tiny"))
        assert samples[("sms_research_decision", labels)] == float(decision == "new_version")
    assert samples[("sms_research_version", (("study", "tiny"),))] == 3.0
    info = (("study", "tiny"), ("version_study", "tiny-v3"))
    assert samples[("sms_research_version_info", info)] == 1.0
    assert len(samples) == 5
    with pytest.raises(ValueError, match="decision: one of"):
        write_decision_metrics(tmp_path, "tiny", "tiny-v3", 3, "maybe")


def test_the_report_page_has_a_drift_section_only_with_drift_json(
    found: tuple[dict[str, Any], Path], config: Config, tmp_path: Path
) -> None:
    report, _ = found
    trials = studies(None)[1].get_trials()
    html = write_report(tmp_path, trials, config, "tiny-v2").read_text(encoding="utf-8")
    assert 'id="drift"' not in html and "Data drift" not in html
    write_drift(tmp_path, report)
    path = write_report(tmp_path, trials, config, "tiny-v2")
    assert path == tmp_path / REPORT_HTML
    html = path.read_text(encoding="utf-8")
    assert_self_contained(html, tmp_path)
    assert html.index('id="glance"') < html.index('id="drift"') < html.index('id="selection"')
    assert '<a href="#drift">Data drift</a>' in html
    section = html[html.index('id="drift"') : html.index('id="pareto"')]
    assert "new version of <code>tiny</code>: data changed" in section
    assert section.count('class="regressed"') == 1 and "<td>knee</td>" in section
    assert "1 of 2" in section and "1 / 3" in section
    for row in report["picks"]:
        assert f"{row['accuracy_now']:.4f}" in section and f"{row['change']:+.4f}" in section
    hv = report["hypervolume"]
    assert f"{hv['parent']:.4f} → {hv['now']:.4f}" in section
