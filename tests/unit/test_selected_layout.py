"""The picks' folders (job.collect.publish, job.collect.outputs): one real folder per chosen
trial, `selected/trial-<N>/`, and a relative link per policy, `selected/<policy>`, to it.
Two policies that choose one trial share its folder and its card (`policies` names both);
a policy that moves has its link switched and the folder no link leads to any more is
removed; a set that fails leaves every link and file as it was; a folder of the layout
before (one per policy) becomes a link once the new set is in; a publisher stopped
anywhere is recovered to links that each lead to one whole set; the report shows a shared
trial as one card.

In-process and cheap: the picks are made by hand (tests.support.studies' trials, the
network's real state dict as each retrain's weights), with `export.onnx` off, so each
publish loads and checks the weights strictly but exports nothing."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from job.collect import publish as publishing
from job.collect.outputs import fresh_side, point, recover, side
from job.collect.picks import Card, Pick, Picks, card
from job.collect.policies import Choice
from job.collect.publish import Publication, publish
from job.collect.verify import Run, Verified
from job.config import Config, parse_config
from job.ml.data import Dataset, load_data
from job.ml.model import build_model, spec_from_yaml
from tests.support.configs import tiny
from tests.support.studies import search_trial

ACCURACY = {3: 0.95, 5: 0.90, 8: 0.85}  # trial → its accuracy (and params: trial * 1000)


@pytest.fixture(scope="module")
def config() -> Config:
    return parse_config(tiny(export={"onnx": False, "artifacts": False}))


@pytest.fixture(scope="module")
def data(config: Config) -> Dataset:
    return load_data(config.data)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Each trial's retrained weights, as a worker leaves them in `verified/`."""
    root = tmp_path_factory.mktemp("verified")
    found = {}
    for number in ACCURACY:
        spec = spec_from_yaml(search_trial(number, 0.9, 1000).user_attrs["model_yaml"])
        torch.manual_seed(number)
        found[number] = root / f"trial-{number}.pt"
        torch.save(build_model(spec).state_dict(), found[number])
    return found


def _picks(config: Config, sources: dict[int, Path], chosen: dict[str, int | None]) -> Picks:
    """What the picks step hands on when each policy (in this order) chose its trial."""
    choices, picks = [], {}
    for policy, number in chosen.items():
        choice = Choice(policy, policy, number, f"{policy}'s reason")
        choices.append(choice)
        if number is None:
            continue
        trial = search_trial(number, ACCURACY[number], number * 1000)
        trial.number = number
        run = Run(0, ACCURACY[number], ACCURACY[number], 0.1, str(sources[number]))
        yaml = trial.user_attrs["model_yaml"]
        model = Verified(f"trial {number}", "search", number, None, yaml, {}, planned=1)
        model.runs.append(run)
        picks[policy] = Pick(trial, model, card(choice, trial, model, "tiny", config))
    return Picks(tuple(choices), picks, {"baselines": [], "comparison": []})


def _publish(
    out: Path, config: Config, data: Dataset, sources: dict[int, Path], **chosen: int | None
) -> Publication:
    study = optuna.create_study(directions=["maximize", "minimize"])
    return publish(out, study, _picks(config, sources, chosen), config, data)


def _layout(out: Path) -> dict[str, str]:
    """selected/ as a reader finds it: each link → its target as written, each folder → "dir"."""
    return {
        p.name: os.readlink(p) if p.is_symlink() else "dir"
        for p in sorted((out / "selected").iterdir())
    }


