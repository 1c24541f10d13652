"""Binaries the throwaway servers need, found on PATH or the test skipped."""

from __future__ import annotations

import os
import shutil

__all__ = ["need_binary"]


def need_binary(names: tuple[str, ...], package: str) -> str:
    """The path of the first of `names` on PATH; skips the test without one (fails it
    under CI=true, where `make test` has installed the Debian `package`)."""
    import pytest  # a test dependency: imported only when a binary is looked for

    for name in names:
        if found := shutil.which(name):
            return found
    why = f"no {' or '.join(names)} on PATH (Debian package {package})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why}; CI=true needs it: apt-get install {package}")
    pytest.skip(why)
