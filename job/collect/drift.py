"""The collector's drift step: how a new data version changed the picks and the front.

Run by the pipeline (job.collect.pipeline) after the picks step, before publish.

A study version made by `research` (`<name>-v<N>`) has its lineage in the study user
attr ``research`` (parent, what changed, fingerprints); its warm-start trials carry
``warm_start`` = {"parent", "trial", "why"} and, once run, values on the *new* data.
`drift_report` compares it with its parent (same storage); `write_drift` writes
``drift.json`` beside the collector's files, and report.html shows it as "Data drift".

- ``picks``: each model the parent's collector selected (``<parent results_dir>/
  selected/<policy>/``, a link to its trial's folder or, from an older collector, a
  folder: card.json, model.yaml, weights.pt) evaluated on this data's test
  split (PyTorch, fp32, normalised with the card's mean/std: what a deployer feeds it)
  against its card's verified accuracy; ``change`` = now - verified mean. A pick
  *regressed* when ``change < -max(verified_std, MIN_DROP)``: a drop beyond the seeds'
  spread, and never one under a point (one seed has std 0, and a test split of a few
  hundred images moves by tenths of a point on its own). A pick that cannot be evaluated
  (parent folder, card or weights gone; class names or input size changed) gets
  ``problem`` and no numbers, and never counts as a regression.
- ``front``: the parent's front, its members re-evaluated here (COMPLETE warm-start
  trials), and those whose re-evaluation is on this study's front (``kept``).
- ``hypervolume``: both fronts' (`job.search.view`'s fixed normalisation: they compare).

Metrics for alerting: gauges written by ``prometheus_client.write_to_textfile`` (for a
textfile collector or a Pushgateway). Gauges have no ``_created`` series; the
process-wide ``disable_created_metrics()`` is left alone (it would also change the
workers' own endpoint). ``drift.prom`` (``study``: the version; ``parent``):

- ``sms_research_pick_accuracy{study,parent,policy}``: a pick's test accuracy now, 0-1
- ``sms_research_pick_accuracy_change{study,parent,policy}``: now - verified mean
- ``sms_research_pick_regressed{study,parent,policy}``: 1 when regressed (rule above)
- ``sms_research_pick_problem{study,parent,policy}``: 1 when not evaluated (and then
  no accuracy series)
- ``sms_research_regressions{study,parent}``: picks regressed
- ``sms_research_front_kept_ratio{study,parent}``: kept / re-evaluated (absent: none)
- ``sms_research_hypervolume_change{study,parent}``: now - parent's (absent: unknown)

``research.prom`` (``study``: the base name, so a series outlives versions):

- ``sms_research_decision{study,decision}``: 1 for this run's decision, 0 for the other
  `DECISIONS` (unchanged, new_version, in_progress)
- ``sms_research_version{study}``: the latest version number
- ``sms_research_version_info{study,version_study}``: 1, naming that version's study
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from job.collect.picks import SELECTED, SELECTION_JSON
from job.collect.research import IN_PROGRESS, NEW_VERSION, UNCHANGED
from job.collect.results import write_json
from job.config import Config, ConfigError
from job.files import writing
from job.ml.data import Dataset
from job.ml.model import load_model_spec, output_shape
from job.ml.onnx import load_weights
from job.ml.train import Normalize, accuracy_and_f1, predict
from job.search.record import RESULTS_DIR, StudyAttrs, TrialRecord, WarmStart
from job.search.view import front_hypervolume, pareto_trials, snapshot
from job.storage import study_beside

DRIFT_JSON, DRIFT_PROM, RESEARCH_PROM = "drift.json", "drift.prom", "research.prom"
DECISIONS = (UNCHANGED, NEW_VERSION, IN_PROGRESS)
MIN_DROP = 0.01  # the smallest accuracy drop called a regression (see the module doc)


class DriftError(ValueError):
    """What could not be compared, in one line (a pick's ``problem``, or ``problems``)."""


def lineage(study: optuna.Study) -> dict[str, Any] | None:
    """The study's ``research`` attr when it names a parent; None for a first version."""
    found = StudyAttrs.read(study).lineage
    return found if found is not None and found.get("parent") else None


def regressed(change: float | None, std: float | None) -> bool:
    """The regression rule of the module doc; an unknown change is no regression."""
    return change is not None and change < -max(std or 0.0, MIN_DROP)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _read_json(path: Path) -> Any:
    """The file's JSON; `DriftError` naming the file when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DriftError(f"{path} is missing") from None
    except (OSError, ValueError) as exc:
        raise DriftError(f"{path}: cannot read ({type(exc).__name__})") from None


# --- the parent -----------------------------------------------------------------------


def _parent_study(study: optuna.Study, name: str) -> optuna.Study:
    """The parent, through the storage object the study holds (no second connection)."""
    try:
        return study_beside(study, name)
    except KeyError:
        raise DriftError(f"parent study {name!r} is not in this storage") from None


def _results_dir(parent: optuna.Study) -> Path:
    """The folder the parent's collector wrote (its study attr ``results_dir``)."""
    found = StudyAttrs.read(parent).results_dir
    if not found:
        raise DriftError(f"parent study {parent.study_name!r} records no {RESULTS_DIR}")
    if not Path(found).is_dir():  # moved, or on a volume this pod does not mount
        raise DriftError(f"parent results_dir {found} is missing")
    return Path(found)


def _origin(trial: FrozenTrial, parent: str) -> WarmStart | None:
    """The trial's ``warm_start`` attr when it re-evaluates a trial of `parent`."""
    found = TrialRecord.from_trial(trial).warm_start
    return found if found is not None and found.parent == parent else None


def warm_starts(trials: Sequence[FrozenTrial], parent: str) -> dict[int, list[FrozenTrial]]:
    """Parent trial number → this study's COMPLETE trials that re-evaluated it."""
    found: dict[int, list[FrozenTrial]] = {}
    for trial in trials:
        origin = _origin(trial, parent)
        if origin is not None and trial.state == TrialState.COMPLETE:
            found.setdefault(origin.trial, []).append(trial)
    return found


def _picked(folder: Path | None, trials: Sequence[FrozenTrial], parent: str) -> list[Any]:
    """(policy, parent trial) of each parent pick, from its selection.json; without that,
    from this study's ``pick:<policy>`` warm starts, so each pick still gets its row."""
    try:
        selection = _read_json(folder / SELECTION_JSON) if folder is not None else None
    except DriftError:
        selection = None
    if isinstance(selection, dict):
        return [
            (policy, choice["trial"])
            for policy, choice in selection.items()
            if isinstance(choice, dict) and isinstance(choice.get("trial"), int)
        ]
    whys = [(o.why, o.trial) for t in trials if (o := _origin(t, parent))]
    return sorted({(why.removeprefix("pick:"), n) for why, n in whys if why.startswith("pick:")})


# --- one pick -------------------------------------------------------------------------


def _deployed(card: dict[str, Any], data: Dataset) -> Dataset:
    """`data` as the card's ``input`` (written by publish) says to feed the model: same
    classes in the same order, same size, the card's mean/std. Cards without ``input``
    (older collectors) keep this data's statistics; the logit count is still checked."""
    spec = card.get("input")
    if not isinstance(spec, dict):
        return data
    classes, size, now = spec.get("classes"), spec.get("height"), int(data.test.x.shape[-1])
    if isinstance(classes, list) and [str(c) for c in classes] != list(data.classes):
        raise DriftError(f"class names changed: {classes} then, {list(data.classes)} now")
    if isinstance(size, int) and size != now:
        raise DriftError(f"input size changed: {size}x{size} then, {now}x{now} now")
    mean, std = spec.get("mean"), spec.get("std")
    if isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3:
        return replace(data, mean=(mean[0], mean[1], mean[2]), std=(std[0], std[1], std[2]))
    return data


def accuracy_now(folder: Path, data: Dataset, batch: int) -> float:
    """Top-1 accuracy of the pick's weights on the test split of `data`: fp32 (no
    autocast), on the data's device, normalised by `data`'s mean/std. `DriftError`
    when the files are missing or do not fit."""
    weights = folder / "weights.pt"
    if not weights.is_file():
        raise DriftError(f"{weights} is missing (no retrained weights)")
    try:
        model = load_weights(load_model_spec(folder / "model.yaml"), weights)
        logits = output_shape(model, int(data.test.x.shape[-1]))[-1]  # (1, classes)
    except (OSError, ValueError, RuntimeError) as exc:  # ModelError, ExportError, torch's
        raise DriftError(" ".join(str(exc).split())) from None
    if logits != data.num_classes:
        raise DriftError(f"class count changed: {logits} outputs, {data.num_classes} classes")
    device = data.test.x.device
    norm = Normalize(data, device, channels_last=False)
    pred = predict(model.to(device), data.test, norm, batch, amp=False)  # (N,) class ids
    return accuracy_and_f1(pred, data.test.y, data.num_classes)[0]


def _row(policy: str, number: Any, problem: str | None = None) -> dict[str, Any]:
    """A ``picks`` row with nothing measured yet."""
    numbers = dict.fromkeys(("verified_mean", "verified_std", "accuracy_now", "change"))
    return {"policy": policy, "trial": number, **numbers, "regressed": False, "problem": problem}


def pick_drift(policy: str, number: Any, folder: Path, data: Dataset, batch: int) -> dict[str, Any]:
    """One ``picks`` row: the pick in `folder` (selected/<policy>/, read through its
    link) evaluated on `data`."""
    row = _row(policy, number)
    try:
        card = _read_json(folder / "card.json")
        if not isinstance(card, dict):
            raise DriftError(f"{folder / 'card.json'}: not a card")
        verified = card.get("verified")
        verified = verified if isinstance(verified, dict) else {}
        row["trial"] = card.get("trial", number)
        row["verified_mean"] = _number(verified.get("mean"))
        row["verified_std"] = _number(verified.get("std"))
        row["accuracy_now"] = accuracy_now(folder, _deployed(card, data), batch)
    except DriftError as exc:
        return row | {"problem": str(exc)}
    if row["verified_mean"] is None:
        return row | {"problem": "no verified accuracy on the card to compare with"}
    row["change"] = row["accuracy_now"] - row["verified_mean"]
    row["regressed"] = regressed(row["change"], row["verified_std"])
    return row


# --- the report -----------------------------------------------------------------------


def front_drift(
    parent_trials: Sequence[FrozenTrial],
    trials: Sequence[FrozenTrial],
    parent: str,
    objectives: Sequence[str],
) -> dict[str, Any]:
    """Which parent front members were re-evaluated here, and which stay on the front."""
    before = [t.number for t in pareto_trials(parent_trials, objectives)]
    again = warm_starts(trials, parent)
    front_now = {t.number for t in pareto_trials(trials, objectives)}
    re_evaluated = [n for n in before if n in again]
    kept = [n for n in re_evaluated if any(t.number in front_now for t in again[n])]
    return {
        "parent": before,
        "re_evaluated": re_evaluated,
        "kept": kept,
        "kept_ratio": len(kept) / len(re_evaluated) if re_evaluated else None,
        # parent trial → the trial here that re-evaluated it (the first, if enqueued twice)
        "re_evaluated_as": {str(n): min(t.number for t in again[n]) for n in re_evaluated},
    }


def _compare_fronts(
    report: dict[str, Any], parent: optuna.Study, trials: Sequence[FrozenTrial], config: Config
) -> None:
    """The report's ``front`` and ``hypervolume`` from the parent's trials."""
    try:
        parent_trials = snapshot(parent, config)
    except ConfigError as exc:  # the parent ranks other objectives: fronts do not compare
        report["problems"].append(str(exc))
        return
    report["front"] = front_drift(parent_trials, trials, parent.study_name, config.objectives)
    before = front_hypervolume(pareto_trials(parent_trials, config.objectives), config.objectives)
    report["hypervolume"] |= {"parent": before, "change": report["hypervolume"]["now"] - before}


def drift_report(
    study: optuna.Study,
    trials: Sequence[FrozenTrial],
    config: Config,
    data: Dataset,
    out: Path,
) -> dict[str, Any] | None:
    """drift.json's content for `study` (its snapshot `trials`) on `data`, or None when
    the study is no research version. What cannot be compared is said in ``problems``
    and each pick's ``problem``, never raised. `out`: this version's results folder."""
    found = lineage(study)
    if found is None:
        return None
    parent, objectives = str(found["parent"]), config.objectives
    now = front_hypervolume(pareto_trials(trials, objectives), objectives)
    report: dict[str, Any] = {
        "study": study.study_name,
        "parent": parent,
        "changed": list(found.get("changed") or []),
        "fingerprints": found.get("fingerprints"),
        "parent_fingerprints": found.get("parent_fingerprints"),
        "results": str(out),
        "parent_results": None,
        "picks": [],
        "front": front_drift([], trials, parent, objectives),  # until the parent is read
        "hypervolume": {"parent": None, "now": now, "change": None},
        "regressions": 0,
        "problems": [],
    }
    folder: Path | None = None
    try:
        parent_study = _parent_study(study, parent)
        _compare_fronts(report, parent_study, trials, config)
        folder = _results_dir(parent_study)
        report["parent_results"] = str(folder)
    except DriftError as exc:  # each pick repeats it: a row per pick, none evaluated
        report["problems"].append(str(exc))
    batch = config.train.eval_batch_size
    for policy, number in _picked(folder, trials, parent):
        report["picks"].append(
            _row(policy, number, f"not evaluated: {report['problems'][-1]}")
            if folder is None
            else pick_drift(policy, number, folder / SELECTED / policy, data, batch)
        )
    report["regressions"] = sum(1 for row in report["picks"] if row["regressed"])
    return report


def write_drift(out: Path, report: dict[str, Any]) -> Path:
    """``out/drift.json``, written atomically (non-finite numbers as null)."""
    write_json(path := Path(out) / DRIFT_JSON, report)
    return path


def drift_step(
    study: optuna.Study, trials: Sequence[FrozenTrial], config: Config, data: Dataset, out: Path
) -> dict[str, Any] | None:
    """The collector's drift step (job.collect.pipeline): where this collector writes,
    recorded on the study (a later version's drift report finds the picks there), and for
    a version `research` made, its drift report against its parent: drift.json and
    drift.prom written, a few lines printed, the report returned."""
    if StudyAttrs.read(study).results_dir != str(out.resolve()):  # no write per collect
        StudyAttrs(results_dir=str(out.resolve())).write(study)
    report = drift_report(study, trials, config, data, out)
    if report is not None:
        write_drift(out, report)
        write_drift_metrics(out, report)
        print(drift_text(report))
    return report


def _fmt(value: Any, form: str = "{:.4f}") -> str:
    return "—" if _number(value) is None else form.format(value)


def drift_text(report: dict[str, Any]) -> str:
    """A few lines for the console: lineage, each pick, the front, the hypervolume."""
    changed = ", ".join(report["changed"]) or "nothing recorded"
    lines = [f"drift  {report['study']} from {report['parent']}: changed {changed}"]
    for row in report["picks"]:
        head = f"drift  pick {row['policy']:<16} trial {row['trial']}"
        if row["change"] is None:
            lines.append(f"{head}  not evaluated: {row['problem']}")
            continue
        lines.append(
            f"{head}  verified {_fmt(row['verified_mean'])} ± {_fmt(row['verified_std'])}"
            f"  now {_fmt(row['accuracy_now'])} ({_fmt(row['change'], '{:+.4f}')})"
            + ("  REGRESSED" if row["regressed"] else "")
        )
    front, hv = report["front"], report["hypervolume"]
    lines.append(
        f"drift  front: {len(front['kept'])} of {len(front['re_evaluated'])} re-evaluated "
        f"parent front members ({len(front['parent'])} in all) stay on it; hypervolume "
        f"{_fmt(hv['parent'])} → {_fmt(hv['now'])} ({_fmt(hv['change'], '{:+.4f}')})"
    )
    lines.append(f"drift  {report['regressions']} pick(s) regressed")
    return "\n".join(lines + [f"drift  warning: {p}" for p in report["problems"]])


# --- metrics --------------------------------------------------------------------------

_PER_PICK = {  # name → (row field, help); a pick not evaluated has neither series
    "sms_research_pick_accuracy": ("accuracy_now", "A pick's test accuracy on this data, 0-1"),
    "sms_research_pick_accuracy_change": ("change", "Test accuracy now minus verified mean"),
}


def _gauge(registry: CollectorRegistry, name: str, doc: str, labels: Sequence[str]) -> Gauge:
    return Gauge(name, doc, list(labels), registry=registry)


def write_drift_metrics(out: Path, report: dict[str, Any]) -> Path:
    """``out/drift.prom``: the drift report's gauges (names in the module doc)."""
    path = Path(out) / DRIFT_PROM
    with writing(path):
        write_to_textfile(str(path), drift_registry(report))  # atomic
    return path


def drift_registry(report: dict[str, Any]) -> CollectorRegistry:
    """The drift report's gauges (drift.prom's; the collector pushes them too)."""
    registry = CollectorRegistry()
    ids = {"study": report["study"], "parent": report["parent"]}
    per_pick = ("study", "parent", "policy")
    flag = _gauge(registry, "sms_research_pick_regressed", "1: the pick regressed", per_pick)
    problem = _gauge(registry, "sms_research_pick_problem", "1: not evaluated", per_pick)
    numbers = {f: _gauge(registry, n, doc, per_pick) for n, (f, doc) in _PER_PICK.items()}
    for row in report["picks"]:
        labels = ids | {"policy": row["policy"]}
        flag.labels(**labels).set(int(bool(row["regressed"])))
        problem.labels(**labels).set(int(row["change"] is None))
        for field, gauge in numbers.items():
            if row["change"] is not None:
                gauge.labels(**labels).set(row[field])
    front, hv = report["front"]["kept_ratio"], report["hypervolume"]["change"]
    for name, value, doc in (  # None: no series (nothing to compare)
        ("sms_research_regressions", report["regressions"], "Picks that regressed"),
        ("sms_research_front_kept_ratio", front, "Parent front members kept / re-evaluated"),
        ("sms_research_hypervolume_change", hv, "Front hypervolume now minus the parent's"),
    ):
        if value is not None:
            _gauge(registry, name, doc, tuple(ids)).labels(**ids).set(value)
    return registry


def write_decision_metrics(out: Path, base: str, study: str, version: int, decision: str) -> Path:
    """``out/research.prom``: the research verb's decision, the version and its study."""
    registry = decision_registry(base, study, version, decision)
    path = Path(out) / RESEARCH_PROM
    with writing(path):
        write_to_textfile(str(path), registry)  # renamed into place
    return path


def decision_registry(base: str, study: str, version: int, decision: str) -> CollectorRegistry:
    """research.prom's gauges (`research` pushes them too)."""
    if decision not in DECISIONS:
        raise ValueError(f"decision: one of {list(DECISIONS)}, got {decision!r}")
    registry = CollectorRegistry()
    doc = "1 for this research run's decision, 0 for the others"
    decided = _gauge(registry, "sms_research_decision", doc, ("study", "decision"))
    for name in DECISIONS:  # every decision present, so an alert on any of them evaluates
        decided.labels(study=base, decision=name).set(int(name == decision))
    numbered = _gauge(registry, "sms_research_version", "Latest study version", ("study",))
    numbered.labels(study=base).set(version)
    info = _gauge(registry, "sms_research_version_info", "Its study", ("study", "version_study"))
    info.labels(study=base, version_study=study).set(1)
    return registry
