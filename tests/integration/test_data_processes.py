"""job.ml.data in a process of another user: a class folder it may not list is named with
the OS's reason (the rest of the data tests: tests/unit/test_data.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.data import write_folder

ROOT = Path(__file__).resolve().parents[2]


# Run as `nobody` when the tests run as root (permission bits do not stop root): the
# imports first, as root (the interpreter's own files may lie under /root), then the load.
UNREADABLE = """\
import os, sys
from PIL import Image
from job.config import DataConfig
from job.ml.data import DataError, load_data
Image.init()  # every image plugin imported while still allowed to
if os.geteuid() == 0:
    os.setgid(65534)
    os.setuid(65534)
try:
    load_data(DataConfig(name="imagefolder", path=sys.argv[1]))
except DataError as exc:
    print(exc)
"""


def test_a_class_folder_without_permission_is_named_with_the_reason() -> None:
    """A class folder this process may not list: said so, with the OS's reason (it was
    "no images"). The folder lies where `nobody` may reach it, but for class `b`."""
    root = Path(tempfile.mkdtemp(prefix="sms-perm-"))
    try:
        root.chmod(0o755)
        write_folder(root, {"a": 4, "b": 4})
        for path in root.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        (root / "b").chmod(0)
        done = subprocess.run(
            [sys.executable, "-c", UNREADABLE, str(root)],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"{root / 'b'}: cannot read folder (Permission denied)"
    finally:
        (root / "b").chmod(0o755)
        shutil.rmtree(root)
