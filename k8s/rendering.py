"""Every overlay of k8s/ rendered as `kubectl apply -k` would render it: what the dev
tools k8s/checkov.py and k8s/digests.py read.

The Secret's env file (`base/database.env`) is never committed, so each render runs on a
temporary copy of the tree with the committed example in its place. Standard library
only; `kubectl` (with its built-in kustomize) on PATH.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

K8S = Path(__file__).resolve().parent


def render_overlays(tree: Path = K8S) -> dict[str, str]:
    """Each overlay's name -> the YAML `kubectl kustomize` renders for it."""
    with tempfile.TemporaryDirectory(prefix="sms-k8s-") as tmp:
        copy = Path(tmp) / "k8s"
        shutil.copytree(tree, copy, ignore=shutil.ignore_patterns("database.env"))
        shutil.copyfile(copy / "base" / "database.env.example", copy / "base" / "database.env")
        return {
            overlay.name: render(overlay)
            for overlay in sorted((copy / "overlays").iterdir())
            if (overlay / "kustomization.yaml").is_file()
        }


def render(overlay: Path) -> str:
    done = subprocess.run(
        ["kubectl", "kustomize", str(overlay)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return done.stdout
