"""The collector's report page: built from a real (tiny) run, read as HTML, and rendered by
a real headless Chromium (job/testing/browser.py), which must fetch nothing and log no error."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import FrozenTrial, TrialState
from PIL import Image

from job.collect.report import REPORT_HTML, applies_ops, hypervolume_curve, write_report
from job.config import Config, load_config, parse_config
from job.search.record import SEARCH_TEST_LABEL
from job.search.view import summarise
from job.search.worker import open_study
from job.testing.browser import Browser, Rendered
from tests.support.configs import TINY
from tests.support.html import assert_self_contained, links_of
from tests.support.proc import ROOT, journal_url, run_job

RESNET8 = str(ROOT / "configs" / "models" / "resnet8.yaml")
CONFIG = TINY.replace("select: {verify: false}", "") + (
    "select:\n"
    "  policies: [best, knee]\n"
    "  retrain: {epochs: 1, seeds: 2}\n"
    "  verify_top_k: 2\n"
    f"  baselines: [{RESNET8}]\n"
    "export: {latency_runs: 20}\n"
)


# --- a real run -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Config]:
    """A tiny search with two picks, their retrains and a ResNet-8 baseline, collected;
    the report written by the collector, or here until the collector writes it."""
    root = tmp_path_factory.mktemp("report")
    config_path = root / "tiny.yaml"
    config_path.write_text(CONFIG)
    out = root / "out"
    args = ("run", "--config", str(config_path), "--workers", "2", "--out", str(out), "--fresh")
    done = run_job(*args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    config = load_config(config_path)
    if not (out / REPORT_HTML).is_file():
        study = open_study(config, journal_url(out), create=False)
        write_report(out, study.get_trials(), config, config.study.name)
    return out, config


@pytest.fixture(scope="module")
def rendered(run: tuple[Path, Config]) -> Rendered:
    with Browser() as browser:
        return browser.render(run[0] / REPORT_HTML)


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def test_the_page_is_one_self_contained_file(run: tuple[Path, Config]) -> None:
    out, _ = run
    html = (out / REPORT_HTML).read_text(encoding="utf-8")
    assert_self_contained(html, out)
    # train.test_each_trial off: no search trial's test figure anywhere, labelled or not
    assert _json(out / "summary.json")["best_test_accuracy"] is None
    assert SEARCH_TEST_LABEL not in html and "its test accuracy" not in html
    assert "test accuracy (" not in html
    images = [v for tag, _, v in links_of(html).links if tag == "img"]
    # progress, Pareto, verification, and the preview where a pick's policy applies ops
    cards = [_json(p) for p in (out / "selected").glob("*/card.json")]
    with_ops = any(applies_ops(card.get("augment")) for card in cards)
    assert len(images) == 3 + with_ops
    assert with_ops or "no pick's policy applies an op" in html
    downloads = {v for tag, _, v in links_of(html).links if tag == "a" and "/" in v}
    selection = _json(out / "selection.json")
    for policy in ("best", "knee"):
        folder = selection[policy]["folder"]  # its trial's, where its link leads
        assert (out / folder).resolve() == (out / "selected" / policy).resolve()
        for name in ("model.yaml", "weights.pt", "card.json"):
            assert f"{folder}/{name}" in downloads and (out / folder / name).is_file()


def test_the_hypervolume_curve_ends_at_the_summary(run: tuple[Path, Config]) -> None:
    out, config = run
    trials = open_study(config, journal_url(out), create=False).get_trials()
    curve = hypervolume_curve(trials, config.objectives)
    assert len(curve) == _json(out / "summary.json")["complete"]
    assert curve == sorted(curve)  # a front only ever gains
    assert curve[-1] == pytest.approx(_json(out / "summary.json")["hypervolume"])


def test_chromium_renders_it_without_errors_or_requests(
    run: tuple[Path, Config], rendered: Rendered
) -> None:
    assert rendered.errors == []
    assert [m for m in rendered.console if m.level == "warning"] == []
    page = (run[0] / REPORT_HTML).resolve().as_uri()
    assert page in rendered.requests
    assert [u for u in rendered.requests if u != page and not u.startswith("data:")] == []


def test_the_key_numbers_are_on_the_page(run: tuple[Path, Config], rendered: Rendered) -> None:
    out, _ = run
    text = rendered.text
    summary = _json(out / "summary.json")
    assert f"{summary['hypervolume']:.4f}" in text
    assert f"COMPLETE / budget\n{summary['complete']} / {summary['budget']}" in text
    selection = _json(out / "selection.json")
    for policy, choice in selection.items():
        card = _json(out / "selected" / policy / "card.json")
        assert choice["trial"] == card["trial"] and policy in card["policies"]
        # one card per trial, titled with every policy that chose it
        names = [p for p, c in selection.items() if c["published"] == card["trial"]]
        assert names == card["policies"] and text.count(f"— trial {card['trial']}\n") == 1
        assert f"{', '.join(names)} — trial {card['trial']}" in text
        assert f"{card['verified']['mean']:.4f} ± {card['verified']['std']:.4f}" in text
        if card.get("onnx"):  # exported: verified against PyTorch, and its accuracy
            assert f"{card['onnx']['test_accuracy']:.4f}" in text
            assert f"layout\n{card['input']['layout']}" in text
    baselines = _json(out / "baselines.json")["baselines"]
    assert [b["name"] for b in baselines] == ["resnet8"]
    assert "resnet8" in text and f"{baselines[0]['verified_accuracy']:.4f}" in text
    assert "Kendall's τ" in text
    assert "Not found in this folder" not in text
    # "Ship this" comes first: each published model once, with every need it meets
    shipped = text[text.index("\nShip this\n") : text.index("\nThe study at a glance\n")]
    published = {c["published"] for c in selection.values() if c["published"] is not None}
    for number in published:
        assert shipped.count(f"trial {number}\t") == 1, shipped
        needs = [p for p, c in selection.items() if c["published"] == number]
        assert all(f"{p}: " in shipped for p in needs)


def test_ship_this_lists_a_model_once_per_trial_and_the_needs_none_meets() -> None:
    from job.collect.report import ship

    selection = {
        "best": {"published": 7, "reason": "most accurate"},
        "under-20k": {"published": 7, "reason": "most accurate under 20k"},
        "knee": {"published": 3, "reason": "the knee"},
        "reference": {"published": None, "reason": "none reaches resnet8"},
        "smallest_within": {"published": None, "reason": "x", "problem": "ONNX FAILED"},
    }
    cards = {"best": {"trial": 7}, "under-20k": {"trial": 7}, "knee": {"trial": 3}}
    models, unmet = ship(selection, cards)
    assert [(m.trial, m.policies) for m in models] == [(7, ["best", "under-20k"]), (3, ["knee"])]
    assert models[0].reasons == ["most accurate", "most accurate under 20k"]
    assert unmet == [("reference", "none reaches resnet8"), ("smallest_within", "ONNX FAILED")]


def test_the_screenshot_shows_a_page(rendered: Rendered) -> None:
    image = Image.open(io.BytesIO(rendered.screenshot)).convert("RGB")
    assert image.width == 1280 and image.height > 2000  # the whole page, figures included
    colours = image.getcolors(maxcolors=1 << 24) or []
    assert len(colours) > 500  # figures and text, not a blank page
    assert float(np.asarray(image).std()) > 20.0


def test_at_phone_width_the_figures_keep_their_size_and_the_page_does_not_scroll(
    run: tuple[Path, Config],
) -> None:
    """At 400 css px the figures are not shrunk (their text would be about 5 px): each
    scrolls sideways in its own box, and the page stays 400 px wide."""
    with Browser() as browser:
        phone = browser.render(run[0] / REPORT_HTML, width=400)
        figures = browser.evaluate(
            "Array.from(document.querySelectorAll('.fig img')).map("
            "i => [i.getBoundingClientRect().width, i.naturalWidth,"
            " i.parentElement.getBoundingClientRect().width])"
        )
        page_width = browser.evaluate("document.documentElement.scrollWidth")
    assert len(figures) == 3, figures  # progress, Pareto, verification
    for shown, natural, box in figures:
        assert natural > 400 and shown == pytest.approx(natural, abs=1), figures
        assert box <= 400, figures  # the box, not the page, is as wide as the figure
    assert page_width <= 400
    image = Image.open(io.BytesIO(phone.screenshot))
    assert image.width == 400 and phone.errors == []


# --- what is missing -------------------------------------------------------------------


def _trial(number: int, accuracy: float, params: int, minutes: int) -> FrozenTrial:
    start = datetime(2025, 1, 1, 12, 0)
    trial = optuna.trial.create_trial(
        state=TrialState.COMPLETE,
        values=[accuracy, float(params)],
        user_attrs={"params": params, "val_accuracy": accuracy},
    )
    trial.number = number
    trial.datetime_start = start + timedelta(minutes=minutes)
    trial.datetime_complete = start + timedelta(minutes=minutes + 2)
    return trial


def test_a_folder_with_only_a_summary_renders_and_says_what_is_missing(tmp_path: Path) -> None:
    config = parse_config(yaml.safe_load(TINY))
    trials = [_trial(0, 0.80, 5000, 0), _trial(1, 0.90, 20000, 1), _trial(2, 0.85, 4000, 3)]
    summary = {"budget": 4, "trials": {"COMPLETE": 3}, "complete": 3, "feasible": 3}
    summary |= {"front_size": 2, "hypervolume": 0.123456, "trials_per_hour": 36.0}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    path = write_report(tmp_path, trials, config, "tiny")
    assert path == tmp_path / REPORT_HTML
    html = path.read_text(encoding="utf-8")
    assert_self_contained(html, tmp_path)
    missing = "pareto.json, selection.json, verify.json, baselines.json"
    assert f"Not found in this folder: {missing}" in " ".join(html.split())
    assert "selection.json is missing" in html and "verify.json is missing" in html
    assert "baselines.json is missing" in html and "No selected model" in html
    assert "0.1235" in html and "<b>3 / 4</b>" in html and "36.0 trials/h" in html
    curve = hypervolume_curve(trials, config.objectives)
    assert len(curve) == 3 and curve == sorted(curve)
    assert curve[-1] == pytest.approx(summarise(trials, config).hypervolume)


def test_a_search_trials_test_accuracy_is_shown_only_labelled_as_research(
    tmp_path: Path,
) -> None:
    """With train.test_each_trial (research use) the headline, the front's table and the
    card show the search trial's test accuracy, each labelled; off, none of them does."""
    config = parse_config(yaml.safe_load(TINY))
    trials = [_trial(0, 0.80, 5000, 0), _trial(1, 0.90, 20000, 1)]
    pick = {"best": {"trial": 1, "kind": "best", "reason": "the most accurate"}}
    (tmp_path / "selection.json").write_text(json.dumps(pick))
    (tmp_path / "selected" / "best").mkdir(parents=True)
    for research in (True, False):
        test = 0.8765 if research else None
        summary = {"budget": 4, "complete": 2, "best_accuracy": 0.9, "best_test_accuracy": test}
        entry = {"number": 1, "values": {"accuracy": 0.9, "params": 20000}, "test_accuracy": test}
        card = {"trial": 1, "proxy_accuracy": 0.9, "proxy_test_accuracy": test}
        (tmp_path / "summary.json").write_text(json.dumps(summary))
        (tmp_path / "pareto.json").write_text(json.dumps([entry]))
        (tmp_path / "selected" / "best" / "card.json").write_text(json.dumps(card))
        html = " ".join(write_report(tmp_path, trials, config, "tiny").read_text().split())
        assert "0.9000" in html and "(validation" in html
        assert html.count(SEARCH_TEST_LABEL) == (3 if research else 0)
        assert html.count("0.8765") == (3 if research else 0)
        assert ("its test accuracy" in html) == research


