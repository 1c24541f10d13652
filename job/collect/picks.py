"""The collector's picks step: what each policy chose, proven by its retrains, with its card.

Fifth step of the pipeline (job.collect.pipeline: study -> front -> select -> verify ->
**picks** -> publish -> report -> push). `resolve_picks` takes the select step's
`Selection` and the verify step's `Verification`: each pending choice (a `reference`
policy) resolved by the retrains, and each policy's pick with its `Card` (card.json's
content: study, trial, data fingerprint, code version, params, MACs, latency, proxy
accuracy, verified accuracy mean/std and per seed, augmentation policy, recipe), as
`Picks`. `baselines.json` is written here, once: each baseline network trained alike,
and each pick against each baseline (accuracy difference, size, MACs and latency
ratios: the seed's table).

The publish step (job.collect.publish) builds each chosen trial's folder
`selected/trial-<N>/` from `Picks`, links each policy's `selected/<policy>` to it, and
writes `selection.json` (`Picks.selection`, with what was published).
Retrains still queued or running are reported as such; a later `collect` fills them in
(and retrains nothing twice).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial

from job.collect.policies import MIN_PAIRS, Choice, resolve_reference
from job.collect.results import write_json
from job.collect.selection import Selection
from job.collect.verify import Verification, Verified
from job.config import Config
from job.search.record import LATENCY_FIGURES, LATENCY_KEYS, TrialRecord, latency_text

SELECTION_JSON, BASELINES_JSON = "selection.json", "baselines.json"
SELECTED = "selected"


@dataclass(frozen=True)
class Card:
    """card.json: everything about one selected model, without the study. The picks
    step fills the selection's part; the publish step adds `policies` (every policy that
    chose this trial, in the config's order), `input` (what a caller must feed the
    model) and, with `export.onnx`, `onnx` (or null and `onnx_note`). `policy`, `kind`
    and `reason` are the first of `policies`' (`policy` stays for the readers of the
    layout before `policies`, one folder per policy: remove it a release after)."""

    policy: str
    kind: str
    reason: str
    study: str
    trial: int
    data_fingerprint: Any
    code_version: Any
    params: Any
    macs: Any
    latency: dict[str, float]  # the search trial's figures, by name (LATENCY_KEYS)
    latency_timed: str  # how and where they were timed
    proxy_accuracy: Any  # the search trial's validation accuracy
    proxy_test_accuracy: Any  # its test accuracy: None unless train.test_each_trial (research)
    verified: dict[str, Any] | None
    weights: str | None
    augment: Any
    recipe: dict[str, Any]
    search_recipe: Any
    model_yaml: Any
    objectives: dict[str, float]
    input: dict[str, Any] | None = None  # by the publish step
    onnx: dict[str, Any] | None = None  # by the publish step, with export.onnx
    onnx_note: str | None = None  # why `onnx` is null
    exported: bool = False  # export.onnx was on: the card has `onnx`, null or not
    golden: dict[str, Any] | None = None  # golden.npz, beside a verified model.onnx
    policies: tuple[str, ...] = ()  # by the publish step; () reads as (policy,)

    def to_json(self) -> dict[str, Any]:
        """card.json's content, keys in the order they have always had (`policies` after
        `policy`)."""
        late = ("input", "onnx", "onnx_note", "exported", "golden", "policies")
        found: dict[str, Any] = {}
        for f in fields(self):
            if f.name not in late:
                found[f.name] = getattr(self, f.name)
            if f.name == "policy":
                found["policies"] = list(self.policies or (self.policy,))
        if self.input is not None:
            found["input"] = self.input
        if self.exported:
            found["onnx"] = self.onnx
            if self.onnx_note is not None:
                found["onnx_note"] = self.onnx_note
        if self.golden is not None:
            found["golden"] = self.golden
        return found


def card(
    choice: Choice, trial: FrozenTrial, model: Verified | None, study: str, config: Config
) -> Card:
    """The selection's part of a pick's card.json."""
    attrs = TrialRecord.from_trial(trial)
    latency = {k: v for k in LATENCY_FIGURES if (v := attrs.latency(k)) is not None}
    timed = "; ".join(latency_text(k) for k in latency if k in LATENCY_KEYS.values()) or "none"
    best = model.best_run if model is not None else None
    found = model.mean_std if model is not None else None
    recipe = dict(model.recipe if model is not None else attrs.recipe or {})
    if best is not None:
        recipe["seed"] = best.seed  # `train --card` reruns the retrain whose weights these are
    return Card(
        policy=choice.policy,
        kind=choice.kind,
        reason=choice.reason,
        study=study,
        trial=trial.number,
        data_fingerprint=attrs.data_fingerprint,
        code_version=attrs.code_version,
        params=attrs.params,
        macs=attrs.macs,
        latency=latency,
        latency_timed=f"{timed}; timed on a search worker, before training",
        proxy_accuracy=attrs.val_accuracy,
        proxy_test_accuracy=attrs.test_accuracy,
        verified=None
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
        weights="weights.pt" if best is not None and best.weights else None,
        augment=attrs.augment,
        recipe=recipe,
        search_recipe=attrs.recipe,
        model_yaml=attrs.model_yaml,
        objectives=dict(zip(config.objectives, trial.values or [], strict=False)),
    )


@dataclass(frozen=True)
class Pick:
    """One policy's pick: the search trial, its retrains (None: not retrained), its card."""

    trial: FrozenTrial
    model: Verified | None
    card: Card


