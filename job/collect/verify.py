"""The collector's verify step: what the retrains proved, as `Verification` and verify.json.

Fourth step of the pipeline (job.collect.pipeline: study -> front -> select -> **verify**
-> picks -> publish -> report -> push). The plan of retrains (`Selection.plan`, made by
the select step, job.collect.selection; how it is queued and waited for:
job.collect.retrains) is queued on the verification study once the budget is met; with
`collect --wait` it is waited for. Then its trials are read once and matched with the
plan (`gather`): per model (a search trial, or a baseline file) its finished seeds,
failures and what is still to come.

The `Verification` goes on to the picks step (a `reference` policy is resolved by it,
each card carries its model's seeds), then to `write_verify`, then to the report.

`verify.json`, written once, by `write_verify`: per retrained model, proxy vs verified
accuracy, and Kendall's tau and Spearman's rho between the two over the top
`select.verify_top_k` front members; with ONNX export on, `latency_agreement`: how well
the search's latency objective (timed on the workers, `train.latency`) ranks the verified
models as onnxruntime on a CPU does. The pipeline calls it once the picks are published: the
agreement exports every verified model to a temporary ONNX file, and a disk that is
full (or a file size limit) must stop the collect at a published file first, named
as such, with every output of the collect before intact.
"""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from job.collect.policies import Record, mean_std, rank_agreement, top_front
from job.collect.results import write_json
from job.collect.selection import Selection
from job.config import Config
from job.files import writing
from job.search.record import TrialRecord, latency_text
from job.search.retrain import Retrain
from job.search.view import search_latency_key

if TYPE_CHECKING:
    from job.ml.data import Dataset

VERIFY_JSON = "verify.json"


@dataclass(frozen=True)
class Run:
    """One finished retrain (one seed)."""

    seed: int
    test_accuracy: float
    test_f1: float
    latency_ms: float  # the search's latency figure (`train.latency`), timed before training
    weights: str | None


@dataclass
class Verified:
    """A model's retrains: the finished ones, and what failed or is still to come
    (filled in by `gather`, read only after)."""

    name: str
    role: str
    trial: int | None
    path: str | None
    model_yaml: str
    recipe: dict[str, Any]
    latency_key: str = "latency_ms_ort_fp32"  # the name of `Run.latency_ms` (LATENCY_KEYS)
    planned: int = 0
    runs: list[Run] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "seed 1: nan_loss: …"
    params: int | None = None
    macs: int | None = None

    @property
    def pending(self) -> int:
        return self.planned - len(self.runs) - len(self.failed)

    @property
    def mean_std(self) -> tuple[float, float] | None:
        return mean_std([r.test_accuracy for r in self.runs]) if self.runs else None

    @property
    def best_run(self) -> Run | None:
        return max(self.runs, key=lambda r: (r.test_accuracy, -r.seed), default=None)

    @property
    def latency_ms(self) -> float:
        found = [r.latency_ms for r in self.runs if math.isfinite(r.latency_ms)]
        return statistics.median(found) if found else math.nan

    def summary(self) -> dict[str, Any]:
        """verify.json's and baselines.json's view of it."""
        found = self.mean_std
        return {
            "verified_accuracy": None if found is None else found[0],
            "verified_std": None if found is None else found[1],
            "seeds": [{"seed": r.seed, "test_accuracy": r.test_accuracy} for r in self.runs],
            "planned": self.planned,
            "pending": self.pending,
            "failed": self.failed,
            "params": self.params,
            "macs": self.macs,
            self.latency_key: self.latency_ms,
        }


