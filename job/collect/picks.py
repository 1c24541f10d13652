"""The collector's selection: what each policy chose, proven by its retrains, as files.

From one read of the search study and one of its verification study (`job.search.retrain`),
`write_selection` decides what each policy chose and writes into the collector's folder:

- `verify.json`: per retrained model, proxy vs verified accuracy, and Kendall's tau and
  Spearman's rho between the two over the top `select.verify_top_k` front members;
- `baselines.json`: each baseline network trained alike, and each pick against each
  baseline: accuracy difference, size, MACs and latency ratios (the seed's table).

It returns, for `job.collect.publish`, each pick's card (what a deployer reads: study, trial,
data fingerprint, code version, params, MACs, latency, proxy accuracy, verified accuracy
mean/std and per seed, augmentation policy, recipe) and the selection (policy name → its
kind, the trial chosen, or null, and why). `job.collect.publish` builds each pick's folder
`selected/<policy>/` (`model.yaml` in the seed's format, `weights.pt`: the state dict of
the best seed's retrain, `card.json`, the ONNX files) beside the published one, checks
it and swaps it in (job.collect.outputs), then writes `selection.json` saying what was published.

Retrains still queued or running are reported as such; a later `collect` fills them in
(and retrains nothing twice). Every file is written atomically.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from job.collect.outputs import writing
from job.collect.policies import (
    Choice,
    Record,
    mean_std,
    rank_agreement,
    resolve_reference,
    top_front,
)
from job.collect.results import write_json
from job.config import Config
from job.search.retrain import Retrain, records

SELECTION_JSON, VERIFY_JSON, BASELINES_JSON = "selection.json", "verify.json", "baselines.json"
SELECTED = "selected"


@dataclass(frozen=True)
class Run:
    """One finished retrain (one seed)."""

    seed: int
    test_accuracy: float
    test_f1: float
    latency_ms_b1: float
    weights: str | None


@dataclass
class Verified:
    """A model's retrains: the finished ones, and what failed or is still to come."""

    name: str
    role: str
    trial: int | None
    path: str | None
    model_yaml: str
    recipe: dict[str, Any]
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
        found = [r.latency_ms_b1 for r in self.runs if math.isfinite(r.latency_ms_b1)]
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
            "latency_ms_b1": self.latency_ms,
        }


