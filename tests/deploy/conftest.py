"""The deploy tier's shared renders: k8s/ copied once per session (per xdist worker) and
rendered with `kubectl kustomize`, each overlay once, whichever test module asks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.kube import OVERLAYS, Obj, RenderOverlay, copy_tree, render, render_with


@pytest.fixture(scope="session")
def render_overlay(tmp_path_factory: pytest.TempPathFactory) -> RenderOverlay:
    """`render_overlay(name, kustomization=None, database=None)`: the objects of overlay
    `name` of a copy of k8s/ (a new overlay when its kustomization.yaml text is given,
    paths relative to overlays/<name>/), the Secret's env file written from `database`
    (the committed example when None). Each (name, kustomization, database) renders once."""
    trees: dict[tuple[tuple[str, str], ...] | None, Path] = {}
    done: dict[tuple[object, ...], list[Obj]] = {}

    def rendered(
        name: str, kustomization: str | None = None, database: dict[str, str] | None = None
    ) -> list[Obj]:
        key = None if database is None else tuple(sorted(database.items()))
        if key not in trees:
            trees[key] = copy_tree(tmp_path_factory.mktemp("k8s"), database)
        whole = (name, kustomization, key)
        if whole not in done:
            tree = trees[key]
            if kustomization is None:
                done[whole] = render(tree, name)
            else:
                done[whole] = render_with(tree, name, kustomization)
        return done[whole]

    return rendered


@pytest.fixture(scope="session")
def rendered(render_overlay: RenderOverlay) -> dict[str, list[Obj]]:
    """Every shipped overlay (k8s/overlays/), rendered from the committed example Secret."""
    return {overlay: render_overlay(overlay) for overlay in OVERLAYS}
