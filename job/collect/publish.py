"""The collector's publish step: each pick made deployable, selection.json, the artifacts.

Sixth step of the pipeline (job.collect.pipeline: study -> front -> select -> verify ->
picks -> **publish** -> report -> push), run under the folder's `publish_lock` (one
collector at a time publishes and reports in a folder; the pipeline holds it).

Each trial some policy chose is built once, however many policies chose it, into its
folder `selected/trial-<N>/`, beside the published one (`selected/.trial-<N>.new/`,
job.collect.outputs): `model.yaml`; `weights.pt`, the best seed's retrained state dict,
copied from the workers' `verified/` folder and loaded into the network with
`weights_only=True`, strictly (a truncated file, anything but a state dict, or tensors
that do not fit fail here); `model.onnx`, verified by onnxruntime on the whole test
split, and `model.int8.onnx`, with their accuracy and latency where they are deployed
(job.ml.onnx); `card.json`, written once: the pick's `Card` with `policies` (every policy
that chose the trial, in the config's order; `policy`, the first of them, is kept for
readers of the previous layout), `onnx` and what a caller must feed the model (`input`).
Only a set that passed every check is swapped in, and only then are its policies'
links `selected/<policy> -> trial-<N>` pointed at it. One that did not leaves each of its
policies' links as they were (the previous pick, or none) and is one problem line per
policy: `selection.json` says, per policy, which trial is `published`, the `folder` its
link leads to and the `problem`, and `collect` exits 1. A trial folder no link leads to
any more is removed last. A pick still waiting for its retrains (no weights yet) is
published as such: its card says so.

Then the published files go up as Optuna artifacts of the search trial the pick came
from, once per trial (optuna-dashboard lists and downloads them). The outcome,
`Publication`, goes on to the report. A write that fails (disk full, ...) is
`job.collect.outputs.OutputError`: one line, exit 1, the outputs published before intact.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from job.collect.outputs import (
    fresh_side,
    holder,
    point,
    prune,
    recover,
    swap_in,
    trial_folder,
    withdraw,
)
from job.collect.picks import SELECTED, SELECTION_JSON, Card, Pick, Picks
from job.collect.results import write_json
from job.config import Config
from job.files import writing
from job.ml.data import Dataset
from job.ml.golden import conventions, golden_inputs, which_to_deploy, write_golden
from job.ml.model import ModelError, spec_from_yaml
from job.ml.onnx import INT8_FILE, ONNX_FILE, ExportError, export_model, input_spec, load_weights
from job.storage import ARTIFACTS, upload_trial_files

EXPORTED = ("model.onnx", "model.int8.onnx", "model.yaml", "card.json", "golden.npz")
NO_WEIGHTS = "no retrained weights to export (verification off or pending)"


@dataclass(frozen=True)
class Published:
    """One policy's outcome: the trial it chose, the trial whose set `selected/<policy>`
    leads to now (the chosen one, an earlier pick, or None), why the chosen one's set was
    not published (None when it was), the card there now (this pick's as written, the
    earlier pick's as read, or None), and the folder its link leads to
    (`selected/trial-<N>`; a previous version's own `selected/<policy>`; None)."""

    chosen: int
    held: int | None
    problem: str | None
    card: dict[str, Any] | None
    folder: str | None = None


@dataclass(frozen=True)
class Publication:
    """The publish step's outcome: each policy's `Published` (the policies that chose a
    trial), and selection.json as written."""

    results: dict[str, Published]
    selection: dict[str, dict[str, Any]]

    @property
    def problems(self) -> list[str]:
        """One line per pick not published, and why."""
        return [r.problem for r in self.results.values() if r.problem is not None]


def published_trials(results: dict[str, Published]) -> dict[int, tuple[list[str], Published]]:
    """Each trial published in this collect, once: the policies that chose it (config
    order) and the first one's outcome (they share its folder and card)."""
    found: dict[int, tuple[list[str], Published]] = {}
    for policy, result in results.items():
        if result.problem is None and result.folder is not None:
            found.setdefault(result.chosen, ([], result))[0].append(policy)
    return found


def read_card(folder: Path) -> dict[str, Any] | None:
    """The folder's card.json, or None when there is none (or it is not a card)."""
    try:
        card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) else None


class Golden:
    """The data's part of every pick's golden.npz and conventions, found once per collect
    (job.ml.golden): the test images are read again only if a pick is exported."""

    def __init__(self, data: Dataset, config: Config) -> None:
        self.data, self.config = data, config
        self.conventions = {"conventions": conventions(data)}
        self._arrays: dict[str, Any] | None = None

    def arrays(self) -> dict[str, Any]:
        if self._arrays is None:
            self._arrays = golden_inputs(self.data, self.config.data)
        return self._arrays


def _fill(
    staged: Path, pick: Pick, policies: list[str], data: Dataset, config: Config, golden: Golden
) -> Card | str:
    """One pick's files in `staged`, card.json last (naming every policy that chose it):
    the card as written, or the problem that keeps them from being published."""
    text = str(pick.card.model_yaml)
    with writing(staged / "model.yaml"):
        (staged / "model.yaml").write_text(text, encoding="utf-8")
    spec = input_spec(data, config.data) | golden.conventions
    card = replace(pick.card, policies=tuple(policies), input=spec)
    best = pick.model.best_run if pick.model is not None else None
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
        onnx = None if network is None else export_model(staged, network, data, config.export)
        note = NO_WEIGHTS if onnx is None else None
        card = replace(card, exported=True, onnx=onnx, onnx_note=note)
        if onnx is not None and not onnx.get("verified"):
            return f"ONNX FAILED verification: {onnx.get('problem')}"
        if onnx is not None:  # which file to ship, and the deployment's self-check
            files = (staged / ONNX_FILE, staged / INT8_FILE)
            onnx = onnx | {"deploy": which_to_deploy(onnx)}
            golden_section = write_golden(staged, golden.arrays(), *files)
            card = replace(card, onnx=onnx, golden=golden_section)
    write_json(staged / "card.json", card.to_json())
    return card


def _build(
    live: Path, pick: Pick, policies: list[str], data: Dataset, config: Config, golden: Golden
) -> Card | str:
    """Build beside, check, swap in: the card published, or why the set was not."""
    staged = fresh_side(live)
    try:
        found = _fill(staged, pick, policies, data, config, golden)
        if isinstance(found, Card):
            swap_in(staged, live)
        return found
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # a set that failed, or a write that did


def _kept(live: Path, policy: str, number: int, why: str) -> Published:
    """A policy whose chosen set was not published: what its path leads to still."""
    held = read_card(live)  # an earlier collect's pick, still published
    before = held.get("trial") if held is not None else None
    keeps = f" (trial {before})" if isinstance(before, int) else ""
    keeps = f"keeps the set published before{keeps}" if live.exists() else "stays empty"
    line = f"{policy}: trial {number} not published: {why}; {SELECTED}/{policy}/ {keeps}"
    held_number = before if isinstance(before, int) else None
    return Published(number, held_number, line, held, holder(live))


def publish_picks(out: Path, picks: Picks, data: Dataset, config: Config) -> dict[str, Published]:
    """Each chosen trial's set built, checked and swapped in once (or left as it was),
    each policy's link pointed at its pick's, the picks no policy chooses any more
    withdrawn, then the trial folders no link leads to removed; policy → its outcome."""
    selected = out / SELECTED
    golden = Golden(data, config)
    chosen: dict[int, list[str]] = {}  # trial → the policies that chose it, config order
    for choice in picks.choices:
        if choice.number is not None:  # no policy is named trial-<N> (job.config)
            chosen.setdefault(picks.picks[choice.policy].trial.number, []).append(choice.policy)
    built: dict[int, Card | str] = {}  # once per trial, whichever policies chose it
    for number, policies in chosen.items():
        live, pick = selected / trial_folder(number), picks.picks[policies[0]]
        built[number] = _build(live, pick, policies, data, config, golden)
    results: dict[str, Published] = {}
    for choice in picks.choices:
        live = selected / choice.policy
        if choice.number is None:  # what an earlier collect chose is no longer chosen
            withdraw(live)
            continue
        number = picks.picks[choice.policy].trial.number
        found = built[number]
        if isinstance(found, Card):
            point(live, trial_folder(number))
            folder = f"{SELECTED}/{trial_folder(number)}"
            results[choice.policy] = Published(number, number, None, found.to_json(), folder)
        else:
            results[choice.policy] = _kept(live, choice.policy, number, found)
    prune(selected)  # last: every link is where it belongs by now
    return results


def selection_json(
    selection: dict[str, dict[str, Any]], results: dict[str, Published]
) -> dict[str, dict[str, Any]]:
    """selection.json: each policy's choice, the trial its folder holds (`published`),
    why the chosen one is not that (`problem`) and the folder its link leads to
    (`folder`: `selected/trial-<N>`, shared by every policy that holds that trial)."""
    found = {}
    for policy, entry in selection.items():
        result = results.get(policy)
        found[policy] = entry | {
            "published": result.held if result is not None else None,
            "problem": result.problem if result is not None else None,
            "folder": result.folder if result is not None else None,
        }
    return found


def _upload(out: Path, study: optuna.Study, picks: Picks, results: dict[str, Published]) -> None:
    """The published picks' files as artifacts of their trials, once per trial (two
    policies that chose one trial share its folder, and so its files)."""
    for policies, result in published_trials(results).values():
        assert result.folder is not None  # published_trials keeps those with one
        folder = out / result.folder
        files = [folder / name for name in EXPORTED if (folder / name).is_file()]
        with writing(out / ARTIFACTS):
            upload_trial_files(study, picks.picks[policies[0]].trial, files, out / ARTIFACTS)


def publish(
    out: Path, study: optuna.Study, picks: Picks, config: Config, data: Dataset
) -> Publication:
    """The publish step (the module doc), under the caller's `publish_lock(out)`: what a
    stopped publisher left recovered, the picks built beside, checked and swapped in,
    selection.json written, the published files uploaded."""
    for line in recover(out / SELECTED):
        print(line, flush=True)
    results = publish_picks(out, picks, data, config)
    selection = selection_json(picks.selection, results)
    write_json(out / SELECTION_JSON, selection)
    if config.export.artifacts:
        _upload(out, study, picks, results)
    return Publication(results, selection)


def export_text(publication: Publication) -> str:
    """One line per published trial for `collect` (naming every policy that chose it):
    verification, int8, deployed latency."""
    return "\n".join(_export_lines(publication))


def _export_lines(publication: Publication) -> Iterator[str]:
    # a trial not published has its warning line instead
    for policies, result in published_trials(publication.results).values():
        onnx = (result.card or {}).get("onnx")
        if not isinstance(onnx, dict):
            continue
        names = ", ".join(policies)
        if not onnx.get("verified"):
            yield f"onnx   {names:<16} FAILED verification: {onnx.get('problem')}"
            continue
        latency = onnx.get("latency_ms") or {}
        text = (
            f"onnx   {names:<16} verified (max |logit diff| {onnx['max_logit_diff']:.1e}, "
            f"test acc {onnx['test_accuracy']:.4f}), {latency.get('median_ms', math.nan):.3f} ms"
        )
        int8 = onnx.get("int8")
        if isinstance(int8, dict):
            int8_ms = (int8.get("latency_ms") or {}).get("median_ms", math.nan)
            text += (
                f"; int8 acc {int8['test_accuracy']:.4f} ({0.0 - int8['accuracy_drop']:+.4f}), "
                f"{int8['size_ratio']:.2f}x the size, {int8_ms:.3f} ms"
            )
        deploy = onnx.get("deploy")
        if isinstance(deploy, dict):
            text += f"; deploy {deploy['file']}"
        yield text
