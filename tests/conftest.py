"""Shared fixtures for every tier, and each test's tier marker from its folder:
tests/unit/ (in-process, no servers, no sleeps: `make test-fast`), tests/integration/
(real PostgreSQL, PgBouncer, Prometheus, worker processes), tests/deploy/ (manifests,
image files, Chromium). Shared constants and helpers live in tests/support/; no test
module imports another."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from job.testing.pgserver import External, Server, throwaway_server

if TYPE_CHECKING:  # torch is imported by the tests that need it, not by xdist's controller
    from job.ml.data import Dataset

ROOT = Path(__file__).resolve().parents[1]
TIERS = ("unit", "integration", "deploy")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker gets its share of the cores for torch, and so do the
    product's processes it starts unless a test sets their threads itself (`run` splits
    the machine among its workers as it always does): two workers on two cores, each
    training with two threads, spend much of their CPU spinning."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers and os.environ.get("PYTEST_XDIST_WORKER"):
        share = str(max(1, (os.cpu_count() or 1) // int(workers)))
        os.environ.setdefault("OMP_NUM_THREADS", share)  # read when torch is imported
        os.environ.setdefault("SMS_TORCH_THREADS", share)
        import torch

        torch.set_num_threads(int(share))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier, the folder under tests/ it lives in; a unit test
    asks for no server."""
    for item in items:
        parts = item.path.relative_to(ROOT / "tests").parts
        if len(parts) < 2 or parts[0] not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: a test lives in tests/{{{','.join(TIERS)}}}/")
        item.add_marker(parts[0])
        if parts[0] == "unit" and "postgres" in getattr(item, "fixturenames", ()):
            raise pytest.UsageError(f"{item.nodeid}: a unit test starts no server (postgres)")


@pytest.fixture(scope="session")
def digits16() -> Dataset:
    """Digits at 16x16: 600 train images, stratified; loads in well under a second."""
    from job.config import DataConfig
    from job.ml.data import load_data

    return load_data(DataConfig(name="digits", image_size=16, subset=600, val_ratio=0.2))


@pytest.fixture(scope="session")
def postgres() -> Iterator[Server | External]:
    """A real PostgreSQL server: DATABASE_URL's, or a throwaway one the suite starts."""
    if os.environ.get("DATABASE_URL"):
        yield External(os.environ["DATABASE_URL"])
        return
    # Not durable: no fsync, as nothing here must survive a power cut (a restart still
    # keeps every committed row: the page cache holds what was written).
    with throwaway_server(required=os.environ.get("CI") == "true", durable=False) as server:
        if server is None:
            pytest.skip("no PostgreSQL server binaries here (under CI=true this fails)")
        yield server


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """tests.support.configs.TINY written to tmp_path/tiny.yaml."""
    from tests.support.configs import TINY

    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture
def fresh_logs() -> Iterator[None]:
    """job.logs as a new process has it, before and after the test: never a wrapped stream
    (or bound fields) left to the next one. Modules of log tests use it for every test."""
    from job import logs

    logs.reset()
    yield
    logs.reset()
