"""The collector's report step: one self-contained page, `report.html`, beside its files.

Seventh step of the pipeline (job.collect.pipeline: study -> front -> select -> verify ->
picks -> publish -> **report** -> push). `render_report` renders a `Page` (what the
collector's files hold: summary.json, pareto.json, selection.json, the card.json each
policy's selected/<policy> leads to, verify.json, baselines.json, drift.json) and the study's
trials through `templates/report.html.j2` (Jinja2, autoescaped) into one file that needs
nothing else: no script, no network, figures inline as base64 SVG (matplotlib `Figure`s,
no pyplot), the augmentation preview as a small PNG, links to the picks' files relative.

The pipeline hands the page over from its steps' objects (`page_of`: nothing is read
back from disk, each value as its file holds it); `write_report` renders it again from
the files in a folder (`read_page`: any may be missing, and the page says which). The
augmentation preview draws a few images decoded for it (`PreviewImages`), never the
whole data set.

Sections: the study at a glance (trials by state, budget, the front's hypervolume after
each completed trial, COMPLETE trials against wall time); for a study version made by
`research` with a drift report (job.collect.drift), the data drift against its parent
(lineage, the parent's picks on this data, the front kept, the hypervolume; without
one the page has no such section); the Pareto plot with the picks marked, the
selection, the baselines, proxy vs verified accuracy, each published model's card (one
per trial, titled with every policy that chose it: `model_cards`), and the chosen
augmentation policy at work. Every figure comes from `job.search.view`, so the page
agrees with `summary.json` and `python -m job status`.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from optuna.trial import FrozenTrial
from PIL import Image

from job.collect.drift import DRIFT_JSON, MIN_DROP
from job.collect.figures import hypervolume_curve as hypervolume_curve
from job.collect.figures import pareto_figure, progress_figure, svg, verify_figure
from job.collect.picks import BASELINES_JSON, SELECTED, SELECTION_JSON, Picks
from job.collect.policies import MIN_PAIRS
from job.collect.publish import Publication
from job.collect.results import PARETO_JSON, SUMMARY_JSON, Front, as_written
from job.collect.verify import VERIFY_JSON, Verification
from job.config import AugmentConfig, Config
from job.files import write_atomic, writing
from job.search.record import SEARCH_TEST_LABEL, latency_text
from job.search.view import complete_trials, human_duration, search_latency_key, summarise

if TYPE_CHECKING:
    from torch import Tensor

REPORT_HTML = "report.html"
TEMPLATES = Path(__file__).parents[1] / "templates"
FILES = (SUMMARY_JSON, PARETO_JSON, SELECTION_JSON, VERIFY_JSON, BASELINES_JSON)
DOWNLOADS = ("model.onnx", "model.int8.onnx", "model.yaml", "weights.pt", "card.json")
PREVIEW_SIZE = 48  # pixels per preview tile
PREVIEW_TILES = [0, 2, 3]  # of job.ml.preview's images: photo 1 and two images of the data

# The preview's images at a tile size: uint8 (n, 3, size, size) and a name per image, as
# job.ml.preview gives them (two photos, then images of the data).
PreviewImages = Callable[[int], tuple["Tensor", list[str]]]


def preview_images(config: Config) -> PreviewImages:
    """A few images of the config's data, decoded when the page draws them."""
    from job.ml.preview import sampled_preview_images

    return partial(sampled_preview_images, config)


@dataclass(frozen=True)
class Page:
    """What the page shows: each file's content as its file holds it (None: missing)."""

    study: str
    summary: Any  # summary.json
    front: Any  # pareto.json
    selection: dict[str, Any] | None  # selection.json
    cards: dict[str, dict[str, Any]]  # `card_entry` per policy that chose a trial (shared)
    verify: dict[str, Any] | None  # verify.json
    baselines: Any  # baselines.json
    drift: dict[str, Any] | None  # drift.json (a research version's), never "missing"
    missing: tuple[str, ...] = ()  # of FILES


