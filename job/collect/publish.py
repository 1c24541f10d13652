"""The collector's last step, publish: each pick made deployable, and the report.

For every policy's pick, its folder `selected/<policy>/` is built beside the published
one (`selected/.<policy>.new/`, job.collect.outputs): `model.yaml`; `weights.pt`, the best seed's
retrained state dict, copied from the workers' `verified/` folder and loaded into the
network with `weights_only=True`, strictly (a truncated file, anything but a state
dict, or tensors that do not fit fail here); `model.onnx`, verified by onnxruntime on
the whole test split, and `model.int8.onnx`, with their accuracy and latency where they
are deployed (job.ml.onnx); `card.json` with them (`onnx`) and what a caller must feed
the model (`input`). Only a set that passed every check is swapped in; one that did
not leaves the published folder as it was (the previous pick, or none) and is one
problem line: `selection.json` says, per policy, which trial is `published` and the
`problem`, and `collect` exits 1. A pick still waiting for its retrains (no weights yet)
is published as such: its card says so.

Then the published files go up as Optuna artifacts of the search trial the pick came
from (optuna-dashboard lists and downloads them); `verify.json` gets
`latency_agreement`: how well the search's latency objective (PyTorch, on the workers)
ranks the verified models as onnxruntime on a CPU does. Last, `report.html`
(job.collect.report). A write that fails (disk full, ...) is `job.collect.outputs.OutputError`: one
line, exit 1, the outputs published before intact.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from job.collect.outputs import fresh_side, publish_lock, recover, swap_in, withdraw, writing
from job.collect.picks import SELECTED, SELECTION_JSON, VERIFY_JSON, Verified
from job.collect.policies import rank_agreement
from job.collect.report import write_report
from job.collect.results import write_json
from job.config import Config
from job.ml.data import Dataset
from job.ml.model import ModelError, spec_from_yaml
from job.ml.onnx import (
    INT8_FILE,
    ONNX_FILE,
    ExportError,
    export_model,
    export_onnx,
    input_spec,
    load_weights,
    ort_latency,
)
from job.storage import ARTIFACTS, upload_trial_files

EXPORTED = ("model.onnx", "model.int8.onnx", "model.yaml", "card.json")
NO_WEIGHTS = "no retrained weights to export (verification off or pending)"


@dataclass(frozen=True)
class Published:
    """One policy's outcome: the trial it chose, the trial whose set `selected/<policy>/`
    holds now (the chosen one, an earlier pick, or None), and why the chosen one's set
    was not published (None when it was)."""

    chosen: int
    held: int | None
    problem: str | None


def read_card(folder: Path) -> dict[str, Any] | None:
    """The folder's card.json, or None when there is none (or it is not a card)."""
    try:
        card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) else None


def _onnx(
    staged: Path, trial: FrozenTrial, network: Any, data: Dataset, config: Config,
    built: dict[int, Path],
) -> dict[str, Any]:  # fmt: skip
    """The card's `onnx` section, its files in `staged`; a trial published already for
    another policy in this collect is copied from there, not exported twice."""
    first = built.get(trial.number)
    card = read_card(first) if first is not None else None
    found = card.get("onnx") if card is not None else None
    if first is not None and isinstance(found, dict) and found.get("verified"):
        for name in (ONNX_FILE, INT8_FILE):
            if (first / name).is_file():
                with writing(staged / name):
                    shutil.copyfile(first / name, staged / name)
        return dict(found)
    return export_model(staged, network, data, config.export)


def _fill(
    staged: Path, trial: FrozenTrial, model: Verified | None, card: dict[str, Any],
    data: Dataset, config: Config, built: dict[int, Path],
) -> str | None:  # fmt: skip
    """One pick's files in `staged`; the problem that keeps them from being published,
    or None when every check passed."""
    text = str(card["model_yaml"])
    with writing(staged / "model.yaml"):
        (staged / "model.yaml").write_text(text, encoding="utf-8")
    card["input"] = input_spec(data, config.data)
    best = model.best_run if model is not None else None
    network = None
    if best is not None and best.weights:
        source = Path(best.weights)
        if not source.is_file():  # the workers' folder is not where this collector looks
            return f"its retrained weights are not at {source}"
        with writing(staged / "weights.pt"):
            shutil.copyfile(source, staged / "weights.pt")
        try:  # the copy, not the source: what is checked is what is published
            network = load_weights(spec_from_yaml(text), staged / "weights.pt", str(source))
        except (ExportError, ModelError) as exc:
            return str(exc)
    if config.export.onnx:
        onnx = None if network is None else _onnx(staged, trial, network, data, config, built)
        card["onnx"] = onnx
        if onnx is None:
            card["onnx_note"] = NO_WEIGHTS
        elif not onnx.get("verified"):
            return f"ONNX FAILED verification: {onnx.get('problem')}"
    write_json(staged / "card.json", card)
    return None


def _build(
    live: Path, trial: FrozenTrial, model: Verified | None, card: dict[str, Any],
    data: Dataset, config: Config, built: dict[int, Path],
) -> str | None:  # fmt: skip
    """Build beside, check, swap in; the problem when the set was not published."""
    staged = fresh_side(live)
    try:
        problem = _fill(staged, trial, model, card, data, config, built)
        if problem is None:
            swap_in(staged, live)
            if (live / ONNX_FILE).is_file():
                built.setdefault(trial.number, live)
        return problem
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # a set that failed, or a write that did