@dataclass(frozen=True)
class Verification:
    """The verify step's outcome: each planned model's retrains, and verify.json as written."""

    models: dict[str, Verified]  # "trial 12" / "file <path>" → its retrains
    report: dict[str, Any]  # verify.json's content

    @property
    def by_trial(self) -> dict[int | None, Verified]:
        """The retrained search trials, by trial number."""
        return {m.trial: m for m in self.models.values() if m.role == "search"}

    @property
    def baselines(self) -> list[Verified]:
        return [m for m in self.models.values() if m.role == "baseline"]

    @property
    def pending(self) -> int:
        """Retrains queued or running."""
        return sum(m.pending for m in self.models.values())

    @property
    def failed(self) -> list[str]:
        """One line per retrain that failed for good."""
        return [f"{m.name} {f}" for m in self.models.values() for f in m.failed]


def verify(
    study: optuna.Study, selection: Selection, config: Config, url: str, wait: bool = False,
    timeout_s: float | None = None,
) -> Verification | None:  # fmt: skip
    """The verify step (the module doc): the plan queued once the budget is met (with
    `wait`, waited for: `timeout_s` None for ever; None returned when it ran out), the
    retrains gathered; verify.json's content, less the latency agreement."""
    from job.collect.retrains import ensure_plan, wait_for_retrains
    from job.search.retrain import verify_study_name
    from job.search.studies import open_study

    verify_trials: list[FrozenTrial] = []
    if config.select.verify and selection.finished:
        name = verify_study_name(study.study_name)
        verification = open_study(config, url, name, verify=True)
        ensure_plan(verification, url, selection.plan)
        if wait and not wait_for_retrains(verification, url, timeout_s=timeout_s):
            print(f"error: the retrains did not finish within {timeout_s}s", file=sys.stderr)
            return None
        verify_trials = verification.get_trials(deepcopy=False)
    models = gather(selection.plan, verify_trials, search_latency_key(config))
    by_trial = {m.trial: m for m in models.values() if m.role == "search"}
    return Verification(models, verify_report(by_trial, selection.records, config))


def write_verify(
    out: Path, verification: Verification, selection: Selection, config: Config, data: Dataset
) -> Verification:
    """verify.json, written once: the verification's report and, with `export.onnx` and
    a retrained model, the latency agreement (`latency_agreement`, on `data`'s image
    size); returns the verification with that report."""
    report = dict(verification.report)
    if config.export.onnx and (by_trial := verification.by_trial):
        size = int(data.test.x.shape[-1])
        report["latency_agreement"] = latency_agreement(by_trial, selection.trials, config, size)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    write_json(out / VERIFY_JSON, report)
    return replace(verification, report=report)


def gather(
    plan: Sequence[Retrain], verify_trials: Sequence[FrozenTrial], latency_key: str
) -> dict[str, Verified]:
    """Each model of the plan (a search trial, or a baseline file) → its retrains: the
    plan's runs matched with the verification study's trials by key; a key's COMPLETE
    trial wins over its failed attempts. Two trials that trained the same thing (the
    sampler proposed it twice) share one key, and so the same retrains. `latency_key`:
    the latency figure each run reports (the search's, LATENCY_KEYS)."""
    found: dict[str, Verified] = {}
    keys = {spec.key for spec in plan}
    for spec in plan:
        model = found.setdefault(
            _identity(spec),
            Verified(
                spec.name,
                spec.role,
                spec.trial,
                spec.path,
                spec.model_yaml,
                spec.recipe,
                latency_key,
            ),
        )
        model.planned += 1
    by_key: dict[str, list[FrozenTrial]] = {}
    for trial in verify_trials:
        run = Retrain.of(trial)
        if run is not None and run.key in keys:
            by_key.setdefault(run.key, []).append(trial)
    for spec in plan:
        model = found[_identity(spec)]
        tries = by_key.get(spec.key, [])
        done = [t for t in tries if t.state == TrialState.COMPLETE]
        if done:
            ran = TrialRecord.from_trial(done[0])
            model.runs.append(_run(spec.seed, ran, latency_key))
            model.params = model.params if ran.params is None else ran.params
            model.macs = model.macs if ran.macs is None else ran.macs
        elif tries and all(t.state == TrialState.FAIL for t in tries):  # none left to run
            last = TrialRecord.from_trial(max(tries, key=lambda t: t.number))
            reason = "failed" if last.fail_reason is None else last.fail_reason
            message = last.fail_message or ""
            model.failed.append(f"seed {spec.seed}: {reason}: {message}".rstrip(": "))
    return found