def render_report(
    out: Path, page: Page, trials: Sequence[FrozenTrial], config: Config, images: PreviewImages
) -> Path:
    """The report step: `out/report.html` (atomically) from `page` and `trials`."""
    out = Path(out)
    page_vars = {
        "study": page.study,
        "out": str(out),
        "written": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "missing": list(page.missing),
        "glance": glance(page.summary, trials, config),
        "ship": ship(page.selection, page.cards),
        "drift": page.drift,
        "min_drop": MIN_DROP,
        "min_pairs": MIN_PAIRS,
        # one name per latency figure, the same on every table and card (LATENCY_KEYS)
        "latency_key": search_latency_key(config),
        "latency_label": latency_text(search_latency_key(config)),
        "progress_svg": svg(progress_figure(trials, config)),
        "pareto_svg": svg(pareto_figure(trials, config, page.selection or {}, page.baselines)),
        "front": page.front,
        "selection": page.selection,
        "cards": page.cards,
        "model_cards": model_cards(page.cards),
        "baselines": page.baselines,
        "verify": page.verify,
        "verify_svg": svg(verify_figure(page.verify, page.baselines)) if page.verify else None,
        "preview": preview(page.cards, images),
    }
    html = _environment().get_template("report.html.j2").render(page_vars)
    path = out / REPORT_HTML
    with writing(path):
        write_atomic(path, lambda tmp: tmp.write_text(html, encoding="utf-8"))
    return path


@dataclass(frozen=True)
class Ship:
    """One model to ship: its trial, every policy (stated need) that chose it, and the
    card of the first (they hold the same model, in one folder)."""

    trial: int
    policies: list[str]
    reasons: list[str]
    card: dict[str, Any]

    @property
    def folder(self) -> str:
        """Where its files are: the trial's folder (`selected/trial-<N>`)."""
        folder = self.card.get("folder")
        return folder if isinstance(folder, str) else f"{SELECTED}/{self.policies[0]}"


def ship(
    selection: dict[str, Any] | None, cards: dict[str, Any]
) -> tuple[list[Ship], list[tuple[str, str]]]:
    """The report's "Ship this": each published trial once, with the needs it meets, in
    the policies' order; and each need no model meets, with why."""
    found: dict[int, Ship] = {}
    unmet: list[tuple[str, str]] = []
    for policy, choice in (selection or {}).items():
        if not isinstance(choice, dict):
            continue
        number, reason = choice.get("published"), str(choice.get("reason", ""))
        if not isinstance(number, int):
            unmet.append((policy, str(choice.get("problem") or reason)))
            continue
        card = cards.get(policy) or {}
        entry = found.setdefault(number, Ship(number, [], [], card))
        entry.policies.append(policy)
        entry.reasons.append(reason)
    return list(found.values()), unmet


def write_report(out: Path, trials: Sequence[FrozenTrial], config: Config, study_name: str) -> Path:
    """`out/report.html` rendered again from the files in `out` (`read_page`)."""
    return render_report(out, read_page(out, study_name), trials, config, preview_images(config))


# --- the page -----------------------------------------------------------------------


def page_of(
    out: Path, study: str, front: Front, picks: Picks, verification: Verification,
    publication: Publication, drift: dict[str, Any] | None,
) -> Page:  # fmt: skip
    """The page of one collect, from its steps' objects, each as its file holds it."""
    selection = as_written(publication.selection)
    cards = {}
    for policy, choice in selection.items():
        if choice.get("trial") is None:
            continue
        result = publication.results.get(policy)
        card = as_written(result.card) if result is not None else None
        cards[policy] = card_entry(out, policy, choice, card)
    return Page(
        study,
        summary=as_written(front.summary),
        front=as_written(front.pareto),
        selection=selection,
        cards=cards,
        verify=as_written(verification.report),
        baselines=as_written(picks.baselines),
        drift=None if drift is None else as_written(drift),
    )