def publish_picks(
    out: Path, report: dict[str, Any], data: Dataset, config: Config
) -> dict[str, Published]:
    """Every policy's pick built, checked and swapped in (or left as it was), and the
    picks no policy chooses any more withdrawn; policy → its outcome."""
    selected = out / SELECTED
    built: dict[int, Path] = {}
    results: dict[str, Published] = {}
    for choice in report["choices"]:
        live = selected / choice.policy
        if choice.number is None:  # what an earlier collect chose is no longer chosen
            withdraw(live)
            continue
        trial, model = report["picks"][choice.policy]
        card = dict(report["cards"][choice.policy])
        problem = _build(live, trial, model, card, data, config, built)
        if problem is None:
            results[choice.policy] = Published(trial.number, trial.number, None)
            continue
        held = read_card(live)
        number = held.get("trial") if held is not None else None
        keeps = f" (trial {number})" if isinstance(number, int) else ""
        keeps = f"keeps the set published before{keeps}" if live.exists() else "stays empty"
        line = (
            f"{choice.policy}: trial {trial.number} not published: {problem}; "
            f"{SELECTED}/{choice.policy}/ {keeps}"
        )
        results[choice.policy] = Published(
            trial.number, number if isinstance(number, int) else None, line
        )
    return results


def selection_json(
    selection: dict[str, dict[str, Any]], results: dict[str, Published]
) -> dict[str, dict[str, Any]]:
    """selection.json: each policy's choice, the trial its folder holds (`published`) and
    why the chosen one is not that (`problem`)."""
    found = {}
    for policy, entry in selection.items():
        result = results.get(policy)
        found[policy] = entry | {
            "published": result.held if result is not None else None,
            "problem": result.problem if result is not None else None,
        }
    return found


def _upload(
    out: Path, study: optuna.Study, report: dict[str, Any], results: dict[str, Published]
) -> None:
    """The published picks' files as artifacts of their trials, once per trial."""
    uploaded: set[int] = set()
    for policy, result in results.items():
        if result.problem is not None or result.chosen in uploaded:
            continue
        trial = report["picks"][policy][0]
        folder = out / SELECTED / policy
        files = [folder / name for name in EXPORTED if (folder / name).is_file()]
        with writing(out / ARTIFACTS):
            upload_trial_files(study, trial, files, out / ARTIFACTS)
        uploaded.add(result.chosen)


def latency_agreement(
    verified: dict[int | None, Verified], trials: Sequence[FrozenTrial], config: Config,
    image_size: int,
) -> dict[str, Any]:  # fmt: skip
    """The search's latency (PyTorch, batch 1, on the workers) against onnxruntime's on
    this machine (fp32, batch 1, `export.latency_threads`), over the verified models."""
    numbers = {t.number: t for t in trials}
    rows = []
    with tempfile.TemporaryDirectory(prefix="sms-latency-") as tmp:
        for number, model in sorted(verified.items(), key=lambda kv: kv[0] or 0):
            best = model.best_run
            trial = numbers.get(number) if number is not None else None
            searched = trial.user_attrs.get("latency_ms_b1") if trial is not None else None
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
    tau, rho = rank_agreement([r["search_ms"] for r in rows], [r["onnx_ms"] for r in rows])
    return {
        "kendall_tau": tau,
        "spearman_rho": rho,
        "models": rows,
        "search": "PyTorch, batch 1, on the search workers' device",
        "deployed": f"onnxruntime CPU fp32, batch 1, {config.export.latency_threads} thread(s)",
    }


def publish(
    out: Path, study: optuna.Study, trials: Sequence[FrozenTrial], config: Config,
    data: Dataset, report: dict[str, Any],
) -> list[str]:  # fmt: skip
    """The picks (built beside, checked, swapped in), selection.json, artifacts, the
    latency agreement and `report.html`, one collector at a time in `out`; returns the
    problems (a pick not published, and why), one line each."""
    with publish_lock(out):
        for line in recover(out / SELECTED):
            print(line, flush=True)
        results = publish_picks(out, report, data, config)
        write_json(out / SELECTION_JSON, selection_json(report["selection"], results))
        if config.export.artifacts:
            _upload(out, study, report, results)
        if config.export.onnx and report["verified"]:
            verify = report["verify"]  # what write_selection wrote, now with the agreement
            size = int(data.test.x.shape[-1])
            agreement = latency_agreement(report["verified"], trials, config, size)
            verify["latency_agreement"] = agreement
            write_json(out / VERIFY_JSON, verify)
        write_report(out, trials, config, study.study_name)
    return [r.problem for r in results.values() if r.problem is not None]


def export_text(out: Path, picks: dict[str, tuple[FrozenTrial, Verified | None]]) -> str:
    """One line per exported pick for `collect`: verification, int8, deployed latency."""
    lines = []
    try:
        selection = json.loads((out / SELECTION_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        selection = {}
    for policy in picks:
        if (selection.get(policy) or {}).get("problem"):  # not published: its warning says
            continue
        card = read_card(out / SELECTED / policy)
        if card is None:
            continue
        onnx = card.get("onnx")
        if not isinstance(onnx, dict):
            continue
        if not onnx.get("verified"):
            lines.append(f"onnx   {policy:<16} FAILED verification: {onnx.get('problem')}")
            continue
        latency = onnx.get("latency_ms") or {}
        text = (
            f"onnx   {policy:<16} verified (max |logit diff| {onnx['max_logit_diff']:.1e}, "
            f"test acc {onnx['test_accuracy']:.4f}), {latency.get('median_ms', math.nan):.3f} ms"
        )
        int8 = onnx.get("int8")
        if isinstance(int8, dict):
            int8_ms = (int8.get("latency_ms") or {}).get("median_ms", math.nan)
            text += (
                f"; int8 acc {int8['test_accuracy']:.4f} ({0.0 - int8['accuracy_drop']:+.4f}), "
                f"{int8['size_ratio']:.2f}x the size, {int8_ms:.3f} ms"
            )
        lines.append(text)
    return "\n".join(lines)