def gather(plan: Sequence[Retrain], verify_trials: Sequence[FrozenTrial]) -> dict[str, Verified]:
    """Each model of the plan (a search trial, or a baseline file) → its retrains: the
    plan's runs matched with the verification study's trials by key; a key's COMPLETE
    trial wins over its failed attempts. Two trials that trained the same thing (the
    sampler proposed it twice) share one key, and so the same retrains."""
    found: dict[str, Verified] = {}
    keys = {spec.key for spec in plan}
    for spec in plan:
        model = found.setdefault(
            _identity(spec),
            Verified(spec.name, spec.role, spec.trial, spec.path, spec.model_yaml, spec.recipe),
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
            model.runs.append(_run(spec.seed, done[0]))
            model.params = done[0].user_attrs.get("params", model.params)
            model.macs = done[0].user_attrs.get("macs", model.macs)
        elif tries and all(t.state == TrialState.FAIL for t in tries):  # none left to run
            last = max(tries, key=lambda t: t.number).user_attrs
            model.failed.append(
                f"seed {spec.seed}: {last.get('fail_reason', 'failed')}: "
                f"{last.get('fail_message', '')}".rstrip(": ")
            )
    return found


def _identity(spec: Retrain) -> str:
    return f"trial {spec.trial}" if spec.role == "search" else f"file {spec.path}"


def _run(seed: int, trial: FrozenTrial) -> Run:
    attrs = trial.user_attrs

    def number(key: str) -> float:
        value = attrs.get(key)
        return float(value) if isinstance(value, int | float) else math.nan

    weights = attrs.get("weights")
    return Run(
        seed,
        number("test_accuracy"),
        number("test_f1"),
        number("latency_ms_b1"),
        str(weights) if weights else None,
    )


# --- the files ----------------------------------------------------------------------


def card(
    choice: Choice, trial: FrozenTrial, model: Verified | None, study: str, config: Config
) -> dict[str, Any]:
    """card.json: everything about one selected model, without the study."""
    attrs = trial.user_attrs
    best = model.best_run if model is not None else None
    found = model.mean_std if model is not None else None
    recipe = dict(model.recipe if model is not None else attrs.get("recipe") or {})
    if best is not None:
        recipe["seed"] = best.seed  # `train --card` reruns the retrain whose weights these are
    return {
        "policy": choice.policy,
        "kind": choice.kind,
        "reason": choice.reason,
        "study": study,
        "trial": trial.number,
        "data_fingerprint": attrs.get("data_fingerprint"),
        "code_version": attrs.get("code_version"),
        "params": attrs.get("params"),
        "macs": attrs.get("macs"),
        "latency_ms_b1": attrs.get("latency_ms_b1"),
        "latency_device": attrs.get("device"),
        "proxy_accuracy": attrs.get("val_accuracy"),
        "proxy_test_accuracy": attrs.get("test_accuracy"),
        "verified": None
        if model is None
        else {
            "mean": None if found is None else found[0],
            "std": None if found is None else found[1],
            "seeds": [
                {"seed": r.seed, "test_accuracy": r.test_accuracy, "test_f1": r.test_f1}
                for r in model.runs
            ],
            "pending": model.pending,
            "failed": model.failed,
            "train_data": "train + validation",
            "evaluated_on": "test",
        },
        "weights": "weights.pt" if best is not None and best.weights else None,
        "augment": attrs.get("augment"),
        "recipe": recipe,
        "search_recipe": attrs.get("recipe"),
        "model_yaml": attrs.get("model_yaml"),
        "objectives": dict(zip(config.objectives, trial.values or [], strict=False)),
    }


def _comparisons(
    picks: dict[str, tuple[FrozenTrial, Verified | None]], baselines: Sequence[Verified]
) -> list[dict[str, Any]]:
    """Each pick against each baseline (ratios: pick / baseline; < 1 is smaller)."""

    def ratio(a: float | None, b: float | None) -> float | None:
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b <= 0:
            return None
        return a / b

    rows = []
    for policy, (trial, model) in picks.items():
        ours = model.mean_std if model is not None else None
        for base in baselines:
            theirs = base.mean_std
            diff = None if ours is None or theirs is None else ours[0] - theirs[0]
            rows.append(
                {
                    "policy": policy,
                    "trial": trial.number,
                    "baseline": base.name,
                    "accuracy_diff": diff,
                    "size_ratio": ratio(trial.user_attrs.get("params"), base.params),
                    "macs_ratio": ratio(trial.user_attrs.get("macs"), base.macs),
                    "latency_ratio": ratio(
                        model.latency_ms if model is not None else None, base.latency_ms
                    ),
                }
            )
    return rows


def write_selection(
    trials: Sequence[FrozenTrial],
    verify_trials: Sequence[FrozenTrial],
    planned: tuple[Sequence[Choice], Sequence[Retrain]],
    config: Config,
    study: str,
    out: Path,
) -> dict[str, Any]:
    """verify.json and baselines.json, from `planned` (`job.search.retrain.plan_retrains` of
    `trials`); returns what `collect` prints and `job.collect.publish` publishes: the `picks`,
    their `cards`, the `selection` (selection.json's content, less what was published),
    and the `problems` (one line each)."""
    choices, plan = planned
    found = records(trials, config)
    verified = gather(plan, verify_trials)
    by_trial = {m.trial: m for m in verified.values() if m.role == "search"}
    baselines = [m for m in verified.values() if m.role == "baseline"]
    means = {n: ms[0] for n, m in by_trial.items() if n is not None and (ms := m.mean_std)}
    policies = {p.name: p for p in config.select.policies}
    resolved = []
    for choice in choices:
        policy = policies[choice.policy]
        if choice.pending and policy.reference is not None:
            ref = next((b for b in baselines if b.path == policy.reference), None)
            ref_acc = ref.mean_std[0] if ref is not None and ref.mean_std else None
            choice = resolve_reference(policy, ref_acc, means, found)
        elif choice.pending:  # nothing was retrained to compare with
            why = "needs verification, and select.verify is false"
            choice = Choice(choice.policy, choice.kind, None, why)
        resolved.append(choice)
    numbers = {t.number: t for t in trials}
    picks: dict[str, tuple[FrozenTrial, Verified | None]] = {}
    cards: dict[str, dict[str, Any]] = {}
    for choice in resolved:
        if choice.number is None:  # job.collect.publish withdraws what an earlier collect chose
            continue
        trial, model = numbers[choice.number], by_trial.get(choice.number)
        picks[choice.policy] = (trial, model)
        cards[choice.policy] = card(choice, trial, model, study, config)
    selection = {
        c.policy: {"kind": c.kind, "trial": c.number, "reason": c.reason, "pending": c.pending}
        for c in resolved
    }
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    verify = _verify_report(by_trial, found, config)
    write_json(out / VERIFY_JSON, verify)
    comparison = _comparisons(picks, baselines)
    base_rows = [{"name": b.name, "path": b.path, **b.summary()} for b in baselines]
    write_json(out / BASELINES_JSON, {"baselines": base_rows, "comparison": comparison})
    return {
        "choices": resolved,
        "picks": picks,
        "cards": cards,
        "selection": selection,
        "verify": verify,
        "comparison": comparison,
        "problems": [],
        "verified": by_trial,
        "pending": sum(m.pending for m in verified.values()),
        "failed": [f"{m.name} {f}" for m in verified.values() for f in m.failed],
    }


def _verify_report(
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
    tau, rho = rank_agreement([p[0] for p in pairs], [p[1] for p in pairs])
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
        "kendall_tau": tau,
        "spearman_rho": rho,
        "correlated_over": len(pairs),
        "top_k": config.select.verify_top_k,
        "retrain_epochs": config.select.retrain.epochs or config.train.epochs,
        "seeds": config.select.retrain.seeds,
    }


def selection_text(report: dict[str, Any]) -> str:
    """What `collect` prints: one line per policy, then the baselines table."""
    lines = []
    for choice in report["choices"]:
        if choice.number is None:
            lines.append(f"select {choice.policy:<16} none: {choice.reason}")
            continue
        trial, model = report["picks"][choice.policy]
        proxy = trial.user_attrs.get("val_accuracy")
        shown = f"proxy {proxy:.4f}" if isinstance(proxy, float) else "proxy —"
        if model is not None:
            found = model.mean_std
            seeds = f"{len(model.runs)}/{model.planned} seeds"
            verified = "—" if found is None else f"{found[0]:.4f} ± {found[1]:.4f}"
            shown += f"  verified {verified} ({seeds})"
        params = trial.user_attrs.get("params")
        size = f"{params:,} params" if isinstance(params, int) else ""
        lines.append(f"select {choice.policy:<16} trial {trial.number:>4}  {shown}  {size}")
    if report["comparison"]:
        lines.append(
            f"{'pick':<16} {'baseline':<20} {'acc diff':>9} {'size':>7} {'MACs':>7} {'latency':>8}"
        )
        for row in report["comparison"]:
            lines.append(
                f"{row['policy']:<16} {row['baseline']:<20} {_signed(row['accuracy_diff']):>9} "
                f"{_times(row['size_ratio']):>7} {_times(row['macs_ratio']):>7} "
                f"{_times(row['latency_ratio']):>8}"
            )
    tau = report["verify"]["kendall_tau"]
    if tau is not None:
        rho = report["verify"]["spearman_rho"]
        lines.append(
            f"proxy vs verified over {report['verify']['correlated_over']} front members: "
            f"Kendall tau {tau:.3f}, Spearman rho {rho:.3f}"
        )
    if report["pending"]:
        lines.append(f"verification: {report['pending']} retrains queued or running")
    lines += [f"verification failed: {f}" for f in report["failed"]]
    lines += [f"warning: {p}" for p in report["problems"]]
    return "\n".join(lines)


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.4f}"


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}x"
