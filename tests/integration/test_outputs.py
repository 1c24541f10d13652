"""The collector's outputs are replaced only by complete, checked sets (job.collect.outputs,
job.collect.publish): a damaged retrain source leaves the published pick byte for byte as it
was (its link and its trial's folder), a disk that fills up mid-collect is one line and
exit 1 with every earlier output intact, and a publisher stopped between its two renames
is recovered to one whole set.

The study is real (a journal, the verification study, a worker claiming the queued
retrains in-process with a test training function that saves a real state dict); each
`collect` is a real `python -m job collect` process."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from job.collect.outputs import fresh_side, recover, side, swap_in, withdraw
from job.collect.retrains import ensure_plan, plan_retrains
from job.config import Config, load_config
from job.files import OutputError, writing
from job.ml.data import load_data
from job.ml.model import build_model
from job.ml.train import TrainResult
from job.search.retrain import RetrainTask, retrain_data, verify_study_name
from job.search.worker import Worker, open_study
from tests.support.configs import TINY
from tests.support.proc import ROOT, journal_url
from tests.support.studies import ROWS, search_trial

CONFIG = "\n".join(line for line in TINY.splitlines() if not line.startswith("select:")) + (
    "\nselect:\n"
    "  policies: [best, knee]\n"
    "  retrain: {epochs: 1, seeds: 1}\n"
    "  verify_top_k: 0\n"
    "export: {latency_runs: 10, calibration_images: 32}\n"
)


def _train_fn(spec: Any, augment: Any, recipe: Any, data: Any, **kwargs: Any) -> TrainResult:
    """A retrain as a worker runs it, without the training: real weights of the network
    (seeded by the recipe), saved where the worker says."""
    weights = kwargs.get("weights")
    if weights is not None:
        torch.manual_seed(recipe.seed)
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save(build_model(spec).state_dict(), weights)
    return TrainResult(0.8, 0.8, 0.8, 0.8, 1, 1, 1.0, 0.1, "cpu", resumed_epoch=0)


def _retrained(root: Path) -> tuple[Path, Config, str]:
    """A finished search whose retrains are done: (its config file, config, journal URL);
    the retrained weights are in `root/verified`."""
    path = root / "c.yaml"
    path.write_text(CONFIG)
    config = load_config(path)
    url = journal_url(root)
    fingerprint = load_data(config.data).fingerprint  # the trials ran on this data
    study = open_study(config, url)
    for number, (acc, params, feasible) in enumerate(ROWS):
        trial = search_trial(number, acc, params, feasible)
        trial.user_attrs["data_fingerprint"] = fingerprint
        study.add_trial(trial)
    _, plan = plan_retrains(study.get_trials(), config, {})
    worker = Worker(
        config, url, verify_study_name(study.study_name), train_fn=_train_fn,
        log=lambda _: None, task=RetrainTask.opener(root / "verified"),
    )  # fmt: skip
    ensure_plan(worker.study, url, plan)
    assert worker.run(retrain_data(load_data(config.data))) == len(plan)
    return path, config, url


def _collect(
    config: Path, out: Path, url: str, limit: int | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m job collect` as a user runs it; with `limit`, under RLIMIT_FSIZE of that
    many bytes (a write past it fails with EFBIG: Python ignores SIGXFSZ)."""
    argv = ["collect", "--config", str(config), "--out", str(out), "--storage", url]

    def limited() -> None:
        if limit is not None:
            hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "SMS_TORCH_THREADS": "1"}
    env.pop("OPTUNA_STORAGE", None)
    return subprocess.run(
        [sys.executable, "-m", "job", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        preexec_fn=limited,
    )


def _tree(root: Path) -> dict[str, str]:
    """Every file under `root` with its content's digest."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _layout(selected: Path) -> dict[str, str]:
    """selected/'s entries: each policy's link → the trial folder it leads to, each
    trial's folder → "folder"."""
    return {
        p.name: os.readlink(p) if p.is_symlink() else "folder" for p in sorted(selected.iterdir())
    }


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# --- a damaged retrain source -------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def _not_a_state_dict(path: Path) -> None:
    torch.save([torch.zeros(3)], path)


def _wrong_shapes(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    torch.save({k: torch.zeros(1) for k in state}, path)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A study collected once: (config file, collector folder, storage URL)."""
    root = tmp_path_factory.mktemp("published")
    path, _, url = _retrained(root)
    out = root / "results"
    done = _collect(path, out, url)
    assert done.returncode == 0, done.stdout + done.stderr
    return path, out, url


def _source(out: Path, policy: str) -> Path:
    """The retrained weights file the pick's weights.pt is copied from."""
    from job.search.retrain import Retrain
    from job.search.worker import open_study

    card = json.loads((out / "selected" / policy / "card.json").read_text())
    root = out.parent
    verify = open_study(
        load_config(root / "c.yaml"), journal_url(root), verify_study_name("tiny"),
        create=False, verify=True,
    )  # fmt: skip
    for trial in verify.get_trials():
        spec = Retrain.of(trial)
        if spec is not None and spec.trial == card["trial"] and trial.user_attrs.get("weights"):
            return Path(str(trial.user_attrs["weights"]))
    raise AssertionError(f"no retrain of trial {card['trial']}")


@pytest.mark.parametrize("damage", [_truncate, _not_a_state_dict, _wrong_shapes])
def test_a_damaged_source_leaves_the_published_pick_byte_identical(
    published: tuple[Path, Path, str], damage: Callable[[Path], None]
) -> None:
    config, out, url = published
    selected = out / "selected"
    assert {"weights.pt", "model.onnx", "model.int8.onnx", "card.json"} <= {
        p.name for p in (selected / "knee").iterdir()
    }
    before, layout = _tree(selected / "knee"), _layout(selected)
    source = _source(out, "knee")
    good = source.read_bytes()
    damage(source)
    try:
        done = _collect(config, out, url)
    finally:
        source.write_bytes(good)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert _tree(selected / "knee") == before  # every file, byte for byte
    assert _layout(selected) == layout  # every link where it was, and no side folder
    assert sorted(n for n in layout if not n.startswith("trial-")) == ["best", "knee"]
    best = json.loads((selected / "best" / "card.json").read_text())  # its source is whole:
    assert best["onnx"]["verified"] is True  # published again, a complete set
    knee = json.loads((out / "selection.json").read_text())["knee"]
    held = json.loads((selected / "knee" / "card.json").read_text())["trial"]
    assert knee["published"] == held and str(source) in knee["problem"]
    warned = [line for line in _lines(done.stdout) if line.startswith("warning: knee: ")]
    assert len(warned) == 1 and str(source) in warned[0], done.stdout
    assert "not published" in (out / "report.html").read_text()


def test_a_pick_is_published_again_once_its_source_is_whole(
    published: tuple[Path, Path, str],
) -> None:
    """After a failed collect the next one with the source repaired publishes normally."""
    config, out, url = published
    done = _collect(config, out, url)
    assert done.returncode == 0, done.stdout + done.stderr
    selection = json.loads((out / "selection.json").read_text())
    for policy, entry in selection.items():
        assert entry["published"] == entry["trial"] and entry["problem"] is None, policy
        card = json.loads((out / "selected" / policy / "card.json").read_text())
        assert card["onnx"]["verified"] is True


# --- disk full ----------------------------------------------------------------------------


# --- disk full ----------------------------------------------------------------------------


def _assert_one_line_and_intact(
    done: subprocess.CompletedProcess[str], out: Path, before: dict[str, str], why: str
) -> None:
    """Exit 1, one error line naming a published file and the OS's reason; every file of
    the previous collect still there, the picks byte for byte, nothing half-written."""
    assert done.returncode == 1, done.stdout + done.stderr
    lines = _lines(done.stderr)
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith(f"error: cannot write {out}/") and f"({why})" in line, line
    assert ".new" not in line and ".tmp" not in line and len(line) <= 300, line
    after = _tree(out)
    assert set(after) == set(before)  # nothing created (no temporary left), nothing lost
    picks = [name for name in before if name.startswith("selected/")]
    assert picks and all(after[name] == before[name] for name in picks)
    for name in after:
        if name.endswith(".json"):
            json.loads((out / name).read_text())  # complete, whichever version it is


def test_a_write_past_the_file_size_limit_is_one_line_and_keeps_the_outputs(
    tmp_path: Path,
) -> None:
    """RLIMIT_FSIZE: every write past the limit fails with EFBIG, as on a full disk. The
    limit lets the journal and the small files through and stops the first pick file."""
    path, _, url = _retrained(tmp_path)
    out = tmp_path / "results"
    first = _collect(path, out, url)
    assert first.returncode == 0, first.stdout + first.stderr
    before = _tree(out)
    limit = 120_000
    assert (tmp_path / "study.journal").stat().st_size < limit // 2
    assert (out / "selected" / "best" / "weights.pt").stat().st_size > limit
    done = _collect(path, out, url, limit=limit)
    _assert_one_line_and_intact(done, out, before, "EFBIG")
    again = _collect(path, out, url)  # the limit gone, the next collect is whole again
    assert again.returncode == 0, again.stdout + again.stderr


@contextmanager
def _small_filesystem(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` (as root); skips where mounting is refused
    (the RLIMIT_FSIZE test above covers the same path then)."""
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_a_full_disk_during_collect_is_one_line_and_keeps_the_outputs(tmp_path: Path) -> None:
    """A real ENOSPC: the collector's folder on a small tmpfs, filled up to 100 KB after
    a first collect (the journal stays outside, on the test's disk)."""
    path, _, url = _retrained(tmp_path)
    with _small_filesystem(tmp_path / "small", "8m") as small:
        out = small / "results"
        first = _collect(path, out, url)
        assert first.returncode == 0, first.stdout + first.stderr
        before = _tree(out)
        filler = small / "filler"
        stat = os.statvfs(small)
        free = stat.f_bavail * stat.f_frsize
        with filler.open("wb") as handle:
            handle.write(b"\0" * max(0, free - 100_000))
        done = _collect(path, out, url)
        _assert_one_line_and_intact(done, out, before, "ENOSPC")
        filler.unlink()
        again = _collect(path, out, url)
        assert again.returncode == 0, again.stdout + again.stderr


# --- the swap and its recovery ------------------------------------------------------------


def _set(folder: Path, tag: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("weights.pt", "model.onnx", "card.json"):
        (folder / name).write_text(f"{tag} {name}")


def _contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def test_a_swap_replaces_the_whole_set(tmp_path: Path) -> None:
    live = tmp_path / "selected" / "best"
    _set(live, "old")
    (live / "model.int8.onnx").write_text("old int8")  # a file the new set does not have
    staged = fresh_side(live)
    _set(staged, "new")
    swap_in(staged, live)
    assert _contents(live) == {n: f"new {n}" for n in ("card.json", "model.onnx", "weights.pt")}
    assert sorted(p.name for p in live.parent.iterdir()) == ["best"]
    withdraw(live)
    assert list(live.parent.iterdir()) == []


@pytest.mark.parametrize("stopped", ["before the renames", "between", "after"])
def test_recovery_leaves_one_whole_set_wherever_a_publisher_stopped(
    tmp_path: Path, stopped: str
) -> None:
    """The states a publisher killed during `swap_in` can leave, and what `recover` (run
    by the next publish) makes of each: the old set or the new, never a mix."""
    selected = tmp_path / "selected"
    live = selected / "best"
    _set(live, "old")
    staged = fresh_side(live)
    _set(staged, "new")
    (staged / "model.int8.onnx").write_text("new int8")
    if stopped in ("between", "after"):
        live.rename(side(live, "old"))
    if stopped == "after":
        staged.rename(live)
    _set(selected / ".knee.gone", "withdrawn")  # a withdrawal cut short
    restored = recover(selected)
    assert sorted(p.name for p in selected.iterdir()) == ["best"]
    want = "new" if stopped == "after" else "old"
    assert {n: v.split()[0] for n, v in _contents(live).items() if n != "model.int8.onnx"} == {
        "card.json": want, "model.onnx": want, "weights.pt": want,
    }  # fmt: skip
    assert (live / "model.int8.onnx").exists() == (want == "new")
    assert len(restored) == (stopped == "between")


def test_a_failed_write_names_the_published_file(tmp_path: Path) -> None:
    staged = fresh_side(tmp_path / "selected" / "best")
    target = staged / ".card.json.123.tmp"
    with pytest.raises(OutputError) as raised, writing(target):
        raise OSError(28, "No space left on device")
    text = str(raised.value)
    assert text.startswith(f"cannot write {tmp_path}/selected/best/card.json: ")
    assert "No space left on device (ENOSPC)" in text


# --- augment-preview's --out --------------------------------------------------------------


def test_augment_preview_makes_a_missing_out_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As every verb's --out: the folder is made (one it cannot make:
    tests/unit/test_bad_inputs.py)."""
    from job.cli.main import main
    from tests.support.configs import QUICK

    (tmp_path / "c.yaml").write_text(QUICK)
    out = tmp_path / "new" / "deeper" / "p.png"
    code = main(["augment-preview", "--config", str(tmp_path / "c.yaml"), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert out.read_bytes().startswith(b"\x89PNG") and os.listdir(out.parent) == ["p.png"]