def _card(out: Path, policy: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((out / "selected" / policy / "card.json").read_text())
    return found


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


SET = {"model.yaml", "weights.pt", "card.json"}  # a whole set, with export.onnx off


def test_two_policies_that_choose_one_trial_share_its_folder_and_card(
    tmp_path: Path,
    config: Config,
    data: Dataset,
    sources: dict[int, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[int] = []
    fill = publishing._fill

    def counted(staged: Path, pick: Pick, *args: Any) -> Card | str:
        built.append(pick.trial.number)
        return fill(staged, pick, *args)

    uploads: list[tuple[int, list[str]]] = []

    def upload(study: Any, trial: Any, files: list[Path], store: Path) -> None:
        uploads.append((trial.number, sorted(p.name for p in files)))

    monkeypatch.setattr(publishing, "_fill", counted)
    monkeypatch.setattr(publishing, "upload_trial_files", upload)
    export = config.export.model_copy(update={"artifacts": True})
    config = config.model_copy(update={"export": export})
    done = _publish(tmp_path, config, data, sources, best=3, knee=3, small=5, none=None)
    assert done.problems == []
    assert built == [3, 5]  # trial 3's set is built once, for both policies
    sent = ["card.json", "model.yaml"]  # EXPORTED: the weights stay on the volume
    assert uploads == [(3, sent), (5, sent)]  # and uploaded once
    assert _layout(tmp_path) == {
        "best": "trial-3", "knee": "trial-3", "small": "trial-5",
        "trial-3": "dir", "trial-5": "dir",
    }  # fmt: skip
    assert {p.name for p in (tmp_path / "selected" / "trial-3").iterdir()} == SET
    shared = _card(tmp_path, "knee")  # read through the link, as every reader does
    assert shared == _card(tmp_path, "best")
    assert shared["policies"] == ["best", "knee"] and shared["policy"] == "best"
    assert list(shared)[:3] == ["policy", "policies", "kind"]
    assert _card(tmp_path, "small")["policies"] == ["small"]
    selection = json.loads((tmp_path / "selection.json").read_text())
    assert {p: (e["published"], e["folder"]) for p, e in selection.items()} == {
        "best": (3, "selected/trial-3"), "knee": (3, "selected/trial-3"),
        "small": (5, "selected/trial-5"), "none": (None, None),
    }  # fmt: skip
    # `train --card` finds the weights beside the card, through the link
    weights = tmp_path / "selected" / "knee" / shared["weights"]
    assert weights.resolve() == (tmp_path / "selected" / "trial-3" / "weights.pt").resolve()
    assert publishing.export_text(done) == ""  # no ONNX here: no line, shared or not


def test_a_policy_that_moves_gets_a_new_link_and_an_unlinked_folder_goes(
    tmp_path: Path, config: Config, data: Dataset, sources: dict[int, Path]
) -> None:
    _publish(tmp_path, config, data, sources, best=3, knee=3)
    before = os.stat(tmp_path / "selected" / "best", follow_symlinks=False).st_ino
    _publish(tmp_path, config, data, sources, best=3, knee=5)
    assert _layout(tmp_path) == {
        "best": "trial-3", "knee": "trial-5", "trial-3": "dir", "trial-5": "dir",
    }  # fmt: skip
    assert os.stat(tmp_path / "selected" / "best", follow_symlinks=False).st_ino == before
    assert _card(tmp_path, "best")["policies"] == ["best"]  # knee left: its card says so
    assert _card(tmp_path, "knee")["policies"] == ["knee"]
    # a link a policy no longer in the config left keeps its trial's folder alive
    os.symlink("trial-5", tmp_path / "retired")
    os.replace(tmp_path / "retired", tmp_path / "selected" / "retired")
    _publish(tmp_path, config, data, sources, best=8, knee=8)
    assert _layout(tmp_path) == {
        "best": "trial-8", "knee": "trial-8", "retired": "trial-5", "trial-5": "dir",
        "trial-8": "dir",
    }  # fmt: skip
    (tmp_path / "selected" / "retired").unlink()
    _publish(tmp_path, config, data, sources, best=8, knee=None)
    assert _layout(tmp_path) == {"best": "trial-8", "trial-8": "dir"}  # knee withdrawn


def test_a_set_that_fails_leaves_every_link_and_file_as_it_was(
    tmp_path: Path, config: Config, data: Dataset, sources: dict[int, Path]
) -> None:
    _publish(tmp_path, config, data, sources, best=3, knee=3)
    folder = tmp_path / "selected" / "trial-3"
    layout, files = _layout(tmp_path), _digests(folder)
    good = sources[5].read_bytes()
    sources[5].write_bytes(good[:1000])  # a truncated retrain
    try:
        done = _publish(tmp_path, config, data, sources, best=5, knee=5)
        assert _layout(tmp_path) == layout and _digests(folder) == files  # byte for byte
        assert [p[: p.index(":")] for p in done.problems] == ["best", "knee"]
        assert all("keeps the set published before (trial 3)" in p for p in done.problems)
        selection = json.loads((tmp_path / "selection.json").read_text())
        assert selection["knee"]["published"] == 3 and selection["knee"]["trial"] == 5
        assert selection["knee"]["folder"] == "selected/trial-3"
        # one policy moves and publishes, the other's new set fails: it keeps its link,
        # and the folder it leads to stays whole, though no policy chose that trial now
        done = _publish(tmp_path, config, data, sources, best=8, knee=5)
        assert _layout(tmp_path) == {
            "best": "trial-8", "knee": "trial-3", "trial-3": "dir", "trial-8": "dir",
        }  # fmt: skip
        assert _digests(folder) == files and len(done.problems) == 1
    finally:
        sources[5].write_bytes(good)
    _publish(tmp_path, config, data, sources, best=8, knee=5)
    assert _layout(tmp_path) == {
        "best": "trial-8", "knee": "trial-5", "trial-5": "dir", "trial-8": "dir",
    }  # fmt: skip


def _old_layout(selected: Path, policy: str, trial: int) -> dict[str, str]:
    """A pick's folder as the collector before trial folders left it."""
    folder = selected / policy
    folder.mkdir(parents=True)
    (folder / "card.json").write_text(json.dumps({"policy": policy, "trial": trial}))
    (folder / "weights.pt").write_bytes(b"old weights")
    return _digests(folder)


def test_a_folder_of_the_layout_before_becomes_a_link_once_its_new_set_is_in(
    tmp_path: Path, config: Config, data: Dataset, sources: dict[int, Path]
) -> None:
    selected = tmp_path / "selected"
    _old_layout(selected, "best", 3)
    knee = _old_layout(selected, "knee", 8)
    good = sources[5].read_bytes()
    sources[5].write_bytes(good[:1000])
    try:
        done = _publish(tmp_path, config, data, sources, best=3, knee=5)
    finally:
        sources[5].write_bytes(good)
    # best's new set is in: its folder is now the link; knee's failed: its folder stays
    assert _layout(tmp_path) == {"best": "trial-3", "knee": "dir", "trial-3": "dir"}
    assert _digests(selected / "knee") == knee
    assert done.problems[0].startswith("knee: trial 5 not published: ")
    assert done.results["knee"].folder == "selected/knee" and done.results["knee"].held == 8
    _publish(tmp_path, config, data, sources, best=3, knee=5)
    assert _layout(tmp_path) == {
        "best": "trial-3", "knee": "trial-5", "trial-3": "dir", "trial-5": "dir",
    }  # fmt: skip
    assert _card(tmp_path, "knee")["trial"] == 5


def _set(folder: Path, tag: str) -> Path:
    folder.mkdir(parents=True)
    for name in ("card.json", "weights.pt"):
        (folder / name).write_text(f"{tag} {name}")
    return folder


# Where a publisher was stopped (best: trial 3 -> 5; knee keeps 3, its set rebuilt), and
# the set best's path leads to once `recover` ran: the old one or the new, never a mix.
STOPPED = {
    "building trial-5's set": "three",
    "between trial-3's two renames": "three",
    "making best's new link": "three",
    "between the layout before's folder and best's link": "layout before",
    "after best's link, before its old folder went": "five",
    "removing a folder no link leads to": "five",
}


@pytest.mark.parametrize("stopped", list(STOPPED))
def test_a_publisher_stopped_anywhere_leaves_links_to_whole_sets(
    tmp_path: Path, stopped: str
) -> None:
    selected = tmp_path / "selected"
    best, knee = selected / "best", selected / "knee"
    _set(selected / "trial-3", "three")
    os.symlink("trial-3", knee)
    if "before" in stopped:  # best's folder as the collector before trial folders left it
        _set(best, "layout before")
    else:
        os.symlink("trial-3", best)
    if stopped == "building trial-5's set":
        (fresh_side(selected / "trial-5") / "weights.pt").write_text("half")
    elif stopped == "between trial-3's two renames":
        _set(side(selected / "trial-3", "new"), "three again")
        (selected / "trial-3").rename(side(selected / "trial-3", "old"))
    else:
        _set(selected / "trial-5", "five")
    if stopped in ("making best's new link", "between the layout before's folder and best's link"):
        os.symlink("trial-5", side(best, "link"))
    if "before" in stopped:
        best.rename(side(best, "old"))
    if stopped == "after best's link, before its old folder went":
        os.symlink("trial-5", best)
    if stopped == "removing a folder no link leads to":
        os.replace(_link(tmp_path, "trial-5"), best)
        _set(side(selected / "trial-9", "gone"), "nine").joinpath("card.json").unlink()
    recover(selected)
    assert not [p.name for p in selected.iterdir() if p.name.startswith(".")]
    for policy, want in (("best", STOPPED[stopped]), ("knee", "three")):
        folder = selected / policy
        assert _digests(folder).keys() == {"card.json", "weights.pt"}, policy  # whole
        assert (folder / "card.json").read_text() == f"{want} card.json", policy


def _link(where: Path, target: str) -> Path:
    """A link to `target` made beside, to be renamed into place."""
    os.symlink(target, temp := where / "temp-link")
    return temp


def test_pointing_a_link_replaces_it_in_place_and_leaves_nothing_beside(tmp_path: Path) -> None:
    selected = tmp_path / "selected"
    _set(selected / "trial-3", "three")
    _set(selected / "trial-5", "five")
    best = selected / "best"
    point(best, "trial-3")
    point(best, "trial-5")
    assert os.readlink(best) == "trial-5"  # relative: the folder may be moved or mounted
    _set(selected / "knee", "layout before")
    point(selected / "knee", "trial-3")
    assert sorted(p.name for p in selected.iterdir()) == ["best", "knee", "trial-3", "trial-5"]
    assert (selected / "knee" / "card.json").read_text() == "three card.json"


def test_the_report_shows_a_shared_trial_as_one_card(
    tmp_path: Path, config: Config, data: Dataset, sources: dict[int, Path]
) -> None:
    from job.collect.report import write_report

    _publish(tmp_path, config, data, sources, best=3, knee=3, small=5)
    trials = [search_trial(n, a, n * 1000) for n, a in ACCURACY.items()]
    html = write_report(tmp_path, trials, config, "tiny").read_text(encoding="utf-8")
    titles = re.findall(r"<h3>([^<]*)</h3>", html)
    assert titles == ["best, knee — trial 3", "small — trial 5"]
    assert html.count('<div class="card" ') == 2
    for anchor in ("card-best", "card-knee", "card-small"):  # the selection table's links
        assert f'id="{anchor}"' in html
    ship = html[html.index('id="ship"') : html.index('id="glance"')]
    assert ship.count(">trial 3</a>") == 1 and ship.count(">trial 5</a>") == 1
    links = set(re.findall(r'href="(selected/[^"]+)"', html))
    assert "selected/trial-3/card.json" in links and "selected/trial-5/weights.pt" in links
    assert all((tmp_path / link).is_file() for link in links)  # every file link resolves
