"""The suite's own rules, read from the source with `ast`: every test module lives in a
tier folder, no test module imports another (shared code lives in tests/support/ and
job/testing/), the unit tier starts no process and no server, and the product never
reaches job/testing/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
TIERS = ("unit", "integration", "deploy")
# What a unit test module may not import: processes, gates, and the throwaway servers
# (job.testing.prom's check_metrics runs promtool on a text, which starts no server;
# pgserver's free_port only asks the OS for a port).
NOT_IN_UNIT = {
    "subprocess": "starts a process",
    "tests.gate": "gates worker processes",
    "job.testing.pgserver.Server": "starts PostgreSQL",
    "job.testing.pgserver.External": "connects to PostgreSQL",
    "job.testing.pgserver.throwaway_server": "starts PostgreSQL",
    "job.testing.pgbouncer": "starts PgBouncer",
    "job.testing.browser": "starts Chromium",
    "job.testing.prom.prometheus": "starts Prometheus",
    "job.testing.prom.pushgateway": "starts a Pushgateway",
    "tests.support.proc.run_job": "runs `python -m job`",
    "tests.support.dashboard": "runs `python -m job dashboard`",
    "tests.support.scenarios": "runs worker processes",
}


def imported(path: Path) -> set[str]:
    """Every module (and `module.name`) the file imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: a relative import"
            base = node.module or ""
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def modules() -> list[Path]:
    return sorted(TESTS.rglob("test_*.py"))


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(TESTS)))
def test_a_test_module_lives_in_a_tier_and_imports_no_other(path: Path) -> None:
    where = path.relative_to(TESTS).parts
    assert len(where) == 2 and where[0] in TIERS, f"{path}: not in tests/{{{','.join(TIERS)}}}/"
    others = {
        name
        for name in imported(path)
        if name.startswith(("tests.test_", *(f"tests.{tier}" for tier in TIERS)))
        or name == "tests"
        or name.endswith("conftest")
    }
    assert not others, f"{path} imports test modules {sorted(others)}: use tests/support/"


@pytest.mark.parametrize("path", sorted((TESTS / "unit").glob("test_*.py")), ids=lambda p: p.name)
def test_a_unit_module_starts_no_process_and_no_server(path: Path) -> None:
    names = imported(path)
    found = {name: why for name, why in NOT_IN_UNIT.items() if name in names}
    assert not found, f"{path.name}: {found}; such a test belongs in tests/integration/"


def test_support_and_the_throwaway_servers_import_no_test_module() -> None:
    for path in [*sorted((TESTS / "support").glob("*.py")), *sorted(ROOT.glob("job/testing/*.py"))]:
        bad = {n for n in imported(path) if n.startswith(("tests.test_", "tests.unit"))}
        assert not bad, f"{path}: {bad}"
        if path.parent.name == "testing":  # what bench/ imports: nothing from tests/
            assert not {n for n in imported(path) if n.split(".")[0] == "tests"}, path


def test_the_product_never_imports_job_testing() -> None:
    for path in sorted((ROOT / "job").rglob("*.py")):
        if path.parent.name == "testing":
            continue
        bad = {n for n in imported(path) if n.startswith("job.testing")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