def read_page(out: Path, study: str) -> Page:
    """The page from the files in `out`; what is missing (or unreadable) is said."""
    found = {name: read_json(out / name) for name in FILES}
    selection = found[SELECTION_JSON] if isinstance(found[SELECTION_JSON], dict) else None
    cards = {}
    for policy, choice in (selection or {}).items():
        if isinstance(choice, dict) and choice.get("trial") is not None:
            card = read_json(out / SELECTED / policy / "card.json")
            cards[policy] = card_entry(out, policy, choice, card)
    verify = found[VERIFY_JSON] if isinstance(found[VERIFY_JSON], dict) else None
    drift = read_json(out / DRIFT_JSON)
    return Page(
        study,
        summary=found[SUMMARY_JSON],
        front=found[PARETO_JSON],
        selection=selection,
        cards=cards,
        verify=verify,
        baselines=found[BASELINES_JSON],
        drift=drift if isinstance(drift, dict) else None,
        missing=tuple(name for name, data in found.items() if data is None),
    )


def read_json(path: Path) -> Any:
    """The file's JSON, or None when it is missing or unreadable (the page says so)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def card_entry(out: Path, policy: str, choice: dict[str, Any], card: Any) -> dict[str, Any]:
    """A policy's card as the page shows it: the card its folder holds, with `folder`
    (where its link leads, selection.json's `folder`: `selected/trial-<N>`; a folder of
    the layout before, `selected/<policy>`; None), `downloads` (relative paths of the
    files present, in that folder) and `problem` (why the chosen trial's set was not
    published, the folder holding the one before); `{"missing": True}` without one."""
    folder = choice.get("folder")
    if not isinstance(folder, str):  # a selection.json written before `folder`
        folder = f"{SELECTED}/{policy}" if isinstance(card, dict) else None
    found = dict(card) if isinstance(card, dict) else {"missing": True, "trial": choice["trial"]}
    found["folder"] = folder
    found["downloads"] = [
        f"{folder}/{name}" for name in DOWNLOADS if folder and (out / folder / name).is_file()
    ]
    found["problem"] = choice.get("problem")
    return found


def model_cards(cards: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The page's model cards: one per folder, however many policies lead to it, with
    `names` (those policies, in the config's order: the card's title and anchors) and
    `problems` (each one's, where its chosen set was not published); the policies whose
    pick has no folder at all get one card per trial they chose."""
    found: dict[str, dict[str, Any]] = {}
    for policy, card in cards.items():
        key = card.get("folder") or f"trial {card.get('trial')}"
        entry = found.setdefault(key, card | {"names": [], "problems": []})
        entry["names"].append(policy)
        if card.get("problem"):
            entry["problems"].append(card["problem"])
    return list(found.values())


def glance(summary: Any, trials: Sequence[FrozenTrial], config: Config) -> dict[str, Any]:
    """summary.json's figures (computed from `trials` when it is missing), plus the time
    from the first trial's start to the last completion."""
    if not isinstance(summary, dict):
        found = summarise(trials, config)
        summary = {
            "budget": found.budget,
            "trials": dict(found.counts),
            "complete": found.complete,
            "pruned": found.spent.pruned,
            "epochs_trained": found.spent.epochs_trained,
            "epochs_saved": found.spent.epochs_saved,
            "feasible": found.feasible,
            "front_size": len(found.front),
            "best_accuracy": found.best_accuracy,
            "best_test_accuracy": found.best_test_accuracy,
            "hypervolume": found.hypervolume,
            "trials_per_hour": found.trials_per_hour,
        }
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in complete_trials(trials) if t.datetime_complete]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else None
    objectives = ", ".join(config.objectives)
    return {**summary, "wall": None if wall is None else human_duration(wall), "obj": objectives}


# --- the augmentation preview -----------------------------------------------------


