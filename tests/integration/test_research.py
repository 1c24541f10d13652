"""Research (job.collect.research): the warm start, one version under concurrency, and
`python -m job research` end to end on an ImageFolder made from digits (real worker
processes, a real journal and a real PostgreSQL; versions, fingerprints and the decision:
tests/unit/test_research.py)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from job.collect.research import (
    IN_PROGRESS,
    NEW_VERSION,
    UNCHANGED,
    WARM_START,
    Decision,
    research,
    warm_start,
)
from job.config import config_fingerprint, parse_config
from job.ml.data import load_data
from job.search.versions import LINEAGE, versions
from job.search.worker import Worker
from job.storage import JOURNAL, open_storage
from job.testing.pgserver import External, Server
from tests.support.configs import RESEARCH, TINY, VERIFIED, tiny
from tests.support.data import write_digits
from tests.support.proc import journal_url, run_job

# --- the warm start and one version under concurrency --------------------------------


def _searched(url: str, doc: dict[str, object]) -> None:
    config = parse_config(doc)
    Worker(config, url, log=lambda line: None).run(load_data(config.data))


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A finished version 1 of TINY (budget 4) in a journal."""
    url = journal_url(tmp_path_factory.mktemp("parent"))
    _searched(url, tiny())
    return url


def test_warm_start_takes_picks_then_front_within_the_space(parent: str) -> None:
    config = parse_config(tiny(select={"verify": False, "policies": ["best", "knee"]}))
    trials = optuna.load_study(study_name="tiny", storage=open_storage(parent)).get_trials()
    data = load_data(config.data)
    chosen = warm_start("tiny", trials, config, data)
    assert 1 <= len(chosen) <= config.study.budget // 2
    whys = [attrs[WARM_START]["why"] for _, attrs in chosen]
    assert whys[0] == "pick:best" and set(whys) <= {"pick:best", "pick:knee", "front"}
    by_number = {t.number: t for t in trials}
    for params, attrs in chosen:
        source = by_number[attrs[WARM_START]["trial"]]
        assert params == source.params and attrs[WARM_START]["parent"] == "tiny"
    assert len({json.dumps(p, sort_keys=True) for p, _ in chosen}) == len(chosen)
    # a space that no longer offers those widths takes none of them
    narrow = tiny()
    space = dict(narrow["space"])  # type: ignore[arg-type]
    space["head_channels"] = [96, 128, 32]
    assert warm_start("tiny", trials, parse_config(tiny(space=space)), data) == []


@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_two_researches_at_once_make_one_version(
    kind: str, parent: str, postgres: Server | External, tmp_path: Path
) -> None:
    if kind == "journal":
        url = journal_url(tmp_path)  # a copy of the parent's journal
        Path(url[len(JOURNAL) :]).write_bytes(Path(parent[len(JOURNAL) :]).read_bytes())
    else:
        url = postgres.new_database()
        _searched(url, tiny())
    changed = parse_config(tiny(**{"data.subset": 280}))  # other images kept: a new config
    data = load_data(changed.data)
    decisions: list[Decision] = []
    barrier = threading.Barrier(2)

    def one() -> None:
        barrier.wait()
        decisions.append(research(changed, url, data))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    storage = open_storage(url, changed)
    assert versions(storage, "tiny") == [(1, "tiny"), (2, "tiny-v2")]
    assert sorted(d.decision for d in decisions) == [IN_PROGRESS, NEW_VERSION]
    assert {d.study for d in decisions} == {"tiny-v2"}
    new = next(d for d in decisions if d.decision == NEW_VERSION)
    assert new.parent == "tiny" and new.changed == ("config",) and new.warm_start_trials >= 1
    study = optuna.load_study(study_name="tiny-v2", storage=storage)
    lineage = study.user_attrs[LINEAGE]
    assert lineage["parent"] == "tiny" and lineage["changed"] == ["config"]
    assert lineage["fingerprints"]["config"] == config_fingerprint(changed)
    assert lineage["parent_fingerprints"]["config"] != config_fingerprint(changed)
    assert lineage["fingerprints"]["data"] == data.fingerprint
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == new.warm_start_trials == lineage["warm_start_trials"]
    assert all(t.user_attrs[WARM_START]["parent"] == "tiny" for t in waiting)
    assert all(t.values is None for t in waiting)  # queued to train again, no old value kept


# --- the verb, end to end ------------------------------------------------------------


