"""The house rules of job/ (docs/ARCHITECTURE.md), read from the source with `ast`: imports
never in a circle, no module over 450 lines, torch only under ml/ and what calls it,
no Optuna in ml/, and bench/ reaching nothing under tests/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "job"
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imported(path: Path, top_level_only: bool = False) -> set[str]:
    """The modules `path` imports (absolute names), at module level only if asked: an
    import inside a function runs when it is called, not when the module loads."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def internal(names: set[str], me: str) -> set[str]:
    """`names` as modules of job/ (a name imported from a module counts as the module)."""
    out = set()
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != me and not me.startswith(name + "."):  # a package's own face
            out.add(name)
    return out


def test_no_import_cycles() -> None:
    graph = {me: internal(imported(path), me) for me, path in MODULES.items()}
    for me in graph:  # a package's __init__ re-exporting its own modules is its face
        if MODULES[me].name == "__init__.py":
            graph[me] = {d for d in graph[me] if not d.startswith(me + ".")}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_short_and_says_its_place(name: str) -> None:
    path = MODULES[name]
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_LINES, f"{path.relative_to(ROOT)}: over {MAX_LINES}"
    assert ast.get_docstring(ast.parse(text)), f"{path.relative_to(ROOT)}: no docstring"


def test_ml_knows_no_optuna_and_light_modules_load_no_torch() -> None:
    for name, path in MODULES.items():
        names = imported(path)
        if name.startswith("job.ml."):
            assert not any(n.split(".")[0] == "optuna" for n in names), name
    # what `status`, `config show`, `dashboard`, `exporter` and every --help load first
    light = ["job.cli.main", "job.cli.verbs", "job.cli.common", "job.cli.study", "job.config"]
    light += [n for n in MODULES if n.startswith(("job.config.", "job.storage"))]
    light += ["job.ml.vocab", "job.ml.errors", "job.errors", "job.files", "job.settings"]
    for name in light:
        top = imported(MODULES[name], top_level_only=True)
        assert not any(n.split(".")[0] == "torch" for n in top), name


def test_bench_reaches_nothing_under_tests() -> None:
    for path in sorted((ROOT / "bench").glob("*.py")):
        names = imported(path)
        assert not any(n == "tests" or n.startswith("tests.") for n in names), path.name