def applies_ops(augment: Any) -> bool:
    """Whether a card's augmentation policy changes any image (on, with ops, n_select > 0)."""
    if not isinstance(augment, dict):
        return False
    return (
        augment.get("enabled", True) is not False
        and bool(augment.get("ops"))
        and (augment.get("n_select") != 0)
    )


def preview(cards: dict[str, dict[str, Any]], images: PreviewImages) -> dict[str, Any] | None:
    """A pick's augmentation policy at work: the `best` pick's where it applies ops, else
    the first pick's that does; job.ml.preview's grid of `images`, each op of the policy
    at the policy's own level (its range's middle and top where it draws one), as a PNG
    data: URL. Where no pick's policy applies an op, it says so."""
    order = sorted(cards, key=lambda policy: policy != "best")
    with_policy = [p for p in order if isinstance(cards[p].get("augment"), dict)]
    if not with_policy:
        return None
    policy = next((p for p in with_policy if applies_ops(cards[p]["augment"])), None)
    if policy is None:
        first = with_policy[0]
        problem = "no pick's policy applies an op (n_select 0, or augmentation off)"
        return {"policy": first, "augment": cards[first]["augment"], "problem": problem}
    from job.ml.data import DataError
    from job.ml.preview import policy_levels, render_grid

    try:
        augment = AugmentConfig.model_validate(cards[policy]["augment"])
        tiles, names = images(PREVIEW_SIZE)
        keep = PREVIEW_TILES  # one photo and the data's two images: a third of the bytes
        levels = policy_levels(augment.level, augment.n_level)
        grid = render_grid(
            tiles[keep], [names[i] for i in keep], augment.ops, augment.n_level, levels
        )
    except (DataError, OSError, ValueError) as exc:  # the page is still worth having
        return {"policy": policy, "augment": cards[policy]["augment"], "problem": str(exc)}
    buffer = io.BytesIO()
    # 256 colours: a quarter of the bytes of RGB, and the tiles still read true
    grid.quantize(256, Image.Quantize.FASTOCTREE).save(buffer, format="PNG", optimize=True)
    png = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"policy": policy, "augment": augment, "png": png, "width": grid.width, "levels": levels}


# --- formatting (the template's filters) ------------------------------------------


def _num(value: Any) -> float | None:
    """A finite number, or None (missing, null, NaN, not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _shown(pattern: str) -> Callable[[Any], str]:
    """A filter: a finite number formatted by `pattern`, anything else "—"."""

    def show(value: Any) -> str:
        found = _num(value)
        return "—" if found is None else pattern.format(found)

    return show


fmt_acc, fmt_count, fmt_signed = _shown("{:.4f}"), _shown("{:,.0f}"), _shown("{:+.4f}")
fmt_ratio, fmt_ms = _shown("{:.3g}×"), _shown("{:.3g} ms")


def fmt_pm(mean: Any, std: Any) -> str:
    """0.9833 ± 0.0021; the mean alone without a std."""
    if _num(mean) is None:
        return "—"
    return fmt_acc(mean) + ("" if _num(std) is None else f" ± {fmt_acc(std)}")


def fmt_bytes(value: Any) -> str:
    found = _num(value)
    if found is None:
        return "—"
    return f"{found / 1e6:.2f} MB" if found >= 1e6 else f"{found / 1e3:.1f} kB"


def fmt_value(value: Any) -> str:
    """An `input` spec's value: lists joined, numbers short."""
    if isinstance(value, list | tuple):
        return ", ".join(fmt_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.ChainableUndefined,  # a field a card lacks reads as empty
        trim_blocks=True,
        lstrip_blocks=True,
    )
    filters = {"acc": fmt_acc, "count": fmt_count, "signed": fmt_signed, "ratio": fmt_ratio}
    filters |= {"ms": fmt_ms, "bytes": fmt_bytes, "value": fmt_value}
    env.filters.update(filters)
    env.globals |= {"pm": fmt_pm, "search_test_label": SEARCH_TEST_LABEL}
    return env