def test_research_unchanged_then_new_version_on_added_images(tmp_path: Path) -> None:
    images, out = tmp_path / "images", tmp_path / "runs"
    write_digits(images, 0, 20)
    config = tmp_path / "research.yaml"
    # No verification here (tests/integration/test_pods.py's research test verifies and checks the
    # drift numbers): the picks' drift rows then say there are no retrained weights.
    text = RESEARCH.replace("PATH", str(images)).replace(
        VERIFIED, "{verify: false, policies: [best, knee]}"
    )
    config.write_text(text)
    args = ("research", "--config", str(config), "--out", str(out), "--workers", "1")

    first = run_job(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "new version digits (version 1" in first.stdout
    assert (out / "selection.json").is_file()

    again = run_job(*args)
    assert again.returncode == 0, again.stderr
    assert "unchanged" in again.stdout and "trial" not in again.stdout  # nothing ran
    assert json.loads((out / "research.json").read_text())["decision"] == UNCHANGED
    storage = open_storage(journal_url(out))
    assert versions(storage, "digits") == [(1, "digits")]

    write_digits(images, 20, 6)  # new images of every class
    dry = run_job(*args, "--dry-run")
    assert dry.returncode == 0 and "new version digits-v2" in dry.stdout
    assert versions(open_storage(journal_url(out)), "digits") == [(1, "digits")]

    second = run_job(*args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "new version digits-v2 (version 2; data changed since digits)" in second.stdout
    v2 = out / "digits-v2"
    decision = json.loads((v2 / "research.json").read_text())
    assert decision["decision"] == NEW_VERSION and decision["parent"] == "digits"
    assert decision["changed"] == ["data"] and decision["warm_start_trials"] >= 1
    study = optuna.load_study(study_name="digits-v2", storage=open_storage(journal_url(out)))
    trials = study.get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4
    assert sum(WARM_START in t.user_attrs for t in trials) == decision["warm_start_trials"]
    assert set(json.loads((v2 / "selection.json").read_text())) == {"best", "knee"}
    drift = json.loads((v2 / "drift.json").read_text())
    assert drift["parent"] == "digits" and [p["policy"] for p in drift["picks"]] == ["best", "knee"]
    assert drift["front"]["re_evaluated"] and drift["hypervolume"]["change"] is not None
    assert (out / "pareto.json").is_file()  # version 1's results are where they were

    status = run_job("status", "--config", str(config), "--out", str(out))
    assert status.returncode == 0, status.stderr
    assert "digits-v2" in status.stdout and "from digits (data changed" in status.stdout

    # starting over deletes the journal, so every version goes, folders and all
    fresh = run_job("run", "--config", str(config), "--out", str(out), "--workers", "1", "--fresh")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert "deleted the later versions too: digits-v2" in fresh.stdout and not v2.exists()
    assert versions(open_storage(journal_url(out)), "digits") == [(1, "digits")]


def test_research_bad_input_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "research.yaml"
    config.write_text(RESEARCH.replace("PATH", str(tmp_path / "missing")))
    proc = run_job("research", "--config", str(config), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    (tmp_path / "file").write_text("")
    proc = run_job("research", "--config", str(config), "--out", str(tmp_path / "file"))
    assert proc.returncode == 2 and "--out" in proc.stderr
    proc = run_job("research", "--config", str(config), "--out", str(tmp_path), "--launch")
    assert proc.returncode == 2 and "--launch" in proc.stderr and "journal" in proc.stderr
    env = {"SMS_STUDY": "bad name!"}
    proc = run_job("status", "--config", str(config), "--out", str(tmp_path), env=env)
    assert proc.returncode == 2 and "SMS_STUDY" in proc.stderr, proc.stderr


@pytest.mark.parametrize("storage", ["", "journal:///{tmp}/j/x.journal", "sqlite:///{tmp}/s/x.db"])
def test_a_dry_run_on_a_missing_study_creates_nothing_anywhere(
    tmp_path: Path, storage: str
) -> None:
    """No journal, folder, lock or database file: run where `runs/<study>` would go."""
    import os
    import subprocess
    import sys

    from tests.support.proc import ROOT

    (tmp_path / "c.yaml").write_text(TINY)
    argv = ["research", "--config", "c.yaml", "--dry-run"]
    argv += ["--storage", storage.format(tmp=tmp_path)] if storage else []
    env = {k: v for k, v in os.environ.items() if k not in ("OPTUNA_STORAGE", "POSTGRES_HOST")}
    done = subprocess.run(
        [sys.executable, "-m", "job", *argv], cwd=tmp_path, capture_output=True, text=True,
        timeout=300, env=env | {"PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "new version tiny (version 1" in done.stdout
    assert "--dry-run: nothing created" in done.stdout
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["c.yaml"]


def test_research_refuses_study_with_the_reason(tmp_path: Path) -> None:
    """research decides its study (the next version of study.name); README "Re-search"."""
    (tmp_path / "c.yaml").write_text(TINY)
    proc = run_job("research", "--config", str(tmp_path / "c.yaml"), "--study", "tiny-v2")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: --study tiny-v2: research picks its study itself")
    assert len(proc.stderr.strip().splitlines()) == 1 and "study.name" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]