def test_an_empty_folder_without_trials_still_renders(tmp_path: Path) -> None:
    config = parse_config(yaml.safe_load(TINY))
    html = write_report(tmp_path, [], config, "tiny").read_text(encoding="utf-8")
    assert_self_contained(html, tmp_path)
    assert "summary.json is missing: these figures are computed from the study" in html
    assert "<b>0 / 4</b>" in html


def _images(size: int) -> tuple[Any, list[str]]:
    import torch

    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8, generator=generator)
    return x, ["photo 1", "photo 2", "digits: 0", "digits: 1"]


@pytest.mark.parametrize(
    ("augment", "levels"),
    [
        ({"n_select": 1, "level": 3, "n_level": 31}, [3]),  # its own level, not 10/21/31
        ({"n_select": 2, "level": None, "n_level": 31}, [16, 31]),  # drawn: middle and top
    ],
)
def test_the_augmentation_preview_shows_the_picks_own_policy(
    augment: dict[str, Any], levels: list[int]
) -> None:
    from job.collect.report import PREVIEW_SIZE, PREVIEW_TILES, preview
    from job.ml.preview import LABEL_WIDTH

    ops = ["Rotate", "Solarize"]
    cards = {"knee": {"augment": {**augment, "ops": ops}}, "best": {"augment": None}}
    shown = preview(cards, _images)
    assert shown is not None and shown["policy"] == "knee" and shown["levels"] == levels
    columns = len(PREVIEW_TILES) * (len(levels) + 1)  # each image: the original, its levels
    assert shown["width"] == LABEL_WIDTH + columns * (PREVIEW_SIZE + 4)


def test_a_pick_whose_policy_applies_no_op_is_passed_over_for_one_that_does() -> None:
    from job.collect.report import preview

    none = {"n_select": 0, "level": 0, "ops": ["Rotate"]}
    some = {"n_select": 1, "level": 5, "n_level": 31, "ops": ["Rotate"]}
    shown = preview({"best": {"augment": none}, "knee": {"augment": some}}, _images)
    assert shown is not None and shown["policy"] == "knee" and shown["levels"] == [5]
    shown = preview({"best": {"augment": none}}, _images)
    assert shown is not None and shown["problem"].startswith("no pick's policy applies an op")
