"""The collector's last step, publish: each pick made deployable, and the report.

For every selected model with retrained weights (`selected/<policy>/weights.pt`):
`job.export` writes `model.onnx`, verified by onnxruntime on the whole test split, and
`model.int8.onnx`, with their accuracy and latency where they are deployed; the card
gets them (`onnx`) and what a caller must feed the model (`input`). The files go up as
Optuna artifacts of the search trial the pick came from (optuna-dashboard lists and
downloads them). `verify.json` gets `latency_agreement`: how well the search's latency
objective (PyTorch, on the workers) ranks the verified models as onnxruntime on a CPU
does. Last, `report.html` (job.report). A pick whose export fails verification is
marked so in its card and the report, and `collect` exits 1.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from job.collect import write_json
from job.config import Config
from job.data import Dataset
from job.export import (
    ExportError,
    export_onnx,
    export_pick,
    input_spec,
    load_weights,
    ort_latency,
)
from job.model import spec_from_yaml
from job.report import write_report
from job.select import rank_agreement
from job.selection import SELECTED, VERIFY_JSON, Verified
from job.storage import ARTIFACTS, upload_trial_files

EXPORTED = ("model.onnx", "model.int8.onnx", "model.yaml", "card.json")


def _card(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / "card.json").read_text(encoding="utf-8")))


def _export(
    folder: Path, trial: FrozenTrial, data: Dataset, config: Config, done: dict[int, Path]
) -> dict[str, Any] | None:
    """The card's `onnx` section for one pick; a trial exported already for another
    policy is copied, not exported twice. None when there are no weights to export."""
    weights = folder / "weights.pt"
    if not weights.is_file():
        return None
    first = done.get(trial.number)
    if first is not None:
        for name in ("model.onnx", "model.int8.onnx"):
            if (first / name).is_file():
                shutil.copyfile(first / name, folder / name)
        found = _card(first).get("onnx")
        return dict(found) if isinstance(found, dict) else None
    spec = spec_from_yaml(str(trial.user_attrs["model_yaml"]))
    onnx = export_pick(folder, spec, weights, data, config.export)
    done[trial.number] = folder
    return onnx


def export_picks(
    out: Path, study: optuna.Study, picks: dict[str, tuple[FrozenTrial, Verified | None]],
    data: Dataset, config: Config,
) -> list[str]:  # fmt: skip
    """Export, verify and upload every pick; returns the problems (one line each)."""
    problems: list[str] = []
    done: dict[int, Path] = {}
    uploaded: set[int] = set()
    for policy, (trial, _) in picks.items():
        folder = out / SELECTED / policy
        card = _card(folder)
        card["input"] = input_spec(data, config.data)
        if config.export.onnx:
            onnx = _export(folder, trial, data, config, done)
            card["onnx"] = onnx
            if onnx is None:
                card["onnx_note"] = "no retrained weights to export (verification off or pending)"
            elif not onnx.get("verified"):
                problems.append(f"{policy}: ONNX verification failed: {onnx.get('problem')}")
        write_json(folder / "card.json", card)
        if config.export.artifacts and trial.number not in uploaded:  # once per trial
            files = [folder / name for name in EXPORTED if (folder / name).is_file()]
            upload_trial_files(study, trial, files, out / ARTIFACTS)
            uploaded.add(trial.number)
    return problems


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
    """Cards, ONNX files, artifacts, the latency agreement and `report.html`; returns
    the problems (an export that failed verification)."""
    problems = export_picks(out, study, report["picks"], data, config)
    if config.export.onnx and report["verified"]:
        verify = report["verify"]  # what write_selection wrote, now with the agreement
        size = int(data.test.x.shape[-1])
        verify["latency_agreement"] = latency_agreement(report["verified"], trials, config, size)
        write_json(out / VERIFY_JSON, verify)
    write_report(out, trials, config, study.study_name)
    return problems


def export_text(out: Path, picks: dict[str, tuple[FrozenTrial, Verified | None]]) -> str:
    """One line per exported pick for `collect`: verification, int8, deployed latency."""
    lines = []
    for policy in picks:
        onnx = _card(out / SELECTED / policy).get("onnx")
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
