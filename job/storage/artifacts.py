"""A trial's files as Optuna artifacts: what optuna-dashboard lists and downloads.

The store is a `FileSystemArtifactStore` folder beside the collector's results (in
Kubernetes, on the artifacts volume, which the dashboard mounts read-only). A pick is
found after its trial finished, and Optuna's `upload_artifact` refuses a finished trial
(`UpdateFinishedTrialError`), so each file is uploaded with `upload_artifact` to the
*study*, named `trial-<n>-<file>`, and the same artifact is linked to the trial where
optuna-dashboard looks for a trial's artifacts besides the trial's own attrs: the study
system attr `dashboard:artifacts:<trial id>:<artifact id>`. The dashboard then lists the
files on the trial's page (and on the study's) and serves them from either.

Uploads are idempotent: a file whose name and content the study already holds is not
uploaded again, so rerunning `collect` adds only what changed (a card with a new latency
measurement, say) as a newer artifact of the same name.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import optuna
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial

ARTIFACTS = "artifacts"  # the store's folder in the collector's output folder
# optuna-dashboard's key for a trial's artifact kept in the study's system attrs
DASHBOARD_TRIAL_ARTIFACT = "dashboard:artifacts:{trial_id}:{artifact_id}"


def _sha256(reader: BinaryIO) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: reader.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def _held(study: optuna.Study, store: FileSystemArtifactStore, prefix: str) -> dict[str, set[str]]:
    """Artifact file name → the sha256 of each stored version, for the names that start
    with `prefix` (one trial's: the others are not read)."""
    held: dict[str, set[str]] = {}
    for meta in get_all_artifact_meta(study):
        if not meta.filename.startswith(prefix):
            continue
        try:
            with store.open_reader(meta.artifact_id) as reader:
                held.setdefault(meta.filename, set()).add(_sha256(reader))
        except (OSError, ArtifactNotFound):
            continue  # its stored file is gone: uploaded again
    return held


def upload_trial_files(
    study: optuna.Study, trial: FrozenTrial, files: Sequence[Path], store_dir: Path
) -> list[str]:
    """Upload `files` as artifacts of `trial` of `study` into the store at `store_dir`
    (created); returns the artifact names uploaded now (`trial-<n>-<file>`; those
    already there with the same content are skipped)."""
    store_dir.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(store_dir)
    prefix = f"trial-{trial.number}-"
    held = _held(study, store, prefix)
    uploaded: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sms-artifacts-") as tmp:
        for path in files:
            name = prefix + path.name
            with open(path, "rb") as handle:
                if _sha256(handle) in held.get(name, set()):
                    continue
            named = Path(tmp) / name  # the artifact takes its name from the file's
            shutil.copyfile(path, named)
            upload_artifact(artifact_store=store, file_path=str(named), study_or_trial=study)
            uploaded.append(name)
    for meta in get_all_artifact_meta(study):  # one read: link what was uploaded now
        if meta.filename in uploaded:
            key = DASHBOARD_TRIAL_ARTIFACT.format(
                trial_id=trial._trial_id, artifact_id=meta.artifact_id
            )
            value = json.dumps(
                {
                    "artifact_id": meta.artifact_id,
                    "filename": meta.filename,
                    "mimetype": meta.mimetype,
                    "encoding": meta.encoding,
                }
            )
            study._storage.set_study_system_attr(study._study_id, key, value)
    return uploaded