def _identity(spec: Retrain) -> str:
    return f"trial {spec.trial}" if spec.role == "search" else f"file {spec.path}"


def _run(seed: int, trial: TrialRecord, latency_key: str) -> Run:
    def number(value: float | None) -> float:
        return math.nan if value is None else value

    return Run(
        seed,
        number(trial.test_accuracy),
        number(trial.test_f1),
        number(trial.latency(latency_key)),
        trial.weights or None,
    )


def verify_report(
    by_trial: dict[int | None, Verified], records: Sequence[Record], config: Config
) -> dict[str, Any]:
    """verify.json: proxy vs verified per model; tau and rho over the top-k front."""
    found = {r.number: r for r in records}
    top = top_front(records, config.select.verify_top_k)
    pairs = [
        (r.accuracy, ms[0])
        for r in top
        if (m := by_trial.get(r.number)) is not None and (ms := m.mean_std) is not None
    ]
    agreement = rank_agreement([p[0] for p in pairs], [p[1] for p in pairs])
    models = []
    for number, model in sorted(by_trial.items(), key=lambda kv: kv[0] or 0):
        record = found.get(number) if number is not None else None
        models.append(
            {
                "trial": number,
                "proxy_accuracy": record.accuracy if record else None,
                "on_front": bool(record and record.on_front),
                **model.summary(),
            }
        )
    return {
        "models": models,
        **agreement.fields(n_key="correlated_over"),
        "top_k": config.select.verify_top_k,
        "retrain_epochs": config.select.retrain.epochs or config.train.epochs,
        "seeds": config.select.retrain.seeds,
    }


def latency_agreement(
    verified: dict[int | None, Verified], trials: Sequence[FrozenTrial], config: Config,
    image_size: int,
) -> dict[str, Any]:  # fmt: skip
    """The search's latency (`train.latency`, timed on the workers before training)
    against onnxruntime's on this machine (fp32, batch 1, `export.latency_threads`, the
    trained weights), over the verified models: how well the objective ranks them as
    they will run."""
    key = search_latency_key(config)
    from job.ml.model import spec_from_yaml
    from job.ml.onnx import ExportError, export_onnx, load_weights, ort_latency

    numbers = {t.number: t for t in trials}
    rows = []
    with tempfile.TemporaryDirectory(prefix="sms-latency-") as tmp:
        for number, model in sorted(verified.items(), key=lambda kv: kv[0] or 0):
            best = model.best_run
            trial = numbers.get(number) if number is not None else None
            searched = TrialRecord.from_trial(trial).latency(key) if trial is not None else None
            if best is None or not best.weights or not isinstance(searched, float):
                continue
            if not math.isfinite(searched):
                continue
            try:
                network = load_weights(spec_from_yaml(model.model_yaml), Path(best.weights))
            except ExportError:  # gone or damaged: that model is left out of the ranking
                continue
            path = Path(tmp) / f"trial-{number}.onnx"
            export_onnx(network, image_size, path, config.export.opset)
            timed = ort_latency(
                path, image_size, config.export.latency_threads, config.export.latency_runs
            )
            rows.append({"trial": number, "search_ms": searched, "onnx_ms": timed["median_ms"]})
    agreement = rank_agreement([r["search_ms"] for r in rows], [r["onnx_ms"] for r in rows])
    return {
        **agreement.fields(),
        "models": rows,
        "search": f"{key}: {latency_text(key)}, on the search workers, before training",
        "deployed": f"onnxruntime CPU fp32, batch 1, {config.export.latency_threads} thread(s)",
    }