@dataclass(frozen=True)
class Picks:
    """The picks step's outcome: every policy's resolved choice, the picks (policy →
    `Pick`, only the policies that chose a trial), and baselines.json as written."""

    choices: tuple[Choice, ...]
    picks: dict[str, Pick]
    baselines: dict[str, Any]  # baselines.json's content: `baselines`, `comparison`

    @property
    def selection(self) -> dict[str, dict[str, Any]]:
        """selection.json's content, less what the publish step adds (`published`, `problem`)."""
        return {
            c.policy: {"kind": c.kind, "trial": c.number, "reason": c.reason, "pending": c.pending}
            for c in self.choices
        }


def resolve_picks(
    selection: Selection, verification: Verification, config: Config, study: str, out: Path
) -> Picks:
    """The picks step (the module doc): pending choices resolved, a card per pick,
    baselines.json written."""
    by_trial, baselines = verification.by_trial, verification.baselines
    means = {n: ms[0] for n, m in by_trial.items() if n is not None and (ms := m.mean_std)}
    policies = {p.name: p for p in config.select.policies}
    resolved = []
    for choice in selection.choices:
        policy = policies[choice.policy]
        if choice.pending and policy.reference is not None:
            ref = next((b for b in baselines if b.path == policy.reference), None)
            ref_acc = ref.mean_std[0] if ref is not None and ref.mean_std else None
            choice = resolve_reference(policy, ref_acc, means, selection.records)
        elif choice.pending:  # nothing was retrained to compare with
            why = "needs verification, and select.verify is false"
            choice = Choice(choice.policy, choice.kind, None, why)
        resolved.append(choice)
    numbers = {t.number: t for t in selection.trials}
    picks: dict[str, Pick] = {}
    for choice in resolved:
        if choice.number is None:  # job.collect.publish withdraws what an earlier collect chose
            continue
        trial, model = numbers[choice.number], by_trial.get(choice.number)
        picks[choice.policy] = Pick(trial, model, card(choice, trial, model, study, config))
    base_rows = [{"name": b.name, "path": b.path, **b.summary()} for b in baselines]
    found = {"baselines": base_rows, "comparison": _comparisons(picks, baselines)}
    write_json(out / BASELINES_JSON, found)
    return Picks(tuple(resolved), picks, found)


def _comparisons(picks: dict[str, Pick], baselines: Sequence[Verified]) -> list[dict[str, Any]]:
    """Each pick against each baseline (ratios: pick / baseline; < 1 is smaller)."""

    def ratio(a: float | None, b: float | None) -> float | None:
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b <= 0:
            return None
        return a / b

    rows = []
    for policy, pick in picks.items():
        trial, model = pick.trial, pick.model
        searched = TrialRecord.from_trial(trial)
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
                    "size_ratio": ratio(searched.params, base.params),
                    "macs_ratio": ratio(searched.macs, base.macs),
                    "latency_ratio": ratio(
                        model.latency_ms if model is not None else None, base.latency_ms
                    ),
                }
            )
    return rows


def selection_text(picks: Picks, verification: Verification, problems: Sequence[str]) -> str:
    """What `collect` prints: one line per policy, then the baselines table, the rank
    agreement, the retrains not done, and the `problems` (one warning each)."""
    lines = []
    for choice in picks.choices:
        if choice.number is None:
            lines.append(f"select {choice.policy:<16} none: {choice.reason}")
            continue
        trial, model = picks.picks[choice.policy].trial, picks.picks[choice.policy].model
        record = TrialRecord.from_trial(trial)
        proxy = record.val_accuracy
        shown = f"proxy {proxy:.4f}" if isinstance(proxy, float) else "proxy —"
        if model is not None:
            found = model.mean_std
            seeds = f"{len(model.runs)}/{model.planned} seeds"
            verified = "—" if found is None else f"{found[0]:.4f} ± {found[1]:.4f}"
            shown += f"  verified {verified} ({seeds})"
        params = record.params
        size = f"{params:,} params" if isinstance(params, int) else ""
        lines.append(f"select {choice.policy:<16} trial {trial.number:>4}  {shown}  {size}")
    if comparison := picks.baselines["comparison"]:
        lines.append(
            f"{'pick':<16} {'baseline':<20} {'acc diff':>9} {'size':>7} {'MACs':>7} {'latency':>8}"
        )
        for row in comparison:
            lines.append(
                f"{row['policy']:<16} {row['baseline']:<20} {_signed(row['accuracy_diff']):>9} "
                f"{_times(row['size_ratio']):>7} {_times(row['macs_ratio']):>7} "
                f"{_times(row['latency_ratio']):>8}"
            )
    report = verification.report
    if report["kendall_tau"] is not None:
        lines.append(
            f"proxy vs verified over {report['correlated_over']} front members: "
            f"Kendall tau {_figure(report, 'kendall_tau', 'kendall_p')}, "
            f"Spearman rho {_figure(report, 'spearman_rho', 'spearman_p')}"
            + (f"; too few to tell from chance (< {MIN_PAIRS})" if report["too_few"] else "")
        )
    if verification.pending:
        lines.append(f"verification: {verification.pending} retrains queued or running")
    lines += [f"verification failed: {f}" for f in verification.failed]
    lines += [f"warning: {p}" for p in problems]
    return "\n".join(lines)


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.4f}"


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}x"


def _figure(report: dict[str, Any], value: str, p: str) -> str:
    """`0.600 (p 0.23)`: a rank correlation with its p-value, a dash for what is undefined."""
    shown = "—" if report[value] is None else f"{report[value]:.3f}"
    return shown + ("" if report[p] is None else f" (p {report[p]:.2g})")
